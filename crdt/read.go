package crdt

import (
	"maps"
	"strings"

	am "github.com/automerge/automerge-go"
)

// Readers take single-writer records from the record index (recindex.go),
// which holds, per key, the record with the highest counter among the
// values automerge keeps, and shared entries from automerge. They skip
// entries that do not match the schema, so one malformed record cannot
// hide the rest of the fleet.
//
// Readers do not check signatures again: every record in the document
// was verified when it entered (validate.go runs on every path, the change
// log at start-up included), and the snapshot file holds only what was
// verified, under a checksum.

// Node returns the record at nodes/<id>.
func (d *Doc) Node(id string) (NodeRecord, bool, error) {
	d.view.RLock()
	defer d.view.RUnlock()
	r, ok := d.recs.best(nodeKey(id))
	if !ok || r.kind != recNode {
		return NodeRecord{}, false, nil
	}
	return r.node, true, nil
}

type nodesCache struct {
	gen   uint64
	nodes map[string]NodeRecord
}

// Nodes returns every node record, keyed by peer ID. The map is the
// caller's; the records' slices are shared and must not be modified.
// Results are cached until the document changes.
func (d *Doc) Nodes() (map[string]NodeRecord, error) {
	// The generation is read before the document: what a scan sees of a
	// change that lands meanwhile (even one rolled back to the same
	// heads) is cached under a generation that change's end moves past.
	gen := d.nodesGen.Load()
	if c := d.nodes.Load(); c != nil && c.gen == gen {
		return maps.Clone(c.nodes), nil
	}
	out, err := d.scanNodes()
	if err == nil {
		d.nodes.Store(&nodesCache{gen: gen, nodes: maps.Clone(out)})
	}
	return out, err
}

func (d *Doc) scanNodes() (map[string]NodeRecord, error) {
	out := map[string]NodeRecord{}
	d.view.RLock()
	defer d.view.RUnlock()
	d.recs.each(pNodes, func(key string, r *record) {
		if r.kind == recNode {
			out[key[len(pNodes):]] = r.node
		}
	})
	return out, nil
}

// Item returns library/<id>.
func (d *Doc) Item(id string) (Item, bool, error) {
	lib, err := d.library(pLibrary + id + "/")
	it, ok := lib[id]
	return it, ok, err
}

// Library returns every library item, keyed by item ID.
func (d *Doc) Library() (map[string]Item, error) { return d.library(pLibrary) }

func (d *Doc) library(prefix string) (map[string]Item, error) {
	out := map[string]Item{}
	get := func(id string) Item {
		it, ok := out[id]
		if !ok {
			it.Holders = map[string]Holder{}
		}
		return it
	}
	err := d.scan(prefix, func(key string, v *am.Value) {
		parts, _ := splitKey(key, pLibrary)
		switch {
		case len(parts) == 2 && parts[1] == "name":
			if s, err := am.As[string](v); err == nil {
				it := get(parts[0])
				it.Name = s
				out[parts[0]] = it
			}
		}
	}, func(key string, r *record) {
		parts, _ := splitKey(key, pLibrary)
		if len(parts) == 3 && parts[1] == "holders" && r.kind == recHolder && r.holder.State != holderRemoved {
			it := get(parts[0])
			it.Holders[parts[2]] = r.holder
			out[parts[0]] = it
		}
	})
	return out, err
}

// Room returns rooms/<topic>.
func (d *Doc) Room(topic string) (Room, bool, error) {
	rooms, err := d.rooms(pRooms + topic + "/")
	r, ok := rooms[topic]
	return r, ok, err
}

// Rooms returns every room, keyed by topic.
func (d *Doc) Rooms() (map[string]Room, error) { return d.rooms(pRooms) }

func (d *Doc) rooms(prefix string) (map[string]Room, error) {
	out := map[string]Room{}
	get := func(topic string) Room {
		r, ok := out[topic]
		if !ok {
			r.Presence, r.State = map[string]int64{}, map[string]string{}
		}
		return r
	}
	err := d.scan(prefix, func(key string, v *am.Value) {
		parts, _ := splitKey(key, pRooms)
		switch {
		case len(parts) == 2 && parts[1] == "creds":
			if s, err := am.As[string](v); err == nil {
				r := get(parts[0])
				r.Creds = s
				out[parts[0]] = r
			}
		case len(parts) == 3 && parts[1] == "state":
			if s, err := am.As[string](v); err == nil {
				r := get(parts[0])
				r.State[parts[2]] = s
				out[parts[0]] = r
			}
		}
	}, func(key string, rec *record) {
		parts, _ := splitKey(key, pRooms)
		if len(parts) == 3 && parts[1] == "presence" && rec.kind == recPresence {
			r := get(parts[0])
			r.Presence[parts[2]] = rec.expiryMs
			out[parts[0]] = r
		}
	})
	return out, err
}

// scan visits every root key with the given prefix that is not a
// single-writer record, and every record in force under the prefix, in
// one consistent view.
func (d *Doc) scan(prefix string, shared func(key string, v *am.Value), records func(key string, r *record)) error {
	d.view.RLock()
	defer d.view.RUnlock()
	root := d.doc().RootMap()
	keys, err := root.Keys()
	if err != nil {
		return err
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		if sk, _, err := parseKey(k); err == nil {
			if _, signed := sk.signed(); signed {
				continue
			}
		}
		if v, err := root.Get(k); err == nil {
			shared(k, v)
		}
	}
	d.recs.each(prefix, records)
	return nil
}
