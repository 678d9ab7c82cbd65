package crdt

import "strings"

// The document is flat: every entry is a key of the root map, spelled as
// its path ("nodes/<peer>", "library/<item>/holders/<peer>"; see doc.go).
//
// Why flat: automerge gives every map object a unique ID from the change
// that created it. If two replicas each create a shared parent map (say
// "library") concurrently, the root key holds two conflicting objects and
// readers see only one of them: the other replica's entries vanish. With
// flat keys the only nested maps are a node record and a holder entry,
// each created by its single writer, and shared fields (an item's name,
// room creds) are scalars, where last-writer-wins is exactly what we want.
const (
	pNodes   = "nodes/"
	pLibrary = "library/"
	pRooms   = "rooms/"

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

// splitKey parses a root key into its parts after the prefix, e.g.
// "library/x/holders/p" with prefix "library/" gives ["x", "holders", "p"].
func splitKey(key, prefix string) ([]string, bool) {
	if !strings.HasPrefix(key, prefix) {
		return nil, false
	}
	return strings.Split(key[len(prefix):], "/"), true
}
