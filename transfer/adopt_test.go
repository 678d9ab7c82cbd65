package transfer

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A downloaded item is known and published from the manifest it was
// verified against: nothing is hashed again, and the events of its own
// swap (a first download, then an update that moves the old version
// aside) start no rescan. A user's change right after is still seen.
func TestDownloadedItemIsNotHashedAgain(t *testing.T) {
	dst := newTestLibrary(t, t.TempDir(), func(c *LibraryConfig) { c.Debounce = 50 * time.Millisecond })
	// Two versions of one item: 40 small files in folders and one of 2
	// chunks; the second changes one small file.
	v1 := filepath.Join(t.TempDir(), "item")
	writeBenchItem(t, v1, 40, 40<<10)
	if err := os.WriteFile(filepath.Join(v1, "big"), make([]byte, ChunkSize+5), 0o644); err != nil {
		t.Fatal(err)
	}
	sv1 := servedOf(t, v1)
	src := testHost(t, "tcp")
	serve(src, sv1)
	connect(t, dst.host, src)

	get := func(sv *Served) {
		t.Helper()
		dst.holderOf(t, "item", src, sv)
		st, err := dst.StartDownload("item", sv.Hash.String())
		if err != nil {
			t.Fatal(err)
		}
		if st = dst.ended(t, st.ID); st.State != TransferDone {
			t.Fatalf("download %s: %s", st.State, st.Error)
		}
		it, _, _ := dst.doc.Item("item")
		if h := it.Holders[dst.host.ID().String()]; h.Manifest != sv.Hash.String() || h.State != "complete" {
			t.Fatalf("published %+v, want %s complete", h, sv.Hash)
		}
		sameTree(t, sv, filepath.Join(dst.share, "item"))
		scans := dst.ScanStatus().Scans
		time.Sleep(20 * 50 * time.Millisecond) // 20 debounce periods
		if st := dst.ScanStatus(); st.HashedBytes != 0 || st.Scans != scans {
			t.Fatalf("after the download: %d bytes hashed, %d scans (%d when it ended)", st.HashedBytes, st.Scans, scans)
		}
	}
	get(sv1)
	if err := os.MkdirAll(filepath.Join(dst.share, "item", LocalDir), 0o755); err != nil {
		t.Fatal(err)
	}
	mine := filepath.Join(dst.share, "item", LocalDir, "notes")
	if err := os.WriteFile(mine, []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the local/ write's rescan", func() bool { return dst.ScanStatus().Scans > 1 })

	v2 := filepath.Join(t.TempDir(), "item")
	if err := os.CopyFS(v2, os.DirFS(v1)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(v2, "d00", "f00000.bin"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	sv2 := servedOf(t, v2)
	serve(src, sv2)
	get(sv2)
	if b, err := os.ReadFile(mine); err != nil || string(b) != "mine" {
		t.Fatalf("local/ after the update: %q, %v", b, err)
	}

	// A user's change right after is seen, hashed and published.
	if err := os.WriteFile(filepath.Join(dst.share, "item", "d01", "f00001.bin"), []byte("edited"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the edit to be published", func() bool {
		it, _, _ := dst.doc.Item("item")
		return it.Holders[dst.host.ID().String()].Manifest != sv2.Hash.String()
	})
	if dst.ScanStatus().HashedBytes == 0 {
		t.Fatal("the edit was published without hashing it")
	}
}

// The first scan publishes each item soon after its own scan, while the
// scan goes on, and serves it at once: an item scanned first is in the
// document, and its manifest is served, while a large item after it is
// still being hashed.
func TestItemServedBeforeTheWholeFirstScan(t *testing.T) {
	dir := t.TempDir()
	share := filepath.Join(dir, "share")
	for _, p := range []string{"a", "b"} {
		if err := os.MkdirAll(filepath.Join(share, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(share, "a", "f"), []byte("small"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A sparse file costs no disk but seconds of hashing.
	big, err := os.Create(filepath.Join(share, "b", "big"))
	if err != nil {
		t.Fatal(err)
	}
	if err := big.Truncate(2 << 30); err != nil {
		t.Fatal(err)
	}
	big.Close()
	tl := startTestLibrary(t, dir)
	waitUntil(t, "item a published", func() bool { return tl.holds("a") })
	if tl.holds("b") || tl.ScanStatus().Scans > 0 {
		t.Fatal("item a was published only once the whole first scan was done")
	}
	it, _, _ := tl.doc.Item("a")
	h, err := ParseHash(it.Holders[tl.host.ID().String()].Manifest)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := tl.lookup(h); !ok {
		t.Fatal("item a is published but not served")
	}
}
