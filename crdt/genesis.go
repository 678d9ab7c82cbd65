package crdt

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	am "github.com/automerge/automerge-go"
)

// The genesis: the first change of an epoch, holding the state of the
// parent epoch at the cut and none of its history. Every node that holds
// the cut's heads builds the same change, byte for byte: the actor comes
// from the epoch ID, the time is zero, the keys are set in sorted order
// and the header is canonical. So nodes that switch on their own end up
// with one document, and sync as before.

// changeIndex maps operations of a document chunk to the change that made
// them: each actor's changes by seq, searched by max op.
type changeIndex struct {
	doc     *DocOps
	byActor [][]int
}

func newChangeIndex(doc *DocOps) *changeIndex {
	ci := &changeIndex{doc: doc, byActor: make([][]int, len(doc.Actors))}
	for i, m := range doc.Meta {
		ci.byActor[m.Actor] = append(ci.byActor[m.Actor], i)
	}
	for _, cs := range ci.byActor {
		slices.SortFunc(cs, func(x, y int) int { return cmp.Compare(doc.Meta[x].Seq, doc.Meta[y].Seq) })
	}
	return ci
}

// of returns the index in Meta of the change that made op, or -1.
func (ci *changeIndex) of(id OpID) int {
	cs := ci.byActor[id.Actor]
	j, _ := slices.BinarySearchFunc(cs, id.Counter, func(c int, ctr uint64) int { return cmp.Compare(ci.doc.Meta[c].MaxOp, ctr) })
	if j == len(cs) {
		return -1
	}
	return cs[j]
}

// genesisOf finds the genesis change of a document chunk: the first
// change of the actor its header names, whose message is a genesis
// message. It returns -1 for a document of epoch 0 (no genesis).
func genesisOf(doc *DocOps) (int, *epochHeader, error) {
	gen, hdr := -1, (*epochHeader)(nil)
	for i, m := range doc.Meta {
		h, ok, err := parseGenesisMessage(m.Message)
		if !ok {
			continue
		}
		if err != nil {
			return -1, nil, err
		}
		if actor := doc.Actors[m.Actor]; m.Seq != 1 || epochActor(h.id()) != fmt.Sprintf("%x", actor) {
			return -1, nil, fmt.Errorf("%w: a genesis of epoch %d by actor %x seq %d, not the epoch's first change", errEpoch, h.num, actor, m.Seq)
		}
		if gen >= 0 {
			return -1, nil, fmt.Errorf("%w: two genesis changes in one document", errEpoch)
		}
		gen, hdr = i, h
	}
	return gen, hdr, nil
}

// opsOfChange returns the root sets that change ci of doc made, by key.
func opsOfChange(doc *DocOps, cx *changeIndex, ci int) map[string][]byte {
	out := map[string][]byte{}
	for i := range doc.Ops {
		op := &doc.Ops[i]
		if op.Action == ActSet && op.Root && op.KeyIsStr && cx.of(op.ID) == ci {
			out[op.Key] = op.Value
		}
	}
	return out
}

// genesisState is the state of a document at a cut, ready to become the
// genesis of the next epoch.
type genesisState struct {
	records map[string][]byte // single-writer keys: the record in force
	shared  map[string]string // shared keys: the value automerge shows
	header  *epochHeader
}

// forkAt returns a copy of the document as of heads. It takes mu: any
// call on the live automerge document commits the writes an Update has
// made on it so far, so none may run beside one.
func (d *Doc) forkAt(heads []Hash) (*am.Doc, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f, err := d.doc().Fork(heads...)
	if err != nil {
		return nil, fmt.Errorf("crdt: fork at the cut: %w", err)
	}
	return f, nil
}

// stateAt reads the state of f, a copy of the document as of cut
// (forkAt), and the signatures that cover its records, for the genesis
// of epoch num.
func stateAt(f *am.Doc, parent Epoch, num uint64, cut []Hash) (*genesisState, error) {
	dops, err := decodeDocumentOnly(f.Save(), rootScalar)
	if err != nil {
		return nil, fmt.Errorf("crdt: read the document at the cut: %w", err)
	}
	x := indexOps(dops)
	x.refresh(f)
	cut = slices.Clone(cut)
	slices.SortFunc(cut, compareHash)
	st := &genesisState{records: map[string][]byte{}, shared: map[string]string{},
		header: &epochHeader{num: num, parent: parent.ID, cut: cut}}
	for k, v := range x.shared {
		if !strings.HasPrefix(k, pCut) {
			st.shared[k] = v
		}
	}
	// The version vector of the cut.
	top := map[string]uint64{}
	for _, m := range dops.Meta {
		a := string(dops.Actors[m.Actor])
		top[a] = max(top[a], m.Seq)
	}
	for a, s := range top {
		st.header.included = append(st.header.included, actorSeq{a, s})
	}
	slices.SortFunc(st.header.included, func(a, b actorSeq) int { return cmp.Compare(a.actor, b.actor) })

	cx := newChangeIndex(dops)
	pg, ph, err := genesisOf(dops)
	if err != nil {
		return nil, err
	}
	// The records in force, and the change each came from.
	origin := map[string]int{}
	for i := range dops.Ops {
		op := &dops.Ops[i]
		if _, ok := recordOp(op); !ok {
			continue
		}
		if cur, ok := x.keys[op.Key]; ok && cur.id == (opKey{string(dops.Actors[op.ID.Actor]), op.ID.Counter}) {
			st.records[op.Key] = op.Value
			origin[op.Key] = cx.of(op.ID)
		}
	}
	// One group per (change, writer) whose signature covers a record in
	// force; the parent genesis's groups are carried as they are.
	type gkey struct {
		ci     int
		writer string
	}
	need := map[gkey]bool{}
	fromParent := map[int]bool{}
	var parentVals map[string][]byte
	if pg >= 0 {
		parentVals = opsOfChange(dops, cx, pg)
	}
	// A writer whose records hash to its attestation's root needs only
	// the attestation's signature (attest.go).
	att := attested(st.records)
	// The parent genesis's group that names each key it holds.
	parentGroup := map[string]int{}
	if ph != nil {
		for gi, g := range ph.groups {
			for _, e := range g.entries {
				if !e.inline {
					parentGroup[e.key] = gi
				}
			}
		}
	}
	for k, ci := range origin {
		sk, _, _ := parseKey(k)
		if att[sk.writer] && k != attestKey(sk.writer) {
			continue
		}
		if ci == pg && pg >= 0 {
			gi, ok := parentGroup[k]
			if !ok {
				return nil, fmt.Errorf("%w: the parent genesis holds %s with no signature for it", errEpoch, k)
			}
			fromParent[gi] = true
			continue
		}
		need[gkey{ci, sk.writer}] = true
	}
	writes := map[gkey][]recWriteAt{}
	for i := range dops.Ops {
		op := &dops.Ops[i]
		if _, ok := recordOp(op); !ok {
			continue
		}
		sk, _, _ := parseKey(op.Key)
		gk := gkey{cx.of(op.ID), sk.writer}
		if need[gk] {
			writes[gk] = append(writes[gk], recWriteAt{op.ID.Counter, op.Key, op.Value})
		}
	}
	entry := func(key string, value []byte) groupEntry {
		if cur, ok := st.records[key]; ok && bytes.Equal(cur, value) {
			return groupEntry{key: key}
		}
		return groupEntry{key: key, inline: true, value: value}
	}
	for gk, ws := range writes {
		slices.SortFunc(ws, func(a, b recWriteAt) int { return cmp.Compare(a.counter, b.counter) })
		sigs, err := parseSignatures(dops.Meta[gk.ci].Message)
		if err != nil || sigs[gk.writer] == nil {
			return nil, fmt.Errorf("%w: a record of %s in force at the cut has no signature", errEpoch, gk.writer)
		}
		g := sigGroup{writer: gk.writer, sig: sigs[gk.writer]}
		for _, w := range ws {
			g.entries = append(g.entries, entry(w.key, w.value))
		}
		st.header.groups = append(st.header.groups, g)
	}
	for gi := range fromParent {
		pgrp := ph.groups[gi]
		g := sigGroup{writer: pgrp.writer, sig: pgrp.sig}
		for _, e := range pgrp.entries {
			v := e.value
			if !e.inline {
				v = parentVals[e.key]
			}
			g.entries = append(g.entries, entry(e.key, v))
		}
		st.header.groups = append(st.header.groups, g)
	}
	slices.SortFunc(st.header.groups, func(a, b sigGroup) int {
		return cmp.Or(cmp.Compare(a.writer, b.writer), bytes.Compare(a.sig, b.sig))
	})
	return st, nil
}

type recWriteAt struct {
	counter uint64
	key     string
	value   []byte
}

// build makes the genesis document: one change, by the epoch's actor.
func (st *genesisState) build() (*am.Doc, error) {
	g := am.New()
	if err := g.SetActorID(epochActor(st.header.id())); err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(st.records)+len(st.shared))
	for k := range st.records {
		keys = append(keys, k)
	}
	for k := range st.shared {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		var err error
		if v, ok := st.records[k]; ok {
			err = g.Path(k).Set(v)
		} else {
			err = g.Path(k).Set(st.shared[k])
		}
		if err != nil {
			return nil, fmt.Errorf("crdt: build the genesis: %s: %w", k, err)
		}
	}
	if _, err := g.Commit(genesisMessage(st.header), am.CommitOptions{Time: &time.Time{}, AllowEmpty: true}); err != nil {
		return nil, fmt.Errorf("crdt: build the genesis: %w", err)
	}
	return g, nil
}

// verifyGenesis checks a genesis's records against the signatures its
// header carries: every group verifies over its writes (the genesis's
// value for an entry named by key alone), its writer is the writer of
// every key it names, and every record the genesis holds is named by a
// group. It returns one check per group, to run on every core, and a
// refusal found before them.
func verifyGenesis(ks *keys, h *epochHeader, records map[string][]byte) ([]func() *RefusedError, *RefusedError) {
	covered := make(map[string]bool, len(records))
	var jobs []func() *RefusedError
	for _, g := range h.groups {
		if len(g.entries) == 0 {
			return nil, refuse(RuleEpoch, "", "a carried signature of %s over no record", g.writer)
		}
		ops := make([]sigOp, 0, len(g.entries))
		for _, e := range g.entries {
			sk, _, err := parseKey(e.key)
			if err != nil || sk.writer != g.writer {
				return nil, refuse(RuleEpoch, clip(e.key), "a signature of %s carried for a key that is not %s's", g.writer, g.writer)
			}
			v := e.value
			if !e.inline {
				var ok bool
				if v, ok = records[e.key]; !ok {
					return nil, refuse(RuleEpoch, e.key, "a carried signature names a record the genesis does not hold")
				}
				covered[e.key] = true
			}
			ops = append(ops, sigOp{e.key, v})
		}
		jobs = append(jobs, func() *RefusedError {
			if err := ks.verify(g.writer, ops, g.sig); err != nil {
				return refuse(RuleEpoch, ops[0].key, "a carried signature does not verify: %v", err)
			}
			return nil
		})
	}
	att := attested(records)
	for k := range records {
		if covered[k] {
			continue
		}
		// Covered by its writer's attestation, whose own signature is
		// carried (and checked above).
		if sk, _, _ := parseKey(k); !att[sk.writer] || !covered[attestKey(sk.writer)] {
			return nil, refuse(RuleEpoch, k, "the genesis holds a record neither a carried signature nor its writer's attestation covers")
		}
	}
	return jobs, nil
}
