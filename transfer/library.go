package transfer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/crdt"
)

// Bookkeeping folders inside the library's data folder (not the share
// folder, which holds only items).
const (
	dirIndex     = "index"     // <item>.json: the item's last scan
	dirManifests = "manifests" // <hash>: manifest encodings this node serves
	dirStaging   = "staging"   // <item>-<hash16>/: one download each
	jobFile      = "job.json"  // in a staging folder: what it downloads
	swapFile     = "swap.json" // in a staging folder: a swap in progress
)

// LibraryConfig configures a Library.
type LibraryConfig struct {
	// Share is the share folder: each immediate subfolder is an item.
	Share string
	// Dir holds the library's bookkeeping (index, manifests, staging).
	Dir      string
	Doc      *crdt.Doc
	Host     host.Host
	Protocol protocol.ID
	// Handle registers the transfer protocol's handler for authenticated
	// peers only.
	Handle func(protocol.ID, network.StreamHandler)
	Logger zerolog.Logger
	// ScanInterval between full scans that repair missed watch events.
	// Default 10 min.
	ScanInterval time.Duration
	// Debounce: a watched change rescans its item this long after the
	// last event. Default 1 s.
	Debounce time.Duration
	// OnEvent receives library events (item.scanned, item.followed,
	// item.unfollowed, transfer.progress, transfer.done, transfer.failed,
	// transfer.cancelled, transfer.moved, peer.bad_data).
	// Must not block.
	OnEvent func(typ string, data map[string]any)
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Limits bound what the transfer server sends (its zero values take
	// the defaults).
	Limits Limits
	// Lineage, if set, reports whether every node of the fleet reads the
	// version fields of holder entries (Gen, Parent, Next); while it
	// says no, this node writes entries without them, which nodes of an
	// earlier version would refuse. Nil: all do. Called without locks
	// held; may read the document.
	Lineage func() bool

	// beforeScan, if set, is called before each item's scan; tests use
	// it to hold a scan.
	beforeScan func(id string)
}

// Library shares the items of the share folder with the fleet and
// downloads others' items into it.
type Library struct {
	cfg      LibraryConfig
	lg       zerolog.Logger
	server   *Server
	wg       sync.WaitGroup // goroutines Run waits for (goLocked)
	stopping atomic.Bool    // Run's context ended: scans give up

	// mu guards the fields below. It is never held across disk, network
	// or document work: take what is needed under it, act after.
	mu        sync.Mutex
	ctx       context.Context    // Run's, while it runs; nil otherwise
	local     map[string]*Served // item ID -> what this node holds complete
	partial   map[Hash]*Served   // manifest -> a download in flight, served for swarming
	busy      map[string]string  // item ID -> operation in flight ("download", "swap")
	scanning  map[string]bool
	pending   map[string]bool
	dropped   int // watch events dropped because their item was busy
	scans     int
	hashed    int64             // bytes hashed by scans
	swaps     map[string]string // staging folder name -> item, of swaps whose removal the watcher awaits
	transfers map[string]*Transfer
	follows   map[string]FollowInfo    // followed items (follow.go)
	held      map[string][]heldVersion // versions this node held or fetched (lineage.go)

	followKick chan struct{} // a pass of the follower is due (capacity 1)
	saveMu     sync.Mutex    // orders the writers of follow.json; never taken under mu
	heldMu     sync.Mutex    // orders the writers of versions.json; never taken under mu

	gateMu sync.Mutex // guards the cached answer of cfg.Lineage (spreadOK)
	gateAt time.Time
	gateOK bool
}

// NewLibrary returns a Library; Run starts it.
func NewLibrary(cfg LibraryConfig) *Library {
	if cfg.ScanInterval <= 0 {
		cfg.ScanInterval = 10 * time.Minute
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = time.Second
	}
	if cfg.OnEvent == nil {
		cfg.OnEvent = func(string, map[string]any) {}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	l := &Library{
		cfg: cfg, lg: cfg.Logger.With().Str("component", "library").Logger(),
		local: map[string]*Served{}, partial: map[Hash]*Served{}, busy: map[string]string{}, scanning: map[string]bool{},
		pending: map[string]bool{}, transfers: map[string]*Transfer{}, swaps: map[string]string{},
		followKick: make(chan struct{}, 1),
	}
	l.follows = l.loadFollows()
	l.held = l.loadHeld()
	lim := cfg.Limits
	if lim.Spread == nil {
		lim.Spread = l.spreadOK // peers of protocol 1 read "elsewhere" as garbage
	}
	l.server = NewServer(l.lookup, cfg.Logger, lim)
	return l
}

// Server returns the transfer server (for its figures).
func (l *Library) Server() *Server { return l.server }

// ValidItemID accepts a share subfolder name as an item ID: a usable
// document key and a plain folder name, not hidden.
func ValidItemID(id string) error {
	switch {
	case id == "" || len(id) > 255:
		return errors.New("empty or longer than 255 bytes")
	case strings.HasPrefix(id, "."):
		return errors.New("hidden (starts with '.')")
	case strings.ContainsAny(id, "/\\\x00") || id == "..":
		return errors.New("contains '/', '\\' or NUL")
	}
	for _, r := range id {
		if r < 0x20 || r == 0x7f {
			return errors.New("contains a control character")
		}
	}
	return nil
}

// Run recovers interrupted swaps, serves the transfer protocol, scans the
// share folder, resumes interrupted downloads, and rescans on watch events
// and every ScanInterval until ctx ends; then it waits for its work.
func (l *Library) Run(ctx context.Context) error {
	for _, d := range []string{l.cfg.Share, filepath.Join(l.cfg.Dir, dirIndex), filepath.Join(l.cfg.Dir, dirManifests), filepath.Join(l.cfg.Dir, dirStaging)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("transfer: %w", err)
		}
	}
	l.mu.Lock()
	l.ctx = ctx
	l.mu.Unlock()
	defer l.wait()
	// A scan in progress gives up between files once ctx ends, so a
	// long first scan does not hold the node's stop.
	defer context.AfterFunc(ctx, func() { l.stopping.Store(true) })()
	l.recoverSwaps()
	l.server.bindContext(ctx)
	// Served from the start: each item as soon as its own scan is done.
	l.cfg.Handle(l.cfg.Protocol, l.server.Handle)
	l.ScanAll()
	l.resumeDownloads()
	l.goFunc(l.follow)
	l.watch(ctx)
	return nil
}

// wait stops goroutines from being started, then waits for those that
// were: none can be added once the wait has begun.
func (l *Library) wait() {
	l.mu.Lock()
	l.ctx = nil
	l.mu.Unlock()
	l.wg.Wait()
}

// goFunc runs fn on a goroutine Run waits for; nothing once Run returned.
func (l *Library) goFunc(fn func(ctx context.Context)) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	ctx := l.runningLocked()
	if ctx == nil {
		return false
	}
	l.goLocked(func() { fn(ctx) })
	return true
}

// runningLocked returns the context Run was given, or nil when Run is
// not running. l.mu is held.
func (l *Library) runningLocked() context.Context {
	if l.ctx == nil || l.ctx.Err() != nil {
		return nil
	}
	return l.ctx
}

// goLocked runs fn on a goroutine Run waits for. l.mu is held and
// runningLocked was not nil.
func (l *Library) goLocked(fn func()) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		fn()
	}()
}

// lookup is the server's view: complete items that are not being
// replaced, then downloads in flight (their verified chunks only).
func (l *Library) lookup(h Hash) (*Served, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id, sv := range l.local {
		if l.busy[id] == "" && sv.Hash == h {
			return sv, true
		}
	}
	sv, ok := l.partial[h]
	return sv, ok
}

func (l *Library) stagingDir() string { return filepath.Join(l.cfg.Dir, dirStaging) }

// stagingDirs lists the folders in staging: downloads and swaps that a
// stop or crash interrupted.
func (l *Library) stagingDirs() []string {
	dir := l.stagingDir()
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out
}

// LibraryStats are the library's figures for metrics.
type LibraryStats struct {
	Items        int   // items this node holds complete
	Running      int   // downloads in flight
	Done, Failed int   // downloads of this run that ended so
	Fetched      int64 // bytes received from peers by this run's downloads
	BadChunks    int64 // chunks that failed verification
}

// Stats returns the library's figures.
func (l *Library) Stats() LibraryStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := LibraryStats{Items: len(l.local)}
	for _, t := range l.transfers {
		switch t.State {
		case TransferRunning:
			st.Running++
		case TransferDone:
			st.Done++
		case TransferFailed:
			st.Failed++
		}
		st.Fetched += t.progress.Fetched.Load()
		st.BadChunks += t.progress.BadChunks.Load()
	}
	return st
}
