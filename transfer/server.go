package transfer

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/internal/frame"
)

// Served is an item this node serves under one manifest: complete, or
// still downloading (partial), in which case only the chunks it holds
// verified are served.
type Served struct {
	Root     string
	Manifest *Manifest
	Hash     Hash // of Encoded, computed once
	Encoded  []byte
	Ignore   *Ignore

	partial *chunkSet // nil for a complete item
	firsts  []int     // Manifest.firstChunks(), for partial
}

// Partial reports whether the item is still downloading.
func (sv *Served) Partial() bool { return sv.partial != nil }

// chunkPool holds buffers for one chunk with room for a response header
// in front.
var chunkPool = sync.Pool{New: func() any { b := make([]byte, respHeader+ChunkSize); return &b }}

// Limits bound the streams a server runs at once. Each stream reads one
// chunk at a time, so they also bound the disk reads and the memory (one
// chunk buffer per stream) that peers can cause.
type Limits struct {
	// PerPeer is the streams one peer may hold. Default 8.
	PerPeer int
	// Total is the streams all peers together may hold. Default 256.
	Total int
}

// Server answers manifest and chunk requests on the transfer protocol.
// Each stream carries requests and responses in order, so a client may
// pipeline several. A stream beyond the limits is answered StatusBusy and
// closed.
type Server struct {
	lookup func(Hash) (*Served, bool)
	lg     zerolog.Logger
	limits Limits

	mu      sync.Mutex
	streams map[peer.ID]int
	total   int
	served  uint64
	refused uint64
	busy    uint64
}

// NewServer returns a server over lookup, which returns what this node
// serves for a manifest hash.
func NewServer(lookup func(Hash) (*Served, bool), lg zerolog.Logger, limits Limits) *Server {
	if limits.PerPeer <= 0 {
		limits.PerPeer = 8
	}
	if limits.Total <= 0 {
		limits.Total = 256
	}
	return &Server{lookup: lookup, lg: lg.With().Str("component", "transfer-server").Logger(), limits: limits, streams: map[peer.ID]int{}}
}

// Stats returns chunks served, requests refused and streams turned away
// as busy.
func (s *Server) Stats() (served, refused, busy uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.served, s.refused, s.busy
}

// Handle serves one stream until the client closes it.
func (s *Server) Handle(st network.Stream) {
	p := st.Conn().RemotePeer()
	defer st.Close()
	s.mu.Lock()
	var busy string
	switch {
	case s.streams[p] >= s.limits.PerPeer:
		busy = fmt.Sprintf("this peer already holds %d transfer streams here", s.streams[p])
	case s.total >= s.limits.Total:
		busy = fmt.Sprintf("this node already serves %d transfer streams", s.total)
	default:
		s.streams[p]++
		s.total++
	}
	if busy != "" {
		s.busy++
	}
	s.mu.Unlock()
	if busy != "" {
		_ = frame.Write(st, Response{Status: StatusBusy, Payload: []byte(busy)}.Encode())
		return
	}
	defer func() {
		s.mu.Lock()
		s.total--
		if s.streams[p]--; s.streams[p] <= 0 {
			delete(s.streams, p)
		}
		s.mu.Unlock()
	}()
	br := bufio.NewReader(st)
	for {
		_ = st.SetReadDeadline(time.Now().Add(2 * time.Minute))
		b, err := frame.Read(br, maxRequest)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				s.lg.Debug().Str("peer", p.String()).Err(err).Msg("transfer stream ended")
			}
			return
		}
		_ = st.SetWriteDeadline(time.Now().Add(2 * time.Minute))
		if err := s.respond(st, p, b); err != nil {
			return
		}
	}
}

// respond answers one request. A chunk is read into a pooled buffer
// behind room for the frame header and written with one call, uncopied.
func (s *Server) respond(w io.Writer, p peer.ID, b []byte) error {
	req, err := DecodeRequest(b)
	if err != nil {
		return frame.Write(w, s.refuse(p, StatusRefused, err.Error()).Encode())
	}
	sv, ok := s.lookup(req.Manifest)
	if !ok {
		return frame.Write(w, Response{Status: StatusNotFound, Payload: []byte("manifest " + req.Manifest.String() + " is not served here")}.Encode())
	}
	switch req.Kind {
	case ReqManifest:
		return frame.Write(w, Response{Status: StatusOK, Payload: sv.Encoded}.Encode())
	case ReqHave:
		var bits []byte
		if sv.partial != nil {
			bits = sv.partial.bitmap()
		}
		return frame.Write(w, Response{Status: StatusOK, Payload: encodeHave(bits)}.Encode())
	}
	buf := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(buf)
	data, status, err := readChunk(sv, req.Path, req.Chunk, (*buf)[respHeader:])
	if err != nil {
		return frame.Write(w, s.refuse(p, status, err.Error()).Encode())
	}
	s.mu.Lock()
	s.served++
	s.mu.Unlock()
	var hdr [respHeader]byte
	h := append(binary.AppendUvarint(hdr[:0], uint64(1+len(data))), StatusOK)
	start := respHeader - len(h)
	copy((*buf)[start:], h)
	_, err = w.Write((*buf)[start : respHeader+len(data)])
	return err
}

func (s *Server) refuse(p peer.ID, status byte, msg string) Response {
	if status == StatusRefused {
		s.mu.Lock()
		s.refused++
		s.mu.Unlock()
		s.lg.Warn().Str("peer", p.String()).Str("why", msg).Msg("transfer request refused")
	}
	return Response{Status: status, Payload: []byte(msg)}
}

// readChunk reads chunk i of the file at rel inside the served item into
// buf (ChunkSize bytes). The path must be clean and relative, listed in
// the manifest, not user-owned, and resolve to a regular file inside the
// root: os.Root refuses ".." and symlinks that lead out. A partial item
// serves only the chunks it holds verified.
func readChunk(sv *Served, rel string, i uint64, buf []byte) ([]byte, byte, error) {
	if err := CheckPath(rel); err != nil {
		return nil, StatusRefused, err
	}
	if sv.Ignore != nil && sv.Ignore.Ignored(rel) {
		return nil, StatusRefused, fmt.Errorf("path %q is in the user-owned part of the item", rel)
	}
	idx, ok := sv.Manifest.fileIndex(rel)
	if !ok {
		return nil, StatusNotFound, fmt.Errorf("path %q is not in the manifest", rel)
	}
	f := sv.Manifest.Files[idx]
	if i >= uint64(len(f.Chunks)) {
		return nil, StatusNotFound, fmt.Errorf("%s has %d chunks, not %d", rel, len(f.Chunks), i+1)
	}
	if sv.partial != nil && !sv.partial.has(sv.firsts[idx]+int(i)) {
		return nil, StatusNotFound, fmt.Errorf("chunk %d of %s is not downloaded here yet", i, rel)
	}
	root, err := os.OpenRoot(sv.Root)
	if err != nil {
		return nil, StatusError, fmt.Errorf("open item: %v", err)
	}
	defer root.Close()
	fh, err := root.Open(rel)
	if err != nil {
		return nil, StatusRefused, fmt.Errorf("open %s: %v", rel, err)
	}
	defer fh.Close()
	if fi, err := fh.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, StatusRefused, fmt.Errorf("%s is not a regular file", rel)
	}
	buf = buf[:ChunkLen(f.Size, int(i))]
	if _, err := fh.ReadAt(buf, int64(i)*ChunkSize); err != nil {
		return nil, StatusError, fmt.Errorf("read %s: %v", rel, err)
	}
	return buf, StatusOK, nil
}
