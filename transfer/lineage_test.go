package transfer

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/meshnode/meshnode/crdt"
)

// This node's memory of versions outlives what the document forgets: a
// version it downloaded keeps its generation when its publication comes
// after a crash and no other complete holder says so any more, and a
// version it makes after a scan that briefly missed the item folder (its
// entry withdrawn) still has its previous version as parent.
func TestLineageSurvivesWhatTheDocumentForgets(t *testing.T) {
	t.Parallel()
	tl := newTestLibrary(t, t.TempDir())
	root := filepath.Join(tl.share, "kit")
	write := func(content string) string {
		t.Helper()
		if err := os.MkdirAll(root, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "f"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		ageTree(t, root)
		m, _, err := Scan(root, nil)
		if err != nil {
			t.Fatal(err)
		}
		return m.Hash().String()
	}
	own := func() crdt.Holder {
		it, _, _ := tl.doc.Item("kit")
		return it.Holders[tl.host.ID().String()]
	}
	publishes := func(want string) crdt.Holder {
		t.Helper()
		tl.ScanAll()
		waitUntil(t, "the entry for "+want[:8], func() bool { return own().Manifest == want })
		return own()
	}
	m1 := write("one")
	if h := publishes(m1); h.Gen != 1 || h.Parent != "" {
		t.Fatalf("the item's first version: gen %d parent %q", h.Gen, h.Parent)
	}
	// Another node has since published generation 3; this node fetched
	// generation 2 and crashed after its swap, before publishing it.
	other := testHost(t, "tcp")
	m3 := "3333333333333333333333333333333333333333333333333333333333333333"
	if _, err := tl.doc.Update("test", func(tx *crdt.Tx) error {
		tx.As(other.Peerstore().PrivKey(other.ID())).SetHolder("kit", other.ID().String(),
			crdt.Holder{Manifest: m3, State: crdt.HolderComplete, Gen: 3, Parent: m1, UpdatedMs: 5})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	m2 := write("two")
	tl.remember(map[string]heldVersion{"kit": {Manifest: m2, Gen: 2, Parent: m1}})
	if h := publishes(m2); h.Gen != 2 || h.Parent != m1 {
		t.Fatalf("the fetched version after a crash: gen %d parent %q, want 2 and %s", h.Gen, h.Parent, m1)
	}
	setOther := func(m string, gen int64, parent string) {
		t.Helper()
		if _, err := tl.doc.Update("test", func(tx *crdt.Tx) error {
			tx.As(other.Peerstore().PrivKey(other.ID())).SetHolder("kit", other.ID().String(),
				crdt.Holder{Manifest: m, State: crdt.HolderComplete, Gen: gen, Parent: parent, UpdatedMs: 6})
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	// The other node comes to m2 too: this node is up to date. The folder
	// goes for a moment (the entry is withdrawn), then comes back changed:
	// a new version, one generation up, child of m2.
	setOther(m2, 2, m1)
	if err := os.RemoveAll(root); err != nil {
		t.Fatal(err)
	}
	tl.ScanAll()
	waitUntil(t, "the entry withdrawn", func() bool { return own().Manifest == "" })
	m4 := write("four")
	if h := publishes(m4); h.Gen != 3 || h.Parent != m2 {
		t.Fatalf("the version made after the folder came back: gen %d parent %q, want 3 and %s", h.Gen, h.Parent, m2)
	}
	// But when the fleet moved on while the folder was gone, what comes
	// back (an old backup) is no newer than the fleet's: generation 0.
	if err := os.RemoveAll(root); err != nil {
		t.Fatal(err)
	}
	tl.ScanAll()
	waitUntil(t, "the entry withdrawn", func() bool { return own().Manifest == "" })
	setOther(m3, 5, m4)
	m5 := write("an old backup")
	if h := publishes(m5); h.Gen != 0 || h.Parent != "" {
		t.Fatalf("a backup restored after the fleet moved on: gen %d parent %q, want 0", h.Gen, h.Parent)
	}
	// And the memory is on disk for the next start.
	if b, err := os.ReadFile(filepath.Join(tl.dir, lineageFile)); err != nil || len(b) == 0 {
		t.Fatalf("versions.json: %v", err)
	}
}
