package node

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshnode/meshnode/crdt"
)

// testIdentity is a fresh Ed25519 identity outside the fleet and its peer
// ID: only a real identity can sign the records that name it (write them
// through tx.As(key)).
func testIdentity(tb testing.TB) (crypto.PrivKey, string) {
	tb.Helper()
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		tb.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return key, id.String()
}

func TestFiveNodesConcurrentWritesConverge(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 5)
	waitFor(t, 20*time.Second, "every node authenticated to a peer", func() bool { return c.allAuthenticated(1) })
	var wg sync.WaitGroup
	for i, n := range c.nodes {
		// Not n's own identity: n's library scan unpublishes entries that
		// name n for items its share folder lacks. Node i writes the
		// entries of a holder identity of its own, signed with its key.
		key, holder := testIdentity(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range 20 {
				update(t, n, func(tx *crdt.Tx) {
					tx.As(key).SetHolder(fmt.Sprintf("item%d", k), holder, crdt.Holder{Manifest: fmt.Sprint(i, k), State: crdt.HolderComplete})
					tx.SetItemName("shared", fmt.Sprintf("written by n%d round %d", i, k))
				})
			}
		}()
	}
	wg.Wait()
	waitFor(t, 30*time.Second, "identical heads on 5 nodes", func() bool { return c.converged() })
	var winner string
	for i, n := range c.nodes {
		it, ok, err := n.Doc.Item("shared")
		if err != nil || !ok {
			t.Fatalf("node %d: shared item missing: %v", i, err)
		}
		if i == 0 {
			winner = it.Name
		} else if it.Name != winner {
			t.Fatalf("node %d sees winner %q, node 0 %q", i, it.Name, winner)
		}
		for k := range 20 {
			item, _, _ := n.Doc.Item(fmt.Sprintf("item%d", k))
			if len(item.Holders) != 5 {
				t.Fatalf("node %d: item%d has %d holders, want 5", i, k, len(item.Holders))
			}
		}
		nodes, _ := n.Nodes()
		if len(nodes) != 5 {
			t.Fatalf("node %d lists %d nodes, want 5", i, len(nodes))
		}
	}
}

func TestLateJoinerBootstrapsFromSnapshot(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2)
	const entries = 10_000
	// The entries name a holder outside the fleet: a node's library scan
	// unpublishes entries that name it for items its share folder lacks,
	// and node 0's start-up scan may run while these are being written.
	key, holder := testIdentity(t)
	for b := 0; b < entries; b += 500 {
		update(t, c.nodes[0], func(tx *crdt.Tx) {
			for k := b; k < b+500; k++ {
				tx.As(key).SetHolder(fmt.Sprintf("item-%05d", k), holder, crdt.Holder{Manifest: "m", Size: int64(k), State: crdt.HolderComplete})
			}
		})
	}
	waitFor(t, 60*time.Second, "node 1 to hold the library", func() bool { return c.converged() })
	late := c.add()
	waitFor(t, 60*time.Second, "late joiner converged", func() bool { return c.converged() })
	lib, _ := late.Doc.Library()
	if len(lib) != entries {
		t.Fatalf("late joiner sees %d entries, want %d", len(lib), entries)
	}
	// The count follows MergeSnapshot's return, which can come after
	// the merged heads are visible.
	waitFor(t, 10*time.Second, "late joiner to count a snapshot", func() bool { return late.Replicator.Stats().SnapshotsFetched > 0 })
	if got := late.Replicator.Stats().SnapshotsFetched; got != 1 {
		t.Fatalf("late joiner fetched %d snapshots, want 1 (bootstrap must not be a full sync)", got)
	}
	// Its own record survives the merge.
	waitFor(t, 10*time.Second, "late joiner's record on node 0", func() bool {
		r, ok, _ := c.nodes[0].Doc.Node(late.ID().String())
		return ok && r.Alive && r.Name == "n2"
	})
}

func TestPartitionHealConverges(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 5)
	waitFor(t, 60*time.Second, "fleet formed", func() bool { return c.allAuthenticated(1) && c.converged() })
	// Make both halves well connected inside themselves before the cut.
	left, right := []int{0, 1, 2}, []int{3, 4}
	for _, g := range [][]int{left, right} {
		for _, i := range g[1:] {
			c.nodes[g[0]].Host.Connect(t.Context(), c.nodes[i].Host.Peerstore().PeerInfo(c.nodes[i].ID()))
		}
	}
	c.partition(left, right)
	const perSide = 500
	write := func(g []int, tag string) {
		for k := range perSide {
			n := c.nodes[g[k%len(g)]]
			update(t, n, func(tx *crdt.Tx) { tx.SetItemName(fmt.Sprintf("%s-%03d", tag, k), tag) })
		}
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); write(left, "left") }()
	go func() { defer wg.Done(); write(right, "right") }()
	wg.Wait()
	waitFor(t, 30*time.Second, "each side converged internally", func() bool { return c.converged(left...) && c.converged(right...) })
	if lib, _ := c.nodes[3].Doc.Library(); len(lib) != perSide {
		t.Fatalf("partition leaked: right side sees %d items", len(lib))
	}
	c.heal(left, right)
	waitFor(t, 60*time.Second, "all converged after heal", func() bool { return c.converged() })
	for i, n := range c.nodes {
		if lib, _ := n.Doc.Library(); len(lib) != 2*perSide {
			t.Fatalf("node %d has %d items after heal, want %d", i, len(lib), 2*perSide)
		}
	}
}

func TestGossipLossRepairedByAntiEntropy(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3)
	// Node 0 must know both others on the document topic, or its gossip
	// may reach one of them by no path at all, and there is no loss to
	// repair.
	docTopic := c.nodes[0].Fleet.Topic("doc/1")
	waitFor(t, 60*time.Second, "fleet formed", func() bool {
		on := c.nodes[0].ps.ListPeers(docTopic)
		return c.allAuthenticated(1) && c.converged() && slices.Contains(on, c.nodes[1].ID()) && slices.Contains(on, c.nodes[2].ID())
	})
	for _, n := range c.nodes[1:] {
		n.Replicator.DropGossip(true)
	}
	for k := range 50 {
		update(t, c.nodes[0], func(tx *crdt.Tx) { tx.SetItemName(fmt.Sprintf("lost-%d", k), "x") })
	}
	waitFor(t, 30*time.Second, "converged with all gossip dropped", func() bool { return c.converged() })
	for i, n := range c.nodes[1:] {
		if n.Replicator.Stats().GossipDropped == 0 {
			t.Fatalf("node %d dropped no gossip: the test did not test loss", i+1)
		}
		if lib, _ := n.Doc.Library(); len(lib) != 50 {
			t.Fatalf("node %d has %d items, want 50", i+1, len(lib))
		}
	}
}

// Heartbeats are ephemeral: a converged, idle fleet exchanging many of them
// makes no document change at all.
func TestHeartbeatsDoNotChangeDocument(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3)
	waitFor(t, 20*time.Second, "every node authenticated", func() bool { return c.allAuthenticated(1) })
	waitFor(t, 20*time.Second, "converged", func() bool { return c.converged() })
	before := c.nodes[0].Doc.HeadStrings()
	commits := make([]uint64, len(c.nodes))
	sent := make([]uint64, len(c.nodes))
	for i, n := range c.nodes {
		commits[i] = n.Doc.Stats().LocalCommits
		sent[i] = n.Membership.HeartbeatsSent()
	}
	waitFor(t, 20*time.Second, "10 more heartbeats from every node", func() bool {
		for i, n := range c.nodes {
			if n.Membership.HeartbeatsSent() < sent[i]+10 {
				return false
			}
		}
		return true
	})
	for i, n := range c.nodes {
		if got := n.Doc.Stats().LocalCommits; got != commits[i] {
			t.Errorf("node %d committed %d document changes during heartbeats", i, got-commits[i])
		}
	}
	if after := c.nodes[0].Doc.HeadStrings(); !slices.Equal(before, after) {
		t.Fatalf("heads moved during idle heartbeats: %v -> %v", before, after)
	}
}

// Six nodes that know each other only through one rendezvous node (mDNS
// off) form supplementary mesh links; after the rendezvous is killed,
// changes made on any node still reach all the others.
func TestRendezvousLossMeshKeepsSyncing(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 7, func(i int, cfg *Config) {
		cfg.MaxMeshPeers = 3
		cfg.MeshInterval = 300 * time.Millisecond
	})
	survivors := []int{1, 2, 3, 4, 5, 6}
	waitFor(t, 30*time.Second, "every survivor holds 3 supplementary links", func() bool {
		for _, i := range survivors {
			n := c.nodes[i]
			if got := len(n.Mesh.Slots()); got != 3 {
				return false
			}
			for _, p := range n.Mesh.Slots() {
				if p == c.nodes[0].ID() {
					t.Fatalf("node %d chose the rendezvous as a mesh link", i)
				}
			}
		}
		return true
	})
	for _, i := range survivors {
		if st := c.nodes[i].Mesh.Status(); st.MaxSlotsSeen > 3 {
			t.Fatalf("node %d held %d slots, cap 3", i, st.MaxSlotsSeen)
		}
	}
	c.stop(0)
	for _, i := range survivors {
		update(t, c.nodes[i], func(tx *crdt.Tx) {
			tx.SetItemName(fmt.Sprintf("after-rendezvous-%d", i), "v")
		})
	}
	waitFor(t, 30*time.Second, "survivors converged without the rendezvous", func() bool { return c.converged(survivors...) })
	for _, i := range survivors {
		lib, _ := c.nodes[i].Doc.Library()
		for _, j := range survivors {
			if _, ok := lib[fmt.Sprintf("after-rendezvous-%d", j)]; !ok {
				t.Fatalf("node %d lacks the change made on node %d", i, j)
			}
		}
	}
}
