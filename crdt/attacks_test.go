package crdt

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	am "github.com/automerge/automerge-go"
)

// A member copies B's older record, with B's signature, into a change
// whose dependencies predate B's newer records but whose predecessor list
// names B's newest value: automerge lets it overwrite that value. Readers
// still read B's newest record, on a node that had it first and on one
// that got the bad change first, and a new node can still join.
func TestPredNamingNewerRecordDoesNotRevive(t *testing.T) {
	t.Parallel()
	x := newBHistory(t)
	d := x.d
	defer d.Close()
	// Made on the whole document (its predecessor is r2), dated at r0.
	r := reDeps(t, x.replayAt(t, d.Snapshot()), x.h0)
	vd, err := d.ApplyChanges(r)
	if err != nil || !vd[0].Accepted {
		t.Fatalf("the change: %+v %v (its replay check is against r0, which r1 is above)", vd, err)
	}
	if v, _ := d.doc().Path(nodeKey(x.b)).Get(); !bytes.Equal(v.Bytes(), x.r1) {
		t.Fatal("automerge does not show the stale record: the test no longer tests the attack")
	}
	j := openT(t, t.TempDir())
	if err := j.MergeSnapshot(x.snap0); err != nil {
		t.Fatal(err)
	}
	vj, err := j.ApplyChanges(r)
	if err != nil {
		t.Fatal(err)
	}
	if vd[0].Accepted != vj[0].Accepted {
		t.Fatalf("verdicts differ: %+v on the node that had B's records, %+v on the one that did not", vd[0], vj[0])
	}
	syncPair(t, j, d, j.NewPeerState(), d.NewPeerState())
	if !slices.Equal(j.HeadStrings(), d.HeadStrings()) {
		t.Fatal("not converged")
	}
	x.wantGoodbye(t, d, "d")
	x.wantGoodbye(t, j, "j")
	k := openT(t, t.TempDir())
	if err := k.MergeSnapshot(d.Snapshot()); err != nil && !errors.Is(err, ErrSnapshotNeedsSync) {
		t.Fatalf("an honest node's snapshot refused: %v", err)
	}
	syncPair(t, k, d, k.NewPeerState(), d.NewPeerState())
	x.wantGoodbye(t, k, "a new node")
}

// A sync message whose second change reuses the first's sequence number
// passes our checks but not automerge's: automerge may apply the first
// before it refuses the batch. The node goes back to where the message
// started, in memory, in its record index and on disk, and the sender
// is refused.
func TestBatchAutomergeRefusesLeavesNoTrace(t *testing.T) {
	t.Parallel()
	d := openT(t, t.TempDir())
	e := openT(t, t.TempDir())
	if _, err := e.Update("e1", func(tx *Tx) error { tx.SetRoomState("t", "a", "1"); return nil }); err != nil {
		t.Fatal(err)
	}
	e1heads := e.Heads()
	if _, err := e.Update("e2", func(tx *Tx) error { tx.SetRoomState("t", "b", "2"); return nil }); err != nil {
		t.Fatal(err)
	}
	syncPair(t, d, e, d.NewPeerState(), e.NewPeerState())
	// E2': same actor, same seq as e2, other content.
	f, err := e.doc().Fork(e1heads...)
	if err != nil {
		t.Fatal(err)
	}
	f.SetActorID(e.doc().ActorID())
	f.RootMap().Set("rooms/t/state/c", "dup")
	fh, _ := f.Commit("dup")
	fc, _ := f.Change(fh)
	dup := fc.Save()
	// A: a fresh valid change by e (seq 3), record write.
	if _, err := e.Update("e3", func(tx *Tx) error { tx.SetNode(e.Self(), NodeRecord{Name: "e3"}); return nil }); err != nil {
		t.Fatal(err)
	}
	ac, _ := e.doc().Change(e.Heads()[0])
	a := ac.Save()
	msg := []byte{syncMsgV1, 0, 0, 0, 2}
	msg = appendUleb(msg, uint64(len(a)))
	msg = append(msg, a...)
	msg = appendUleb(msg, uint64(len(dup)))
	msg = append(msg, dup...)
	d.mu.Lock()
	end := d.st.end()
	d.mu.Unlock()
	heads := d.HeadStrings()
	_, err = d.receiveSync(d.NewPeerState(), msg)
	if _, ok := AsRefused(err); !ok {
		t.Fatalf("receiveSync: %v, want a refusal", err)
	}
	_, indexed, _ := d.Node(e.Self())
	if d.has(ac.Hash()) || indexed || !slices.Equal(d.HeadStrings(), heads) {
		t.Fatalf("after the refused batch: change in automerge %v, record indexed %v, heads moved %v", d.has(ac.Hash()), indexed, !slices.Equal(d.HeadStrings(), heads))
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.st.end() != end {
		t.Fatalf("log grew from %d to %d", end, d.st.end())
	}
}

// A snapshot never gives a change a verdict the change path would not: a
// replay that the change path refuses keeps a new node from adopting the
// snapshot (it syncs instead), so it never holds a change its peers refuse.
func TestSnapshotNeverAcceptsWhatChangePathRefuses(t *testing.T) {
	t.Parallel()
	x := newBHistory(t)
	d := x.d
	defer d.Close()
	// Made at r0 (its predecessor is r0's value), dated after r2.
	m := reDeps(t, x.replayAt(t, x.snap0), d.Heads())
	vs, err := d.ApplyChanges(m)
	if err != nil || vs[0].Accepted || vs[0].Rule != RuleReplay {
		t.Fatalf("change path: %+v %v, want refused as a replay", vs, err)
	}
	evil, _ := am.Load(d.Snapshot())
	if err := evil.LoadIncremental(m); err != nil {
		t.Fatal(err)
	}
	j := openT(t, t.TempDir())
	if err := j.MergeSnapshot(evil.Save()); !errors.Is(err, ErrSnapshotNeedsSync) {
		t.Fatalf("snapshot path: %v, want ErrSnapshotNeedsSync", err)
	}
	if !j.Empty() {
		t.Fatal("the joiner took part of the snapshot")
	}
}

// A change whose dependencies are missing passes the checks on its bytes
// before it may wait: text bombs with made-up dependencies are refused,
// not kept.
func TestWaitingChangesAreChecked(t *testing.T) {
	t.Parallel()
	d := openT(t, t.TempDir())
	a := newAttacker(t, d)
	var fake Hash
	fake[0] = 9
	total := 0
	for i := 0; i < 20; i++ {
		raw, _, _ := a.changeMsg(func(doc *am.Doc) error {
			return doc.Path("rooms/x/state/k").Set(am.NewText(string(bytes.Repeat([]byte{'a' + byte(i)}, 50000))))
		}, "evil")
		r := reDeps(t, raw, []Hash{fake})
		msg := []byte{syncMsgV1, 0, 0, 0, 1}
		msg = appendUleb(msg, uint64(len(r)))
		msg = append(msg, r...)
		_, err := d.receiveSync(d.NewPeerState(), msg)
		if ref, ok := AsRefused(err); !ok || ref.Rule != RuleObject {
			t.Fatalf("bomb %d waiting for a made-up dependency: %v", i, err)
		}
		total += len(r)
	}
	if n := d.WaitingRecords(); n != 0 {
		t.Fatalf("%d bombs of %d bytes kept waiting", n, total)
	}
}
