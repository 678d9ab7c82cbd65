package crdt

import (
	"fmt"
	"slices"
	"time"

	am "github.com/automerge/automerge-go"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Tx collects the writes of one Update. Writes are validated as they are
// recorded and applied together at commit, so an Update whose function
// returns an error leaves the document untouched (automerge-go exposes no
// rollback).
//
// Single-writer records (SetNode, SetHolder, RemoveHolder, SetPresence)
// are signed with the Doc's key, and only for the peer ID of that key;
// As gives a Tx that signs with another key (a tool or a test writing for
// another identity).
type Tx struct {
	w    *txWrites
	key  crypto.PrivKey
	self string
	read *Doc
}

// txWrites are the writes of one Update, shared by a Tx and its As views.
type txWrites struct {
	ops  []func(d *am.Doc) error
	errs []error
	// signed lists the record writes, in operation order, for the
	// change's signatures; counters their counters, for a second write of
	// a key in the same Update.
	signed   []pendingSig
	counters map[string]uint64
}

// pendingSig is one record write waiting to be signed.
type pendingSig struct {
	writer string
	key    crypto.PrivKey
	op     sigOp
}

// signRecords returns msg with the signature line covering the Tx's
// record writes: one signature per writer, over its writes in order.
func (w *txWrites) signRecords(msg string) (string, error) {
	var sigs []writerSig
	for i, p := range w.signed {
		if slices.ContainsFunc(w.signed[:i], func(q pendingSig) bool { return q.writer == p.writer }) {
			continue
		}
		var ops []sigOp
		for _, q := range w.signed[i:] {
			if q.writer == p.writer {
				ops = append(ops, q.op)
			}
		}
		sig, err := sign(p.key, p.writer, ops)
		if err != nil {
			return "", err
		}
		sigs = append(sigs, writerSig{p.writer, sig})
	}
	return withSignatures(msg, sigs), nil
}

func (d *Doc) newTx() *Tx { return &Tx{w: &txWrites{}, key: d.key, self: d.self, read: d} }

func (tx *Tx) add(err error, op func(d *am.Doc) error) {
	if err != nil {
		tx.w.errs = append(tx.w.errs, err)
		return
	}
	tx.w.ops = append(tx.w.ops, op)
}

// As returns a view of tx whose records are signed with k, for the peer ID
// of k. Writes through it are part of tx.
func (tx *Tx) As(k crypto.PrivKey) *Tx {
	c := *tx
	c.key = k
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		tx.w.errs = append(tx.w.errs, fmt.Errorf("crdt: signing key: %w", err))
	}
	c.self = id.String()
	return &c
}

// putRecord writes a record at key for writer, unless the record in
// force already has the same fields (writeRecord). The write is signed
// with the change (signRecords).
func (tx *Tx) putRecord(what, key, writer string, r *record) {
	var err error
	if writer != tx.self {
		err = fmt.Errorf("%w: %s is written only by %s; this node signs as %s", ErrInvalidKey, key, writer, tx.self)
	}
	d, k := tx.read, tx.key
	tx.add(firstErr(checkKey(what, writer), err), func(doc *am.Doc) error {
		if cur, ok := d.recs.best(key); ok && cur.kind == r.kind && sameFields(cur, r) {
			return nil
		}
		return tx.w.writeRecord(d, doc, key, writer, k, r)
	})
}

// writeRecord writes r at key in doc with the next counter (above the one
// in force and at least the time in Unix ms, so it rises even across a
// lost data dir) and queues it to be signed by writer's key k. Call with
// d.mu held.
func (w *txWrites) writeRecord(d *Doc, doc *am.Doc, key, writer string, k crypto.PrivKey, r *record) error {
	if w.counters == nil {
		w.counters = map[string]uint64{}
	}
	r.counter = max(d.counterLocked(key, w.counters)+1, uint64(time.Now().UnixMilli()))
	b, err := encodeRecord(key, r)
	if err != nil {
		return err
	}
	if err := doc.Path(key).Set(b); err != nil {
		return err
	}
	w.counters[key] = r.counter
	w.signed = append(w.signed, pendingSig{writer: writer, key: k, op: sigOp{key, b}})
	return nil
}

// sameFields compares two records of one kind, counters aside.
func sameFields(a, b *record) bool {
	x, y := *a, *b
	x.counter, y.counter = 0, 0
	return string(x.appendFields(nil)) == string(y.appendFields(nil))
}

// SetNode writes the node record at nodes/<id>; id must be the signer's.
func (tx *Tx) SetNode(id string, r NodeRecord) {
	tx.putRecord("node id", nodeKey(id), id, &record{kind: recNode, node: &r})
}

// SetItemName sets the display name of library/<item> (last writer wins).
func (tx *Tx) SetItemName(item, name string) {
	err := checkKey("item id", item)
	if err == nil && len(name) > MaxItemName {
		err = fmt.Errorf("%w: item name is %d bytes, max %d", ErrInvalidValue, len(name), MaxItemName)
	}
	tx.add(err, func(d *am.Doc) error {
		return d.Path(itemNameKey(item)).Set(name)
	})
}

// SetHolder writes library/<item>/holders/<peer>; peer must be the
// signer's.
func (tx *Tx) SetHolder(item, peer string, h Holder) {
	if err := firstErr(checkKey("item id", item), checkHolderState(h.State), lineageErr(&h)); err != nil {
		tx.add(err, nil)
		return
	}
	tx.putRecord("peer id", holderKey(item, peer), peer, &record{kind: recHolder, holder: &h})
}

// RemoveHolder withdraws library/<item>/holders/<peer> with a signed
// tombstone (readers skip it); peer must be the signer's. Nothing is
// written when there is no entry.
func (tx *Tx) RemoveHolder(item, peer string) {
	if err := checkKey("item id", item); err != nil {
		tx.add(err, nil)
		return
	}
	key := holderKey(item, peer)
	if _, ok := tx.read.recs.best(key); !ok {
		return
	}
	tx.putRecord("peer id", key, peer, &record{kind: recHolder, holder: &Holder{State: holderRemoved}})
}

// SetRoomCreds sets rooms/<topic>/creds (last writer wins).
func (tx *Tx) SetRoomCreds(topic, creds string) {
	err := checkKey("room topic", topic)
	if err == nil {
		if _, cerr := DecodeRoomCreds(creds); cerr != nil {
			err = fmt.Errorf("%w: room credentials: %v", ErrInvalidValue, cerr)
		}
	}
	tx.add(err, func(d *am.Doc) error {
		return d.Path(credsKey(topic)).Set(creds)
	})
}

// SetPresence sets rooms/<topic>/presence/<peer> to a lease expiry (Unix
// ms); peer must be the signer's.
func (tx *Tx) SetPresence(topic, peer string, expiryMs int64) {
	if err := checkKey("room topic", topic); err != nil {
		tx.add(err, nil)
		return
	}
	tx.putRecord("peer id", presenceKey(topic, peer), peer, &record{kind: recPresence, expiryMs: expiryMs})
}

// MaxRoomStateValue bounds one room state value: the state is small
// durable state that every replica keeps forever, not a data channel.
const MaxRoomStateValue = 16 << 10

// SetRoomState sets rooms/<topic>/state/<key> (last writer wins).
func (tx *Tx) SetRoomState(topic, key, value string) {
	err := firstErr(checkKey("room topic", topic), checkKey("state key", key))
	if err == nil && len(value) > MaxRoomStateValue {
		err = fmt.Errorf("%w: room state value is %d bytes, max %d", ErrInvalidValue, len(value), MaxRoomStateValue)
	}
	tx.add(err, func(d *am.Doc) error {
		return d.Path(roomStateKey(topic, key)).Set(value)
	})
}

// lineageErr is checkLineage as an ErrInvalidValue.
func lineageErr(h *Holder) error {
	if err := checkLineage(h); err != nil {
		return fmt.Errorf("%w: holder: %v", ErrInvalidValue, err)
	}
	return nil
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
