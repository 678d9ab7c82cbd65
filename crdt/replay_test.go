package crdt

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"testing"

	am "github.com/automerge/automerge-go"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/rs/zerolog"
)

// reStart rewrites an uncompressed change chunk with another start op.
func reStart(t *testing.T, raw []byte, startOp uint64) []byte {
	body, _, _, err := changeChunk(raw, true)
	if err != nil {
		t.Fatal(err)
	}
	p := 0
	nd, n, _ := uleb(body)
	p += n + int(nd)*32
	al, n, _ := uleb(body[p:])
	p += n + int(al)
	_, n, _ = uleb(body[p:]) // seq
	p += n
	_, n, _ = uleb(body[p:]) // start op
	nb := append([]byte{}, body[:p]...)
	nb = appendUleb(nb, startOp)
	nb = append(nb, body[p+n:]...)
	hdr := appendUleb([]byte{chunkChange}, uint64(len(nb)))
	h := sha256.Sum256(append(append([]byte{}, hdr...), nb...))
	out := append([]byte(amMagic), h[:4]...)
	out = append(out, hdr...)
	return append(out, nb...)
}

// A member copies B's older record, with B's own signature, into a change
// concurrent with B's newer one (accepted: above the record in force in
// its causal past) and gives it a high start op so that automerge's
// last-writer-wins picks it. Readers still see B's newest record: the
// record with the highest counter among the values automerge keeps.
func TestConcurrentReplayNeverWins(t *testing.T) {
	t.Parallel()
	kD, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	kB, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	idB, _ := peer.IDFromPrivateKey(kB)
	B := idB.String()
	d, err := Open(Config{Dir: t.TempDir(), Logger: zerolog.Nop(), Key: kD})
	if err != nil {
		t.Fatal(err)
	}
	rec := NodeRecord{Name: "b", Alive: true, Version: 1, StartedMs: 1, LastSeenMs: 1}
	if _, err := d.Update("r0", func(tx *Tx) error { tx.As(kB).SetNode(B, rec); return nil }); err != nil {
		t.Fatal(err)
	}
	h0 := d.Heads()
	rec.LastSeenMs = 2
	x1, err := d.Update("r1", func(tx *Tx) error { tx.As(kB).SetNode(B, rec); return nil })
	if err != nil {
		t.Fatal(err)
	}
	snap1 := d.Snapshot()
	rec.Alive = false // Goodbye
	rec.LastSeenMs = 3
	if _, err := d.Update("r2", func(tx *Tx) error { tx.As(kB).SetNode(B, rec); return nil }); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ { // more history after, so op counters move on
		if _, err := d.Update("x", func(tx *Tx) error { tx.SetRoomState("t", "k", string(rune('a'+i%26))); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if cur, _, _ := d.Node(B); cur.Alive || cur.LastSeenMs != 3 {
		t.Fatalf("before the replay: %+v", cur)
	}

	// Attacker: B's r1 record and B's signature on it, in a change whose
	// deps are h0 (before r1), so the counter in its causal past is r0's.
	full, _ := am.Load(snap1)
	x1h, _ := am.NewChangeHash(x1.String())
	x1c, _ := full.Change(x1h)
	v, _ := full.Path("nodes/" + B).Get()
	stale := v.Bytes()
	var deps []am.ChangeHash
	for _, h := range h0 {
		a, _ := am.NewChangeHash(h.String())
		deps = append(deps, a)
	}
	fork, err := full.Fork(deps...)
	if err != nil {
		t.Fatal(err)
	}
	fork.RootMap().Set("nodes/"+B, stale)
	yh, _ := fork.Commit(x1c.Message())
	yc, _ := fork.Change(yh)
	raw := yc.Save()
	r := reStart(t, raw, 1<<20)
	vs, err := d.ApplyChanges(r)
	if err != nil || len(vs) != 1 || !vs[0].Accepted {
		t.Fatalf("the concurrent change: %+v %v", vs, err)
	}
	if v, _ := d.doc().Path("nodes/" + B).Get(); string(v.Bytes()) != string(stale) {
		t.Fatal("automerge does not pick the replayed value: the test no longer tests the attack")
	}
	check := func(d *Doc, when string) {
		t.Helper()
		if cur, _, _ := d.Node(B); cur.Alive || cur.LastSeenMs != 3 {
			t.Fatalf("%s: B's record reads %+v, want its Goodbye (alive false, last seen 3)", when, cur)
		}
		if ns, _ := d.Nodes(); ns[B].Alive {
			t.Fatalf("%s: Nodes shows B alive", when)
		}
	}
	check(d, "after the replay")
	// A new node cannot take the snapshot as it is (the replay's verdict
	// needs its dependencies) and syncs instead; it, and this node after a
	// restart, read the same record.
	joiner := openT(t, t.TempDir())
	if err := joiner.MergeSnapshot(d.Snapshot()); !errors.Is(err, ErrSnapshotNeedsSync) {
		t.Fatalf("snapshot holding a concurrent replay: %v", err)
	}
	syncPair(t, joiner, d, joiner.NewPeerState(), d.NewPeerState())
	check(joiner, "joiner")
	dir := d.cfg.Dir
	d.Close()
	again, err := Open(Config{Dir: dir, Key: kD})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	check(again, "after a restart")
}
