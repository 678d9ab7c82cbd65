package crdt

import (
	"encoding/hex"
	"fmt"
	"maps"
	"slices"

	am "github.com/automerge/automerge-go"
)

// Carrying writes across a cut. When this node moves from its document
// old (epoch oldEpoch) to a document of a new epoch, the writes old holds
// that the cut left out are written again, as one change of this node:
//
//   - its own records (nodes/<self>, holders and presence leases it
//     wrote) whose counter is above the one in force in the new document:
//     always, whatever the path, since a counter says which is newer;
//   - shared values (item names, room creds and state) written by
//     changes of old that the cut left out (the tail), where the new
//     document still shows the genesis's value at that key (nobody wrote
//     it in the new epoch yet): old's value is written.
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
//     peer is known to have seen. A shared write of this node that a
//     peer saw but that no later change of old builds on is written
//     again, which is harmless unless a later epoch overwrote it.
//
// Others' records are not carried: only their writer can sign them, and
// every writer carries its own when it switches. So a record a writer
// made concurrently with the cut reaches the new epoch when that writer
// switches, not before.
type carryWrites struct {
	num     uint64
	records map[string][]byte
	shared  map[string]*string // nil: delete
}

func (c *carryWrites) empty() bool { return len(c.records) == 0 && len(c.shared) == 0 }

// carryAcross works out what this node carries from old into g.
func (d *Doc) carryAcross(old *am.Doc, oldx *recIndex, oldEpoch Epoch, hdr *epochHeader, g *am.Doc, gx *recIndex, genShared map[string]string) (*carryWrites, error) {
	cw := &carryWrites{num: hdr.num, records: map[string][]byte{}, shared: map[string]*string{}}
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
	tail, err := d.tailKeys(old, oldEpoch, hdr)
	if err != nil {
		return nil, err
	}
	for k := range tail {
		sk, _, err := parseKey(k)
		if err != nil || sk.kind == kCut {
			continue
		}
		if _, signed := sk.signed(); signed {
			continue
		}
		cur, cok := gx.shared[k]
		gen, gok := genShared[k]
		if cok != gok || cur != gen {
			continue // written in the new epoch already: that write is newer
		}
		want, wok := oldx.shared[k]
		switch {
		case wok && (!cok || want != cur):
			cw.shared[k] = &want
		case !wok && cok:
			cw.shared[k] = nil
		}
	}
	return cw, nil
}

// tailKeys returns the keys written by the changes of old (and of the
// kept previous epoch's document) that the new epoch's cut left out.
func (d *Doc) tailKeys(old *am.Doc, oldEpoch Epoch, hdr *epochHeader) (map[string]bool, error) {
	keys := map[string]bool{}
	add := func(cs []*am.Change, keep func(*am.Change) bool) error {
		for _, c := range cs {
			if !keep(c) {
				continue
			}
			co, _, err := decodeChange(c.Save())
			if err != nil {
				return err
			}
			for i := range co.Ops {
				if co.Ops[i].Root && co.Ops[i].KeyIsStr {
					keys[co.Ops[i].Key] = true
				}
			}
		}
		return nil
	}
	notIncluded := func(c *am.Change) bool {
		a, err := hex.DecodeString(c.ActorID())
		return err != nil || c.ActorSeq() > hdr.includedSeq(a)
	}
	afterGenesis := func(c *am.Change) bool { return !isGenesisMessage(c.Message()) }
	all, err := old.Changes()
	if err != nil {
		return nil, err
	}
	switch oldHdr := hdrOf(old, oldEpoch); {
	case hdr.parent == oldEpoch.ID && hdr.num == oldEpoch.Num+1:
		return keys, add(all, notIncluded)
	case oldHdr != nil && oldHdr.parent == hdr.parent && oldHdr.num == hdr.num:
		if prev := d.readPrev(); prev != nil {
			if pe, _ := epochOfDoc(prev); pe.ID == hdr.parent {
				pcs, err := prev.Changes()
				if err != nil {
					return nil, err
				}
				if err := add(pcs, notIncluded); err != nil {
					return nil, err
				}
			}
		}
		return keys, add(all, afterGenesis)
	}
	return keys, add(all, unconfirmedOwn(all, ownActorPrefix(d.self)))
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

// commit writes the carried values into g as one change of this node,
// its records signed, and returns it.
func (cw *carryWrites) commit(d *Doc, g *am.Doc) (*am.Change, error) {
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
	if len(sig) > 0 {
		s, err := sign(d.key, d.self, sig)
		if err != nil {
			return nil, err
		}
		msg = withSignatures(msg, []writerSig{{d.self, s}})
	}
	h, err := g.Commit(msg)
	if err != nil {
		return nil, err
	}
	return g.Change(h)
}
