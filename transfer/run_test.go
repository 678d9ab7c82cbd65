package transfer

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/rs/zerolog"
)

// runItem writes an item whose chunks, in manifest order, are: a (3
// bytes), c (5 bytes), d (2 chunks: 1 MiB and 1 byte), e (10 bytes); b is
// empty (no chunk) and local/x is user-owned.
func runItem(t *testing.T) *Served {
	t.Helper()
	root := t.TempDir()
	files := map[string][]byte{
		"a": []byte("aaa"), "b": nil, "c": []byte("ccccc"),
		"d": bytes.Repeat([]byte{'d'}, ChunkSize+1), "e": []byte("eeeeeeeeee"), "local/x": []byte("mine"),
	}
	for p, b := range files {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sv := servedOf(t, root)
	ig, err := LoadIgnore(root)
	if err != nil {
		t.Fatal(err)
	}
	sv.Ignore = ig
	return sv
}

// A run is the chunks laid end to end across files (an empty file has
// none); it must fit one chunk buffer, lie inside the manifest, and, for
// a partial item, be held whole.
func TestReadRun(t *testing.T) {
	t.Parallel()
	sv := runItem(t)
	buf := make([]byte, ChunkSize)
	cases := []struct {
		first, count uint64
		want         string
		status       byte
	}{
		{0, 2, "aaaccccc", StatusOK},
		{0, 1, "aaa", StatusOK},
		{3, 2, "d" + "eeeeeeeeee", StatusOK},
		{4, 1, "eeeeeeeeee", StatusOK},
		{1, 2, "", StatusRefused},  // c and d's first chunk: more than a chunk
		{4, 2, "", StatusNotFound}, // past the end
		{5, 1, "", StatusNotFound},
	}
	for _, c := range cases {
		b, st, err := readRun(sv, c.first, c.count, buf)
		if st != c.status || (st == StatusOK && (err != nil || string(b) != c.want)) || (st != StatusOK && err == nil) {
			t.Errorf("run %d+%d: %q, status %d, %v; want %q, status %d", c.first, c.count, b, st, err, c.want, c.status)
		}
	}
	partial := &Served{Root: sv.Root, Manifest: sv.Manifest, Hash: sv.Hash, partial: newChunkSet(5)}
	partial.partial.add(0)
	if _, st, err := readRun(partial, 0, 2, buf); st != StatusNotFound || err == nil {
		t.Errorf("a partial item served a run it does not hold whole: status %d, %v", st, err)
	}
	partial.partial.add(1)
	if b, st, err := readRun(partial, 0, 2, buf); st != StatusOK || string(b) != "aaaccccc" {
		t.Errorf("a partial item's held run: %q, status %d, %v", b, st, err)
	}
	// A file of the run replaced by a symlink out of the item.
	outside := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(outside, []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(sv.Root, "c")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(sv.Root, "c")); err != nil {
		t.Fatal(err)
	}
	if _, st, err := readRun(sv, 0, 2, buf); st != StatusRefused || err == nil {
		t.Errorf("a run followed a symlink out: status %d, %v", st, err)
	}
}

// countingServer serves sv and counts the chunk and run requests it gets;
// with old set it answers runs as a server that does not know them.
func countingServer(t *testing.T, sv *Served, old bool) (network.StreamHandler, *[2]int) {
	var counts [2]int
	srv := NewServer(func(h Hash) (*Served, bool) { return sv, h == sv.Hash }, zerolog.Nop(), Limits{})
	return func(s network.Stream) {
		srv.Handle(&requestTap{Stream: s, seen: func(req Request) bool {
			switch req.Kind {
			case ReqChunk:
				counts[0]++
			case ReqRun:
				counts[1]++
				return !old
			}
			return true
		}})
	}, &counts
}

// requestTap reads requests off the stream for the server, and refuses a
// request seen returns false for as an unknown kind, as an earlier
// version of the server did.
type requestTap struct {
	network.Stream
	seen   func(Request) bool
	buffer bytes.Buffer
}

func (r *requestTap) Read(b []byte) (int, error) {
	for r.buffer.Len() == 0 {
		var hdr [1]byte
		if _, err := io.ReadFull(r.Stream, hdr[:]); err != nil {
			return 0, err
		}
		body := make([]byte, hdr[0]) // requests of a run or chunk here are < 128 bytes
		if _, err := io.ReadFull(r.Stream, body); err != nil {
			return 0, err
		}
		req, err := DecodeRequest(body)
		if err == nil && !r.seen(req) {
			body[0] = 99 // answered "unknown request kind" by the real decoder
		}
		r.buffer.WriteByte(byte(len(body)))
		r.buffer.Write(body)
	}
	return r.buffer.Read(b)
}

// Many small files travel as runs: a download of 300 files of 1 KiB and
// one of 3 MiB takes a handful of requests, not one per file, and its
// result is identical. A server of an earlier version, which refuses
// runs as unknown, gets one chunk per request and is not counted as bad.
func TestSmallFilesTravelInRuns(t *testing.T) {
	t.Parallel()
	root := filepath.Join(t.TempDir(), "item")
	writeBenchItem(t, root, 300, 300<<10)
	if err := os.WriteFile(filepath.Join(root, "big"), bytes.Repeat([]byte("x"), 3<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	sv := servedOf(t, root)
	for _, old := range []bool{false, true} {
		t.Run(fmt.Sprintf("old=%v", old), func(t *testing.T) {
			src, dst := testHost(t, "tcp"), testHost(t, "tcp")
			connect(t, dst, src)
			h, counts := countingServer(t, sv, old)
			src.SetStreamHandler(benchProto, h)
			staging := t.TempDir()
			pr := &Progress{}
			if _, err := Download(context.Background(), DownloadConfig{Host: dst, Protocol: benchProto, Manifest: sv.Hash,
				Sources: []peer.ID{src.ID()}, Staging: staging, Progress: pr, Logger: zerolog.Nop()}); err != nil {
				t.Fatal(err)
			}
			sameTree(t, sv, filepath.Join(staging, stagingData))
			if len(pr.BadSources()) != 0 {
				t.Fatalf("bad sources: %v", pr.BadSources())
			}
			chunks, runs := counts[0], counts[1]
			if !old && (runs == 0 || chunks+runs > 20) {
				t.Fatalf("%d chunk and %d run requests for 303 chunks", chunks, runs)
			}
			if old && chunks < 303 {
				t.Fatalf("an old server answered %d chunk requests for 303 chunks", chunks)
			}
		})
	}
}

// sameTree fails unless dir holds exactly sv's files with their bytes.
func sameTree(t *testing.T, sv *Served, dir string) {
	t.Helper()
	for _, f := range sv.Manifest.Files {
		want, err := os.ReadFile(filepath.Join(sv.Root, f.Path))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(dir, f.Path))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s differs: %v", f.Path, err)
		}
	}
	m, _, err := Scan(dir, nil)
	if err != nil || m.Hash() != sv.Hash {
		t.Fatalf("the copy's manifest differs (%v)", err)
	}
}

// A source that corrupts one chunk inside a run: the chunks before it
// are kept, the source is reported, and the download finishes from an
// honest one.
func TestBadChunkInsideARun(t *testing.T) {
	t.Parallel()
	root := filepath.Join(t.TempDir(), "item")
	writeBenchItem(t, root, 64, 64<<10)
	sv := servedOf(t, root)
	liar, honest, dst := testHost(t, "tcp"), testHost(t, "tcp"), testHost(t, "tcp")
	connect(t, dst, liar)
	connect(t, dst, honest)
	serve(honest, sv)
	srv := NewServer(func(h Hash) (*Served, bool) { return sv, h == sv.Hash }, zerolog.Nop(), Limits{})
	liar.SetStreamHandler(benchProto, func(s network.Stream) { srv.Handle(corruptor{s}) })
	pr := &Progress{}
	staging := t.TempDir() // holding the manifest: the liar sends only chunks
	if err := os.WriteFile(filepath.Join(staging, stagingManifest), sv.Encoded, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Download(context.Background(), DownloadConfig{Host: dst, Protocol: benchProto, Manifest: sv.Hash,
		Sources: []peer.ID{liar.ID()}, Staging: staging, Progress: pr, Logger: zerolog.Nop(),
		MoreSources: func() []peer.ID { return []peer.ID{honest.ID()} }})
	if err != nil {
		t.Fatal(err)
	}
	why, ok := pr.BadSources()[liar.ID()]
	if !ok || !strings.Contains(why, "does not match the manifest") {
		t.Fatalf("the liar was not reported: %v", pr.BadSources())
	}
	if pr.Sources()[liar.ID()] == 0 {
		t.Fatalf("the run's chunks before the bad one were not kept")
	}
}

// corruptor flips a byte in the middle of every response of more than 2
// KiB: in a run of 1 KiB chunks, one in the middle goes bad.
type corruptor struct{ network.Stream }

func (c corruptor) Write(b []byte) (int, error) {
	if len(b) > 2048 {
		b = append([]byte(nil), b...)
		b[len(b)/2] ^= 0xff
	}
	return c.Stream.Write(b)
}
