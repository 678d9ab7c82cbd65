package node

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshnode/meshnode/crdt"
)

// The failure cases of bounded history, with real nodes: real libp2p
// hosts on 127.0.0.1 and real files. Every node runs the cut rule with
// short times, so the fleet cuts on its own under load too. Each case
// ends with every node on one epoch, one state, and every acknowledged
// write present. (kill -9 in the middle of a switch, with real
// processes, is crdt's TestKill9MidSwitchKeepsAcknowledgedWrites.)

// fastCuts makes the cut rule run often and cut small documents.
func fastCuts(_ int, c *Config) {
	c.CutBytes = 16 << 10
	c.CutMinAge = time.Second
	c.CutGrace = 500 * time.Millisecond
	c.cutCheck = 100 * time.Millisecond
	c.SyncInterval = 500 * time.Millisecond
}

// acks records acknowledged writes: room state keys and their values.
type acks struct {
	mu sync.Mutex
	kv map[string]string
}

func (a *acks) put(k, v string) {
	a.mu.Lock()
	if a.kv == nil {
		a.kv = map[string]string{}
	}
	a.kv[k] = v
	a.mu.Unlock()
}

// write sets room state key k on n and records it once acknowledged.
func (a *acks) write(n *Node, k, v string) error {
	if _, err := n.Doc.Update("test", func(tx *crdt.Tx) error { tx.SetRoomState("ep", k, v); return nil }); err != nil {
		return err
	}
	a.put(k, v)
	return nil
}

// writeN writes n keys prefix-000, prefix-001, ... with value v, in turn
// on each of nodes, and records them as acknowledged.
func (a *acks) writeN(t *testing.T, n int, prefix, v string, nodes ...*Node) {
	t.Helper()
	for k := range n {
		if err := a.write(nodes[k%len(nodes)], fmt.Sprintf("%s-%03d", prefix, k), v); err != nil {
			t.Fatal(err)
		}
	}
}

// missing returns the acknowledged writes n does not show.
func (a *acks) missing(n *Node) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	rm, _, _ := n.Doc.Room("ep")
	var out []string
	for k, v := range a.kv {
		if rm.State[k] != v {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// oneEpoch reports whether every given node (all if none) is on the same
// epoch after 0, with the same heads.
func (c *cluster) oneEpoch(idx ...int) bool {
	if len(idx) == 0 {
		for i := range c.nodes {
			idx = append(idx, i)
		}
	}
	e := c.nodes[idx[0]].Doc.Epoch()
	for _, i := range idx[1:] {
		if c.nodes[i].Doc.Epoch() != e {
			return false
		}
	}
	return e.Num > 0 && c.converged(idx...)
}

// checkAcked fails the test for any node missing an acknowledged write.
func checkAcked(t *testing.T, c *cluster, a *acks, idx ...int) {
	t.Helper()
	if len(idx) == 0 {
		for i := range c.nodes {
			idx = append(idx, i)
		}
	}
	for _, i := range idx {
		if m := a.missing(c.nodes[i]); len(m) > 0 {
			t.Fatalf("node %d on %v lacks %d acknowledged writes (first %s)", i, c.nodes[i].Doc.Epoch(), len(m), m[0])
		}
	}
}

// TestEpochConcurrentProposalsUnderFullLoad: every node writes as fast as
// it can while two nodes propose a cut at the same moment and the rule
// cuts again on its own; no acknowledged write is lost.
func TestEpochConcurrentProposalsUnderFullLoad(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3, fastCuts)
	c.waitFormed(t, 2)
	var a acks
	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for i, n := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; !stop.Load(); k++ {
				if err := a.write(n, fmt.Sprintf("n%d-%05d", i, k), "v"); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	time.Sleep(time.Second)
	var ready sync.WaitGroup
	ready.Add(2)
	for _, n := range c.nodes[:2] {
		go func() {
			ready.Done()
			ready.Wait()
			if err := n.Doc.ProposeCut(); err != nil {
				errs <- err
			}
		}()
	}
	waitFor(t, 30*time.Second, "a cut under load", func() bool { return c.nodes[2].Doc.Epoch().Num >= 2 })
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "one epoch and one state", func() bool { return c.oneEpoch() })
	checkAcked(t, c, &a)
	t.Logf("%d acknowledged writes; epoch %v; document %d bytes on disk", len(a.kv), c.nodes[0].Doc.Epoch(), c.nodes[0].Doc.DiskBytes())
}

// TestEpochPartitionDuringSwitch: each side of a partition cuts on its
// own and writes on; after the heal the fleet is on one epoch with every
// write of both sides.
func TestEpochPartitionDuringSwitch(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 4, fastCuts)
	c.waitFormed(t, 1)
	left, right := []int{0, 1}, []int{2, 3}
	for _, g := range [][]int{left, right} {
		c.nodes[g[0]].Host.Connect(t.Context(), c.nodes[g[1]].Host.Peerstore().PeerInfo(c.nodes[g[1]].ID()))
	}
	waitFor(t, 30*time.Second, "the fleet converged", func() bool { return c.converged() })
	var a acks
	c.partition(left, right)
	for k := range 40 {
		for _, i := range []int{0, 1, 2, 3} {
			if err := a.write(c.nodes[i], fmt.Sprintf("before-%d-%02d", i, k), "v"); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, i := range []int{0, 2} {
		if err := c.nodes[i].Doc.ProposeCut(); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 30*time.Second, "each side on its own epoch", func() bool {
		return c.oneEpoch(left...) && c.oneEpoch(right...)
	})
	if c.nodes[0].Doc.Epoch() == c.nodes[2].Doc.Epoch() {
		t.Fatal("the two sides of the partition made one epoch")
	}
	for k := range 20 {
		for _, i := range []int{0, 1, 2, 3} {
			if err := a.write(c.nodes[i], fmt.Sprintf("after-%d-%02d", i, k), "v"); err != nil {
				t.Fatal(err)
			}
		}
	}
	c.heal(left, right)
	waitFor(t, 60*time.Second, "one epoch after the heal", func() bool { return c.oneEpoch() })
	checkAcked(t, c, &a)
}

// TestEpochJoinerDuringSwitch: a node that joins while the fleet is
// switching ends on the fleet's epoch with its own writes.
func TestEpochJoinerDuringSwitch(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2, fastCuts)
	c.waitFormed(t, 1)
	var a acks
	a.writeN(t, 100, "old", "v", c.nodes[0], c.nodes[1])
	waitFor(t, 30*time.Second, "the fleet converged", func() bool { return c.converged() })
	if err := c.nodes[0].Doc.ProposeCut(); err != nil {
		t.Fatal(err)
	}
	j := c.add(fastCuts) // within the switch's grace
	a.writeN(t, 20, "joiner", "v", j)
	waitFor(t, 60*time.Second, "one epoch with the joiner", func() bool { return c.oneEpoch() })
	checkAcked(t, c, &a)
}

// TestEpochOfflineNodeRejoins: a node cut off from the fleet keeps
// writing, is stopped, and comes back 60 simulated days later, after the
// fleet has cut twice; it rejoins with no manual step and its writes
// made while away are everywhere.
func TestEpochOfflineNodeRejoins(t *testing.T) {
	t.Parallel()
	// Simulated time: the real clock plus days skipped.
	var skipped atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(skipped.Load())) }
	simulated := func(i int, cfg *Config) { fastCuts(i, cfg); cfg.now = now }
	c := newCluster(t, 3, simulated)
	c.waitFormed(t, 1)
	var a acks
	a.writeN(t, 30, "shared", "v", c.nodes...)
	waitFor(t, 30*time.Second, "the fleet converged", func() bool { return c.converged() })
	away := c.nodes[2]
	dir, key := away.cfg.DataDir, away.ID()
	c.partition([]int{0, 1}, []int{2})
	a.writeN(t, 30, "offline", "written away", away)
	c.stop(2)
	// 60 days pass for the others, who cut twice meanwhile.
	for day := range 60 {
		skipped.Add(int64(24 * time.Hour))
		if day%30 == 0 {
			e := c.nodes[0].Doc.Epoch()
			a.writeN(t, 40, fmt.Sprintf("day%02d", day), "v", c.nodes[0], c.nodes[1])
			if err := c.nodes[0].Doc.ProposeCut(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 30*time.Second, "a cut", func() bool { return c.nodes[0].Doc.Epoch() != e && c.oneEpoch(0, 1) })
		}
	}
	if got := c.nodes[0].Doc.Epoch().Num; got < 2 {
		t.Fatalf("the fleet is on epoch %d, want at least 2 cuts while the node was away", got)
	}
	for _, i := range []int{0, 1} {
		c.nodes[i].Gate.Unblock(key)
	}
	back := c.add(simulated, func(_ int, cfg *Config) { cfg.DataDir = dir })
	if back.ID() != key {
		t.Fatalf("restarted node has ID %s, want %s", back.ID(), key)
	}
	waitFor(t, 60*time.Second, "the returning node on the fleet's epoch", func() bool { return c.oneEpoch(0, 1, 3) })
	checkAcked(t, c, &a, 0, 1, 3)
}
