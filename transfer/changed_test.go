package transfer

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

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
