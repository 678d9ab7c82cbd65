package crdt

import "maps"

// Readers take what they return from the view (view.go), which follows
// every change: single-writer records from the record index (recindex.go),
// which holds, per key, the record with the highest counter among the
// values automerge keeps, and shared entries as automerge resolves them.
// Entries that do not match the schema are not in it, so one malformed
// record cannot hide the rest of the fleet. A reader copies the top-level
// map under the view lock; the maps inside its values (an item's
// holders, a room's presence and state) and the records' slices are
// shared and must not be modified.
//
// Readers do not check signatures again: every record in the document
// was verified when it entered (validate.go runs on every path, the change
// log at start-up included), and the snapshot file holds only what was
// verified, under a checksum.

// Node returns the record at nodes/<id>.
func (d *Doc) Node(id string) (NodeRecord, bool, error) {
	d.view.RLock()
	defer d.view.RUnlock()
	r, ok := d.recs.view.nodes[id]
	return r, ok, nil
}

// Nodes returns every node record, keyed by peer ID. The map is the
// caller's.
func (d *Doc) Nodes() (map[string]NodeRecord, error) {
	d.view.RLock()
	defer d.view.RUnlock()
	return maps.Clone(d.recs.view.nodes), nil
}

// Item returns library/<id>.
func (d *Doc) Item(id string) (Item, bool, error) {
	d.view.RLock()
	defer d.view.RUnlock()
	if it, ok := d.recs.view.items[id]; ok {
		return *it, true, nil
	}
	return Item{}, false, nil
}

// Library returns every library item, keyed by item ID. The map is the
// caller's.
func (d *Doc) Library() (map[string]Item, error) {
	d.view.RLock()
	defer d.view.RUnlock()
	return derefAll(d.recs.view.items), nil
}

// Room returns rooms/<topic>.
func (d *Doc) Room(topic string) (Room, bool, error) {
	d.view.RLock()
	defer d.view.RUnlock()
	if r, ok := d.recs.view.rooms[topic]; ok {
		return *r, true, nil
	}
	return Room{}, false, nil
}

// Rooms returns every room, keyed by topic. The map is the caller's.
func (d *Doc) Rooms() (map[string]Room, error) {
	d.view.RLock()
	defer d.view.RUnlock()
	return derefAll(d.recs.view.rooms), nil
}

func derefAll[V any](m map[string]*V) map[string]V {
	out := make(map[string]V, len(m))
	for k, v := range m {
		out[k] = *v
	}
	return out
}
