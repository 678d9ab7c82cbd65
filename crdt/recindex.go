package crdt

import (
	"strings"

	am "github.com/automerge/automerge-go"
)

// The record index: which record is in force at each single-writer key.
//
// Automerge resolves concurrent writes to one key by operation ID (last
// writer wins by counter, then actor), and its Go binding shows readers
// only that winner. For a signed record that is not good enough: a member
// can copy an older record of B, with B's own signature, into a change
// concurrent with B's newer one (the replay check passes, since in that
// change's causal past the older record is above what was in force) and
// give its change a high start op so that it wins. So readers do not ask
// automerge: the index keeps, per key, every value automerge holds
// visible (the ones no later write overwrote: usually one, several after
// concurrent writes) and reads the one with the highest counter, which a
// replay can never beat. The index follows every change this package
// applies, from the decoded operations (a write removes the values its
// predecessors list and adds its own), and is rebuilt from a decoded
// document after a snapshot is adopted or merged and after a rollback.
//
// Guarded by Doc.mu for writes and Doc.view for reads (writers hold both).

// opKey identifies an operation across changes: its actor's bytes and its
// counter.
type opKey struct {
	actor   string
	counter uint64
}

// recValue is one visible value of a single-writer key.
type recValue struct {
	id    opKey
	rec   *record
	value []byte
}

// recIndex maps each single-writer key to its visible values.
type recIndex struct {
	keys map[string][]recValue
}

func newRecIndex() *recIndex { return &recIndex{keys: map[string][]recValue{}} }

// best returns the record in force at key: the visible value with the
// highest counter (ties, which only a writer's own concurrent writes can
// make, go to the higher operation ID, as in automerge).
func (x *recIndex) best(key string) (*record, bool) {
	vs := x.keys[key]
	if len(vs) == 0 {
		return nil, false
	}
	b := vs[0]
	for _, v := range vs[1:] {
		if v.rec.counter > b.rec.counter || v.rec.counter == b.rec.counter && laterOp(v.id, b.id) {
			b = v
		}
	}
	return b.rec, true
}

func laterOp(a, b opKey) bool {
	if a.counter != b.counter {
		return a.counter > b.counter
	}
	return a.actor > b.actor
}

// applyChange follows one applied change.
func (x *recIndex) applyChange(c *ChangeOps) {
	for i := range c.Ops {
		op := &c.Ops[i]
		if !op.Root || !op.KeyIsStr {
			continue
		}
		sk, _, err := parseKey(op.Key)
		if err != nil {
			continue
		}
		if _, ok := sk.signed(); !ok {
			continue
		}
		vs := x.keys[op.Key]
		for _, p := range op.Pred {
			pk := opKey{string(c.Actors[p.Actor]), p.Counter}
			for j := range vs {
				if vs[j].id == pk {
					vs = append(vs[:j], vs[j+1:]...)
					break
				}
			}
		}
		if op.Action == ActSet {
			if r, err := decodeRecord(op.Value); err == nil {
				vs = append(vs, recValue{opKey{string(c.Actors[0]), op.ID.Counter}, r, op.Value})
			}
		}
		if len(vs) == 0 {
			delete(x.keys, op.Key)
		} else {
			x.keys[op.Key] = vs
		}
	}
}

// indexDocument builds the index of a whole document chunk: every value
// of a single-writer key that no later write overwrote.
func indexDocument(b []byte) (*recIndex, error) {
	doc, err := decodeDocumentOnly(b, rootScalar)
	if err != nil {
		return nil, err
	}
	x := newRecIndex()
	for i := range doc.Ops {
		op := &doc.Ops[i]
		if len(op.Succ) > 0 || op.Action != ActSet || !op.Root || !op.KeyIsStr || !strings.Contains(op.Key, "/") {
			continue
		}
		sk, _, err := parseKey(op.Key)
		if err != nil {
			continue
		}
		if _, ok := sk.signed(); !ok {
			continue
		}
		if r, err := decodeRecord(op.Value); err == nil {
			x.keys[op.Key] = append(x.keys[op.Key], recValue{opKey{string(doc.Actors[op.ID.Actor]), op.ID.Counter}, r, op.Value})
		}
	}
	return x, nil
}

// each calls fn for the record in force at every key with the prefix.
func (x *recIndex) each(prefix string, fn func(key string, r *record)) {
	for k := range x.keys {
		if strings.HasPrefix(k, prefix) {
			if r, ok := x.best(k); ok {
				fn(k, r)
			}
		}
	}
}

// indexOf builds the index of doc from its Save output.
func (d *Doc) indexOf(doc *am.Doc) *recIndex {
	x, err := indexDocument(doc.Save())
	if err != nil {
		// The document is this node's own, every change checked: a
		// failure here is a bug, and an empty index hides records.
		d.lg.Error().Err(err).Msg("cannot index the document's records")
		return newRecIndex()
	}
	return x
}

// reindexLocked rebuilds the index after the document was replaced or a
// whole document merged into it. Call with mu held.
func (d *Doc) reindexLocked() {
	x := d.indexOf(d.doc())
	d.view.Lock()
	d.recs = x
	d.view.Unlock()
}
