package mesh

import (
	"crypto/rand"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/meshnode/meshnode/internal/testutil"
)

// TestGateBackoffBounded: every failing stranger's peer ID gets a backoff
// entry; past maxBackoff the map forgets single failures ending soonest,
// and a repeat offender keeps backing off.
func TestGateBackoffBounded(t *testing.T) {
	g := NewGate()
	g.maxBackoff = 100
	now := time.Unix(1_000_000, 0)
	g.now = func() time.Time { return now }
	repeat := testutil.RandomPeer(t)
	g.Fail(repeat)
	var d time.Duration
	for i := range 1000 {
		g.Fail(testutil.RandomPeer(t))
		if i%100 == 0 {
			d = g.Fail(repeat)
		}
		now = now.Add(time.Millisecond)
		if n := len(g.backoff); n > g.maxBackoff {
			t.Fatalf("after %d failures the gate remembers %d peers; want at most %d", i+1, n, g.maxBackoff)
		}
	}
	if g.Allowed(repeat) || d != backoffMax {
		t.Fatalf("a peer that failed 11 times is allowed (%v), with a backoff of %v; want %v", g.Allowed(repeat), d, backoffMax)
	}
}

// TestStrangersBudget drives the budget for unauthenticated inbound peers.
func TestStrangersBudget(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	s := newStrangers(3, 20*time.Second)
	a, b, c, d, e := testutil.RandomPeer(t), testutil.RandomPeer(t), testutil.RandomPeer(t), testutil.RandomPeer(t), testutil.RandomPeer(t)
	for _, p := range []peer.ID{a, b, c} {
		if ok, ev := s.admit(p, now); !ok || ev != "" {
			t.Fatalf("admit within the budget: %v, evict %q", ok, ev)
		}
		now = now.Add(time.Second)
	}
	if ok, _ := s.admit(a, now); !ok || s.len() != 3 {
		t.Fatal("a second connection of an admitted stranger is refused or counted twice")
	}
	// Full, and nobody connected yet: refused.
	if ok, _ := s.admit(d, now); ok {
		t.Fatal("admitted past the budget")
	}
	// Connected, b and c idle, a authenticating: the oldest idle, b, goes.
	for _, p := range []peer.ID{a, b, c} {
		s.connected(p)
	}
	s.started(a)
	if ok, ev := s.admit(d, now); !ok || ev != b {
		t.Fatalf("admit with the budget full: %v, evict %s; want b evicted", ok, ev)
	}
	s.connected(d)
	s.started(c)
	s.started(d)
	if ok, _ := s.admit(e, now); ok {
		t.Fatal("admitted with every stranger authenticating")
	}
	// One leaves (authenticated or disconnected): room again.
	s.remove(a)
	if ok, ev := s.admit(e, now); !ok || ev != "" {
		t.Fatalf("admit after a removal: %v, evict %q", ok, ev)
	}
	// An admitted peer whose connection never came up is forgotten after
	// the ttl when room is needed.
	f := testutil.RandomPeer(t)
	if ok, _ := s.admit(f, now.Add(21*time.Second)); !ok || s.len() != 3 {
		t.Fatalf("stale admission not forgotten: %d counted", s.len())
	}
}

// TestHostConnLimitsAboveWatermark: libp2p's resource manager, scaled to
// a small machine, would refuse inbound connections below the connection
// manager's high watermark; the host's never does.
func TestHostConnLimitsAboveWatermark(t *testing.T) {
	key, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	h, err := NewHost(HostConfig{Key: key, Gate: NewGate(), ConnLow: 100, ConnHigh: 400})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	err = h.Network().ResourceManager().ViewSystem(func(s network.ResourceScope) error {
		l := s.(rcmgr.ResourceScopeLimiter).Limit()
		if in, all := l.GetConnLimit(network.DirInbound), l.GetConnTotalLimit(); in < 400+defaultStrangers || all < in {
			t.Fatalf("system connection limits: %d inbound, %d in all; want at least %d inbound", in, all, 400+defaultStrangers)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
