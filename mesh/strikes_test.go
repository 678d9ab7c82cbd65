package mesh

import (
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/meshnode/meshnode/internal/testutil"
)

// TestStrikesWindow: the limit-th strike inside the window strikes a peer
// out and starts it again from none; strikes older than the window do not
// count; peers are counted apart.
func TestStrikesWindow(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	s := newStrikes(3, 10*time.Minute, 30*time.Second, 100)
	a, b := testutil.RandomPeer(t), testutil.RandomPeer(t)
	step := func(p peer.ID, after time.Duration, wantCount int, wantOut bool) {
		t.Helper()
		now = now.Add(after)
		if n, out := s.strike(p, now); n != wantCount || out != wantOut {
			t.Fatalf("strike: count %d, out %v; want %d, %v", n, out, wantCount, wantOut)
		}
	}
	step(a, 0, 1, false)
	step(b, time.Minute, 1, false)
	step(a, 4*time.Minute, 2, false)
	step(a, 4*time.Minute, 3, true) // 8 min after the first
	if c := s.count(a, now); c != 0 {
		t.Fatalf("after striking out: %d strikes, want 0", c)
	}
	step(a, time.Second, 1, false)
	// b's first strike was 8 min ago: it counts for 2 more minutes.
	step(b, 0, 2, false)
	if c := s.count(b, now.Add(time.Minute)); c != 2 {
		t.Fatalf("b: %d strikes inside the window, want 2", c)
	}
	if c := s.count(b, now.Add(2*time.Minute)); c != 1 {
		t.Fatalf("b: %d strikes inside the window, want 1", c)
	}
	// Spread wider than the window, strikes never add up to the limit.
	c := testutil.RandomPeer(t)
	step(c, 0, 1, false)
	for range 20 {
		step(c, 5*time.Minute+time.Second, 2, false)
	}
}

// TestStrikesPause: sync with a peer is paused for the pause after each
// strike, including the one that struck it out, and not before any.
func TestStrikesPause(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	s := newStrikes(2, time.Minute, 30*time.Second, 100)
	p := testutil.RandomPeer(t)
	if s.paused(p, now) {
		t.Fatal("a peer without strikes is paused")
	}
	s.strike(p, now)
	if !s.paused(p, now.Add(29*time.Second)) || s.paused(p, now.Add(30*time.Second)) {
		t.Fatal("the pause is not 30 s from the strike")
	}
	now = now.Add(40 * time.Second)
	if _, out := s.strike(p, now); !out {
		t.Fatal("the second strike inside the window did not strike out")
	}
	if !s.paused(p, now.Add(time.Second)) {
		t.Fatal("a peer just struck out is not paused")
	}
}

// TestStrikesBounded: any member can sign gossip as fresh identities, so
// the record of peers is bounded; peers with strikes that still count
// are kept over those without, the most struck longest.
func TestStrikesBounded(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	s := newStrikes(1000, 10*time.Minute, 30*time.Second, 50)
	repeat := testutil.RandomPeer(t)
	for i := range 1000 {
		if i%10 == 0 {
			s.strike(repeat, now)
		}
		s.strike(testutil.RandomPeer(t), now)
		now = now.Add(time.Millisecond)
		if len(s.peers) > s.max {
			t.Fatalf("after %d peers, %d remembered; want at most %d", i+1, len(s.peers), s.max)
		}
	}
	if c := s.count(repeat, now); c != 100 {
		t.Fatalf("the repeat offender has %d strikes, want all 100", c)
	}
	// Once the window and pause are over, the old records are what gets
	// dropped first: newcomers fill the space they leave.
	now = now.Add(11 * time.Minute)
	var fresh []peer.ID
	for range s.max {
		p := testutil.RandomPeer(t)
		fresh = append(fresh, p)
		s.strike(p, now)
	}
	for _, p := range fresh {
		if s.count(p, now) != 1 {
			t.Fatal("a newcomer was forgotten while expired records were kept")
		}
	}
	if _, ok := s.peers[repeat]; ok {
		t.Fatal("an expired record was kept over newcomers")
	}
}

// TestGateBan: a ban refuses a member for 1 min, doubling per ban up to
// 1 h; authenticating again does not reset it; a peer quiet for an hour
// past its ban starts again from 1 min; Banned tells bans from other
// refusals.
func TestGateBan(t *testing.T) {
	g := NewGate()
	now := time.Unix(1_000_000, 0)
	g.now = func() time.Time { return now }
	p := testutil.RandomPeer(t)
	want := []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute}
	for i, w := range want {
		if d := g.Ban(p); d != w {
			t.Fatalf("ban %d: %v, want %v", i+1, d, w)
		}
		if g.Allowed(p) || !g.Banned(p) {
			t.Fatalf("ban %d: allowed %v, banned %v", i+1, g.Allowed(p), g.Banned(p))
		}
		g.Succeed(p)
		now = now.Add(w)
		if !g.Allowed(p) || g.Banned(p) {
			t.Fatalf("ban %d over: allowed %v, banned %v", i+1, g.Allowed(p), g.Banned(p))
		}
	}
	for range 10 {
		g.Ban(p)
	}
	if d := g.Ban(p); d != banMax {
		t.Fatalf("a repeat offender's ban is %v, want %v", d, banMax)
	}
	now = now.Add(banMax + banMax)
	if d := g.Ban(p); d != banBase {
		t.Fatalf("a ban an hour after the last one ended: %v, want %v", d, banBase)
	}
	q := testutil.RandomPeer(t)
	g.Fail(q)
	if g.Allowed(q) || g.Banned(q) {
		t.Fatal("an authentication failure reads as a ban")
	}
}

// TestGateBansBounded: bans are bounded like backoff entries, keeping
// repeat offenders.
func TestGateBansBounded(t *testing.T) {
	g := NewGate()
	g.maxBackoff = 100
	now := time.Unix(1_000_000, 0)
	g.now = func() time.Time { return now }
	repeat := testutil.RandomPeer(t)
	g.Ban(repeat)
	for i := range 1000 {
		g.Ban(testutil.RandomPeer(t))
		if i%100 == 0 {
			g.Ban(repeat)
		}
		now = now.Add(time.Millisecond)
		if len(g.bans) > g.maxBackoff {
			t.Fatalf("after %d bans the gate remembers %d; want at most %d", i+1, len(g.bans), g.maxBackoff)
		}
	}
	if !g.Banned(repeat) {
		t.Fatal("the repeat offender was forgotten")
	}
}
