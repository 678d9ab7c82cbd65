package crdt

import (
	"errors"
	"fmt"
	"strings"
)

// The document is flat: every entry is a key of the root map, spelled as
// its path ("nodes/<peer>", "library/<item>/holders/<peer>"; see doc.go).
//
// Why flat: automerge gives every map object a unique ID from the change
// that created it. If two replicas each create a shared parent map (say
// "library") concurrently, the root key holds two conflicting objects and
// readers see only one of them: the other replica's entries vanish. With
// flat keys the document holds no object at all: shared fields (an item's
// name, room creds) are scalars, where last-writer-wins is exactly what we
// want, and single-writer records are one bytes value each (record.go).
const (
	pNodes   = "nodes/"
	pLibrary = "library/"
	pRooms   = "rooms/"
	pCut     = "epoch/cut/"

	sName     = "/name"
	sHolders  = "/holders/"
	sCreds    = "/creds"
	sPresence = "/presence/"
	sState    = "/state/"
)

func nodeKey(peer string) string            { return pNodes + peer }
func itemNameKey(item string) string        { return pLibrary + item + sName }
func holderKey(item, peer string) string    { return pLibrary + item + sHolders + peer }
func credsKey(topic string) string          { return pRooms + topic + sCreds }
func presenceKey(topic, peer string) string { return pRooms + topic + sPresence + peer }
func roomStateKey(topic, key string) string { return pRooms + topic + sState + key }
func cutKey(peer string) string             { return pCut + peer }
func attestKey(peer string) string          { return pNodes + peer + "/attest" }

// splitKey parses a root key into its parts after the prefix, e.g.
// "library/x/holders/p" with prefix "library/" gives ["x", "holders", "p"].
func splitKey(key, prefix string) ([]string, bool) {
	if !strings.HasPrefix(key, prefix) {
		return nil, false
	}
	return strings.Split(key[len(prefix):], "/"), true
}

// keyKind is what a root key holds, by the schema.
type keyKind uint8

const (
	kNode      keyKind = iota + 1 // nodes/<peer>: signed node record
	kItemName                     // library/<item>/name: string, last writer wins
	kHolder                       // library/<item>/holders/<peer>: signed holder record
	kCreds                        // rooms/<topic>/creds: encoded room credentials
	kPresence                     // rooms/<topic>/presence/<peer>: signed lease
	kRoomState                    // rooms/<topic>/state/<key>: string, last writer wins
	kCut                          // epoch/cut/<peer>: a cut proposal (epoch.go)
	kAttest                       // nodes/<peer>/attest: signed attestation of the peer's records (attest.go)
)

// schemaKey is a root key parsed by the schema.
type schemaKey struct {
	kind keyKind
	// id is the item or topic; writer the peer ID of a single-writer
	// key; sub the state key of a room state entry.
	id, writer, sub string
}

// signed reports whether the key holds a single-writer signed record, and
// of which record kind.
func (k schemaKey) signed() (byte, bool) {
	switch k.kind {
	case kNode:
		return recNode, true
	case kHolder:
		return recHolder, true
	case kPresence:
		return recPresence, true
	case kAttest:
		return recAttest, true
	}
	return 0, false
}

// parseKey places a root key in the schema (see doc.go). The error names
// the rule it breaks: RuleSize for a part longer than maxKeyLen,
// RuleSchema for anything else.
func parseKey(key string) (schemaKey, string, error) {
	// Split into a fixed array (the schema's keys have at most four
	// parts): a join parses 100,000 keys twice, and a slice per key was a
	// tenth of its check.
	var parts [4]string
	n := 0
	for p := range strings.SplitSeq(key, "/") {
		if n < len(parts) {
			parts[n] = p
		}
		n++
		switch {
		case len(p) > maxKeyLen:
			return schemaKey{}, RuleSize, fmt.Errorf("a key part of %d bytes (max %d)", len(p), maxKeyLen)
		case p == "":
			return schemaKey{}, RuleSchema, errors.New("an empty key part")
		case strings.IndexByte(p, 0) >= 0:
			return schemaKey{}, RuleSchema, errors.New("a NUL in the key")
		}
	}
	switch {
	case n == 2 && parts[0] == "nodes":
		return schemaKey{kind: kNode, writer: parts[1]}, "", nil
	case n == 3 && parts[0] == "nodes" && parts[2] == "attest":
		return schemaKey{kind: kAttest, writer: parts[1]}, "", nil
	case n == 3 && parts[0] == "library" && parts[2] == "name":
		return schemaKey{kind: kItemName, id: parts[1]}, "", nil
	case n == 4 && parts[0] == "library" && parts[2] == "holders":
		return schemaKey{kind: kHolder, id: parts[1], writer: parts[3]}, "", nil
	case n == 3 && parts[0] == "rooms" && parts[2] == "creds":
		return schemaKey{kind: kCreds, id: parts[1]}, "", nil
	case n == 4 && parts[0] == "rooms" && parts[2] == "presence":
		return schemaKey{kind: kPresence, id: parts[1], writer: parts[3]}, "", nil
	case n == 3 && parts[0] == "epoch" && parts[1] == "cut":
		return schemaKey{kind: kCut, writer: parts[2]}, "", nil
	case n == 4 && parts[0] == "rooms" && parts[2] == "state":
		return schemaKey{kind: kRoomState, id: parts[1], sub: parts[3]}, "", nil
	}
	return schemaKey{}, RuleSchema, errors.New("not a key of the document's schema")
}
