package node

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshnode/meshnode/crdt"
	"github.com/meshnode/meshnode/transfer"
)

// latestEverywhere waits until every node's library shows want as item
// id's latest version, and returns the views.
func latestEverywhere(t *testing.T, nodes []*Node, id, want string) {
	t.Helper()
	waitFor(t, 20*time.Second, "latest "+want[:8]+" on every node", func() bool {
		for _, n := range nodes {
			if v := itemViewOf(t, n, id); v.Latest != want {
				t.Logf("%s: latest %.8s, versions %+v", n.cfg.Name, v.Latest, v.Versions)
				return false
			}
		}
		return true
	})
}

func itemViewOf(t testing.TB, n *Node, id string) transfer.ItemView {
	t.Helper()
	views, err := n.Library.View()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range views {
		if v.ID == id {
			return v
		}
	}
	return transfer.ItemView{}
}

// A node that comes back holding an old version, after a restart or as a
// reinstall with a fresh data dir and the old files, publishes that
// version under its own generation: the version published since stays
// the latest on every node. (By update time alone, the reinstalled
// node's fresh entry made the old version latest again.)
func TestRestartWithAnOldVersionKeepsTheLatest(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3)
	a, b, d := c.nodes[0], c.nodes[1], c.nodes[2]
	c.waitFormed(t, 2)
	files := map[string]testFile{"tool": {randBytes(3 << 20), 0o755}, "lib.so": {randBytes(100 << 10), 0o644}}
	v1 := shareItem(t, c, a, "toolchain", files)
	download(t, b, "toolchain")
	download(t, d, "toolchain")
	bDir := b.cfg.DataDir
	c.stop(1)
	c.stop(2)

	// A publishes v2, whose parent is v1, one generation up.
	replaceFile(t, filepath.Join(shareDir(a), "toolchain", "tool"), randBytes(3<<20), 0o755)
	a.Library.ScanAll()
	var v2 string
	waitFor(t, 20*time.Second, "A's new version", func() bool {
		it, _, _ := a.Doc.Item("toolchain")
		v2 = it.Holders[a.ID().String()].Manifest
		return v2 != v1
	})
	ver := itemViewOf(t, a, "toolchain").Versions
	if len(ver) != 2 || ver[0].Manifest != v2 || ver[0].Gen != 2 || ver[0].Parent != v1 || ver[1].Manifest != v1 || ver[1].Gen != 1 {
		t.Fatalf("versions on A: %+v, want v2 (gen 2, parent v1) then v1 (gen 1)", ver)
	}

	// B restarts on its data dir; a reinstalled D starts on a fresh one
	// with the old files in its share folder, as a new node.
	b2 := c.add(func(_ int, cfg *Config) { cfg.DataDir = bDir })
	d2 := c.add()
	writeItem(t, d2, "toolchain", files)
	d2.Library.ScanAll()
	for _, n := range []*Node{b2, d2} {
		waitFor(t, 20*time.Second, "the restarted node's v1 entry on A", func() bool {
			it, _, _ := a.Doc.Item("toolchain")
			return it.Holders[n.ID().String()].Manifest == v1
		})
	}
	latestEverywhere(t, []*Node{a, b2, d2}, "toolchain", v2)
	for _, n := range []*Node{b2, d2} {
		if v := itemViewOf(t, n, "toolchain"); v.Local != transfer.LocalOutdated {
			t.Errorf("%s shows its v1 as %q, want %q", n.cfg.Name, v.Local, transfer.LocalOutdated)
		}
	}
	// And the download the reinstalled node starts is of v2.
	st := download(t, d2, "toolchain")
	if st.Manifest != v2 {
		t.Fatalf("the reinstalled node downloaded %s, want the latest %s", st.Manifest, v2)
	}
}

// While a running node of protocol version 1 is in the fleet, holder
// entries carry no version lineage (it would refuse them), but the node
// keeps it; once that node is gone, the next scan writes it.
func TestLineageWaitsForTheWholeFleet(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1)
	a := c.nodes[0]
	oldKey, _, _ := crypto.GenerateEd25519Key(nil)
	oldID, _ := peer.IDFromPrivateKey(oldKey)
	setOld := func(alive bool) {
		update(t, a, func(tx *crdt.Tx) {
			tx.As(oldKey).SetNode(oldID.String(), crdt.NodeRecord{Name: "old", Version: 1, Alive: alive, LastSeenMs: time.Now().UnixMilli()})
		})
	}
	setOld(true)
	writeItem(t, a, "kit", map[string]testFile{"f": {randBytes(1000), 0o644}})
	a.Library.ScanAll()
	own := func() crdt.Holder {
		it, _, _ := a.Doc.Item("kit")
		return it.Holders[a.ID().String()]
	}
	waitFor(t, 10*time.Second, "the item published", func() bool { return own().Manifest != "" })
	if h := own(); h.Gen != 0 || h.Parent != "" {
		t.Fatalf("with a version 1 node running, the entry is %+v; want no lineage", h)
	}
	// Once it is gone, the next scan writes the lineage the node kept
	// meanwhile, and a new version goes on from it.
	setOld(false)
	v1 := own().Manifest
	a.Library.ScanAll()
	waitFor(t, 10*time.Second, "the kept lineage written", func() bool { return own().Gen == 1 })
	writeItem(t, a, "kit", map[string]testFile{"f": {randBytes(1000), 0o644}})
	a.Library.ScanAll()
	waitFor(t, 10*time.Second, "the new version published", func() bool { return own().Manifest != v1 })
	if h := own(); h.Gen != 2 || h.Parent != v1 {
		t.Fatalf("after the old node left, the new version's entry is %+v; want gen 2 with parent %s", h, v1)
	}
}
