package mesh

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/zeebo/blake3"
)

var planNow = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

func fresh(id string) PlanNode {
	return PlanNode{ID: peer.ID(id), Addrs: []string{"/ip4/127.0.0.1/udp/1/quic-v1"}, Alive: true, LastSeenMs: planNow.Add(-time.Minute).UnixMilli()}
}

func baseInput(nodes ...PlanNode) PlanInput {
	return PlanInput{
		Self: "self", Nodes: nodes, Rendezvous: map[peer.ID]bool{}, Slots: map[peer.ID]PlanSlot{},
		DialFailed: map[peer.ID]time.Time{}, Now: planNow, Max: 3, Fresh: 30 * time.Minute, DialBackoff: time.Minute,
	}
}

func opens(p Plan) (out []string) {
	for _, a := range p.Actions {
		if a.Open {
			out = append(out, string(a.Peer))
		}
	}
	return out
}

func drops(p Plan) map[string]string {
	out := map[string]string{}
	for _, a := range p.Actions {
		if !a.Open {
			out[string(a.Peer)] = a.Reason
		}
	}
	return out
}

func TestReconcileEligibility(t *testing.T) {
	stale := fresh("stale")
	stale.LastSeenMs = planNow.Add(-31 * time.Minute).UnixMilli()
	dead := fresh("dead")
	dead.Alive = false
	noaddr := fresh("noaddr")
	noaddr.Addrs = nil
	silent := fresh("silent")
	silent.Silent = true
	in := baseInput(fresh("self"), fresh("rv"), stale, dead, noaddr, silent, fresh("failed"), fresh("ok"))
	in.Rendezvous["rv"] = true
	in.DialFailed["failed"] = planNow.Add(-10 * time.Second)
	p := Reconcile(in)
	want := map[string]string{
		"self": SkipSelf, "rv": SkipRendezvous, "stale": SkipStale, "dead": SkipDead,
		"noaddr": SkipNoAddr, "silent": SkipSilent, "failed": SkipDialFailed,
	}
	for id, why := range want {
		if got := p.Skipped[peer.ID(id)]; got != why {
			t.Errorf("%s: skipped for %q, want %q", id, got, why)
		}
	}
	if got := opens(p); len(got) != 1 || got[0] != "ok" {
		t.Fatalf("opens %v, want only ok", got)
	}
	// The dial backoff expires.
	in.Now = planNow.Add(2 * time.Minute)
	in.Nodes = []PlanNode{fresh("failed")}
	in.Nodes[0].LastSeenMs = in.Now.UnixMilli()
	if got := opens(Reconcile(in)); len(got) != 1 || got[0] != "failed" {
		t.Fatalf("after backoff opens %v", got)
	}
}

func TestReconcileSlots(t *testing.T) {
	dead := fresh("b")
	dead.Alive = false
	in := baseInput(fresh("a"), dead, fresh("c"), fresh("d"), fresh("e"))
	in.Slots = map[peer.ID]PlanSlot{
		"a":    {Opened: planNow.Add(-time.Hour), Connected: true},
		"b":    {Opened: planNow.Add(-time.Hour), Connected: true},
		"c":    {Opened: planNow.Add(-time.Hour), Connected: false},
		"gone": {Opened: planNow.Add(-time.Hour), Connected: true},
	}
	p := Reconcile(in)
	d := drops(p)
	if d["c"] != DropEnded || !strings.HasPrefix(d["b"], DropIneligible) || !strings.Contains(d["gone"], "not in the document") || len(d) != 3 {
		t.Fatalf("drops %v", d)
	}
	if _, ok := d["a"]; ok {
		t.Fatal("a healthy eligible slot was dropped")
	}
	// a is kept; 2 free slots go to d and e (c's slot is freed this pass
	// and may be reopened next pass).
	got := opens(p)
	if len(got) != 2 || strings.Join(got, ",") == "" {
		t.Fatalf("opens %v, want 2", got)
	}
	for _, id := range got {
		if id != "d" && id != "e" {
			t.Fatalf("opened %s", id)
		}
	}
	// Drops come before opens.
	if p.Actions[0].Open {
		t.Fatal("an open was planned before the drops")
	}
}

func TestReconcileCapZeroAndLoweredCap(t *testing.T) {
	in := baseInput(fresh("a"), fresh("b"), fresh("c"))
	in.Max = 0
	if p := Reconcile(in); len(opens(p)) != 0 {
		t.Fatal("cap 0 opened connections")
	}
	in.Max = 1
	in.Slots = map[peer.ID]PlanSlot{"a": {Connected: true}, "b": {Connected: true}, "c": {Connected: true}}
	p := Reconcile(in)
	d := drops(p)
	if len(d) != 2 || len(opens(p)) != 0 {
		t.Fatalf("lowered cap: drops %v opens %v", d, opens(p))
	}
	for _, why := range d {
		if why != DropOverCap {
			t.Fatalf("drop reason %q", why)
		}
	}
}

func randomIDs(r *rand.Rand, n int) []peer.ID {
	ids := make([]peer.ID, n)
	for i := range ids {
		b := make([]byte, 34)
		for j := range b {
			b[j] = byte(r.IntN(256))
		}
		ids[i] = peer.ID(b)
	}
	return ids
}

// A storm of 100 eligible peers with cap 3: exactly 3 opened, never more,
// across repeated passes where connections come and go, and the choice is
// stable while nothing changes.
func TestReconcileStormNeverExceedsCap(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	ids := randomIDs(r, 100)
	var nodes []PlanNode
	for _, id := range ids {
		n := fresh(string(id))
		nodes = append(nodes, n)
	}
	in := baseInput(nodes...)
	first := Reconcile(in)
	if got := opens(first); len(got) != 3 {
		t.Fatalf("opened %d, want 3", len(got))
	}
	if again := opens(Reconcile(in)); fmt.Sprint(again) != fmt.Sprint(opens(first)) {
		t.Fatalf("choice churned between identical passes: %v vs %v", opens(first), again)
	}
	for pass := range 200 {
		p := Reconcile(in)
		for _, a := range p.Actions {
			if a.Open {
				in.Slots[a.Peer] = PlanSlot{Opened: in.Now, Connected: r.IntN(4) != 0} // some dials fail
			} else {
				delete(in.Slots, a.Peer)
			}
		}
		if len(in.Slots) > in.Max {
			t.Fatalf("pass %d: %d slots, cap %d", pass, len(in.Slots), in.Max)
		}
		// Churn: connections end, nodes die and come back.
		for id := range in.Slots {
			if r.IntN(5) == 0 {
				in.Slots[id] = PlanSlot{Connected: false}
			}
		}
		for i := range in.Nodes {
			in.Nodes[i].Alive = r.IntN(10) != 0
		}
	}
}

// 30 nodes with cap 3 choose links that form one connected graph, for many
// random ID sets.
func TestReconcileGraphConnected(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for set := range 300 {
		ids := randomIDs(r, 30)
		var nodes []PlanNode
		for _, id := range ids {
			nodes = append(nodes, fresh(string(id)))
		}
		adj := map[peer.ID][]peer.ID{}
		for _, self := range ids {
			in := baseInput(nodes...)
			in.Self = self
			for _, a := range Reconcile(in).Actions {
				if a.Open {
					adj[self] = append(adj[self], a.Peer)
					adj[a.Peer] = append(adj[a.Peer], self)
				}
			}
			if len(Reconcile(in).Eligible) != 29 {
				t.Fatal("self counted as eligible")
			}
		}
		seen := map[peer.ID]bool{ids[0]: true}
		queue := []peer.ID{ids[0]}
		for len(queue) > 0 {
			p := queue[0]
			queue = queue[1:]
			for _, q := range adj[p] {
				if !seen[q] {
					seen[q] = true
					queue = append(queue, q)
				}
			}
		}
		if len(seen) != 30 {
			t.Fatalf("ID set %d: mesh links reach %d of 30 nodes", set, len(seen))
		}
	}
}

func BenchmarkReconcile10k(b *testing.B) {
	r := rand.New(rand.NewPCG(5, 6))
	var nodes []PlanNode
	for _, id := range randomIDs(r, 10_000) {
		nodes = append(nodes, fresh(string(id)))
	}
	in := baseInput(nodes...)
	in.Max = 4
	b.ResetTimer()
	for range b.N {
		Reconcile(in)
	}
}

// rankPeers must order peers exactly as the ranking is defined (and as
// nodes running older versions order them, so an upgrade leaves each
// node's choice where it was): by the first 8 bytes of
// BLAKE3(self, 0x00, peer), big-endian, highest first.
func TestRankPeersOrder(t *testing.T) {
	score := func(self, p peer.ID) uint64 {
		h := blake3.New()
		_, _ = h.Write([]byte(self))
		_, _ = h.Write([]byte{0})
		_, _ = h.Write([]byte(p))
		return binary.BigEndian.Uint64(h.Sum(nil))
	}
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{0, 1, 2, 17, 5000} {
		self := randomIDs(r, 1)[0]
		want := randomIDs(r, n)
		got := slices.Clone(want)
		slices.SortFunc(want, func(a, b peer.ID) int { return cmp.Compare(score(self, b), score(self, a)) })
		rankPeers(self, got)
		if !slices.Equal(got, want) {
			t.Fatalf("%d peers: rankPeers gives another order than the definition", n)
		}
	}
	ids := []peer.ID{"p0", "p1", "p2", "p3", "p4", "p5"}
	rankPeers("self", ids)
	if want := []peer.ID{"p3", "p5", "p1", "p4", "p2", "p0"}; !slices.Equal(ids, want) {
		t.Fatalf("rankPeers(self, p0..p5) = %v, want %v", ids, want)
	}
}
