package crdt

import (
	"maps"

	am "github.com/automerge/automerge-go"
)

// The view: the node list, the library and the rooms as Go values,
// updated from what each change touched, so that a reader never walks
// the automerge document (a walk of 100,000 keys costs a third of a
// second and tens of MiB of C heap) and a change costs work in proportion
// to its own size, not to the document's.
//
// The record index (recindex.go) tells which keys a change touched: every
// record write it takes marks its key, and every shared (last-writer-
// wins) key a change sets or deletes is marked to be read again from
// automerge, which alone decides which of concurrent writes wins. After
// the change is in the automerge document, refresh re-reads those shared
// keys (one cgo call each) and recomputes the view's entry for every
// marked key.
//
// Readers copy the top-level map under Doc.view and share its values:
// an Item's Holders map and a Room's Presence and State maps are never
// modified once a reader may hold them. refresh replaces an item or room
// it touches by a copy (once per refresh, however many of its keys the
// change touched), so a reader encodes its copy with no lock held while
// writers go on.
type view struct {
	nodes map[string]NodeRecord
	items map[string]*Item
	rooms map[string]*Room
	// cuts holds the cut proposals, by proposer (epoch.go).
	cuts map[string]string
	// own holds the items and rooms this refresh copied: it may change
	// them in place until it ends.
	ownItems map[*Item]bool
	ownRooms map[*Room]bool
}

func newView() *view {
	return &view{nodes: map[string]NodeRecord{}, items: map[string]*Item{}, rooms: map[string]*Room{}, cuts: map[string]string{}}
}

// refresh reads the marked shared keys from doc and brings the view's
// entry of every marked key up to date. Call it with Doc.view held for
// writing, after the changes that marked the keys are in doc.
func (x *recIndex) refresh(doc *am.Doc) {
	if len(x.reread) > 0 {
		root := doc.RootMap()
		for k := range x.reread {
			if s, ok := sharedValue(root, k); ok {
				x.shared[k] = s
			} else {
				delete(x.shared, k)
			}
			x.touched[k] = struct{}{}
		}
		clear(x.reread)
	}
	v := x.view
	v.ownItems, v.ownRooms = map[*Item]bool{}, map[*Room]bool{}
	for k := range x.touched {
		x.refreshKey(k)
	}
	v.ownItems, v.ownRooms = nil, nil
	x.touched = map[string]struct{}{} // a cleared map keeps its size: a join's is 100,000 keys
}

// sharedValue reads a shared key's value: a string, or false when the
// key is gone or holds anything else (the checks let only strings in).
func sharedValue(root *am.Map, k string) (string, bool) {
	v, err := root.Get(k)
	if err != nil {
		return "", false
	}
	s, err := am.As[string](v)
	return s, err == nil
}

// refreshKey recomputes the view's entry for one key.
func (x *recIndex) refreshKey(k string) {
	sk, _, err := parseKey(k)
	if err != nil {
		return
	}
	v := x.view
	r, hasRec := x.best(k)
	s, set := x.shared[k]
	switch sk.kind {
	case kNode:
		if hasRec && r.kind == recNode {
			v.nodes[sk.writer] = *r.node
		} else {
			delete(v.nodes, sk.writer)
		}
	case kItemName:
		it := v.item(sk.id)
		it.Name = s
		v.dropEmptyItem(sk.id, it, set)
	case kHolder:
		it := v.item(sk.id)
		if hasRec && r.kind == recHolder && r.holder.State != holderRemoved {
			it.Holders[sk.writer] = *r.holder
		} else {
			delete(it.Holders, sk.writer)
		}
		if len(it.Holders) == 0 {
			v.dropEmptyItem(sk.id, it, x.has(itemNameKey(sk.id)))
		}
	case kCreds:
		rm := v.room(sk.id)
		rm.Creds = s
		v.dropEmptyRoom(sk.id, rm, set)
	case kPresence:
		rm := v.room(sk.id)
		if hasRec && r.kind == recPresence {
			rm.Presence[sk.writer] = r.expiryMs
		} else {
			delete(rm.Presence, sk.writer)
		}
		v.dropEmptyRoom(sk.id, rm, x.has(credsKey(sk.id)))
	case kCut:
		if set {
			v.cuts[sk.writer] = s
		} else {
			delete(v.cuts, sk.writer)
		}
	case kRoomState:
		rm := v.room(sk.id)
		if set {
			rm.State[sk.sub] = s
		} else {
			delete(rm.State, sk.sub)
		}
		v.dropEmptyRoom(sk.id, rm, x.has(credsKey(sk.id)))
	}
}

// has reports whether a shared key is set.
func (x *recIndex) has(k string) bool {
	_, ok := x.shared[k]
	return ok
}

// item returns the item to change in place: a copy of the one readers
// may hold, made once per refresh.
func (v *view) item(id string) *Item {
	old := v.items[id]
	if old != nil && v.ownItems[old] {
		return old
	}
	it := &Item{Holders: map[string]Holder{}}
	if old != nil {
		it.Name, it.Holders = old.Name, maps.Clone(old.Holders)
	}
	v.items[id], v.ownItems[it] = it, true
	return it
}

// dropEmptyItem removes an item with no name key and no holder, as a
// reader of the whole document would not see it.
func (v *view) dropEmptyItem(id string, it *Item, named bool) {
	if !named && len(it.Holders) == 0 {
		delete(v.items, id)
	}
}

// room is item for rooms.
func (v *view) room(topic string) *Room {
	old := v.rooms[topic]
	if old != nil && v.ownRooms[old] {
		return old
	}
	rm := &Room{Presence: map[string]int64{}, State: map[string]string{}}
	if old != nil {
		rm.Creds, rm.Presence, rm.State = old.Creds, maps.Clone(old.Presence), maps.Clone(old.State)
	}
	v.rooms[topic], v.ownRooms[rm] = rm, true
	return rm
}

func (v *view) dropEmptyRoom(topic string, rm *Room, hasCreds bool) {
	if !hasCreds && len(rm.Presence) == 0 && len(rm.State) == 0 {
		delete(v.rooms, topic)
	}
}
