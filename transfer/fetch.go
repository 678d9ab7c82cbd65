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
	Elsewhere  atomic.Int64 // requests a complete source sent to the swarm (StatusElsewhere)
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
	// MoreSources, if set, is asked every second for the current sources
	// (holders that appeared since the start, partial ones included);
	// peers not yet in use are added. Must not block for long.
	MoreSources func() []peer.ID
	// Serve, if set, is called once the staging folder is ready, with the
	// partial item to serve to other downloaders: it serves the chunks
	// this download holds verified, and must be withdrawn before the
	// staging folder moves or is removed.
	Serve func(*Served)
	// Reused, if set, is called once the chunks Local supplies are
	// copied into staging, before any fetch.
	Reused func()
	// Writers verify and write received chunks. Default 2.
	Writers int

	// writeAt writes a chunk into a staged file; tests inject failures.
	writeAt func(f *os.File, b []byte, off int64) (int, error)
}

// chunkRef locates one chunk of a manifest.
type chunkRef struct {
	file, idx int
}

type download struct {
	cfg     DownloadConfig
	m       *Manifest
	refs    []chunkRef
	data    string
	logMu   sync.Mutex
	haveLog *os.File
	have    *chunkSet
	files   fileCache // buffered
	direct  fileCache // O_DIRECT, for whole aligned chunks
	// noDirect is set once the file system refuses O_DIRECT.
	noDirect atomic.Bool
	// fsync, if set, syncs the staging file system in one call; opened
	// before the first write, so it sees every write-back error since.
	fsync *os.File
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
	m, _, err := fetchStaged(ctx, cfg)
	return m, err
}

// fetchStaged is Download; it also returns each staged file's fingerprint
// as finish left it (by slash path), which the library indexes the item
// by once it is in place.
func fetchStaged(ctx context.Context, cfg DownloadConfig) (*Manifest, map[string]fingerprint, error) {
	if cfg.Window <= 0 {
		cfg.Window = 8
	}
	if cfg.Progress == nil {
		cfg.Progress = &Progress{}
	}
	if cfg.OnBadPeer == nil {
		cfg.OnBadPeer = func(peer.ID, string) {}
	}
	if cfg.Writers <= 0 {
		cfg.Writers = 2
	}
	if cfg.writeAt == nil {
		cfg.writeAt = (*os.File).WriteAt
	}
	if err := os.MkdirAll(cfg.Staging, 0o700); err != nil {
		return nil, nil, err
	}
	d := &download{cfg: cfg, data: filepath.Join(cfg.Staging, stagingData)}
	var err error
	if d.m, err = d.manifest(ctx); err != nil {
		return nil, nil, err
	}
	cfg.Progress.Total.Store(d.m.Size())
	for fi, f := range d.m.Files {
		for ci := range f.Chunks {
			d.refs = append(d.refs, chunkRef{fi, ci})
		}
	}
	d.have = newChunkSet(len(d.refs))
	if err := d.prepare(); err != nil {
		return nil, nil, err
	}
	if d.fsync != nil {
		defer d.fsync.Close()
	}
	defer d.haveLog.Close()
	defer d.files.close()
	defer d.direct.close()
	need, err := d.resume()
	if err != nil {
		return nil, nil, err
	}
	if cfg.Serve != nil {
		enc := d.m.Encode()
		cfg.Serve(&Served{Root: d.data, Manifest: d.m, Hash: cfg.Manifest, Encoded: enc, partial: d.have})
	}
	if need, err = d.reuse(need); err != nil {
		return nil, nil, err
	}
	if cfg.Reused != nil {
		cfg.Reused()
	}
	if len(need) > 0 {
		if err := d.fetch(ctx, need); err != nil {
			return nil, nil, err
		}
	}
	fps, err := d.finish()
	if err != nil {
		return nil, nil, err
	}
	return d.m, fps, nil
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
	d.fsync = openFSSync(d.cfg.Staging)
	var missing int64
	sizes := make([]int64, len(d.m.Files)) // as staged now; -1: absent
	for i, f := range d.m.Files {
		sizes[i] = -1
		if fi, err := os.Stat(d.staged(f)); err == nil {
			sizes[i] = fi.Size()
		}
		if sizes[i] != f.Size {
			missing += f.Size
		}
	}
	if err := checkSpace(d.cfg.Staging, missing); err != nil {
		return err
	}
	dirs := map[string]bool{}
	for i, f := range d.m.Files {
		p := d.staged(f)
		if dir := filepath.Dir(p); !dirs[dir] {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			dirs[dir] = true
		}
		var err error
		switch {
		case f.Size > 0 && f.Size < ChunkSize:
			// Written whole by its one write, which creates it (see
			// writeChunk): the writers create the files of a small-file
			// item while the network brings the next ones, instead of
			// all of them here first. Reserving blocks would only add
			// an extent to convert.
			if sizes[i] > f.Size {
				err = os.Truncate(p, f.Size)
			}
		default:
			var fh *os.File
			if fh, err = os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600); err != nil {
				return err
			}
			err = preallocate(fh, f.Size)
			fh.Close()
		}
		if errors.Is(err, syscall.ENOSPC) {
			return fmt.Errorf("%w: reserving %d bytes for %s: %v", ErrNoSpace, f.Size, f.Path, err)
		}
		if err != nil {
			return fmt.Errorf("transfer: size %s: %w", f.Path, err)
		}
	}
	var err error
	d.haveLog, err = os.OpenFile(filepath.Join(d.cfg.Staging, stagingHave), os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
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
	b, err := io.ReadAll(d.haveLog)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, ChunkSize)
	for i := 0; i+4 <= len(b); i += 4 {
		g := int(binary.LittleEndian.Uint32(b[i:]))
		if g >= len(d.refs) || d.have.has(g) {
			continue
		}
		if n, ok := d.readStaged(g, buf); ok {
			d.have.add(g)
			d.cfg.Progress.Done.Add(int64(n))
			d.cfg.Progress.Resumed.Add(int64(n))
		}
	}
	var need []int
	for g := range d.refs {
		if !d.have.has(g) {
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

// verifyRun checks the chunks first, first+1, ... laid end to end in b
// against the manifest and returns how many verify before the first that
// does not (or b runs out), and their length.
func (d *download) verifyRun(first, count int, b []byte) (good, n int) {
	for g := first; g < first+count; g++ {
		f, want := d.hashOf(g)
		l := ChunkLen(f.Size, d.refs[g].idx)
		if n+l > len(b) || Hash(blake3.Sum256(b[n:n+l])) != want {
			break
		}
		good++
		n += l
	}
	return good, n
}

// write stores one verified chunk; see writeRun.
func (d *download) write(g int, b []byte) error { return d.writeRun(g, 1, b) }

// writeRun stores the verified chunks first .. first+count-1, laid end
// to end in b, logs them in one write, and only then counts them held
// (and servable to others).
func (d *download) writeRun(first, count int, b []byte) error {
	off := 0
	for g := first; g < first+count; g++ {
		f, _ := d.hashOf(g)
		l := ChunkLen(f.Size, d.refs[g].idx)
		if err := d.writeChunk(g, b[off:off+l]); err != nil {
			return err
		}
		off += l
	}
	rec := make([]byte, 4*count)
	for k := range count {
		binary.LittleEndian.PutUint32(rec[4*k:], uint32(first+k))
	}
	d.logMu.Lock()
	_, err := d.haveLog.Write(rec)
	d.logMu.Unlock()
	if err != nil {
		return fmt.Errorf("transfer: log chunk: %w", err)
	}
	for g := first; g < first+count; g++ {
		d.have.add(g)
	}
	d.cfg.Progress.Done.Add(int64(off))
	return nil
}

// writeChunk writes chunk g into its staged file. A whole chunk in an
// aligned buffer goes straight to the disk (O_DIRECT): no copy into the
// page cache, which cost a fifth of a receiver's CPU. Others, and every
// chunk on a file system that refuses O_DIRECT, go through the page
// cache, with their write-back started at once.
func (d *download) writeChunk(g int, b []byte) error {
	f, _ := d.hashOf(g)
	path := filepath.Join(d.data, filepath.FromSlash(f.Path))
	off := int64(d.refs[g].idx) * ChunkSize
	if len(b) == ChunkSize && directAligned(b) && !d.noDirect.Load() {
		fh, done, err := d.direct.open(d.refs[g].file, path, os.O_WRONLY|oDirect)
		if err == nil {
			_, err = d.cfg.writeAt(fh, b, off)
			done()
		}
		switch {
		case err == nil:
			return nil
		case errors.Is(err, syscall.EINVAL):
			d.noDirect.Store(true)
		default:
			return writeError(f.Path, err)
		}
	}
	fh, done, err := d.files.open(d.refs[g].file, path, os.O_WRONLY|os.O_CREATE)
	if err == nil {
		if _, err = d.cfg.writeAt(fh, b, off); err == nil && len(b) == ChunkSize {
			startWriteback(fh, off, int64(len(b)))
		}
		done()
	}
	return writeError(f.Path, err)
}

// writeError names the file a chunk write failed on, as ErrNoSpace when
// the disk is full; nil stays nil.
func writeError(path string, err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("%w: writing %s: %v; free space and download again: verified chunks are kept", ErrNoSpace, path, err)
	}
	if err != nil {
		return fmt.Errorf("transfer: write %s: %w", path, err)
	}
	return nil
}

// fileCache keeps the staged files open for writing while chunks arrive.
// Beyond fileCacheMax open files, those no writer is using are closed.
type fileCache struct {
	mu    sync.Mutex
	files map[int]*cachedFile
}

type cachedFile struct {
	fh    *os.File
	users int
}

const fileCacheMax = 64

// open returns file i open for writing (with flag) and a function to
// call when done with it. The open itself (which may create the file)
// runs outside the cache's lock, so writers create files side by side.
func (c *fileCache) open(i int, path string, flag int) (*os.File, func(), error) {
	c.mu.Lock()
	cf := c.files[i]
	if cf == nil {
		c.mu.Unlock()
		fh, err := os.OpenFile(path, flag, 0o600)
		if err != nil {
			return nil, nil, err
		}
		c.mu.Lock()
		if cf = c.files[i]; cf != nil {
			fh.Close() // another writer opened it meanwhile
		} else {
			if c.files == nil {
				c.files = map[int]*cachedFile{}
			}
			if len(c.files) >= fileCacheMax {
				c.closeIdle()
			}
			cf = &cachedFile{fh: fh}
			c.files[i] = cf
		}
	}
	cf.users++
	c.mu.Unlock()
	return cf.fh, func() {
		c.mu.Lock()
		cf.users--
		c.mu.Unlock()
	}, nil
}

// close closes every file; it is called once no writer runs.
func (c *fileCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeIdle()
}

func (c *fileCache) closeIdle() {
	for i, cf := range c.files {
		if cf.users == 0 {
			cf.fh.Close()
			delete(c.files, i)
		}
	}
}

func (d *download) bad(p peer.ID, why string) {
	d.cfg.Progress.markBad(p, why)
	d.cfg.Logger.Warn().Str("peer", p.String()).Str("why", why).Msg("peer sent bad data; no longer used for this download")
	d.cfg.OnBadPeer(p, why)
}

// finish sets modes and makes every file and folder of the staged item
// durable, then returns each file's fingerprint as it leaves them: with
// one syncfs of the file system where it is a local one that honours it
// (see openFSSync), else file by file and folder by folder.
func (d *download) finish() (map[string]fingerprint, error) {
	d.files.close()
	d.direct.close()
	if d.fsync != nil {
		for _, f := range d.m.Files {
			if err := os.Chmod(d.staged(f), os.FileMode(f.Mode)); err != nil {
				return nil, err
			}
		}
		if err := syncFS(d.fsync); err != nil {
			return nil, fmt.Errorf("transfer: sync the staged item: %w", err)
		}
		return d.fingerprints()
	}
	if err := d.haveLog.Sync(); err != nil {
		return nil, err
	}
	dirs := map[string]bool{d.data: true}
	for _, f := range d.m.Files {
		p := d.staged(f)
		if err := syncPath(p); err != nil {
			return nil, err
		}
		if err := os.Chmod(p, os.FileMode(f.Mode)); err != nil {
			return nil, err
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
			return nil, err
		}
	}
	return d.fingerprints()
}

func (d *download) staged(f File) string { return filepath.Join(d.data, filepath.FromSlash(f.Path)) }

// fingerprints stats every staged file. Moving the item into place keeps
// them (a folder rename changes none of its files' inodes or times), so
// a file that differs afterwards was changed by someone else.
func (d *download) fingerprints() (map[string]fingerprint, error) {
	fps := make(map[string]fingerprint, len(d.m.Files))
	for _, f := range d.m.Files {
		fi, err := os.Lstat(d.staged(f))
		if err != nil {
			return nil, err
		}
		fps[f.Path] = fingerprintOf(fi)
	}
	return fps, nil
}

func syncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
