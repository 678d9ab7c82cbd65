package transfer

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/rs/zerolog"
	"github.com/zeebo/blake3"
	"golang.org/x/time/rate"

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

	// fps are the files' fingerprints at the scan that made Manifest, in
	// its order (nil: not checked, as for a download's staging, which
	// only this node writes). A file whose fingerprint moved on is not
	// served (StatusChanged), and changed is called, once, to rescan.
	fps []fingerprint
	// racy marks, in Manifest's order, files modified so shortly before
	// their scan that their fingerprint cannot vouch for them
	// (indexEntry.Racy): each chunk of one is checked against its hash
	// before it is sent. Nil: none.
	racy        []bool
	changed     func()
	changedOnce sync.Once

	firstsOnce sync.Once
	firsts     []int // Manifest.firstChunks()
}

// chunkFirsts returns, per file, the manifest-wide index of its first
// chunk, computed once.
func (sv *Served) chunkFirsts() []int {
	sv.firstsOnce.Do(func() {
		if sv.firsts == nil {
			sv.firsts = sv.Manifest.firstChunks()
		}
	})
	return sv.firsts
}

// span returns the manifest-wide chunks a chunk or run request names,
// when they are in the manifest.
func (sv *Served) span(req Request) (first, count int, ok bool) {
	if req.Kind == ReqRun {
		if total := uint64(sv.Manifest.Chunks()); req.Chunk < total && req.Count <= total-req.Chunk {
			return int(req.Chunk), int(req.Count), true
		}
		return 0, 0, false
	}
	fi, found := sv.Manifest.fileIndex(req.Path)
	if !found || req.Chunk >= uint64(len(sv.Manifest.Files[fi].Chunks)) {
		return 0, 0, false
	}
	return sv.chunkFirsts()[fi] + int(req.Chunk), 1, true
}

// spanBytes is the length of chunks first..first+count-1 (a valid span),
// at most what one response carries.
func (sv *Served) spanBytes(first, count int) int {
	firsts := sv.chunkFirsts()
	fi := sort.Search(len(firsts), func(i int) bool { return firsts[i] > first }) - 1
	n := 0
	for g := first; g < first+count && n < ChunkSize; g++ {
		for g >= firsts[fi]+len(sv.Manifest.Files[fi].Chunks) {
			fi++
		}
		n += ChunkLen(sv.Manifest.Files[fi].Size, g-firsts[fi])
	}
	return min(n, ChunkSize)
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
	// SpreadCopies is how many peers a chunk of a complete item goes to
	// within SpreadWindow before others are sent to them (spread.go).
	// Default 2; negative: no limit.
	SpreadCopies int
	// SpreadWindow: default 3 s.
	SpreadWindow time.Duration
	// Spread, if set, says whether to spread now (every peer reads
	// StatusElsewhere); nil: always. Called per request: must be cheap.
	Spread func() bool
	// SendRate bounds the bytes per second of chunks this server sends,
	// all peers together (0: no bound). A chunk waits for its turn
	// before it is sent, so a bound below about 64 KiB/s makes one 1 MiB
	// chunk wait many seconds.
	SendRate int64
}

// Server answers manifest and chunk requests on the transfer protocol.
// Each stream carries requests and responses in order, so a client may
// pipeline several. A stream beyond the limits is answered StatusBusy and
// closed.
type Server struct {
	lookup func(Hash) (*Served, bool)
	lg     zerolog.Logger
	limits Limits

	spread *spreader
	pacer  *rate.Limiter // nil: no SendRate

	mu        sync.Mutex
	ctx       context.Context // ends waits for the send rate (bindContext)
	streams   map[peer.ID]int
	total     int
	served    uint64
	refused   uint64
	busy      uint64
	elsewhere uint64
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
	if limits.SpreadCopies == 0 {
		limits.SpreadCopies = 2
	}
	if limits.SpreadWindow <= 0 {
		limits.SpreadWindow = 3 * time.Second
	}
	s := &Server{lookup: lookup, lg: lg.With().Str("component", "transfer-server").Logger(), limits: limits, streams: map[peer.ID]int{},
		spread: newSpreader(limits.SpreadCopies, limits.SpreadWindow), ctx: context.Background()}
	if limits.SendRate > 0 {
		s.pacer = rate.NewLimiter(rate.Limit(limits.SendRate), ChunkSize)
	}
	return s
}

// bindContext makes the server's waits for its send rate end when ctx
// does (the library's run: a stopping node does not wait for them).
func (s *Server) bindContext(ctx context.Context) {
	s.mu.Lock()
	s.ctx = ctx
	s.mu.Unlock()
}

// pace waits until n more bytes may be sent under SendRate.
func (s *Server) pace(n int) error {
	if s.pacer == nil {
		return nil
	}
	r := s.pacer.ReserveN(time.Now(), n)
	if !r.OK() {
		return fmt.Errorf("transfer: %d bytes exceed the send rate's burst", n)
	}
	d := r.Delay()
	if d == 0 {
		return nil
	}
	s.mu.Lock()
	ctx := s.ctx
	s.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		r.Cancel()
		return ctx.Err()
	}
}

// Stats returns chunks served, requests refused and streams turned away
// as busy.
func (s *Server) Stats() (served, refused, busy uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.served, s.refused, s.busy
}

// Elsewhere returns the chunk requests answered StatusElsewhere: sent to
// peers that had them (spread.go).
func (s *Server) Elsewhere() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.elsewhere
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
	// Spreading first (a chunk sent elsewhere costs no read), then the
	// send rate, then the read.
	first, count, spanOK := sv.span(req)
	spreading := spanOK && sv.partial == nil && (s.limits.Spread == nil || s.limits.Spread())
	if spanOK {
		if spreading {
			if err := s.spread.admit(req.Manifest, first, count, p); err != nil {
				s.mu.Lock()
				s.elsewhere++
				s.mu.Unlock()
				return frame.Write(w, Response{Status: StatusElsewhere, Payload: []byte(err.Error())}.Encode())
			}
		}
		if err := s.pace(sv.spanBytes(first, count)); err != nil {
			return err
		}
	}
	buf := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(buf)
	var data []byte
	var status byte
	if req.Kind == ReqRun {
		data, status, err = readRun(sv, req.Chunk, req.Count, (*buf)[respHeader:])
	} else {
		data, status, err = readChunk(sv, req.Path, req.Chunk, (*buf)[respHeader:])
	}
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
	if _, err = w.Write((*buf)[start : respHeader+len(data)]); err == nil && spreading {
		s.spread.touch(req.Manifest, first, count)
	}
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
// buf (ChunkSize bytes). The path must be clean and relative, and listed
// in the manifest; openFile checks the rest.
func readChunk(sv *Served, rel string, i uint64, buf []byte) ([]byte, byte, error) {
	if err := CheckPath(rel); err != nil {
		return nil, StatusRefused, err
	}
	idx, ok := sv.Manifest.fileIndex(rel)
	if !ok {
		if sv.Ignore != nil && sv.Ignore.Ignored(rel) {
			return nil, StatusRefused, fmt.Errorf("path %q is in the user-owned part of the item", rel)
		}
		return nil, StatusNotFound, fmt.Errorf("path %q is not in the manifest", rel)
	}
	f := sv.Manifest.Files[idx]
	if i >= uint64(len(f.Chunks)) {
		return nil, StatusNotFound, fmt.Errorf("%s has %d chunks, not %d", rel, len(f.Chunks), i+1)
	}
	if status, err := sv.servable(idx, int(i)); err != nil {
		return nil, status, err
	}
	root, err := os.OpenRoot(sv.Root)
	if err != nil {
		return nil, StatusError, fmt.Errorf("open item: %v", err)
	}
	defer root.Close()
	fh, status, err := sv.openFile(root, idx)
	if err != nil {
		return nil, status, err
	}
	defer fh.Close()
	b, status, err := readPiece(fh, f, int(i), buf)
	if err != nil {
		return nil, status, err
	}
	if status, err := sv.unchangedSince(fh, idx); err != nil {
		return nil, status, err
	}
	if status, err := sv.matches(idx, int(i), b); err != nil {
		return nil, status, err
	}
	return b, StatusOK, nil
}

// readRun reads the chunks first .. first+count-1, numbered through the
// files in manifest order, one after the other into buf: a run of small
// files travels as one response. Their lengths must add up to at most
// len(buf); each is checked as readChunk checks one.
func readRun(sv *Served, first, count uint64, buf []byte) ([]byte, byte, error) {
	total := uint64(sv.Manifest.Chunks())
	if first >= total || count > total-first {
		return nil, StatusNotFound, fmt.Errorf("the manifest has %d chunks, not %d", total, first+count)
	}
	firsts := sv.chunkFirsts()
	fi := sort.Search(len(firsts), func(i int) bool { return firsts[i] > int(first) }) - 1
	root, err := os.OpenRoot(sv.Root)
	if err != nil {
		return nil, StatusError, fmt.Errorf("open item: %v", err)
	}
	defer root.Close()
	var fh *os.File
	open := -1
	defer func() {
		if fh != nil {
			fh.Close()
		}
	}()
	n := 0
	for g := int(first); g < int(first+count); g++ {
		for g >= firsts[fi]+len(sv.Manifest.Files[fi].Chunks) {
			fi++
		}
		f, idx := sv.Manifest.Files[fi], g-firsts[fi]
		if n+ChunkLen(f.Size, idx) > len(buf) {
			return nil, StatusRefused, fmt.Errorf("a run of %d chunks from %d is longer than %d bytes", count, first, len(buf))
		}
		if status, err := sv.servable(fi, idx); err != nil {
			return nil, status, err
		}
		if open != fi {
			if fh != nil {
				fh.Close()
				fh = nil
			}
			var status byte
			if fh, status, err = sv.openFile(root, fi); err != nil {
				return nil, status, err
			}
			open = fi
		}
		b, status, err := readPiece(fh, f, idx, buf[n:])
		if err != nil {
			return nil, status, err
		}
		if status, err := sv.unchangedSince(fh, fi); err != nil {
			return nil, status, err
		}
		if status, err := sv.matches(fi, idx, b); err != nil {
			return nil, status, err
		}
		n += len(b)
	}
	return buf[:n], StatusOK, nil
}

// servable refuses chunk idx of file fi when its path is user-owned, and
// when a partial item does not hold it verified yet.
func (sv *Served) servable(fi, idx int) (byte, error) {
	rel := sv.Manifest.Files[fi].Path
	if sv.Ignore != nil && sv.Ignore.Ignored(rel) {
		return StatusRefused, fmt.Errorf("path %q is in the user-owned part of the item", rel)
	}
	if sv.partial != nil && !sv.partial.has(sv.chunkFirsts()[fi]+idx) {
		return StatusNotFound, fmt.Errorf("chunk %d of %s is not downloaded here yet", idx, rel)
	}
	return StatusOK, nil
}

// openFile opens file fi of the manifest inside root, which refuses ".."
// and symlinks that lead out; it must be a regular file, unchanged since
// the scan (unchangedSince).
func (sv *Served) openFile(root *os.Root, fi int) (*os.File, byte, error) {
	rel := sv.Manifest.Files[fi].Path
	fh, err := root.Open(rel)
	if err != nil {
		if sv.fps != nil && errors.Is(err, os.ErrNotExist) {
			return nil, StatusChanged, sv.noteChanged(rel)
		}
		return nil, StatusRefused, fmt.Errorf("open %s: %v", rel, err)
	}
	if st, err := fh.Stat(); err != nil || !st.Mode().IsRegular() {
		fh.Close()
		return nil, StatusRefused, fmt.Errorf("%s is not a regular file", rel)
	}
	if status, err := sv.unchangedSince(fh, fi); err != nil {
		fh.Close()
		return nil, status, err
	}
	return fh, StatusOK, nil
}

// unchangedSince checks that the open file fi still has the fingerprint
// of the scan: its size, modification and change times and inode. It is checked when
// the file is opened and again after a chunk is read from it, so bytes
// written while they were read are not sent either.
func (sv *Served) unchangedSince(fh *os.File, fi int) (byte, error) {
	if sv.fps == nil {
		return StatusOK, nil
	}
	st, err := fh.Stat()
	if err != nil {
		return StatusError, fmt.Errorf("stat %s: %v", sv.Manifest.Files[fi].Path, err)
	}
	now, was := fingerprintOf(st), sv.fps[fi]
	// ctime too: unlike the modification time, no tool can set it back.
	if now.Size == was.Size && now.MtimeNs == was.MtimeNs && now.Ino == was.Ino && now.Ctime == was.Ctime {
		return StatusOK, nil
	}
	return StatusChanged, sv.noteChanged(sv.Manifest.Files[fi].Path)
}

// matches checks chunk idx of racy file fi (b, as read) against its hash
// in the manifest; other files' chunks pass unhashed.
func (sv *Served) matches(fi, idx int, b []byte) (byte, error) {
	if sv.racy == nil || !sv.racy[fi] {
		return StatusOK, nil
	}
	if blake3.Sum256(b) == sv.Manifest.Files[fi].Chunks[idx] {
		return StatusOK, nil
	}
	return StatusChanged, sv.noteChanged(sv.Manifest.Files[fi].Path)
}

// noteChanged asks, once, for the item to be scanned again, and returns
// the refusal that tells the downloader why.
func (sv *Served) noteChanged(rel string) error {
	if sv.changed != nil {
		sv.changedOnce.Do(sv.changed)
	}
	return fmt.Errorf("%s changed here since it was scanned; this node is publishing its new version", rel)
}

// readPiece reads chunk idx of f from fh into the start of buf.
func readPiece(fh *os.File, f File, idx int, buf []byte) ([]byte, byte, error) {
	buf = buf[:ChunkLen(f.Size, idx)]
	if _, err := fh.ReadAt(buf, int64(idx)*ChunkSize); err != nil {
		return nil, StatusError, fmt.Errorf("read %s: %v", f.Path, err)
	}
	return buf, StatusOK, nil
}
