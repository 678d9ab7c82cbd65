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
	// Gen is the version's generation: one more than the highest the
	// item had when the version was first published. Every holder of a
	// version copies it from the version's first publisher, so the
	// order of versions is a fact of the document, not of clocks or of
	// which holder wrote last. 0: written by a node that predates it.
	Gen int64 `json:"gen,omitempty"`
	// Parent is the manifest this version replaced where it was first
	// published ("" for an item's first version).
	Parent string `json:"parent,omitempty"`
	// Next is the manifest of a newer version this holder is fetching
	// while it still holds Manifest: it serves the chunks of Next it has
	// verified, so that an update swarms like a first download.
	Next string `json:"next,omitempty"`
}

// MaxGen bounds a holder's generation (JavaScript's safe integers).
const MaxGen = 1<<53 - 1

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

// checkLineage checks a holder's version fields: a generation in
// [0, MaxGen], and a parent or next version that is empty or a manifest
// hash (64 lowercase hex digits).
func checkLineage(h *Holder) error {
	if h.Gen < 0 || h.Gen > MaxGen {
		return fmt.Errorf("generation %d is outside [0, %d]", h.Gen, MaxGen)
	}
	for _, f := range []struct{ name, v string }{{"parent", h.Parent}, {"next", h.Next}} {
		if f.v != "" && !isHash(f.v) {
			return fmt.Errorf("%s %q is not a manifest hash (64 lowercase hex digits)", f.name, f.v)
		}
	}
	return nil
}

func isHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
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
