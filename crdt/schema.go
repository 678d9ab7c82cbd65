package crdt

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// NodeRecord is one node's entry at nodes/<peerID>. Only that node writes it.
type NodeRecord struct {
	// Name is the human-readable node name (--name).
	Name string `json:"name"`
	// Addrs are the listener multiaddrs the node can be reached on, never
	// ephemeral source ports.
	Addrs []string `json:"addrs"`
	// Version is the protocol version the node speaks.
	Version int64 `json:"version"`
	// Roles are free-form role labels ("rendezvous", "relay", ...).
	Roles []string `json:"roles"`
	// StartedMs is when the node's current run started (Unix ms).
	StartedMs int64 `json:"started_ms"`
	// LastSeenMs is refreshed coarsely (minutes), not on every heartbeat:
	// liveness travels in heartbeats so the document does not grow with them.
	LastSeenMs int64 `json:"last_seen_ms"`
	// Alive is false after a clean shutdown (the Goodbye).
	Alive bool `json:"alive"`
}

// Item is one entry at library/<itemID>.
type Item struct {
	// Name is the display name; any node may set it (last writer wins).
	Name string `json:"name"`
	// Holders maps a peer ID to what that peer holds of the item. Each
	// holder writes only its own entry.
	Holders map[string]Holder `json:"holders"`
}

// Holder states.
const (
	HolderComplete = "complete"
	HolderPartial  = "partial"
)

// Holder is one node's copy of an item at library/<itemID>/holders/<peerID>.
type Holder struct {
	Manifest  string `json:"manifest"`
	Version   string `json:"version"`
	Size      int64  `json:"size"`
	Files     int64  `json:"files"`
	State     string `json:"state"`
	UpdatedMs int64  `json:"updated_ms"`
}

// Room is one entry at rooms/<topic>.
type Room struct {
	// Creds are the encoded room credentials (last writer wins).
	Creds string `json:"creds"`
	// Presence maps a peer ID to its lease expiry (Unix ms).
	Presence map[string]int64 `json:"presence"`
	// State is small durable room state (last writer wins per key).
	State map[string]string `json:"state"`
}

// ErrInvalidKey is returned when an ID cannot be used as a document key.
var ErrInvalidKey = errors.New("crdt: invalid key")

// ErrInvalidValue is returned for a value the document does not take.
var ErrInvalidValue = errors.New("crdt: invalid value")

// maxKeyLen bounds IDs used as map keys so a hostile or buggy caller cannot
// bloat every replica of the document with one write.
const maxKeyLen = 256

func checkKey(what, k string) error {
	switch {
	case k == "":
		return fmt.Errorf("%w: empty %s", ErrInvalidKey, what)
	case len(k) > maxKeyLen:
		return fmt.Errorf("%w: %s longer than %d bytes", ErrInvalidKey, what, maxKeyLen)
	case strings.ContainsAny(k, "\x00/"):
		return fmt.Errorf("%w: %s %q contains '/' or NUL", ErrInvalidKey, what, k)
	}
	return nil
}

func checkHolderState(s string) error {
	if s != HolderComplete && s != HolderPartial {
		return fmt.Errorf("crdt: holder state %q is not %q or %q", s, HolderComplete, HolderPartial)
	}
	return nil
}

// Room credentials, as stored at rooms/<topic>/creds: unpadded base64url of
//
//	version 1 (1) | room ID (16) | secret (32) | created ms (8, BE) | expires ms (8, BE)
//
// Package room mints and reads them; the document refuses any other value,
// so garbage credentials cannot split a room.
const (
	credsVersion = 1
	// CredsLen is the binary length of version 1 credentials.
	CredsLen = 1 + 16 + 32 + 8 + 8
)

// DecodeRoomCreds checks the stored form of room credentials and returns
// their CredsLen bytes. It rejects malformed input, an unknown version,
// a zero room ID and times that make no sense; it does not check expiry.
func DecodeRoomCreds(s string) ([]byte, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	switch {
	case err != nil:
		return nil, fmt.Errorf("not base64url: %v", err)
	case len(b) == 0:
		return nil, errors.New("empty")
	case b[0] != credsVersion:
		return nil, fmt.Errorf("unknown version %d (this node reads %d)", b[0], credsVersion)
	case len(b) != CredsLen:
		return nil, fmt.Errorf("%d bytes, version 1 has %d", len(b), CredsLen)
	}
	created := int64(binary.BigEndian.Uint64(b[49:57]))
	expires := int64(binary.BigEndian.Uint64(b[57:65]))
	if created <= 0 || expires <= created {
		return nil, fmt.Errorf("created %d, expires %d", created, expires)
	}
	if [16]byte(b[1:17]) == ([16]byte{}) {
		return nil, errors.New("zero room ID")
	}
	return b, nil
}
