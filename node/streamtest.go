package node

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// The stream test is a raw-stream baseline for transfer benchmarks: one
// libp2p stream between two running daemons, carrying N bytes and nothing
// else (no files, no hashing, no framing). Wire format: the client sends N
// as 8 bytes big-endian; the server writes N bytes and closes the stream.
//
// The receiver drops the bytes, or with to_disk writes them to a file in
// its data dir and fsyncs it: a download has to reach the disk, so on a
// disk slower than the stream that is the rate a download can hope for.
const (
	streamTestProto = "stream-test/1"
	// StreamTestDefault is the size of a stream test when the request
	// names none.
	StreamTestDefault = int64(1) << 30
	// StreamTestMax is the largest stream test a node serves or asks for.
	StreamTestMax = int64(64) << 30
	// streamTestBuf is the size of the sender's block of data and of the
	// receiver's read buffer.
	streamTestBuf = 1 << 20
	// maxStreamTests is the stream tests a node serves at once.
	maxStreamTests = 2
	// dirStreamTest is the folder of the data dir holding a to_disk
	// test's file while it runs.
	dirStreamTest = "tmp"
	// streamTestFilePattern names those files (os.CreateTemp).
	streamTestFilePattern = "stream-test-*"
)

// streamTestData is 1 MiB of pseudo-random bytes the server sends over
// and over, so that no compression along the way can flatter the figure.
var streamTestData = sync.OnceValue(func() []byte {
	b := make([]byte, streamTestBuf)
	r := rand.NewChaCha8([32]byte{'m', 'e', 's', 'h', 'n', 'o', 'd', 'e'})
	_, _ = r.Read(b)
	return b
})

// registerStreamTest serves the stream test to authenticated fleet members.
func (n *Node) registerStreamTest() {
	n.Auth.Handle(n.Fleet.Protocol(streamTestProto), n.serveStreamTest)
}

func (n *Node) serveStreamTest(s network.Stream) {
	var hdr [8]byte
	_ = s.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(s, hdr[:]); err != nil {
		s.Reset()
		return
	}
	_ = s.SetReadDeadline(time.Time{})
	size := int64(binary.BigEndian.Uint64(hdr[:]))
	if size < 0 || size > StreamTestMax {
		n.lg.Debug().Str("peer", s.Conn().RemotePeer().String()).Uint64("bytes", binary.BigEndian.Uint64(hdr[:])).Msg("stream test over the limit refused")
		s.Reset()
		return
	}
	// A baseline for benchmarks, not a service: two at a time, and a
	// reader that stops reading is cut off.
	if n.streamTests.Add(1) > maxStreamTests {
		n.streamTests.Add(-1)
		n.lg.Debug().Str("peer", s.Conn().RemotePeer().String()).Msg("stream test refused: two already running")
		s.Reset()
		return
	}
	defer n.streamTests.Add(-1)
	data := streamTestData()
	for left := size; left > 0; {
		k := min(left, int64(len(data)))
		_ = s.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, err := s.Write(data[:k]); err != nil {
			s.Reset()
			return
		}
		left -= k
	}
	_ = s.Close()
}

// StreamTestRequest is the body of POST /v1/debug/stream-test.
type StreamTestRequest struct {
	Peer  string `json:"peer"`
	Bytes int64  `json:"bytes"`
	// ToDisk writes the bytes to a file in the receiver's data dir and
	// fsyncs it before the clock stops, instead of dropping them.
	ToDisk bool `json:"to_disk,omitempty"`
}

// StreamTestResult is the answer of POST /v1/debug/stream-test.
type StreamTestResult struct {
	Peer      string  `json:"peer"`
	Bytes     int64   `json:"bytes"`
	Seconds   float64 `json:"seconds"`
	MBPerSec  float64 `json:"mb_per_s"` // 10^6 bytes per second
	Transport string  `json:"transport"`
	ToDisk    bool    `json:"to_disk,omitempty"`
}

// errStreamTestShort is a stream test that ended before its last byte.
var errStreamTestShort = errors.New("stream ended early")

// StreamTest pulls size bytes from peer p over one raw stream on the
// existing connection and reports how long it took. With toDisk the bytes
// go to a new file in the data dir's tmp folder, written as they are read
// (through the same 1 MiB buffer, so each write is what one read returned:
// one frame of the stream, some 64 KiB over TCP), and the file is fsynced
// before the clock stops; it is created before the clock starts and
// removed after. Reading and writing take turns, never overlap.
func (n *Node) StreamTest(ctx context.Context, p peer.ID, size int64, toDisk bool) (StreamTestResult, error) {
	res := StreamTestResult{Peer: p.String(), Bytes: size, ToDisk: toDisk}
	var dst io.Writer = io.Discard
	var file *os.File
	if toDisk {
		f, err := n.streamTestFile()
		if err != nil {
			return res, err
		}
		defer n.removeStreamTestFile(f)
		dst, file = f, f
	}
	start := time.Now()
	s, err := n.Host.NewStream(ctx, p, n.Fleet.Protocol(streamTestProto))
	if err != nil {
		return res, fmt.Errorf("open stream: %w", err)
	}
	// NewStream's context only bounds the opening; the transfer itself
	// stops when ctx ends (the client went away, the node is stopping).
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			s.Reset()
		case <-done:
		}
	}()
	res.Transport = streamTransport(s.Conn().RemoteMultiaddr())
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(size))
	if _, err := s.Write(hdr[:]); err != nil {
		s.Reset()
		return res, fmt.Errorf("send the size: %w", err)
	}
	_ = s.CloseWrite()
	// The wrappers hide *os.File's ReadFrom and io.Discard's, which
	// would each copy through a buffer of their own (32 KiB, 8 KiB)
	// instead of this one; the limit lets one byte too many show.
	buf := make([]byte, streamTestBuf)
	got, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{io.LimitReader(s, size+1)}, buf)
	if err != nil {
		s.Reset()
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		return res, fmt.Errorf("after %d of %d bytes: %w", got, size, err)
	}
	if got > size {
		s.Reset()
		return res, fmt.Errorf("peer sent more than the %d bytes asked for", size)
	}
	_ = s.Close()
	if got != size {
		return res, fmt.Errorf("%w: %d of %d bytes", errStreamTestShort, got, size)
	}
	if file != nil {
		if err := file.Sync(); err != nil {
			return res, fmt.Errorf("fsync %s: %w", file.Name(), err)
		}
	}
	res.Seconds = time.Since(start).Seconds()
	if file != nil && streamTestWritten != nil {
		streamTestWritten(file.Name())
	}
	if res.Seconds > 0 {
		res.MBPerSec = float64(size) / 1e6 / res.Seconds
	}
	return res, nil
}

// streamTestWritten, if set (by tests), sees a to_disk test's file after
// the fsync, before it is removed.
var streamTestWritten func(path string)

// streamTestFiles counts the to_disk tests running, by folder, so that
// the first of them can delete what a killed daemon left behind.
var streamTestFiles = struct {
	sync.Mutex
	running map[string]int
}{running: map[string]int{}}

// streamTestFile creates a to_disk test's file (mode 0600) in the data
// dir's tmp folder.
func (n *Node) streamTestFile() (*os.File, error) {
	dir := filepath.Join(n.cfg.DataDir, dirStreamTest)
	streamTestFiles.Lock()
	defer streamTestFiles.Unlock()
	if streamTestFiles.running[dir] == 0 {
		// No test runs: any such file is a leftover.
		old, _ := filepath.Glob(filepath.Join(dir, streamTestFilePattern))
		for _, p := range old {
			_ = os.Remove(p)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("stream test file: %w", err)
	}
	f, err := os.CreateTemp(dir, streamTestFilePattern)
	if err != nil {
		return nil, fmt.Errorf("stream test file: %w", err)
	}
	streamTestFiles.running[dir]++
	return f, nil
}

// removeStreamTestFile closes and removes a to_disk test's file, and its
// folder once empty.
func (n *Node) removeStreamTestFile(f *os.File) {
	dir := filepath.Dir(f.Name())
	_ = f.Close()
	if err := os.Remove(f.Name()); err != nil {
		n.lg.Warn().Err(err).Msg("stream test file not removed")
	}
	streamTestFiles.Lock()
	defer streamTestFiles.Unlock()
	if streamTestFiles.running[dir]--; streamTestFiles.running[dir] <= 0 {
		delete(streamTestFiles.running, dir)
		_ = os.Remove(dir) // only if empty
	}
}

// streamTransport names a connection's transport: "quic" or "tcp", or
// the whole multiaddr for anything else (a relayed connection, say).
func streamTransport(a ma.Multiaddr) string {
	s := a.String()
	switch {
	case strings.Contains(s, "/p2p-circuit"):
		return s
	case strings.Contains(s, "/quic-v1"):
		return "quic"
	case strings.Contains(s, "/tcp/"):
		return "tcp"
	}
	return s
}

func (n *Node) handleStreamTest(w http.ResponseWriter, r *http.Request) {
	const usage = `body must be JSON like {"peer": "<peer id>", "bytes": 1073741824, "to_disk": false} (bytes optional, default 1 GiB; to_disk writes them to a file in this node's data dir and fsyncs it)`
	b, ok := readBody(w, r, 4096, "stream test request")
	if !ok {
		return
	}
	var req StreamTestRequest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "bad_body", usage+": "+err.Error())
		return
	}
	if req.Bytes == 0 {
		req.Bytes = StreamTestDefault
	}
	if req.Bytes < 0 || req.Bytes > StreamTestMax {
		writeError(w, http.StatusBadRequest, "bad_body", fmt.Sprintf("bytes must be between 1 and %d (64 GiB), not %d", StreamTestMax, req.Bytes))
		return
	}
	if req.Peer == "" {
		writeError(w, http.StatusBadRequest, "bad_body", usage+": no peer")
		return
	}
	p, err := peer.Decode(req.Peer)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_peer", fmt.Sprintf("peer %q is not a peer ID: %v", req.Peer, err))
		return
	}
	switch {
	case p == n.ID():
		writeError(w, http.StatusBadRequest, "bad_peer", "peer "+req.Peer+" is this node; name another member (see GET /v1/peers)")
		return
	case n.Host.Network().Connectedness(p) != network.Connected:
		writeError(w, http.StatusBadRequest, "bad_peer", "no connection to peer "+req.Peer+" (see GET /v1/peers)")
		return
	case !n.Auth.IsAuthenticated(p):
		writeError(w, http.StatusBadRequest, "bad_peer", "peer "+req.Peer+" has not authenticated as a fleet member")
		return
	}
	ctx, cancel := n.apiContext(r.Context())
	defer cancel()
	res, err := n.StreamTest(ctx, p, req.Bytes, req.ToDisk)
	if err != nil {
		writeError(w, http.StatusBadGateway, "stream_failed", fmt.Sprintf("stream test from %s: %v", req.Peer, err))
		return
	}
	writeJSON(w, http.StatusOK, res)
}
