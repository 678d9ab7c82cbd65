package transfer

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/rs/zerolog"
)

// servedScanned is the Served a library keeps for root after a scan: with
// the files' fingerprints, and a count of the rescans it asks for.
func servedScanned(t *testing.T, root string) (*Served, *atomic.Int32) {
	t.Helper()
	ix := &Index{Files: map[string]indexEntry{}}
	m, _, err := Scan(root, ix)
	if err != nil {
		t.Fatal(err)
	}
	rescans := new(atomic.Int32)
	return &Served{Root: root, Manifest: m, Hash: m.Hash(), Encoded: m.Encode(), fps: ix.fingerprints(m),
		changed: func() { rescans.Add(1) }}, rescans
}

// A holder whose file changed since its scan answers "changed", never
// the new bytes: the downloader stops asking it without reporting it for
// bad data, finishes from a holder of the old version, and the holder
// asks once for a rescan.
func TestChangedFileIsRefusedNotSent(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	root, copyRoot := filepath.Join(dir, "item"), filepath.Join(dir, "copy")
	writeBenchItem(t, root, 4, 4<<20)
	writeBenchItem(t, copyRoot, 4, 4<<20) // same seed: the same bytes
	sv, rescans := servedScanned(t, root)
	other, _ := servedScanned(t, copyRoot)
	if other.Hash != sv.Hash {
		t.Fatal("the two copies differ")
	}
	// The holder's first file changes after the scan, in place and with
	// its size kept: only the modification time tells.
	f0 := filepath.Join(root, sv.Manifest.Files[0].Path)
	b, err := os.ReadFile(f0)
	if err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if err := os.WriteFile(f0, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, status, err := readChunk(sv, sv.Manifest.Files[0].Path, 0, make([]byte, ChunkSize)); status != StatusChanged || err == nil {
		t.Fatalf("reading a changed file: status %d, %v; want StatusChanged", status, err)
	}
	holder, honest, dst := testHost(t, "tcp"), testHost(t, "tcp"), testHost(t, "tcp")
	connect(t, dst, holder)
	connect(t, dst, honest)
	serve(holder, sv)
	serve(honest, other)
	pr := &Progress{}
	out := t.TempDir()
	_, err = Download(context.Background(), DownloadConfig{Host: dst, Protocol: benchProto, Manifest: sv.Hash,
		Sources: []peer.ID{holder.ID()}, Staging: out, Progress: pr, Logger: zerolog.Nop(),
		MoreSources: func() []peer.ID { return []peer.ID{honest.ID()} }})
	if err != nil {
		t.Fatal(err)
	}
	if bad := pr.BadSources(); len(bad) != 0 {
		t.Fatalf("a holder whose file changed was reported for bad data: %v", bad)
	}
	if n := rescans.Load(); n != 1 {
		t.Fatalf("%d rescans asked for, want 1", n)
	}
	sameStaged(t, other, out)

	// With no other holder the download fails, naming no liar.
	pr2 := &Progress{}
	_, err = Download(context.Background(), DownloadConfig{Host: dst, Protocol: benchProto, Manifest: sv.Hash,
		Sources: []peer.ID{holder.ID()}, Staging: t.TempDir(), Progress: pr2, Logger: zerolog.Nop()})
	if err == nil || !strings.Contains(err.Error(), "no source") {
		t.Fatalf("download from only the changed holder: %v; want it to fail for want of a source", err)
	}
	if len(pr2.BadSources()) != 0 {
		t.Fatalf("the changed holder was reported: %v", pr2.BadSources())
	}
}

// A download of an item's new version reuses, by hash, the chunks an
// earlier download of its old version verified before it stopped: only
// what changed, and what the first download had not reached, is fetched.
func TestNewVersionReusesAnEarlierDownloadsChunks(t *testing.T) {
	t.Parallel()
	root := filepath.Join(t.TempDir(), "item")
	writeBenchItem(t, root, 3, 12<<20) // three files of 4 MiB
	v1 := servedOf(t, root)
	holder, dst := testHost(t, "tcp"), testHost(t, "tcp")
	connect(t, dst, holder)
	cur := atomic.Pointer[Served]{}
	cur.Store(v1)
	srv := NewServer(func(h Hash) (*Served, bool) { sv := cur.Load(); return sv, h == sv.Hash }, zerolog.Nop(), Limits{})
	holder.SetStreamHandler(benchProto, srv.Handle)

	// The first download stops halfway (cancelled).
	first := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	pr1 := &Progress{}
	go func() {
		for pr1.Done.Load() < 6<<20 {
			if ctx.Err() != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	_, err := Download(ctx, DownloadConfig{Host: dst, Protocol: benchProto, Manifest: v1.Hash,
		Sources: []peer.ID{holder.ID()}, Staging: first, Progress: pr1, Logger: zerolog.Nop()})
	cancel()
	if err == nil {
		t.Skip("the first download finished before it could be stopped")
	}
	held := pr1.Done.Load()

	// The holder's last file changes: version 2.
	last := filepath.Join(root, v1.Manifest.Files[2].Path)
	b, err := os.ReadFile(last)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(last, b, 0o644); err != nil {
		t.Fatal(err)
	}
	v2 := servedOf(t, root)
	cur.Store(v2)
	pr2 := &Progress{}
	out := t.TempDir()
	if _, err := Download(context.Background(), DownloadConfig{Host: dst, Protocol: benchProto, Manifest: v2.Hash,
		Sources: []peer.ID{holder.ID()}, Staging: out, Progress: pr2, Logger: zerolog.Nop(),
		Local: stagedChunks(first)}); err != nil {
		t.Fatal(err)
	}
	sameStaged(t, v2, out)
	reused, fetched := pr2.Reused.Load(), pr2.Fetched.Load()
	t.Logf("first download held %d bytes; the second reused %d and fetched %d of %d", held, reused, fetched, v2.Manifest.Size())
	// Every chunk of the first download is reused except those of the
	// changed file's changed chunk (at most one chunk of it).
	if reused < held-ChunkSize || reused+fetched != v2.Manifest.Size() {
		t.Fatalf("reused %d bytes of the %d the first download held (fetched %d of %d)", reused, held, fetched, v2.Manifest.Size())
	}
}

// A file touched on the only holder (its times change, its bytes do
// not) pauses a download instead of failing it: the holder answers
// "changed", rescans to the same manifest, and serves again.
func TestTouchedFilePausesTheDownload(t *testing.T) {
	t.Parallel()
	root := filepath.Join(t.TempDir(), "item")
	writeBenchItem(t, root, 2, 8<<20)
	holder, dst := testHost(t, "tcp"), testHost(t, "tcp")
	connect(t, dst, holder)
	cur := atomic.Pointer[Served]{}
	sv, _ := servedScanned(t, root)
	cur.Store(sv)
	rescans := atomic.Int32{}
	sv.changed = func() {
		rescans.Add(1)
		next, _ := servedScanned(t, root) // the library's rescan: same manifest, new fingerprints
		cur.Store(next)
	}
	srv := NewServer(func(h Hash) (*Served, bool) { s := cur.Load(); return s, h == s.Hash }, zerolog.Nop(), Limits{})
	holder.SetStreamHandler(benchProto, srv.Handle)
	touched := filepath.Join(root, sv.Manifest.Files[1].Path)
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(touched, later, later); err != nil {
		t.Fatal(err)
	}
	pr := &Progress{}
	out := t.TempDir()
	if _, err := Download(context.Background(), DownloadConfig{Host: dst, Protocol: benchProto, Manifest: sv.Hash,
		Sources: []peer.ID{holder.ID()}, Staging: out, Progress: pr, Logger: zerolog.Nop(),
		MoreSources: func() []peer.ID { return []peer.ID{holder.ID()} }}); err != nil {
		t.Fatalf("a touched file failed the download: %v", err)
	}
	if rescans.Load() != 1 || len(pr.BadSources()) != 0 {
		t.Fatalf("rescans %d, bad sources %v", rescans.Load(), pr.BadSources())
	}
	sameStaged(t, sv, out)
}

// A file written just before its scan is racy: a write in the same tick
// of the file clock can leave its fingerprint as the scan saw it. Its
// chunks are checked against the manifest before they are served, and
// the next scan hashes it again even with an unchanged fingerprint.
func TestRacyFileIsCheckedBeforeServing(t *testing.T) {
	t.Parallel()
	root := filepath.Join(t.TempDir(), "item")
	writeBenchItem(t, root, 2, 2<<20)
	ix := &Index{Files: map[string]indexEntry{}}
	m, _, err := Scan(root, ix) // just written: racy
	if err != nil {
		t.Fatal(err)
	}
	racy := ix.racy(m)
	if racy == nil || !racy[0] || !racy[1] {
		t.Fatalf("files scanned right after they were written are not racy: %v", racy)
	}
	rescans := new(atomic.Int32)
	sv := &Served{Root: root, Manifest: m, Hash: m.Hash(), Encoded: m.Encode(), fps: ix.fingerprints(m), racy: racy,
		changed: func() { rescans.Add(1) }}
	rel := m.Files[0].Path
	if _, status, err := readChunk(sv, rel, 0, make([]byte, ChunkSize)); status != StatusOK || err != nil {
		t.Fatalf("an unchanged racy file: status %d, %v", status, err)
	}
	// The same-tick write: new bytes, and a fingerprint as at the scan
	// (set here, as a coarse file clock would leave it).
	f0 := filepath.Join(root, rel)
	b, _ := os.ReadFile(f0)
	b[10] ^= 0xff
	if err := os.WriteFile(f0, b, 0o644); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(f0)
	sv.fps[0] = fingerprintOf(st)
	for _, read := range []func() (byte, error){
		func() (byte, error) { _, s, err := readChunk(sv, rel, 0, make([]byte, ChunkSize)); return s, err },
		func() (byte, error) { _, s, err := readRun(sv, 0, 1, make([]byte, ChunkSize)); return s, err },
	} {
		if status, err := read(); status != StatusChanged || err == nil {
			t.Fatalf("a racy file changed in the same tick: status %d, %v; want StatusChanged", status, err)
		}
	}
	if rescans.Load() != 1 {
		t.Fatalf("%d rescans asked for, want 1", rescans.Load())
	}
	// The rescan hashes it again though the index's fingerprint is the
	// file's: the new bytes make a new manifest.
	e := ix.Files[rel]
	e.FP = fingerprintOf(st)
	ix.Files[rel] = e
	m2, _, err := Scan(root, ix)
	if err != nil {
		t.Fatal(err)
	}
	if m2.Hash() == m.Hash() {
		t.Fatal("the rescan reused the racy file's old hashes")
	}
	// A file older than the window is not racy.
	old := time.Now().Add(-time.Minute)
	for _, f := range m2.Files {
		if err := os.Chtimes(filepath.Join(root, f.Path), old, old); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := Scan(root, ix); err != nil {
		t.Fatal(err)
	}
	if r := ix.racy(m2); r != nil {
		t.Fatalf("files a minute old are racy: %v", r)
	}
}

// A library whose scan found racy files scans the item again once they
// have settled: from then on its chunks are served without a hash each.
func TestLibraryRescansRacyItemsOnceSettled(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeBenchItem(t, filepath.Join(dir, "share", "fresh"), 2, 2<<20)
	tl := newTestLibrary(t, dir)
	racy := func() []bool {
		tl.mu.Lock()
		defer tl.mu.Unlock()
		if sv := tl.local["fresh"]; sv != nil {
			return sv.racy
		}
		return []bool{true}
	}
	if racy() == nil {
		t.Skip("the scan came more than 2 s after the files were written")
	}
	waitUntil(t, "the settled rescan", func() bool { return racy() == nil })
}
