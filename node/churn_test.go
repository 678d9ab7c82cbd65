package node

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/meshnode/meshnode/crdt"
)

// Twenty nodes join and leave over a bounded time while writing. Every
// node's mesh manager keeps within its cap throughout (by its own
// high-water mark, which counts dials in flight), and once the churn
// stops, the survivors converge holding every survivor's writes.
func TestChurnKeepsCapAndConverges(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("churn test skipped in -short mode")
	}
	const (
		total    = 20
		initial  = 8
		cap      = 3
		churnFor = 8 * time.Second
	)
	mod := func(i int, cfg *Config) {
		cfg.MaxMeshPeers = cap
		cfg.MeshInterval = 300 * time.Millisecond
		cfg.StaleAfter = time.Second
	}
	c := newCluster(t, initial, mod)
	rng := rand.New(rand.NewPCG(1, 2))
	live := []int{}
	for i := 1; i < initial; i++ {
		live = append(live, i)
	}
	waitFor(t, 30*time.Second, "initial fleet formed", func() bool { return c.allAuthenticated(1) })

	writes := 0
	// Churn for churnFor and until all total nodes have started, bounded
	// at 200 steps.
	deadline := time.Now().Add(churnFor)
	for step := 0; (time.Now().Before(deadline) || len(c.nodes) < total) && step < 200; step++ {
		switch r := rng.IntN(10); {
		case r < 4 && len(c.nodes) < total:
			c.add(mod)
			live = append(live, len(c.nodes)-1)
		case r < 5 && len(live) > 4:
			k := rng.IntN(len(live))
			c.stop(live[k])
			live = slices.Delete(live, k, k+1)
		default:
			i := live[rng.IntN(len(live))]
			update(t, c.nodes[i], func(tx *crdt.Tx) { tx.SetItemName(fmt.Sprintf("churn-%d-%d", i, step), "v") })
			writes++
		}
		time.Sleep(time.Duration(100+rng.IntN(300)) * time.Millisecond)
	}
	if len(c.nodes) < total {
		t.Fatalf("churn ended with %d of %d nodes started", len(c.nodes), total)
	}
	t.Logf("churn: %d nodes started, %d left, %d writes", len(c.nodes), len(c.nodes)-len(live)-1, writes)

	// One last write on every survivor, then convergence.
	for _, i := range live {
		update(t, c.nodes[i], func(tx *crdt.Tx) { tx.SetItemName(fmt.Sprintf("final-%d", i), "v") })
	}
	survivors := append([]int{0}, live...)
	waitFor(t, 60*time.Second, "survivors converged after churn", func() bool { return c.converged(survivors...) })
	lib, _ := c.nodes[0].Doc.Library()
	for _, i := range live {
		if _, ok := lib[fmt.Sprintf("final-%d", i)]; !ok {
			t.Fatalf("node %d's final write is missing", i)
		}
	}
	opened := uint64(0)
	for i, n := range c.nodes {
		st := n.Mesh.Status()
		if st.MaxSlotsSeen > cap {
			t.Fatalf("node %d held %d supplementary slots at once; cap %d", i, st.MaxSlotsSeen, cap)
		}
		opened += st.Opened
	}
	if opened == 0 {
		t.Fatal("no supplementary connection opened during churn: the cap was never tested")
	}
}
