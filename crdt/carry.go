package crdt

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"

	am "github.com/automerge/automerge-go"
)

// Carrying writes across a cut. When this node moves from its document
// old (epoch oldEpoch) to a document of a new epoch, the writes old holds
// that the cut left out (the tail) are written again on top of it:
//
//   - its own records whose counter is above the one in force in the new
//     document, always, whatever the path, since a counter says which is
//     newer;
//   - other writers' records from the tail, as they were written: each
//     change's writes of one writer in a change of their own under that
//     writer's signature (which covers the writes, not the change), when
//     every counter is above the one in force in the new document. So a
//     record a writer made concurrently with the cut reaches the new
//     epoch even if that writer never comes back, and two nodes that carry
//     the same writes make the same records;
//   - its own shared values (item names, room creds and state) that the
//     tail wrote last, where the new document still shows the genesis's
//     value or a carry of an older write of the same old epoch (the carry
//     change names the write it carries, carryLine). Shared values are
//     carried by their writer only: a node that carried another's value
//     could not order it with what that writer wrote next. A shared value
//     written after the cut by a node that never comes back is lost.
//
// Which changes of old the cut left out depends on how old relates to
// the new epoch:
//
//   - its child (a local build, or a snapshot of the next epoch): the
//     changes the genesis's version vector does not hold;
//   - a sibling (two sides of a partition each cut the same epoch): every
//     change of old after its genesis, and the changes of the parent
//     epoch's document (kept in doc.prev at the switch) that the winning
//     cut does not hold;
//   - anything else (a node offline across two cuts or more, or a new
//     node whose fleet cut before it joined): this node's own changes
//     that no change of another actor depends on, i.e. the writes no
//     peer is known to have seen. A write a peer saw but built nothing
//     on is written again; one a peer built on but that was then lost
//     with that peer's epoch is not (doc.go lists this case).
type carryWrites struct {
	num     uint64
	groups  []carriedGroup
	records map[string][]byte
	shared  map[string]*string // nil: delete
	// sources are the old epoch's writes the shared values carry, named
	// in the change (carryLine) when from, the old epoch, is the new
	// one's parent (zero otherwise: nothing to compare with).
	sources map[string]srcOp
	from    Epoch
	direct  bool
}

// carryAcross works out what this node carries from old into g.
func (d *Doc) carryAcross(old *am.Doc, oldx *recIndex, oldEpoch Epoch, hdr *epochHeader, g *am.Doc, gx *recIndex, genShared map[string]string) (*carryWrites, error) {
	cw := &carryWrites{num: hdr.num, records: map[string][]byte{}, shared: map[string]*string{}, sources: map[string]srcOp{}}
	for k, v := range oldx.keys {
		sk, _, err := parseKey(k)
		if err != nil || sk.writer != d.self {
			continue
		}
		if cur, ok := gx.keys[k]; ok && cur.rec.counter >= v.rec.counter {
			continue
		}
		b, err := encodeRecord(k, v.rec)
		if err != nil {
			return nil, err
		}
		cw.records[k] = b
	}
	tail, split, err := d.tail(old, oldEpoch, hdr)
	if err != nil {
		return nil, err
	}
	cw.groups = d.foreignGroups(tail, oldx, gx)
	// For each shared key the tail wrote, its last write there: the op
	// with the highest ID, as automerge orders concurrent writes (a later
	// write always has a higher counter). Op IDs of two documents are not
	// one order: a write of old's own (after split) beats any of the
	// parent's kept document (before it).
	src := map[string]srcOp{}
	for part, cs := range [][]*ChangeOps{tail[:split], tail[split:]} {
		seen := map[string]bool{}
		for _, co := range cs {
			for i := range co.Ops {
				op := &co.Ops[i]
				if !op.Root || !op.KeyIsStr {
					continue
				}
				o := srcOp{op.ID.Counter, string(co.Actors[0])}
				if cur, ok := src[op.Key]; !ok || o.after(cur) || part == 1 && !seen[op.Key] {
					src[op.Key] = o
				}
				seen[op.Key] = true
			}
		}
	}
	// Carries into g made by other nodes from the same old epoch: which
	// write of the old epoch each one carried, per key.
	direct := hdr.parent == oldEpoch.ID && hdr.num == oldEpoch.Num+1
	cw.from, cw.direct = oldEpoch, direct
	inNew, err := newEpochWrites(g)
	if err != nil {
		return nil, err
	}
	own := ownActorPrefix(d.self)
	for k, mine := range src {
		sk, _, err := parseKey(k)
		if err != nil || sk.kind == kCut {
			continue
		}
		// Shared values are carried by their writer only: a node that
		// saw another's write carries it as that writer's, unordered with
		// what the writer itself wrote next.
		if !isOwnActor([]byte(mine.actor), own) {
			continue
		}
		if _, signed := sk.signed(); signed {
			continue
		}
		cur, cok := gx.shared[k]
		want, wok := oldx.shared[k]
		if w, ok := inNew[k]; ok {
			// Written in the new epoch already. A write made there is
			// newer than anything of the old epoch; a carry of an old
			// write is newer only if that write is.
			if !w.carried || w.from != oldEpoch || !direct || !mine.after(w.src) {
				continue
			}
		} else if gen, gok := genShared[k]; cok != gok || cur != gen {
			continue // not the genesis's value: a write we cannot place
		}
		switch {
		case wok && (!cok || want != cur):
			cw.shared[k] = &want
		case !wok && cok:
			cw.shared[k] = nil
		default:
			continue
		}
		cw.sources[k] = mine
	}
	return cw, nil
}

// srcOp is an operation of the old epoch: its counter and actor.
type srcOp struct {
	counter uint64
	actor   string
}

// after orders ops as automerge orders concurrent writes to one key.
func (o srcOp) after(p srcOp) bool {
	if o.counter != p.counter {
		return o.counter > p.counter
	}
	return o.actor > p.actor
}

// newWrite is the write in force at a shared key among the changes of a
// new epoch's document after its genesis.
type newWrite struct {
	op      srcOp // in the new epoch
	carried bool  // by a carry change (carryLine), of
	from    Epoch // a write of this epoch,
	src     srcOp // this one
}

// newEpochWrites returns, per shared key, the last write of g after its
// genesis, and whether it carried a write of an older epoch.
func newEpochWrites(g *am.Doc) (map[string]newWrite, error) {
	cs, err := g.Changes()
	if err != nil {
		return nil, err
	}
	out := map[string]newWrite{}
	for _, c := range cs {
		if isGenesisMessage(c.Message()) {
			continue
		}
		co, _, err := decodeChange(c.Save())
		if err != nil {
			return nil, err
		}
		from, carried, isCarry := parseCarryLine(co.Message)
		for i := range co.Ops {
			op := &co.Ops[i]
			if !op.Root || !op.KeyIsStr {
				continue
			}
			w := newWrite{op: srcOp{op.ID.Counter, string(co.Actors[0])}}
			if s, ok := carried[op.Key]; ok && isCarry {
				w.carried, w.from, w.src = true, from, s
			}
			if cur, ok := out[op.Key]; !ok || w.op.after(cur.op) {
				out[op.Key] = w
			}
		}
	}
	return out, nil
}

// The carry line of a carry change's message, before its signature line:
//
//	mncarry1:<base64url of: epoch ID [32] | epoch number uvarint |
//	          count uvarint | { key str | counter uvarint | actor str }*>
//
// names, for each shared value the change carries, the write of that
// epoch it carries, so that a node that switches later can tell whether
// its own last write there is newer.
const carryPrefix = "mncarry1:"

func carryLine(from Epoch, src map[string]srcOp) string {
	b := append([]byte{}, from.ID[:]...)
	b = binary.AppendUvarint(b, from.Num)
	b = binary.AppendUvarint(b, uint64(len(src)))
	for _, k := range slices.Sorted(maps.Keys(src)) {
		b = appendStr(b, k)
		b = binary.AppendUvarint(b, src[k].counter)
		b = appendStr(b, src[k].actor)
	}
	return carryPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// parseCarryLine reads the carry line of a change message; ok is false
// when it has none or it does not decode.
func parseCarryLine(msg string) (Epoch, map[string]srcOp, bool) {
	var line string
	for l := range strings.SplitSeq(msg, "\n") {
		if strings.HasPrefix(l, carryPrefix) {
			line = l[len(carryPrefix):]
		}
	}
	if line == "" {
		return Epoch{}, nil, false
	}
	b, err := base64.RawURLEncoding.DecodeString(line)
	if err != nil {
		return Epoch{}, nil, false
	}
	p := recReader{b: b}
	var e Epoch
	e.ID = p.hash()
	e.Num = p.uvarint()
	n := p.count(3)
	out := make(map[string]srcOp, n)
	for range n {
		k := p.str()
		o := srcOp{counter: p.uvarint(), actor: string(p.raw())}
		out[k] = o
	}
	if p.err != nil || len(p.b) > 0 {
		return Epoch{}, nil, false
	}
	return e, out, true
}

// tail returns the changes of old (and of the kept previous epoch's
// document) that the new epoch's cut left out, decoded, in causal order:
// those of the previous epoch's document first, then from split on old's.
func (d *Doc) tail(old *am.Doc, oldEpoch Epoch, hdr *epochHeader) (_ []*ChangeOps, split int, _ error) {
	var out []*ChangeOps
	add := func(cs []*am.Change, keep func(*am.Change) bool) error {
		for _, c := range cs {
			if !keep(c) {
				continue
			}
			co, _, err := decodeChange(c.Save())
			if err != nil {
				return err
			}
			out = append(out, co)
		}
		return nil
	}
	notIncluded := func(c *am.Change) bool {
		a, err := hex.DecodeString(c.ActorID())
		return err != nil || c.ActorSeq() > hdr.includedSeq(a)
	}
	afterGenesis := func(c *am.Change) bool { return !isGenesisMessage(c.Message()) }
	direct := hdr.parent == oldEpoch.ID && hdr.num == oldEpoch.Num+1
	if direct {
		// Cut from old itself (a local build): the changes since the cut.
		if since, err := old.Changes(hdr.cut...); err == nil {
			err = add(since, notIncluded)
			return out, 0, err
		}
	}
	all, err := old.Changes()
	if err != nil {
		return nil, 0, err
	}
	switch oldHdr := hdrOf(old, oldEpoch); {
	case direct:
		err := add(all, notIncluded)
		return out, 0, err
	case oldHdr != nil && oldHdr.parent == hdr.parent && oldHdr.num == hdr.num:
		if prev := d.readPrev(); prev != nil {
			if pe, _ := epochOfDoc(prev); pe.ID == hdr.parent {
				pcs, err := prev.Changes()
				if err != nil {
					return nil, 0, err
				}
				if err := add(pcs, notIncluded); err != nil {
					return nil, 0, err
				}
			}
		}
		split := len(out)
		err := add(all, afterGenesis)
		return out, split, err
	}
	err = add(all, unconfirmedOwn(all, ownActorPrefix(d.self)))
	return out, 0, err
}

// carriedGroup is another writer's record writes in one change of the
// tail, with that writer's signature over them: written again as they
// were, in a change of their own, the signature still verifies.
type carriedGroup struct {
	writer string
	sig    []byte
	ops    []sigOp
}

// foreignGroups picks from the tail the record writes of other writers
// to carry with their signatures: a group that holds a record still in
// force in old (a group every record of which a later write replaced
// would only add history), and whose every counter is above the one in
// force in the new document and in the groups carried before it, so
// that peers' replay check passes.
func (d *Doc) foreignGroups(tail []*ChangeOps, oldx, gx *recIndex) []carriedGroup {
	counters := map[string]uint64{}
	cur := func(k string) uint64 {
		if v, ok := counters[k]; ok {
			return v
		}
		if r, ok := gx.best(k); ok {
			return r.counter
		}
		return 0
	}
	var out []carriedGroup
	for _, co := range tail {
		var w writerOps
		recs := map[string][]*record{}
		for i := range co.Ops {
			op := &co.Ops[i]
			r, ok := recordOp(op)
			if !ok {
				continue
			}
			if sk, _, _ := parseKey(op.Key); sk.writer != d.self {
				w.add(sk.writer, op.Key, op.Value)
				recs[sk.writer] = append(recs[sk.writer], r)
			}
		}
		if len(w.order) == 0 {
			continue
		}
		sigs, err := parseSignatures(co.Message)
		if err != nil {
			continue
		}
		for _, writer := range w.order {
			ops, sig := w.byWho[writer], sigs[writer]
			if sig == nil {
				continue
			}
			above, live := true, false
			seen := map[string]uint64{}
			for i, op := range ops {
				c := recs[writer][i].counter
				prev, ok := seen[op.key]
				if !ok {
					prev = cur(op.key)
				}
				above = above && c > prev
				seen[op.key] = c
				if r, ok := oldx.best(op.key); ok && r.counter == c {
					live = true
				}
			}
			if !above || !live {
				continue
			}
			for k, c := range seen {
				counters[k] = c
			}
			out = append(out, carriedGroup{writer, sig, ops})
		}
	}
	return out
}

// hdrOf returns the genesis header of old, an epoch's document; nil for
// epoch 0.
func hdrOf(old *am.Doc, e Epoch) *epochHeader {
	if e.Num == 0 {
		return nil
	}
	_, h := epochOfDoc(old)
	return h
}

// unconfirmedOwn selects this node's changes that no change of another
// actor depends on, directly or not.
func unconfirmedOwn(all []*am.Change, prefix []byte) func(*am.Change) bool {
	byHash := make(map[Hash]*am.Change, len(all))
	for _, c := range all {
		byHash[c.Hash()] = c
	}
	own := func(c *am.Change) bool {
		a, err := hex.DecodeString(c.ActorID())
		return err == nil && isOwnActor(a, prefix)
	}
	seen := map[Hash]bool{}
	var stack []Hash
	for _, c := range all {
		if !own(c) {
			stack = append(stack, c.Dependencies()...)
		}
	}
	for len(stack) > 0 {
		h := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[h] {
			continue
		}
		seen[h] = true
		if c := byHash[h]; c != nil {
			stack = append(stack, c.Dependencies()...)
		}
	}
	return func(c *am.Change) bool { return own(c) && !seen[c.Hash()] }
}

// commit writes the carried values into g: each carried group of
// another writer as a change of its own (its signature covers exactly
// those writes), then this node's records, signed, and the shared values
// in one change. It returns the changes made.
func (cw *carryWrites) commit(d *Doc, g *am.Doc) ([]*am.Change, error) {
	var out []*am.Change
	put := func(msg string) error {
		h, err := g.Commit(msg)
		if err != nil {
			if err.Error() == "Commit is empty" {
				return nil
			}
			return err
		}
		c, err := g.Change(h)
		if err != nil {
			return err
		}
		out = append(out, c)
		return nil
	}
	for _, gr := range cw.groups {
		for _, op := range gr.ops {
			if err := g.Path(op.key).Set(op.value); err != nil {
				return nil, err
			}
		}
		msg := withSignatures(fmt.Sprintf("carry records of %s into epoch %d", gr.writer, cw.num), []writerSig{{gr.writer, gr.sig}})
		if err := put(msg); err != nil {
			return nil, err
		}
	}
	var sig []sigOp
	for _, k := range slices.Sorted(maps.Keys(cw.records)) {
		v := cw.records[k]
		if err := g.Path(k).Set(v); err != nil {
			return nil, err
		}
		sig = append(sig, sigOp{k, v})
	}
	for _, k := range slices.Sorted(maps.Keys(cw.shared)) {
		var err error
		if v := cw.shared[k]; v == nil {
			err = g.RootMap().Delete(k)
		} else {
			err = g.Path(k).Set(*v)
		}
		if err != nil {
			return nil, err
		}
	}
	msg := fmt.Sprintf("carry writes into epoch %d", cw.num)
	if len(cw.shared) > 0 && cw.direct {
		msg += "\n" + carryLine(cw.from, cw.sources)
	}
	if len(sig) > 0 {
		s, err := sign(d.key, d.self, sig)
		if err != nil {
			return nil, err
		}
		msg = withSignatures(msg, []writerSig{{d.self, s}})
	}
	if err := put(msg); err != nil {
		return nil, err
	}
	return out, nil
}
