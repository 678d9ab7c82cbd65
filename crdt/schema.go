package crdt

import (
	"errors"
	"fmt"
	"strings"
)

// NodeRecord is one node's entry at nodes/<peerID>. Only that node writes it.
type NodeRecord struct {
	// Name is the human-readable node name (--name).
	Name string `automerge:"name" json:"name"`
	// Addrs are the listener multiaddrs the node can be reached on, never
	// ephemeral source ports.
	Addrs []string `automerge:"addrs" json:"addrs"`
	// Version is the protocol version the node speaks.
	Version int64 `automerge:"version" json:"version"`
	// Roles are free-form role labels ("rendezvous", "relay", ...).
	Roles []string `automerge:"roles" json:"roles"`
	// StartedMs is when the node's current run started (Unix ms).
	StartedMs int64 `automerge:"started_ms" json:"started_ms"`
	// LastSeenMs is refreshed coarsely (minutes), not on every heartbeat:
	// liveness travels in heartbeats so the document does not grow with them.
	LastSeenMs int64 `automerge:"last_seen_ms" json:"last_seen_ms"`
	// Alive is false after a clean shutdown (the Goodbye).
	Alive bool `automerge:"alive" json:"alive"`
}

// Item is one entry at library/<itemID>.
type Item struct {
	// Name is the display name; any node may set it (last writer wins).
	Name string `automerge:"name" json:"name"`
	// Holders maps a peer ID to what that peer holds of the item. Each
	// holder writes only its own entry.
	Holders map[string]Holder `automerge:"holders" json:"holders"`
}

// Holder states.
const (
	HolderComplete = "complete"
	HolderPartial  = "partial"
)

// Holder is one node's copy of an item at library/<itemID>/holders/<peerID>.
type Holder struct {
	Manifest  string `automerge:"manifest" json:"manifest"`
	Version   string `automerge:"version" json:"version"`
	Size      int64  `automerge:"size" json:"size"`
	Files     int64  `automerge:"files" json:"files"`
	State     string `automerge:"state" json:"state"`
	UpdatedMs int64  `automerge:"updated_ms" json:"updated_ms"`
}

// Room is one entry at rooms/<topic>.
type Room struct {
	// Creds are the encoded room credentials (last writer wins).
	Creds string `automerge:"creds" json:"creds"`
	// Presence maps a peer ID to its lease expiry (Unix ms).
	Presence map[string]int64 `automerge:"presence" json:"presence"`
	// State is small durable room state (last writer wins per key).
	State map[string]string `automerge:"state" json:"state"`
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
