package node

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/crdt"
)

// cluster is an in-process fleet of real nodes on 127.0.0.1: real libp2p
// hosts, real files in t.TempDir(). Node 0 creates the fleet; the others
// join with its token and bootstrap from it.
type cluster struct {
	t     testing.TB
	token string
	boot  []string
	nodes []*Node
	stops []func()
	mu    sync.Mutex
	// prepare, if set, runs on each new node before it starts.
	prepare func(n *Node)
}

func testConfig(t testing.TB) Config {
	cfg := DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.Listen = []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"}
	cfg.API = "127.0.0.1:0"
	cfg.MDNS = false
	cfg.HeartbeatInterval = 250 * time.Millisecond
	cfg.StaleAfter = 2 * time.Second
	cfg.SyncInterval = 2 * time.Second
	cfg.Logger = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	return cfg
}

func newCluster(t testing.TB, n int, mod ...func(i int, c *Config)) *cluster {
	c := &cluster{t: t}
	for range n {
		c.add(mod...)
	}
	t.Cleanup(c.close)
	return c
}

// add starts one more node that joins the fleet.
func (c *cluster) add(mod ...func(i int, cfg *Config)) *Node {
	c.t.Helper()
	i := len(c.nodes)
	cfg := testConfig(c.t)
	cfg.Name = fmt.Sprintf("n%d", i)
	cfg.Join = c.token
	cfg.Bootstrap = c.boot
	for _, m := range mod {
		m(i, &cfg)
	}
	n, err := New(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	if i == 0 {
		c.token = n.Fleet.Token()
		c.boot = n.Addrs()[:1]
	}
	if c.prepare != nil {
		c.prepare(n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	c.nodes = append(c.nodes, n)
	c.stops = append(c.stops, func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				c.t.Errorf("node %d: %v", i, err)
			}
		case <-time.After(5 * time.Second):
			c.t.Errorf("node %d did not stop within 5s", i)
		}
	})
	return n
}

func (c *cluster) stop(i int) {
	c.mu.Lock()
	s := c.stops[i]
	c.stops[i] = func() {}
	c.mu.Unlock()
	s()
}

func (c *cluster) close() {
	var wg sync.WaitGroup
	for i := range c.nodes {
		wg.Add(1)
		go func() { defer wg.Done(); c.stop(i) }()
	}
	wg.Wait()
}

// partition cuts every link between the two groups (both directions,
// enforced by the gaters) until heal.
func (c *cluster) partition(a, b []int) {
	for _, i := range a {
		for _, j := range b {
			c.nodes[i].Gate.Block(c.nodes[j].ID())
			c.nodes[j].Gate.Block(c.nodes[i].ID())
			c.nodes[i].Host.Network().ClosePeer(c.nodes[j].ID())
			c.nodes[j].Host.Network().ClosePeer(c.nodes[i].ID())
		}
	}
}

func (c *cluster) heal(a, b []int) {
	for _, i := range a {
		for _, j := range b {
			c.nodes[i].Gate.Unblock(c.nodes[j].ID())
			c.nodes[j].Gate.Unblock(c.nodes[i].ID())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.nodes[a[0]].Host.Connect(ctx, peer.AddrInfo{ID: c.nodes[b[0]].ID(), Addrs: c.nodes[b[0]].Host.Addrs()}); err != nil {
		c.t.Fatalf("heal: %v", err)
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// converged reports whether the given nodes (all if none) share heads.
func (c *cluster) converged(idx ...int) bool {
	if len(idx) == 0 {
		for i := range c.nodes {
			idx = append(idx, i)
		}
	}
	first := c.nodes[idx[0]].Doc.HeadStrings()
	for _, i := range idx[1:] {
		if !slices.Equal(first, c.nodes[i].Doc.HeadStrings()) {
			return false
		}
	}
	return true
}

// waitFormed waits until every node has authenticated want peers. The
// deadline is generous, not a timing assertion: under the whole suite on
// two cores an authentication that times out backs off 2, 4, 8 s.
func (c *cluster) waitFormed(t testing.TB, want int) {
	t.Helper()
	waitFor(t, 60*time.Second, "fleet formed", func() bool { return c.allAuthenticated(want) })
}

func (c *cluster) allAuthenticated(want int) bool {
	for _, n := range c.nodes {
		if len(n.Auth.Authenticated()) < want {
			return false
		}
	}
	return true
}

func update(t *testing.T, n *Node, fn func(tx *crdt.Tx)) {
	t.Helper()
	if _, err := n.Doc.Update("test", func(tx *crdt.Tx) error { fn(tx); return nil }); err != nil {
		t.Fatal(err)
	}
}
