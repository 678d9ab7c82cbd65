package transfer

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
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
	// The scan's figures are counted once its publisher is done.
	waitUntil(t, "the edit's scan to count what it hashed", func() bool { return dst.ScanStatus().HashedBytes == int64(len("edited")) })
}

// The first scan publishes each item soon after its own scan, while the
// scan goes on, and serves it at once: while the scan of item b is held,
// item a, scanned before it, is in the document and its manifest is
// served.
func TestItemServedBeforeTheWholeFirstScan(t *testing.T) {
	dir := t.TempDir()
	share := filepath.Join(dir, "share")
	for _, p := range []string{"a", "b"} {
		if err := os.MkdirAll(filepath.Join(share, p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(share, p, "f"), []byte("small "+p), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	release := make(chan struct{})
	var once sync.Once
	tl := startTestLibrary(t, dir, func(c *LibraryConfig) {
		c.beforeScan = func(id string) {
			if id == "b" {
				<-release
			}
		}
	})
	// Cleanups run last first: this one before the library's stop.
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	waitUntil(t, "item a published", func() bool { return tl.holds("a") })
	if tl.holds("b") || tl.ScanStatus().Scans > 0 {
		t.Fatal("item b was published while its scan was held")
	}
	it, _, _ := tl.doc.Item("a")
	h, err := ParseHash(it.Holders[tl.host.ID().String()].Manifest)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := tl.lookup(h); !ok {
		t.Fatal("item a is published but not served")
	}
	once.Do(func() { close(release) })
	waitUntil(t, "item b published", func() bool { return tl.holds("b") })
}

// adopt indexes a downloaded item from its manifest only while every
// file still has the fingerprint the download left it with; a file
// changed since (same size, new bytes) makes it fail, for a scan.
func TestAdoptRefusesAFileChangedSinceTheDownload(t *testing.T) {
	tl := newTestLibrary(t, t.TempDir())
	root := filepath.Join(tl.share, "item")
	writeBenchItem(t, root, 3, 3<<10)
	m, _, err := Scan(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	fps := map[string]fingerprint{}
	for _, f := range m.Files {
		fi, err := os.Lstat(filepath.Join(root, f.Path))
		if err != nil {
			t.Fatal(err)
		}
		fps[f.Path] = fingerprintOf(fi)
	}
	edited := filepath.Join(root, m.Files[1].Path)
	time.Sleep(10 * time.Millisecond) // a later mtime than the write
	if err := os.WriteFile(edited, make([]byte, m.Files[1].Size), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := tl.adopt("item", m, fps); err == nil || !strings.Contains(err.Error(), m.Files[1].Path) {
		t.Fatalf("adopt of an item with a changed file: %v", err)
	}
	fi, err := os.Lstat(edited)
	if err != nil {
		t.Fatal(err)
	}
	fps[m.Files[1].Path] = fingerprintOf(fi)
	m2, _, err := Scan(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := tl.adopt("item", m2, fps); err != nil {
		t.Fatalf("adopt of an unchanged item: %v", err)
	}
	if !tl.holds("item") {
		t.Fatal("the adopted item is not published")
	}
}

// A node that stops during its first scan does not wait for the rest of
// it: the item being scanned gives up between files (its index is left
// as it was) and the items after it are not scanned.
func TestStopDuringTheFirstScan(t *testing.T) {
	dir := t.TempDir()
	share := filepath.Join(dir, "share")
	for _, id := range []string{"a", "b"} {
		writeBenchItem(t, filepath.Join(share, id), 20, 20<<10)
	}
	var tl *testLibrary
	started := make(chan struct{})
	var scannedB atomic.Bool
	tl = startTestLibrary(t, dir, func(c *LibraryConfig) {
		c.beforeScan = func(id string) {
			if id == "b" {
				scannedB.Store(true)
				return
			}
			<-started
			go tl.stop()
			// Not waitUntil: this is the library's goroutine, where a
			// test may not fail; the test fails below if it is late.
			for deadline := time.Now().Add(30 * time.Second); !tl.stopping.Load() && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
		}
	})
	close(started)
	if err := tl.stop(); err != nil {
		t.Fatal(err)
	}
	if scannedB.Load() {
		t.Fatal("item b was scanned after the node began to stop")
	}
	if _, err := os.Stat(tl.indexFile("a")); err == nil {
		t.Fatal("item a's scan, stopped half way, saved an index")
	}
	if tl.holds("a") || tl.holds("b") {
		t.Fatal("an item was published by a scan that stopped")
	}
}
