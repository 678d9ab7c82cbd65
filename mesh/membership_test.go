package mesh

import (
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/meshnode/meshnode/internal/testutil"
	"github.com/rs/zerolog"
)

// TestMembershipForgets: peers not heard for ForgetAfter are dropped, and
// the map never holds more than MaxMembers.
func TestMembershipForgets(t *testing.T) {
	f, _ := NewFleet()
	now := time.Unix(1_000_000, 0)
	auth := NewAuth(AuthConfig{Fleet: f, Logger: zerolog.Nop()})
	m := NewMembership(MembershipConfig{Fleet: f, Auth: auth, Logger: zerolog.Nop(), Interval: time.Second,
		ForgetAfter: time.Minute, MaxMembers: 40, Now: func() time.Time { return now }})
	var gone []peer.ID
	for range 10 {
		p := testutil.RandomPeer(t)
		m.heard(p, Heartbeat{Peer: p.String(), Name: "gone"})
		gone = append(gone, p)
	}
	now = now.Add(30 * time.Second)
	stay := testutil.RandomPeer(t)
	m.heard(stay, Heartbeat{Peer: stay.String(), Name: "stays"})
	if m.Stale(stay) || m.Stale(testutil.RandomPeer(t)) {
		t.Fatal("a peer just heard, or never heard, is stale")
	}
	now = now.Add(31 * time.Second)
	if !m.Stale(stay) {
		t.Fatal("a peer not heard for StaleAfter is not stale")
	}
	m.sweep()
	got := m.Members()
	if len(got) != 1 || got[stay].State != StateStale {
		t.Fatalf("after the sweep: %d members (%v); want only the one heard within ForgetAfter, stale", len(got), got)
	}
	for _, p := range gone {
		if _, ok := got[p]; ok {
			t.Fatalf("%s not forgotten", p)
		}
	}
	// Past MaxMembers, those heard longest ago go first.
	for i := range 200 {
		p := testutil.RandomPeer(t)
		m.heard(p, Heartbeat{Peer: p.String()})
		now = now.Add(time.Millisecond)
		if n := len(m.Members()); n > 40 {
			t.Fatalf("after %d peers: %d members; want at most 40", i+1, n)
		}
	}
	if _, ok := m.Members()[stay]; ok {
		t.Fatal("the peer heard longest ago was kept over newer ones")
	}
	// Heard peers are known members to Auth: outside the strangers' budget.
	if !auth.admit(stay) || auth.Stats().Strangers != 0 {
		t.Fatal("a peer heard in heartbeats counts as a stranger")
	}
}
