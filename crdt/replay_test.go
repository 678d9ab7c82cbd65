package crdt

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"slices"
	"testing"

	am "github.com/automerge/automerge-go"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/rs/zerolog"
)

// rewriteBody re-encodes an uncompressed change chunk after edit changed
// its body: how a member crafts fields automerge-go will not set.
func rewriteBody(t *testing.T, raw []byte, edit func(body []byte) []byte) []byte {
	t.Helper()
	body, _, _, err := changeChunk(raw, true)
	if err != nil {
		t.Fatal(err)
	}
	nb := edit(body)
	hdr := appendUleb([]byte{chunkChange}, uint64(len(nb)))
	h := sha256.Sum256(append(slices.Clone(hdr), nb...))
	out := append([]byte(amMagic), h[:4]...)
	out = append(out, hdr...)
	return append(out, nb...)
}

// reStart rewrites a change chunk with another start op.
func reStart(t *testing.T, raw []byte, startOp uint64) []byte {
	return rewriteBody(t, raw, func(body []byte) []byte {
		p := 0
		nd, n, _ := uleb(body)
		p += n + int(nd)*32
		al, n, _ := uleb(body[p:])
		p += n + int(al)
		_, n, _ = uleb(body[p:]) // seq
		p += n
		_, n, _ = uleb(body[p:]) // start op
		nb := appendUleb(slices.Clone(body[:p]), startOp)
		return append(nb, body[p+n:]...)
	})
}

// reDeps rewrites a change chunk with other dependencies.
func reDeps(t *testing.T, raw []byte, deps []Hash) []byte {
	return rewriteBody(t, raw, func(body []byte) []byte {
		nd, n, _ := uleb(body)
		ds := slices.Clone(deps)
		slices.SortFunc(ds, func(a, b Hash) int { return bytes.Compare(a[:], b[:]) })
		nb := appendUleb(nil, uint64(len(ds)))
		for _, d := range ds {
			nb = append(nb, d[:]...)
		}
		return append(nb, body[n+int(nd)*32:]...)
	})
}

// bHistory is a document in which node B wrote three records: r0, r1
// and r2, its Goodbye (alive false, last seen 3).
type bHistory struct {
	d            *Doc
	key          crypto.PrivKey // the document's own
	b            string
	h0           []Hash // heads after r0
	snap0, snap1 []byte // snapshots after r0 and r1
	r1           []byte // r1's bytes
	r1Attest     []byte // B's attestation written with r1 (attest.go)
	r1Msg        string // and the message of their change (B's signature)
}

func newBHistory(t *testing.T) *bHistory {
	t.Helper()
	_, kD := testIdentity(t)
	B, kB := testIdentity(t)
	d, err := Open(Config{Dir: t.TempDir(), Logger: zerolog.Nop(), Key: kD})
	if err != nil {
		t.Fatal(err)
	}
	x := &bHistory{d: d, key: kD, b: B}
	write := func(rec NodeRecord) Hash {
		t.Helper()
		h, err := d.Update("rec", func(tx *Tx) error { tx.As(kB).SetNode(B, rec); return nil })
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	write(NodeRecord{Name: "b", Alive: true, Version: 1, StartedMs: 1, LastSeenMs: 1})
	x.h0, x.snap0 = d.Heads(), d.Snapshot()
	h1 := write(NodeRecord{Name: "b", Alive: true, Version: 1, StartedMs: 1, LastSeenMs: 2})
	x.snap1, x.r1, x.r1Msg = d.Snapshot(), rawValue(t, d, nodeKey(B)), changeMessage(t, d, h1)
	x.r1Attest = rawValue(t, d, attestKey(B))
	write(NodeRecord{Name: "b", Alive: false, Version: 1, StartedMs: 1, LastSeenMs: 3})
	return x
}

// replayAt returns a change that writes r1 again, with B's signature,
// on the document as of snap (its dependencies and predecessors).
func (x *bHistory) replayAt(t *testing.T, snap []byte) []byte {
	t.Helper()
	f, err := am.Load(snap)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.RootMap().Set(nodeKey(x.b), x.r1); err != nil {
		t.Fatal(err)
	}
	// B's signature covers its attestation written in the same change.
	if err := f.RootMap().Set(attestKey(x.b), x.r1Attest); err != nil {
		t.Fatal(err)
	}
	h, err := f.Commit(x.r1Msg)
	if err != nil {
		t.Fatal(err)
	}
	c, err := f.Change(h)
	if err != nil {
		t.Fatal(err)
	}
	return c.Save()
}

// wantGoodbye fails unless n reads B's last record.
func (x *bHistory) wantGoodbye(t *testing.T, n *Doc, who string) {
	t.Helper()
	if got, _, _ := n.Node(x.b); got.Alive || got.LastSeenMs != 3 {
		t.Fatalf("%s reads B as %+v, want its Goodbye (alive false, last seen 3)", who, got)
	}
	if ns, _ := n.Nodes(); ns[x.b].Alive {
		t.Fatalf("%s: Nodes shows B alive", who)
	}
}

// A member copies B's older record, with B's own signature, into a change
// concurrent with B's newer one (accepted: above the record in force in
// its causal past) and gives it a high start op so that automerge's
// last-writer-wins picks it. Readers still see B's newest record: the
// record with the highest counter among the values automerge keeps.
func TestConcurrentReplayNeverWins(t *testing.T) {
	t.Parallel()
	x := newBHistory(t)
	d := x.d
	for i := 0; i < 50; i++ { // more history after, so op counters move on
		if _, err := d.Update("x", func(tx *Tx) error { tx.SetRoomState("t", "k", string(rune('a'+i%26))); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	x.wantGoodbye(t, d, "before the replay")
	// Concurrent with r1 and r2 (made at r0), with a start op high
	// enough to win automerge's last-writer-wins.
	r := reStart(t, x.replayAt(t, x.snap0), 1<<20)
	vs, err := d.ApplyChanges(r)
	if err != nil || len(vs) != 1 || !vs[0].Accepted {
		t.Fatalf("the concurrent change: %+v %v", vs, err)
	}
	if v, _ := d.doc().Path(nodeKey(x.b)).Get(); !bytes.Equal(v.Bytes(), x.r1) {
		t.Fatal("automerge does not pick the replayed value: the test no longer tests the attack")
	}
	x.wantGoodbye(t, d, "after the replay")
	// A new node cannot take the snapshot as it is (the replay's verdict
	// needs its dependencies) and syncs instead; it, and this node after a
	// restart, read the same record.
	joiner := openT(t, t.TempDir())
	if err := joiner.MergeSnapshot(d.Snapshot()); !errors.Is(err, ErrSnapshotNeedsSync) {
		t.Fatalf("snapshot holding a concurrent replay: %v", err)
	}
	syncPair(t, joiner, d, joiner.NewPeerState(), d.NewPeerState())
	x.wantGoodbye(t, joiner, "joiner")
	dir := d.cfg.Dir
	d.Close()
	again, err := Open(Config{Dir: dir, Key: x.key})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	x.wantGoodbye(t, again, "after a restart")
}
