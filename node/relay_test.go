package node

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshnode/meshnode/crdt"
	"github.com/meshnode/meshnode/mesh"
)

func directOnly(n *Node, p peer.ID) bool {
	cs := n.Host.Network().ConnsToPeer(p)
	for _, c := range cs {
		if mesh.IsRelayed(c) {
			return false
		}
	}
	return len(cs) > 0
}

// Two nodes that cannot dial each other (their gaters refuse direct
// connections, as two sites without a route would) reach each other
// through a fleet relay: each reserves a slot and publishes its relayed
// address, the mesh manager links them through the relay, and document
// gossip and anti-entropy run over that link. Once direct connections are
// possible again, a direct one replaces the relayed one.
func TestRelayLinksPeersThatCannotDialEachOther(t *testing.T) {
	t.Parallel()
	fast := func(i int, cfg *Config) { cfg.MeshInterval = 300 * time.Millisecond }
	c := newCluster(t, 1, fast, func(_ int, cfg *Config) { cfg.RelayService = true })
	r := c.nodes[0]
	site := func(_ int, cfg *Config) { cfg.Relays = c.boot }
	a := c.add(fast, site)
	c.prepare = func(b *Node) {
		a.Gate.BlockDirect(b.ID())
		b.Gate.BlockDirect(a.ID())
	}
	b := c.add(fast, site)
	c.prepare = nil

	// hasCircuitAddr: of's record, as seen by every node, carries its
	// address on the relay.
	hasCircuitAddr := func(of *Node) bool {
		for _, n := range c.nodes {
			rec, ok, _ := n.Doc.Node(of.ID().String())
			if !ok || !slices.ContainsFunc(rec.Addrs, func(s string) bool { return strings.HasSuffix(s, "/p2p/"+r.ID().String()+"/p2p-circuit") }) {
				return false
			}
		}
		return true
	}
	waitFor(t, 20*time.Second, "both records to carry a relayed address", func() bool { return hasCircuitAddr(a) && hasCircuitAddr(b) })
	if rec, _, _ := r.Doc.Node(r.ID().String()); !slices.Contains(rec.Roles, "relay") {
		t.Fatalf("relay's record has roles %v, want the relay role", rec.Roles)
	}
	waitFor(t, 20*time.Second, "a relayed link between the sites", func() bool {
		return mesh.RelayedOnly(a.Host.Network(), b.ID()) && mesh.RelayedOnly(b.Host.Network(), a.ID()) && a.Auth.IsAuthenticated(b.ID()) && b.Auth.IsAuthenticated(a.ID())
	})
	st := b.MeshStatus()
	if !slices.Contains(st.RelayedPeers, a.ID().String()) || len(st.Relays) != 1 || !st.Relays[0].Reserved {
		t.Fatalf("b's mesh status does not show the relay: relayed %v, relays %+v", st.RelayedPeers, st.Relays)
	}

	// Gossip runs over the relayed link, not only through the relay node.
	docTopic := a.Fleet.Topic("doc/1")
	waitFor(t, 20*time.Second, "a and b to be gossip peers", func() bool {
		return slices.Contains(b.ps.ListPeers(docTopic), a.ID()) && slices.Contains(a.ps.ListPeers(docTopic), b.ID())
	})
	// Anti-entropy runs over it too.
	before := b.Replicator.Stats().SyncSessions
	b.Replicator.RequestSync(a.ID())
	waitFor(t, 10*time.Second, "an anti-entropy session over the relayed link", func() bool {
		return b.Replicator.Stats().SyncSessions > before
	})
	update(t, a, func(tx *crdt.Tx) { tx.SetItemName("across", "from a") })
	waitFor(t, 10*time.Second, "a's change on b", func() bool {
		it, ok, _ := b.Doc.Item("across")
		return ok && it.Name == "from a"
	})

	// The sites can route again: a direct connection replaces the relayed one.
	a.Gate.UnblockDirect(b.ID())
	b.Gate.UnblockDirect(a.ID())
	waitFor(t, 20*time.Second, "a direct connection in place of the relayed one", func() bool {
		return directOnly(a, b.ID()) && directOnly(b, a.ID())
	})
	if a.MeshStatus().Upgrades+b.MeshStatus().Upgrades == 0 {
		t.Fatal("no relayed connection counted as replaced")
	}
	if a.Host.Network().Connectedness(b.ID()) != network.Connected || !a.Auth.IsAuthenticated(b.ID()) {
		t.Fatal("a and b lost each other in the switch")
	}
}
