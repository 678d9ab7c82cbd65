package mesh

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshnode/meshnode/crdt"
)

// TestHungPeerDoesNotStallSync: a peer that stopped answering (a process
// killed while its connection lives on until the transport's idle
// timeout) holds a sync session for SyncIdle, not 2 min; once membership
// calls it stale the periodic pass no longer queues it; and an honest
// peer's changes keep arriving by anti-entropy meanwhile.
func TestHungPeerDoesNotStallSync(t *testing.T) {
	t.Parallel()
	f, _ := NewFleet()
	a, b := newMember(t, f, false), newMember(t, f, false)
	a.repl.DropGossip(true) // b's changes must come by anti-entropy
	hung, opened := newHungPeer(t, f)
	hungID := hung.h.ID()
	connect(t, hung.h, a.info(), func() bool { return a.auth.IsAuthenticated(hungID) })
	connect(t, b.h, a.info(), func() bool { return a.auth.IsAuthenticated(b.h.ID()) })

	// Sessions with the hung peer end after SyncIdle (1 s here) with an
	// error; without the idle bound the first would last 2 min.
	waitFor(t, 8*time.Second, "a's session with the hung peer to fail", func() bool {
		return a.repl.Stats().SyncFailures >= 2
	})

	// b's writes reach a by anti-entropy while the hung peer is queued.
	for i := range 3 {
		if _, err := b.doc.Update("b", func(tx *crdt.Tx) error {
			tx.SetItemName("item", string(rune('a'+i)))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "b's change on a", func() bool {
		lib, _ := a.doc.Library()
		return lib["item"].Name == "c"
	})

	// Stale: the periodic pass stops asking for sessions with it.
	a.mu.Lock()
	a.staleSet = map[peer.ID]bool{hungID: true}
	a.mu.Unlock()
	time.Sleep(testIdle + 200*time.Millisecond) // a session already queued or running ends
	before := opened.Load()
	time.Sleep(4 * 500 * time.Millisecond) // four periodic passes
	if n := opened.Load() - before; n != 0 {
		t.Fatalf("%d sync sessions opened with a stale peer over four periodic passes, want 0", n)
	}
}

// TestHungPeerHoldsOneWorker: however often the periodic pass asks for a
// peer that stopped answering, only one sync worker waits on it; an
// honest peer's changes keep arriving by anti-entropy on the others.
func TestHungPeerHoldsOneWorker(t *testing.T) {
	t.Parallel()
	f, _ := NewFleet()
	// Sessions with the hung peer outlast the test: only the other
	// workers can serve b.
	a := newMember(t, f, false, func(c *ReplicatorConfig) { c.SyncIdle = time.Minute })
	// b never starts a session itself: its changes reach a only by a's
	// own workers.
	b := newMember(t, f, false, func(c *ReplicatorConfig) { c.SyncInterval = time.Hour })
	a.repl.DropGossip(true)
	hung, opened := newHungPeer(t, f)
	connect(t, hung.h, a.info(), func() bool { return a.auth.IsAuthenticated(hung.h.ID()) })
	connect(t, b.h, a.info(), func() bool { return a.auth.IsAuthenticated(b.h.ID()) })
	// Ten periodic passes: without the limit every worker would be
	// waiting on the hung peer by now.
	time.Sleep(5 * time.Second)
	if n := opened.Load(); n != 1 {
		t.Fatalf("%d sessions open with the hung peer at once, want 1", n)
	}
	if _, err := b.doc.Update("b", func(tx *crdt.Tx) error { tx.SetItemName("later", "x"); return nil }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "b's change on a by anti-entropy", func() bool {
		lib, _ := a.doc.Library()
		return lib["later"].Name == "x"
	})
}

// newHungPeer is a fleet member whose sync handler takes every session
// and never answers (a process killed while its connections live on);
// opened counts the sessions it took.
func newHungPeer(t *testing.T, f *Fleet) (testPeer, *atomic.Int64) {
	hung := newTestPeerTimeout(t, f, 5*time.Second)
	opened := new(atomic.Int64)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	hung.h.SetStreamHandler(f.Protocol("sync/2"), func(s network.Stream) {
		opened.Add(1)
		<-release // reads nothing, answers nothing
		s.Reset()
	})
	return hung, opened
}
