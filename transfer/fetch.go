package transfer

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/rs/zerolog"
	"github.com/zeebo/blake3"

	"github.com/meshnode/meshnode/internal/atomicfile"
	"github.com/meshnode/meshnode/internal/frame"
)

// Files inside a download's staging folder.
const (
	stagingManifest = "manifest" // the verified manifest encoding
	stagingHave     = "have"     // log of written chunks: uint32 LE global index each
	stagingData     = "data"     // the item's files, at their final relative paths
)

// ErrNoSpace is returned when the disk lacks room for a download.
var ErrNoSpace = errors.New("transfer: not enough free space")

// Progress is a download's live figures, safe to read while it runs.
type Progress struct {
	Total      atomic.Int64 // bytes of the item
	Done       atomic.Int64 // bytes verified and written (resumed and reused included)
	Fetched    atomic.Int64 // bytes received from peers this run
	Reused     atomic.Int64 // bytes copied from the local older version
	Resumed    atomic.Int64 // bytes found already verified in staging
	BadChunks  atomic.Int64 // chunks that failed verification
	mu         sync.Mutex
	bySource   map[peer.ID]int64
	badSources map[peer.ID]string
}

// Sources returns the bytes received from each peer.
func (p *Progress) Sources() map[peer.ID]int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.bySource)
}

// BadSources returns the peers that sent bad data, and what.
func (p *Progress) BadSources() map[peer.ID]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.badSources)
}

func (p *Progress) addSource(id peer.ID, n int64) {
	p.mu.Lock()
	if p.bySource == nil {
		p.bySource = map[peer.ID]int64{}
	}
	p.bySource[id] += n
	p.mu.Unlock()
}

func (p *Progress) markBad(id peer.ID, why string) {
	p.mu.Lock()
	if p.badSources == nil {
		p.badSources = map[peer.ID]string{}
	}
	p.badSources[id] = why
	p.mu.Unlock()
}

// ChunkSource can supply a chunk by hash without the network (the local
// older version of the item). It returns false when it cannot.
type ChunkSource func(h Hash, buf []byte) bool

// DownloadConfig configures Download.
type DownloadConfig struct {
	Host     host.Host
	Protocol protocol.ID
	Manifest Hash
	Sources  []peer.ID
	// Staging is this download's own folder; it survives a crash, and a
	// later Download with the same folder resumes.
	Staging string
	// Local, if set, supplies chunks the node already has.
	Local ChunkSource
	// Window is the requests in flight per source. Default 8.
	Window   int
	Progress *Progress
	Logger   zerolog.Logger
	// OnBadPeer is called when a peer sends data that fails verification.
	OnBadPeer func(p peer.ID, why string)
}

// chunkRef locates one chunk of a manifest.
type chunkRef struct {
	file, idx int
}

type download struct {
	cfg    DownloadConfig
	m      *Manifest
	refs   []chunkRef
	data   string
	haveMu sync.Mutex
	have   *os.File
	done   []bool
}

// Download fetches the item with manifest cfg.Manifest into
// cfg.Staging/data, from every source in parallel, verifying each chunk
// against the manifest before writing it. Chunks already verified in the
// staging folder (an interrupted run) or available from cfg.Local are not
// fetched. A chunk that fails verification is fetched from another
// source and its sender is reported and no longer used. It returns the
// manifest once every file is complete, synced and has its mode;
// cancelling ctx stops it between chunks, leaving the staging folder to
// resume from.
func Download(ctx context.Context, cfg DownloadConfig) (*Manifest, error) {
	if cfg.Window <= 0 {
		cfg.Window = 8
	}
	if cfg.Progress == nil {
		cfg.Progress = &Progress{}
	}
	if cfg.OnBadPeer == nil {
		cfg.OnBadPeer = func(peer.ID, string) {}
	}
	if err := os.MkdirAll(cfg.Staging, 0o700); err != nil {
		return nil, err
	}
	d := &download{cfg: cfg, data: filepath.Join(cfg.Staging, stagingData)}
	var err error
	if d.m, err = d.manifest(ctx); err != nil {
		return nil, err
	}
	cfg.Progress.Total.Store(d.m.Size())
	for fi, f := range d.m.Files {
		for ci := range f.Chunks {
			d.refs = append(d.refs, chunkRef{fi, ci})
		}
	}
	d.done = make([]bool, len(d.refs))
	if err := d.prepare(); err != nil {
		return nil, err
	}
	defer d.have.Close()
	need, err := d.resume()
	if err != nil {
		return nil, err
	}
	if need, err = d.reuse(need); err != nil {
		return nil, err
	}
	if len(need) > 0 {
		if err := d.fetch(ctx, need); err != nil {
			return nil, err
		}
	}
	return d.m, d.finish()
}

// manifest returns the verified manifest: from staging, or from the first
// source that sends bytes with the right hash.
func (d *download) manifest(ctx context.Context) (*Manifest, error) {
	mf := filepath.Join(d.cfg.Staging, stagingManifest)
	if b, err := os.ReadFile(mf); err == nil && blake3.Sum256(b) == d.cfg.Manifest {
		return DecodeManifest(b)
	}
	var errs []error
	for _, p := range d.cfg.Sources {
		b, err := d.request(ctx, p, Request{Kind: ReqManifest, Manifest: d.cfg.Manifest})
		if err == nil && Hash(blake3.Sum256(b)) != d.cfg.Manifest {
			err = errors.New("its manifest bytes do not match the hash")
			d.bad(p, err.Error())
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
			continue
		}
		m, err := DecodeManifest(b)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
			continue
		}
		if err := atomicfile.WriteFile(mf, b, 0o600); err != nil {
			return nil, err
		}
		return m, nil
	}
	return nil, fmt.Errorf("transfer: no source sent manifest %s: %w", d.cfg.Manifest, errors.Join(errs...))
}

// request sends one request on a fresh stream and returns the payload.
func (d *download) request(ctx context.Context, p peer.ID, req Request) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	s, err := d.cfg.Host.NewStream(network.WithAllowLimitedConn(ctx, "transfer"), p, d.cfg.Protocol)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	if err := frame.Write(s, req.Encode()); err != nil {
		return nil, err
	}
	return readResponse(bufio.NewReader(s))
}

func readResponse(br *bufio.Reader) ([]byte, error) {
	b, err := frame.Read(br, maxResponse)
	if err != nil {
		return nil, err
	}
	resp, err := DecodeResponse(b)
	if err != nil {
		return nil, err
	}
	if resp.Status != StatusOK {
		return nil, &ServerError{Status: resp.Status, Msg: string(resp.Payload)}
	}
	return resp.Payload, nil
}

// prepare checks free space and creates every file at its full size.
func (d *download) prepare() error {
	var missing int64
	for _, f := range d.m.Files {
		fi, err := os.Stat(filepath.Join(d.data, filepath.FromSlash(f.Path)))
		if err != nil || fi.Size() != f.Size {
			missing += f.Size
		}
	}
	if err := checkSpace(d.cfg.Staging, missing); err != nil {
		return err
	}
	for _, f := range d.m.Files {
		p := filepath.Join(d.data, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		fh, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return err
		}
		err = fh.Truncate(f.Size)
		fh.Close()
		if err != nil {
			return fmt.Errorf("transfer: size %s: %w", f.Path, err)
		}
	}
	var err error
	d.have, err = os.OpenFile(filepath.Join(d.cfg.Staging, stagingHave), os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	return err
}

// checkSpace fails with ErrNoSpace when the file system of dir has less
// than need bytes free.
func checkSpace(dir string, need int64) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return nil // cannot tell: writes will say
	}
	free := int64(st.Bavail) * st.Bsize
	if free < need {
		return fmt.Errorf("%w: the item needs %d more bytes, %s has %d free", ErrNoSpace, need, dir, free)
	}
	return nil
}

// resume reads the have log, keeps the chunks whose staged bytes still
// verify, and returns the rest.
func (d *download) resume() ([]int, error) {
	b, err := io.ReadAll(d.have)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, ChunkSize)
	for i := 0; i+4 <= len(b); i += 4 {
		g := int(binary.LittleEndian.Uint32(b[i:]))
		if g >= len(d.refs) || d.done[g] {
			continue
		}
		if n, ok := d.readStaged(g, buf); ok {
			d.done[g] = true
			d.cfg.Progress.Done.Add(int64(n))
			d.cfg.Progress.Resumed.Add(int64(n))
		}
	}
	var need []int
	for g, ok := range d.done {
		if !ok {
			need = append(need, g)
		}
	}
	return need, nil
}

func (d *download) hashOf(g int) (File, Hash) {
	r := d.refs[g]
	f := d.m.Files[r.file]
	return f, f.Chunks[r.idx]
}

// readStaged reads chunk g from staging and reports whether it verifies.
func (d *download) readStaged(g int, buf []byte) (int, bool) {
	f, want := d.hashOf(g)
	r := d.refs[g]
	n := ChunkLen(f.Size, r.idx)
	fh, err := os.Open(filepath.Join(d.data, filepath.FromSlash(f.Path)))
	if err != nil {
		return 0, false
	}
	defer fh.Close()
	if _, err := fh.ReadAt(buf[:n], int64(r.idx)*ChunkSize); err != nil {
		return 0, false
	}
	return n, blake3.Sum256(buf[:n]) == want
}

// reuse copies chunks the node already has elsewhere.
func (d *download) reuse(need []int) ([]int, error) {
	if d.cfg.Local == nil {
		return need, nil
	}
	buf := make([]byte, ChunkSize)
	var rest []int
	for _, g := range need {
		f, h := d.hashOf(g)
		n := ChunkLen(f.Size, d.refs[g].idx)
		if d.cfg.Local(h, buf[:n]) && blake3.Sum256(buf[:n]) == h {
			if err := d.write(g, buf[:n]); err != nil {
				return nil, err
			}
			d.cfg.Progress.Reused.Add(int64(n))
			continue
		}
		rest = append(rest, g)
	}
	return rest, nil
}

// write stores a verified chunk and logs it.
func (d *download) write(g int, b []byte) error {
	f, _ := d.hashOf(g)
	fh, err := os.OpenFile(filepath.Join(d.data, filepath.FromSlash(f.Path)), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = fh.WriteAt(b, int64(d.refs[g].idx)*ChunkSize)
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("transfer: write %s: %w", f.Path, err)
	}
	var rec [4]byte
	binary.LittleEndian.PutUint32(rec[:], uint32(g))
	d.haveMu.Lock()
	d.done[g] = true
	_, err = d.have.Write(rec[:])
	d.haveMu.Unlock()
	d.cfg.Progress.Done.Add(int64(len(b)))
	return err
}

func (d *download) bad(p peer.ID, why string) {
	d.cfg.Progress.markBad(p, why)
	d.cfg.Logger.Warn().Str("peer", p.String()).Str("why", why).Msg("peer sent bad data; no longer used for this download")
	d.cfg.OnBadPeer(p, why)
}

// fetch pulls the needed chunks from every source at once: one pipelined
// stream per source with Window requests in flight, taking chunks from a
// shared queue, so faster sources take more.
func (d *download) fetch(ctx context.Context, need []int) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	queue := make(chan int, len(need))
	for _, g := range need {
		queue <- g
	}
	var remaining atomic.Int64
	remaining.Store(int64(len(need)))
	allDone := make(chan struct{})
	var fatal error
	var fatalOnce sync.Once
	fail := func(err error) {
		fatalOnce.Do(func() { fatal = err; cancel() })
	}
	var wg sync.WaitGroup
	var live atomic.Int64
	var errMu sync.Mutex
	var srcErrs []error
	for _, p := range d.cfg.Sources {
		live.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := d.worker(ctx, p, queue, &remaining, allDone, fail)
			if err != nil && ctx.Err() == nil {
				errMu.Lock()
				srcErrs = append(srcErrs, fmt.Errorf("%s: %w", p, err))
				errMu.Unlock()
			}
			if live.Add(-1) == 0 && remaining.Load() > 0 {
				fail(fmt.Errorf("transfer: %d chunks left and no source can supply them: %w", remaining.Load(), errors.Join(srcErrs...)))
			}
		}()
	}
	select {
	case <-allDone:
	case <-ctx.Done():
	}
	cancel()
	wg.Wait()
	if remaining.Load() == 0 {
		return nil
	}
	if fatal != nil {
		return fatal
	}
	return ctx.Err()
}

// worker serves the queue from one source until the queue is drained,
// the source fails three times in a row, or it sends bad data.
func (d *download) worker(ctx context.Context, p peer.ID, queue chan int, remaining *atomic.Int64, allDone chan struct{}, fail func(error)) error {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Duration(attempt) * 500 * time.Millisecond):
			}
		}
		progressed, err := d.session(ctx, p, queue, remaining, allDone, fail)
		if err == nil || ctx.Err() != nil {
			return nil
		}
		var se *ServerError
		if errors.As(err, &se) && se.Status == StatusRefused || errors.Is(err, errBadData) {
			return err
		}
		if progressed {
			attempt = -1 // it was working: start counting again
		}
		lastErr = err
	}
	return lastErr
}

var errBadData = errors.New("sent a chunk that does not match the manifest")

// session runs one pipelined stream. Chunks it took but did not finish
// go back to the queue.
func (d *download) session(ctx context.Context, p peer.ID, queue chan int, remaining *atomic.Int64, allDone chan struct{}, fail func(error)) (progressed bool, err error) {
	s, err := d.cfg.Host.NewStream(network.WithAllowLimitedConn(ctx, "transfer"), p, d.cfg.Protocol)
	if err != nil {
		return false, err
	}
	defer s.Close()
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()
	br := bufio.NewReaderSize(s, 256<<10)
	var inflight []int
	defer func() {
		for _, g := range inflight {
			queue <- g
		}
	}()
	for {
		// Fill the window.
		for len(inflight) < d.cfg.Window {
			var g int
			select {
			case g = <-queue:
			default:
				g = -1
			}
			if g < 0 {
				break
			}
			f, _ := d.hashOf(g)
			if err := frame.Write(s, Request{Kind: ReqChunk, Manifest: d.cfg.Manifest, Path: f.Path, Chunk: uint64(d.refs[g].idx)}.Encode()); err != nil {
				queue <- g
				return progressed, err
			}
			inflight = append(inflight, g)
		}
		if len(inflight) == 0 {
			// Nothing queued: others hold the rest. Wait for the end, or
			// for a chunk to come back.
			select {
			case <-allDone:
				return progressed, nil
			case <-ctx.Done():
				return progressed, nil
			case g := <-queue:
				queue <- g
				continue
			}
		}
		_ = s.SetReadDeadline(time.Now().Add(time.Minute))
		b, err := readResponse(br)
		if err != nil {
			return progressed, err
		}
		g := inflight[0]
		inflight = inflight[1:]
		f, want := d.hashOf(g)
		if len(b) != ChunkLen(f.Size, d.refs[g].idx) || Hash(blake3.Sum256(b)) != want {
			d.cfg.Progress.BadChunks.Add(1)
			d.bad(p, fmt.Sprintf("chunk %d of %s does not match the manifest", d.refs[g].idx, f.Path))
			queue <- g
			return progressed, errBadData
		}
		if err := d.write(g, b); err != nil {
			fail(err)
			return progressed, err
		}
		progressed = true
		d.cfg.Progress.Fetched.Add(int64(len(b)))
		d.cfg.Progress.addSource(p, int64(len(b)))
		if remaining.Add(-1) == 0 {
			close(allDone)
			return true, nil
		}
	}
}

// finish sets modes and syncs every file and folder of the staged item.
func (d *download) finish() error {
	if err := d.have.Sync(); err != nil {
		return err
	}
	dirs := map[string]bool{d.data: true}
	for _, f := range d.m.Files {
		p := filepath.Join(d.data, filepath.FromSlash(f.Path))
		if err := syncPath(p); err != nil {
			return err
		}
		if err := os.Chmod(p, os.FileMode(f.Mode)); err != nil {
			return err
		}
		for dir := filepath.Dir(p); len(dir) >= len(d.data); dir = filepath.Dir(dir) {
			dirs[dir] = true
		}
	}
	keys := make([]string, 0, len(dirs))
	for k := range dirs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, dir := range keys {
		if err := syncPath(dir); err != nil {
			return err
		}
	}
	return nil
}

func syncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
