package crdt

import (
	"maps"
	"slices"
	"strings"

	am "github.com/automerge/automerge-go"
)

// The record index: which record is in force at each single-writer key.
//
// Automerge resolves writes to one key by the writer's view (a write
// overwrites the values its predecessor list names) and concurrent ones
// by operation ID, and its Go binding shows readers only the winner. For
// a signed record neither is good enough: a member can copy an older
// record of B, with B's own signature, into a change that names B's newer
// value as its predecessor, or that is concurrent with it and has a high
// start op; automerge then shows the older record. So readers do not ask
// automerge: the record in force at a key is the one with the highest
// counter among every record ever written there (ties, which only one
// writer's concurrent writes can make, go to the higher operation ID).
// Only the key's writer can sign a new counter, so no one else can bring
// back or keep an older record; and the answer depends only on the set of
// changes a node holds, so every replica that holds the same changes
// reads the same record. The index follows every change this package
// applies; a merged document's index (built by the check that decoded
// it) is merged in, and after a rollback it is rebuilt from the document.
//
// Guarded by Doc.mu for writes and Doc.view for reads (writers hold both).

// opKey identifies an operation across changes: its actor's bytes and its
// counter.
type opKey struct {
	actor   string
	counter uint64
}

// recValue is the record in force at a key.
type recValue struct {
	id  opKey
	rec *record
}

// recIndex maps each single-writer key to the record in force, holds the
// value of each shared key, and keeps the view (view.go) that readers use.
type recIndex struct {
	keys map[string]recValue
	// shared holds the value automerge shows at each shared (last-writer-
	// wins) key: a string, as the checks let in nothing else.
	shared map[string]string
	// reread marks shared keys that changes wrote, to read from automerge
	// at the next refresh; touched marks keys whose view entry is stale.
	reread, touched map[string]struct{}
	view            *view
	// writerKeys lists the keys of one writer (writerOf), built on first
	// use by keysOf and kept up to date by offer: the attestation of this
	// node's records (attest.go) hashes them at every local commit, and a
	// scan of every key of a 100,000-record document took milliseconds.
	writerOf   string
	writerKeys map[string]*writerLeaf
	writerSort []string // writerKeys' keys in order; nil once one is added
}

// writerLeaf caches a key's attestation leaf (attest.go) for the record
// it was computed from: records are replaced, never modified, so a leaf
// is good while the record in force is the same pointer.
type writerLeaf struct {
	rec  *record
	leaf [32]byte
}

func newRecIndex() *recIndex { return newRecIndexFor(0) }

// newRecIndexFor makes an index sized for about n records.
func newRecIndexFor(n int) *recIndex {
	return &recIndex{keys: make(map[string]recValue, n), shared: map[string]string{},
		reread: map[string]struct{}{}, touched: make(map[string]struct{}, n), view: newView()}
}

// best returns the record in force at key.
func (x *recIndex) best(key string) (*record, bool) {
	v, ok := x.keys[key]
	return v.rec, ok
}

// offer records a write of r at key by operation id.
func (x *recIndex) offer(key string, id opKey, r *record) {
	cur, ok := x.keys[key]
	if !ok || r.counter > cur.rec.counter || r.counter == cur.rec.counter && laterOp(id, cur.id) {
		x.keys[key] = recValue{id, r}
		x.touched[key] = struct{}{}
		if !ok && x.writerKeys != nil && keyOfWriter(key, x.writerOf) {
			x.writerKeys[key] = &writerLeaf{}
			x.writerSort = nil
		}
	}
}

// keyOfWriter reports whether a single-writer key is writer's, from its
// suffix: nodes/<w>, nodes/<w>/attest, .../holders/<w>, .../presence/<w>.
func keyOfWriter(key, writer string) bool {
	rest, ok := strings.CutSuffix(key, "/attest")
	if ok {
		key = rest
	}
	return strings.HasSuffix(key, "/"+writer) && len(key) > len(writer)
}

// keysOf returns the single-writer keys of writer in force, each with
// its cached attestation leaf.
func (x *recIndex) keysOf(writer string) map[string]*writerLeaf {
	if x.writerKeys == nil || x.writerOf != writer {
		x.writerOf, x.writerKeys, x.writerSort = writer, map[string]*writerLeaf{}, nil
		for k := range x.keys {
			if keyOfWriter(k, writer) {
				x.writerKeys[k] = &writerLeaf{}
			}
		}
	}
	return x.writerKeys
}

// sortedKeysOf is keysOf's keys in order, sorted once per key added.
func (x *recIndex) sortedKeysOf(writer string) []string {
	ks := x.keysOf(writer)
	if x.writerSort == nil {
		x.writerSort = slices.Sorted(maps.Keys(ks))
	}
	return x.writerSort
}

func laterOp(a, b opKey) bool {
	if a.counter != b.counter {
		return a.counter > b.counter
	}
	return a.actor > b.actor
}

// recordOp returns the record a root set of a single-writer key writes.
func recordOp(op *Op) (*record, bool) {
	if !op.Root || !op.KeyIsStr || op.Action != ActSet || op.Type != ValBytes {
		return nil, false
	}
	sk, _, err := parseKey(op.Key)
	if err != nil {
		return nil, false
	}
	kind, ok := sk.signed()
	if !ok {
		return nil, false
	}
	r, err := decodeRecord(op.Value)
	if err != nil || r.kind != kind {
		return nil, false
	}
	return r, true
}

// markShared marks a root op's key for a re-read if it is a shared key.
func (x *recIndex) markShared(op *Op) {
	if !op.Root || !op.KeyIsStr {
		return
	}
	if sk, _, err := parseKey(op.Key); err == nil {
		if _, signed := sk.signed(); !signed {
			x.reread[op.Key] = struct{}{}
		}
	}
}

// applyChange follows one applied change; refresh brings the view up to
// date once the change is in the automerge document.
func (x *recIndex) applyChange(c *ChangeOps) {
	for i := range c.Ops {
		if r, ok := recordOp(&c.Ops[i]); ok {
			x.offer(c.Ops[i].Key, opKey{string(c.Actors[0]), c.Ops[i].ID.Counter}, r)
		} else {
			x.markShared(&c.Ops[i])
		}
	}
}

// indexDocument builds the index of a whole document chunk.
func indexDocument(b []byte) (*recIndex, error) {
	doc, err := decodeDocumentOnly(b, rootScalar)
	if err != nil {
		return nil, err
	}
	return indexOps(doc), nil
}

// indexOps builds the index of a decoded document chunk.
func indexOps(doc *DocOps) *recIndex {
	x := newRecIndexFor(len(doc.Ops))
	for i := range doc.Ops {
		op := &doc.Ops[i]
		if r, ok := recordOp(op); ok {
			x.offer(op.Key, opKey{string(doc.Actors[op.ID.Actor]), op.ID.Counter}, r)
		} else {
			x.markShared(op)
		}
	}
	return x
}

// merge adds y's records: the index of a document merged into another is
// the two indexes merged, since the record in force is the highest
// counter either holds. y's shared keys are read again from the merged
// document at the next refresh.
func (x *recIndex) merge(y *recIndex) {
	for k, v := range y.keys {
		x.offer(k, v.id, v.rec)
	}
	for k := range y.shared {
		x.reread[k] = struct{}{}
	}
	for k := range y.reread {
		x.reread[k] = struct{}{}
	}
}

// indexOf builds the index of doc from its Save output; its view is built
// by the next refresh.
func (d *Doc) indexOf(doc *am.Doc) *recIndex {
	x, err := indexDocument(doc.Save())
	if err != nil {
		// The document is this node's own, every change checked: a
		// failure here is a bug, and an empty index hides records.
		d.lg.Error().Err(err).Msg("cannot index the document's records")
		x = newRecIndex()
	}
	return x
}
