package transfer

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/internal/frame"
)

// gatedStream holds back chunk responses after the first free ones until
// the gate opens.
type gatedStream struct {
	network.Stream
	sent *atomic.Int32
	free int32
	gate chan struct{}
}

func (s gatedStream) Write(b []byte) (int, error) {
	if len(b) > 1<<16 && s.sent.Add(1) > s.free {
		<-s.gate
	}
	return s.Stream.Write(b)
}

// exchange sends one request on st and reads its response.
func exchange(t *testing.T, st network.Stream, br *bufio.Reader, req Request) Response {
	t.Helper()
	if err := frame.Write(st, req.Encode()); err != nil {
		t.Fatal(err)
	}
	raw, err := frame.Read(br, maxResponse)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := DecodeResponse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A holds an item and lets only 10 chunks out; B downloads it and serves
// what it has verified; C downloads from B alone. B answers which chunks
// it holds, refuses the others, and C finishes from B once A lets the
// rest through: a downloader is a source for the others.
func TestPartialHolderServesVerifiedChunks(t *testing.T) {
	root := filepath.Join(t.TempDir(), "item")
	writeBenchItem(t, root, 4, 24<<20)
	sv := servedOf(t, root)
	a, b, c := testHost(t, "quic"), testHost(t, "quic"), testHost(t, "quic")
	connect(t, b, a)
	connect(t, c, b)

	gate := make(chan struct{})
	var sent atomic.Int32
	srvA := NewServer(func(h Hash) (*Served, bool) { return sv, h == sv.Hash }, zerolog.Nop(), Limits{})
	a.SetStreamHandler(benchProto, func(s network.Stream) {
		srvA.Handle(gatedStream{Stream: s, sent: &sent, free: 10, gate: gate})
	})
	var partialB atomic.Pointer[Served]
	srvB := NewServer(func(h Hash) (*Served, bool) {
		p := partialB.Load()
		return p, p != nil && p.Hash == h
	}, zerolog.Nop(), Limits{})
	b.SetStreamHandler(benchProto, srvB.Handle)

	var wg sync.WaitGroup
	defer wg.Wait()
	defer func() {
		select {
		case <-gate:
		default:
			close(gate)
		}
	}()
	prB, prC := &Progress{}, &Progress{}
	stagingB, stagingC := t.TempDir(), t.TempDir()
	errs := make(chan error, 2)
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, err := Download(context.Background(), DownloadConfig{Host: b, Protocol: benchProto, Manifest: sv.Hash, Sources: []peer.ID{a.ID()},
			Staging: stagingB, Progress: prB, Logger: zerolog.Nop(), Serve: func(p *Served) { partialB.Store(p) }})
		errs <- err
	}()
	waitUntil(t, "B holding 10 chunks", func() bool { return prB.Done.Load() == 10*ChunkSize })

	// B's answers while it holds 10 chunks.
	st, err := c.NewStream(context.Background(), b.ID(), benchProto)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(st)
	call := func(req Request) Response { return exchange(t, st, br, req) }
	resp := call(Request{Kind: ReqHave, Manifest: sv.Hash})
	bits, err := decodeHave(resp.Payload, sv.Manifest.Chunks())
	if resp.Status != StatusOK || err != nil || bits == nil {
		t.Fatalf("have answer: status %d, %v, complete=%v", resp.Status, err, bits == nil)
	}
	held, missing := -1, -1
	count := 0
	for g := range sv.Manifest.Chunks() {
		if bitSet(bits, g) {
			count++
			held = g
		} else {
			missing = g
		}
	}
	if count != 10 {
		t.Fatalf("B says it holds %d chunks, it wrote 10", count)
	}
	chunkReq := func(g int) Request {
		firsts := sv.Manifest.firstChunks()
		for i := len(firsts) - 1; i >= 0; i-- {
			if g >= firsts[i] {
				return Request{Kind: ReqChunk, Manifest: sv.Hash, Path: sv.Manifest.Files[i].Path, Chunk: uint64(g - firsts[i])}
			}
		}
		t.Fatalf("no chunk %d", g)
		return Request{}
	}
	if r := call(chunkReq(missing)); r.Status != StatusNotFound || !bytes.Contains(r.Payload, []byte("not downloaded here yet")) {
		t.Fatalf("chunk B lacks: status %d, %d bytes (%.60q)", r.Status, len(r.Payload), r.Payload)
	}
	req := chunkReq(held)
	r := call(req)
	want, _ := os.ReadFile(filepath.Join(root, req.Path))
	off := int(req.Chunk) * ChunkSize
	if r.Status != StatusOK || !bytes.Equal(r.Payload, want[off:min(off+ChunkSize, len(want))]) {
		t.Fatalf("chunk B holds: status %d, %d bytes", r.Status, len(r.Payload))
	}
	st.Close()

	wg.Add(1)
	go func() {
		defer wg.Done()
		_, err := Download(context.Background(), DownloadConfig{Host: c, Protocol: benchProto, Manifest: sv.Hash, Sources: []peer.ID{b.ID()},
			Staging: stagingC, Progress: prC, Logger: zerolog.Nop()})
		errs <- err
	}()
	waitUntil(t, "C holding B's 10 chunks", func() bool { return prC.Done.Load() >= 10*ChunkSize })
	close(gate)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := prC.Sources()[b.ID()]; got != sv.Manifest.Size() {
		t.Fatalf("C got %d of %d bytes from B", got, sv.Manifest.Size())
	}
	sameStaged(t, sv, stagingC)
}

// sameStaged checks that a download staged in staging holds sv's bytes.
func sameStaged(t *testing.T, sv *Served, staging string) {
	t.Helper()
	for _, f := range sv.Manifest.Files {
		want, _ := os.ReadFile(filepath.Join(sv.Root, f.Path))
		got, _ := os.ReadFile(filepath.Join(staging, stagingData, f.Path))
		if !bytes.Equal(want, got) {
			t.Fatalf("staged %s differs from the holder's", f.Path)
		}
	}
}

// The disk fills up in the middle of a download: the download stops with
// an error that says so, the chunks written before stay verified, and a
// second run resumes from them and finishes with the holder's bytes.
func TestDiskFullMidDownload(t *testing.T) {
	root := filepath.Join(t.TempDir(), "item")
	writeBenchItem(t, root, 2, 16<<20)
	sv := servedOf(t, root)
	src, dst := testHost(t, "tcp"), testHost(t, "tcp")
	serve(src, sv)
	connect(t, dst, src)
	staging := t.TempDir()
	var writes atomic.Int32
	full := func(f *os.File, b []byte, off int64) (int, error) {
		if writes.Add(1) > 5 {
			return 0, &os.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
		}
		return f.WriteAt(b, off)
	}
	cfg := DownloadConfig{Host: dst, Protocol: benchProto, Manifest: sv.Hash, Sources: []peer.ID{src.ID()}, Staging: staging, Logger: zerolog.Nop(), writeAt: full, Writers: 1}
	_, err := Download(context.Background(), cfg)
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("disk full: got %v, want ErrNoSpace naming the cause", err)
	}
	pr := &Progress{}
	cfg.writeAt, cfg.Progress = nil, pr
	if _, err := Download(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if pr.Resumed.Load() != 5*ChunkSize || pr.Fetched.Load() != sv.Manifest.Size()-5*ChunkSize {
		t.Fatalf("second run resumed %d and fetched %d bytes, want the 5 written chunks kept", pr.Resumed.Load(), pr.Fetched.Load())
	}
	sameStaged(t, sv, staging)
}

// A server holds at most PerPeer streams per peer and Total in all; a
// stream beyond either is answered busy with the reason.
func TestServerStreamLimits(t *testing.T) {
	root := filepath.Join(t.TempDir(), "item")
	writeBenchItem(t, root, 1, 1<<20)
	sv := servedOf(t, root)
	srvHost := testHost(t, "tcp")
	srv := NewServer(func(h Hash) (*Served, bool) { return sv, h == sv.Hash }, zerolog.Nop(), Limits{PerPeer: 2, Total: 3})
	srvHost.SetStreamHandler(benchProto, srv.Handle)
	// open starts a stream from h and returns the answer to ReqHave.
	open := func(h host.Host) Response {
		t.Helper()
		st, err := h.NewStream(context.Background(), srvHost.ID(), benchProto)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return exchange(t, st, bufio.NewReader(st), Request{Kind: ReqHave, Manifest: sv.Hash})
	}
	a, b, c := testHost(t, "tcp"), testHost(t, "tcp"), testHost(t, "tcp")
	for _, h := range []host.Host{a, b, c} {
		connect(t, h, srvHost)
	}
	for i := range 2 {
		if r := open(a); r.Status != StatusOK {
			t.Fatalf("a's stream %d: status %d %q", i+1, r.Status, r.Payload)
		}
	}
	if r := open(a); r.Status != StatusBusy || !strings.Contains(string(r.Payload), "this peer already holds 2") {
		t.Fatalf("a's third stream: status %d %q, want busy per peer", r.Status, r.Payload)
	}
	if r := open(b); r.Status != StatusOK {
		t.Fatalf("b's stream: status %d %q", r.Status, r.Payload)
	}
	if r := open(c); r.Status != StatusBusy || !strings.Contains(string(r.Payload), "already serves 3") {
		t.Fatalf("c's stream: status %d %q, want busy in total", r.Status, r.Payload)
	}
}
