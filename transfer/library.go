package transfer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/crdt"
	"github.com/meshnode/meshnode/internal/atomicfile"
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
	// OnEvent receives library events (item.scanned, transfer.progress,
	// transfer.done, transfer.failed, peer.bad_data). Must not block.
	OnEvent func(typ string, data map[string]any)
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Library shares the items of the share folder with the fleet and
// downloads others' items into it.
type Library struct {
	cfg    LibraryConfig
	lg     zerolog.Logger
	server *Server
	ctx    context.Context
	wg     sync.WaitGroup

	mu        sync.Mutex
	local     map[string]*Served // item ID -> what this node holds complete
	partial   map[Hash]*Served   // manifest -> a download in flight, served for swarming
	busy      map[string]string  // item ID -> operation in flight ("download", "swap")
	scanning  map[string]bool
	pending   map[string]bool
	dropped   int // watch events dropped because their item was busy
	scans     int
	transfers map[string]*Transfer
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
		pending: map[string]bool{}, transfers: map[string]*Transfer{},
	}
	l.server = NewServer(l.lookup, cfg.Logger, Limits{})
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

// Run recovers interrupted swaps, resumes interrupted downloads, scans the
// share folder, serves the transfer protocol, and rescans on watch events
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
	defer l.wg.Wait()
	l.recoverSwaps()
	l.ScanAll()
	l.resumeDownloads()
	l.cfg.Handle(l.cfg.Protocol, l.server.Handle)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		l.lg.Warn().Err(err).Msg("cannot watch the share folder; relying on periodic scans")
	} else {
		defer w.Close()
		l.watchTree(w, l.cfg.Share)
	}
	var events <-chan fsnotify.Event
	var werrs <-chan error
	if w != nil {
		events, werrs = w.Events, w.Errors
	}
	tick := time.NewTicker(l.cfg.ScanInterval)
	defer tick.Stop()
	due := map[string]time.Time{}
	var timer <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			l.ScanAll()
		case err := <-werrs:
			l.lg.Warn().Err(err).Msg("share folder watch error; the periodic scan repairs what it missed")
		case ev := <-events:
			rel, err := filepath.Rel(l.cfg.Share, ev.Name)
			if err != nil || rel == "." {
				continue
			}
			id := strings.Split(filepath.ToSlash(rel), "/")[0]
			if ev.Op&fsnotify.Create != 0 {
				if fi, err := os.Stat(ev.Name); err == nil && fi.IsDir() {
					l.watchTree(w, ev.Name)
				}
			}
			due[id] = time.Now().Add(l.cfg.Debounce)
			if timer == nil {
				timer = time.After(l.cfg.Debounce)
			}
		case <-timer:
			timer = nil
			now := time.Now()
			for id, at := range due {
				if !now.Before(at) {
					delete(due, id)
					l.RequestScan(id)
				}
			}
			if len(due) > 0 {
				timer = time.After(l.cfg.Debounce)
			}
		}
	}
}

// watchTree adds dir and its subfolders to the watcher (fsnotify is not
// recursive).
func (l *Library) watchTree(w *fsnotify.Watcher, dir string) {
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			if err := w.Add(p); err != nil {
				l.lg.Debug().Str("dir", p).Err(err).Msg("cannot watch")
			}
		}
		return nil
	})
}

// goFunc runs fn on a goroutine Run waits for; nothing once Run returned.
func (l *Library) goFunc(fn func(ctx context.Context)) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ctx == nil || l.ctx.Err() != nil {
		return false
	}
	ctx := l.ctx
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		fn(ctx)
	}()
	return true
}

// RequestScan rescans one item soon: dropped while the item has an
// operation in flight; if a scan of it is running, that scan runs once
// more when it ends.
func (l *Library) RequestScan(id string) {
	l.mu.Lock()
	switch {
	case l.busy[id] != "":
		l.dropped++
		l.mu.Unlock()
		return
	case l.scanning[id]:
		l.pending[id] = true
		l.mu.Unlock()
		return
	}
	l.scanning[id] = true
	l.mu.Unlock()
	started := l.goFunc(func(context.Context) {
		for {
			l.scanAndPublish([]string{id})
			l.mu.Lock()
			again := l.pending[id]
			delete(l.pending, id)
			if !again {
				delete(l.scanning, id)
			}
			l.mu.Unlock()
			if !again {
				return
			}
		}
	})
	if !started {
		l.mu.Lock()
		delete(l.scanning, id)
		l.mu.Unlock()
	}
}

// ScanStatus is what the watcher's bookkeeping shows, for tests and the API.
type ScanStatus struct {
	Scans, DroppedEvents int
	Scanning             []string
}

// ScanStatus returns the scan counters.
func (l *Library) ScanStatus() ScanStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := ScanStatus{Scans: l.scans, DroppedEvents: l.dropped}
	for id := range l.scanning {
		st.Scanning = append(st.Scanning, id)
	}
	return st
}

// ScanAll scans every item of the share folder and publishes the result
// in one document change.
func (l *Library) ScanAll() {
	ents, err := os.ReadDir(l.cfg.Share)
	if err != nil {
		l.lg.Warn().Err(err).Msg("cannot read the share folder")
		return
	}
	ids := map[string]bool{}
	for _, e := range ents {
		ids[e.Name()] = true
	}
	l.mu.Lock()
	for id := range l.local {
		ids[id] = true // gone items are unpublished
	}
	l.mu.Unlock()
	// So are entries left from an earlier run: an item deleted while the
	// node was down, a partial entry of a download that is not resumed.
	if lib, err := l.cfg.Doc.Library(); err == nil {
		self := l.cfg.Host.ID().String()
		for id, it := range lib {
			if _, ok := it.Holders[self]; ok && ValidItemID(id) == nil {
				ids[id] = true
			}
		}
	}
	var list []string
	for id := range ids {
		list = append(list, id)
	}
	sort.Strings(list)
	l.scanAndPublish(list)
}

// scanAndPublish scans the given items (skipping busy ones) and writes
// this node's holder entries for them in one document change.
func (l *Library) scanAndPublish(ids []string) {
	type result struct {
		id string
		sv *Served // nil: gone
	}
	var results []result
	for _, id := range ids {
		l.mu.Lock()
		busy := l.busy[id] != ""
		l.mu.Unlock()
		if busy {
			continue
		}
		root := filepath.Join(l.cfg.Share, id)
		fi, err := os.Lstat(root)
		if err != nil || !fi.IsDir() {
			results = append(results, result{id: id})
			continue
		}
		if err := ValidItemID(id); err != nil {
			l.lg.Warn().Str("folder", id).Str("why", err.Error()).Msg("share subfolder is not shared: its name cannot be an item ID")
			continue
		}
		sv, st, err := l.scanItem(id, root)
		if err != nil {
			l.lg.Warn().Str("item", id).Err(err).Msg("scan failed")
			continue
		}
		l.lg.Debug().Str("item", id).Int("files", st.Files).Int("hashed", st.Hashed).Int64("bytes_hashed", st.BytesHashed).Msg("item scanned")
		results = append(results, result{id: id, sv: sv})
	}
	self := l.cfg.Host.ID().String()
	now := l.cfg.Now().UnixMilli()
	// One read of the library: Doc.Item scans every root key, so reading
	// per item would make a full scan quadratic.
	lib, err := l.cfg.Doc.Library()
	if err != nil {
		l.lg.Warn().Err(err).Msg("reading the library failed")
		return
	}
	var changed []string
	_, err = l.cfg.Doc.Update("library scan", func(tx *crdt.Tx) error {
		for _, r := range results {
			cur := lib[r.id]
			old, had := cur.Holders[self]
			if r.sv == nil {
				if had {
					tx.RemoveHolder(r.id, self)
					changed = append(changed, r.id)
				}
				continue
			}
			want := crdt.Holder{Manifest: r.sv.Hash.String(), Size: r.sv.Manifest.Size(), Files: int64(len(r.sv.Manifest.Files)), State: crdt.HolderComplete, UpdatedMs: now}
			if had && old.Manifest == want.Manifest && old.Size == want.Size && old.Files == want.Files && old.State == want.State {
				continue
			}
			tx.SetHolder(r.id, self, want)
			if cur.Name == "" {
				tx.SetItemName(r.id, r.id)
			}
			changed = append(changed, r.id)
		}
		return nil
	})
	if err != nil {
		l.lg.Warn().Err(err).Msg("publishing the library failed")
	}
	l.mu.Lock()
	l.scans++
	for _, r := range results {
		if r.sv == nil {
			delete(l.local, r.id)
		} else {
			l.local[r.id] = r.sv
		}
	}
	l.mu.Unlock()
	for _, id := range changed {
		l.cfg.OnEvent("item.scanned", map[string]any{"item": id})
	}
}

// scanItem scans one item with its persisted index and keeps its manifest.
func (l *Library) scanItem(id, root string) (*Served, ScanStats, error) {
	ixFile := filepath.Join(l.cfg.Dir, dirIndex, id+".json")
	ix := LoadIndex(ixFile)
	m, st, err := Scan(root, ix)
	if err != nil {
		return nil, st, err
	}
	if err := ix.Save(ixFile); err != nil {
		return nil, st, err
	}
	enc := m.Encode()
	h := m.Hash()
	mf := filepath.Join(l.cfg.Dir, dirManifests, h.String())
	if _, err := os.Stat(mf); err != nil {
		if err := atomicfile.WriteFile(mf, enc, 0o644); err != nil {
			return nil, st, err
		}
	}
	ig, err := LoadIgnore(root)
	if err != nil {
		return nil, st, err
	}
	return &Served{Root: root, Manifest: m, Hash: h, Encoded: enc, Ignore: ig}, st, nil
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

// servePartial makes a download's verified chunks available to the fleet
// and, when this node holds no version of the item, publishes it as a
// partial holder so that others downloading the same version find it. It
// reports whether it published. A node that holds an older version keeps
// advertising that one complete instead.
func (l *Library) servePartial(id string, sv *Served) bool {
	l.mu.Lock()
	l.partial[sv.Hash] = sv
	holds := l.local[id] != nil
	l.mu.Unlock()
	if holds {
		return false
	}
	self := l.cfg.Host.ID().String()
	h := crdt.Holder{Manifest: sv.Hash.String(), Size: sv.Manifest.Size(), Files: int64(len(sv.Manifest.Files)), State: crdt.HolderPartial, UpdatedMs: l.cfg.Now().UnixMilli()}
	_, err := l.cfg.Doc.Update("library partial", func(tx *crdt.Tx) error {
		tx.SetHolder(id, self, h)
		return nil
	})
	if err != nil {
		l.lg.Warn().Str("item", id).Err(err).Msg("publishing a partial holder entry failed")
		return false
	}
	return true
}

// withdrawPartial stops serving a download's chunks; with unpublish, it
// also removes the partial holder entry (a download that failed or was
// cancelled: a finished one is replaced by its complete entry).
func (l *Library) withdrawPartial(id string, h Hash, unpublish bool) {
	l.mu.Lock()
	delete(l.partial, h)
	l.mu.Unlock()
	if !unpublish {
		return
	}
	self := l.cfg.Host.ID().String()
	_, err := l.cfg.Doc.Update("library partial withdrawn", func(tx *crdt.Tx) error {
		tx.RemoveHolder(id, self)
		return nil
	})
	if err != nil {
		l.lg.Warn().Str("item", id).Err(err).Msg("withdrawing a partial holder entry failed")
	}
}

// Transfer is one download, as the API shows it.
type Transfer struct {
	ID       string    `json:"id"`
	Item     string    `json:"item"`
	Manifest string    `json:"manifest"`
	State    string    `json:"state"` // running, done, failed, cancelled
	Error    string    `json:"error,omitempty"`
	Started  time.Time `json:"started"`
	Sources  []string  `json:"sources"`

	progress *Progress
	cancel   context.CancelFunc
	ended    time.Time
}

// TransferStatus is a transfer with its live figures.
type TransferStatus struct {
	Transfer
	Total      int64             `json:"total_bytes"`
	Done       int64             `json:"done_bytes"`
	Fetched    int64             `json:"fetched_bytes"`
	Reused     int64             `json:"reused_bytes"`
	Resumed    int64             `json:"resumed_bytes"`
	BadChunks  int64             `json:"bad_chunks"`
	BySource   map[string]int64  `json:"by_source"`
	BadSources map[string]string `json:"bad_sources"`
	RateBps    float64           `json:"rate_bps"`
	ElapsedSec float64           `json:"elapsed_s"`
}

// Transfer states.
const (
	TransferRunning   = "running"
	TransferDone      = "done"
	TransferFailed    = "failed"
	TransferCancelled = "cancelled"
)

// ErrNoHolder is returned for an item no other node holds complete.
var ErrNoHolder = errors.New("transfer: no other node holds that item complete")

// ErrBusy is returned for an item with an operation already in flight.
var ErrBusy = errors.New("transfer: the item has a download in flight")

// StartDownload starts downloading item id at manifest version (empty: the
// version held complete by the most recently updated holder) from every
// holder of that version.
func (l *Library) StartDownload(id, version string) (TransferStatus, error) {
	if err := ValidItemID(id); err != nil {
		return TransferStatus{}, fmt.Errorf("transfer: item %q: %w", id, err)
	}
	it, ok, err := l.cfg.Doc.Item(id)
	if err != nil {
		return TransferStatus{}, err
	}
	if !ok {
		return TransferStatus{}, fmt.Errorf("transfer: no item %q in the library", id)
	}
	self := l.cfg.Host.ID().String()
	if version == "" {
		var best int64 = -1
		for p, h := range it.Holders {
			if p != self && h.State == crdt.HolderComplete && h.UpdatedMs > best {
				best, version = h.UpdatedMs, h.Manifest
			}
		}
	}
	mh, err := ParseHash(version)
	if err != nil {
		if version == "" {
			return TransferStatus{}, ErrNoHolder
		}
		return TransferStatus{}, err
	}
	sources := l.holdersOf(it, version, nil)
	if len(sources) == 0 {
		return TransferStatus{}, fmt.Errorf("%w (version %s)", ErrNoHolder, version)
	}
	return l.start(id, mh, sources)
}

// holdersOf returns the other nodes holding version of it, complete or
// partial (downloading it and serving what they have), with extra peers
// added, sorted and without repeats.
func (l *Library) holdersOf(it crdt.Item, version string, extra []peer.ID) []peer.ID {
	set := map[peer.ID]bool{}
	for _, p := range extra {
		set[p] = true
	}
	for p, h := range it.Holders {
		if pid, err := peer.Decode(p); err == nil && h.Manifest == version && (h.State == crdt.HolderComplete || h.State == crdt.HolderPartial) {
			set[pid] = true
		}
	}
	delete(set, l.cfg.Host.ID())
	out := make([]peer.ID, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func (l *Library) start(id string, mh Hash, sources []peer.ID) (TransferStatus, error) {
	l.mu.Lock()
	if l.busy[id] != "" {
		l.mu.Unlock()
		return TransferStatus{}, ErrBusy
	}
	if sv := l.local[id]; sv != nil && sv.Hash == mh {
		l.mu.Unlock()
		return TransferStatus{}, fmt.Errorf("transfer: this node already holds %s at %s", id, mh)
	}
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	t := &Transfer{ID: hex.EncodeToString(b), Item: id, Manifest: mh.String(), State: TransferRunning, Started: l.cfg.Now(), progress: &Progress{}}
	for _, s := range sources {
		t.Sources = append(t.Sources, s.String())
	}
	l.busy[id] = "download"
	l.transfers[t.ID] = t
	base := l.local[id]
	l.mu.Unlock()
	staging := filepath.Join(l.cfg.Dir, dirStaging, id+"-"+mh.String()[:16])
	job, _ := json.Marshal(jobInfo{Item: id, Manifest: mh.String(), Sources: t.Sources})
	if err := os.MkdirAll(staging, 0o700); err == nil {
		_ = atomicfile.WriteFile(filepath.Join(staging, jobFile), job, 0o600)
	}
	started := l.goFunc(func(ctx context.Context) {
		ctx, cancel := context.WithCancel(ctx)
		l.mu.Lock()
		t.cancel = cancel
		l.mu.Unlock()
		defer cancel()
		l.runDownload(ctx, t, mh, sources, staging, base)
	})
	if !started {
		l.mu.Lock()
		delete(l.busy, id)
		t.State, t.Error = TransferFailed, "the node is stopping"
		l.mu.Unlock()
	}
	return l.status(t), nil
}

type jobInfo struct {
	Item     string   `json:"item"`
	Manifest string   `json:"manifest"`
	Sources  []string `json:"sources"`
}

func (l *Library) runDownload(ctx context.Context, t *Transfer, mh Hash, sources []peer.ID, staging string, base *Served) {
	var published atomic.Bool
	cfg := DownloadConfig{
		Host: l.cfg.Host, Protocol: l.cfg.Protocol, Manifest: mh, Sources: sources, Staging: staging,
		Progress: t.progress, Logger: l.lg.With().Str("item", t.Item).Logger(),
		OnBadPeer: func(p peer.ID, why string) {
			l.cfg.OnEvent("peer.bad_data", map[string]any{"peer": p.String(), "item": t.Item, "why": why})
		},
		MoreSources: func() []peer.ID {
			it, _, err := l.cfg.Doc.Item(t.Item)
			if err != nil {
				return nil
			}
			return l.holdersOf(it, mh.String(), nil)
		},
		Serve: func(sv *Served) { published.Store(l.servePartial(t.Item, sv)) },
	}
	if base != nil {
		cfg.Local = localChunks(base)
	}
	stopProgress := make(chan struct{})
	var pw sync.WaitGroup
	pw.Add(1)
	go func() {
		defer pw.Done()
		tk := time.NewTicker(time.Second)
		defer tk.Stop()
		for {
			select {
			case <-stopProgress:
				return
			case <-tk.C:
				st := l.status(t)
				l.cfg.OnEvent("transfer.progress", map[string]any{"id": t.ID, "item": t.Item, "done_bytes": st.Done, "total_bytes": st.Total, "rate_bps": st.RateBps})
			}
		}
	}()
	m, err := Download(ctx, cfg)
	// Withdrawn before the staged files move or go.
	l.withdrawPartial(t.Item, mh, err != nil && published.Load())
	if err == nil {
		err = l.swapIn(t.Item, staging)
	}
	close(stopProgress)
	pw.Wait()
	l.mu.Lock()
	cancelled := t.State == TransferCancelled
	l.mu.Unlock()
	if cancelled {
		// Discarded while the item is still marked busy, so a new
		// download of it cannot start in a folder being removed.
		_ = os.RemoveAll(staging)
	}
	l.mu.Lock()
	delete(l.busy, t.Item)
	l.mu.Unlock()
	if err == nil {
		// Known to the library and published before it is reported done.
		l.scanAndPublish([]string{t.Item})
	}
	l.mu.Lock()
	t.ended = l.cfg.Now()
	switch {
	case err == nil:
		t.State = TransferDone
	case ctx.Err() != nil && t.State == TransferCancelled:
	case ctx.Err() != nil:
		t.State, t.Error = TransferFailed, "the node stopped; the download resumes at the next start"
	default:
		t.State, t.Error = TransferFailed, err.Error()
	}
	state := t.State
	l.mu.Unlock()
	switch state {
	case TransferDone:
		l.lg.Info().Str("item", t.Item).Str("manifest", t.Manifest).Int64("bytes", m.Size()).Msg("download complete")
		l.cfg.OnEvent("transfer.done", map[string]any{"id": t.ID, "item": t.Item})
	case TransferCancelled:
		l.cfg.OnEvent("transfer.cancelled", map[string]any{"id": t.ID, "item": t.Item})
	default:
		l.lg.Warn().Str("item", t.Item).Str("error", t.Error).Msg("download failed")
		l.cfg.OnEvent("transfer.failed", map[string]any{"id": t.ID, "item": t.Item, "error": t.Error})
	}
}

// localChunks supplies chunks from the item's current local version.
func localChunks(sv *Served) ChunkSource {
	type loc struct {
		path string
		idx  int
	}
	where := map[Hash]loc{}
	for _, f := range sv.Manifest.Files {
		for i, h := range f.Chunks {
			where[h] = loc{f.Path, i}
		}
	}
	return func(h Hash, buf []byte) bool {
		lc, ok := where[h]
		if !ok {
			return false
		}
		root, err := os.OpenRoot(sv.Root)
		if err != nil {
			return false
		}
		defer root.Close()
		f, err := root.Open(lc.path)
		if err != nil {
			return false
		}
		defer f.Close()
		n, _ := f.ReadAt(buf, int64(lc.idx)*ChunkSize)
		return n == len(buf)
	}
}

// swapIntent is written before the staged item replaces the final one.
type swapIntent struct {
	Item    string `json:"item"`
	Staging string `json:"staging"`
}

// swapIn makes the staged item the item, with an intent log so that a
// crash at any step is completed at the next start.
func (l *Library) swapIn(id, staging string) error {
	l.mu.Lock()
	l.busy[id] = "swap"
	l.mu.Unlock()
	b, _ := json.Marshal(swapIntent{Item: id, Staging: staging})
	if err := atomicfile.WriteFile(filepath.Join(staging, swapFile), b, 0o600); err != nil {
		return err
	}
	return l.completeSwap(id, staging)
}

// completeSwap carries a swap to its end from whatever step it reached.
// Steps: keep the user-owned entries of the old item, move the old item
// aside, move the staged one in, remove the old one and the staging
// folder. Each is skipped when already done.
func (l *Library) completeSwap(id, staging string) error {
	final := filepath.Join(l.cfg.Share, id)
	staged := filepath.Join(staging, stagingData)
	aside := filepath.Join(staging, "old")
	if _, err := os.Stat(staged); err == nil {
		if _, err := os.Lstat(final); err == nil {
			if err := keepUserOwned(final, staged); err != nil {
				return err
			}
			if err := os.Rename(final, aside); err != nil {
				return fmt.Errorf("transfer: move the old %s aside: %w", id, err)
			}
		}
		if err := os.Rename(staged, final); err != nil {
			return fmt.Errorf("transfer: move %s into place: %w", id, err)
		}
		if err := syncPath(l.cfg.Share); err != nil {
			return err
		}
	}
	return os.RemoveAll(staging)
}

// keepUserOwned moves the old item's user-owned top-level entries (local/
// and .meshignore matches) into the new one, where it lacks them.
func keepUserOwned(oldRoot, newRoot string) error {
	ig, err := LoadIgnore(oldRoot)
	if err != nil {
		ig = &Ignore{patterns: []string{LocalDir}}
	}
	ents, err := os.ReadDir(oldRoot)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !ig.Ignored(e.Name()) {
			continue
		}
		dst := filepath.Join(newRoot, e.Name())
		if _, err := os.Lstat(dst); err == nil {
			continue
		}
		if err := os.Rename(filepath.Join(oldRoot, e.Name()), dst); err != nil {
			return fmt.Errorf("transfer: keep %s: %w", e.Name(), err)
		}
	}
	return nil
}

// recoverSwaps completes the swaps a crash interrupted.
func (l *Library) recoverSwaps() {
	for _, staging := range l.stagingDirs() {
		b, err := os.ReadFile(filepath.Join(staging, swapFile))
		if err != nil {
			continue
		}
		var in swapIntent
		if json.Unmarshal(b, &in) != nil || ValidItemID(in.Item) != nil {
			l.lg.Warn().Str("staging", staging).Msg("unreadable swap intent left alone")
			continue
		}
		if err := l.completeSwap(in.Item, staging); err != nil {
			l.lg.Error().Str("item", in.Item).Err(err).Msg("completing an interrupted swap failed")
			continue
		}
		l.lg.Info().Str("item", in.Item).Msg("completed an interrupted swap")
	}
}

func (l *Library) stagingDirs() []string {
	dir := filepath.Join(l.cfg.Dir, dirStaging)
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out
}

// resumeDownloads restarts the downloads a stop or crash interrupted,
// from every holder of their version today as well as their old sources.
func (l *Library) resumeDownloads() {
	for _, staging := range l.stagingDirs() {
		b, err := os.ReadFile(filepath.Join(staging, jobFile))
		var job jobInfo
		if err != nil || json.Unmarshal(b, &job) != nil || ValidItemID(job.Item) != nil {
			continue
		}
		mh, err := ParseHash(job.Manifest)
		if err != nil {
			continue
		}
		var old []peer.ID
		for _, s := range job.Sources {
			if p, err := peer.Decode(s); err == nil {
				old = append(old, p)
			}
		}
		it, _, _ := l.cfg.Doc.Item(job.Item)
		list := l.holdersOf(it, job.Manifest, old)
		l.lg.Info().Str("item", job.Item).Int("sources", len(list)).Msg("resuming an interrupted download")
		if _, err := l.start(job.Item, mh, list); err != nil {
			l.lg.Warn().Str("item", job.Item).Err(err).Msg("cannot resume download")
		}
	}
}

// Cancel stops a running transfer between chunks and discards its staging.
func (l *Library) Cancel(id string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	t, ok := l.transfers[id]
	if !ok {
		return fmt.Errorf("transfer: no transfer %s", id)
	}
	if t.State != TransferRunning {
		return fmt.Errorf("transfer: %s already %s", id, t.State)
	}
	t.State = TransferCancelled
	if t.cancel != nil {
		t.cancel()
	}
	return nil
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

// Transfers returns every transfer of this run, newest first.
func (l *Library) Transfers() []TransferStatus {
	l.mu.Lock()
	ts := make([]*Transfer, 0, len(l.transfers))
	for _, t := range l.transfers {
		ts = append(ts, t)
	}
	l.mu.Unlock()
	out := make([]TransferStatus, 0, len(ts))
	for _, t := range ts {
		out = append(out, l.status(t))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Started.After(out[j].Started) })
	return out
}

// TransferByID returns one transfer.
func (l *Library) TransferByID(id string) (TransferStatus, bool) {
	l.mu.Lock()
	t, ok := l.transfers[id]
	l.mu.Unlock()
	if !ok {
		return TransferStatus{}, false
	}
	return l.status(t), true
}

func (l *Library) status(t *Transfer) TransferStatus {
	l.mu.Lock()
	st := TransferStatus{Transfer: *t}
	st.Sources = append([]string{}, t.Sources...)
	end := t.ended
	l.mu.Unlock()
	p := t.progress
	st.Total, st.Done, st.Fetched = p.Total.Load(), p.Done.Load(), p.Fetched.Load()
	st.Reused, st.Resumed, st.BadChunks = p.Reused.Load(), p.Resumed.Load(), p.BadChunks.Load()
	st.BySource, st.BadSources = map[string]int64{}, map[string]string{}
	for k, v := range p.Sources() {
		st.BySource[k.String()] = v
	}
	for k, v := range p.BadSources() {
		st.BadSources[k.String()] = v
	}
	if end.IsZero() {
		end = l.cfg.Now()
	}
	st.ElapsedSec = end.Sub(t.Started).Seconds()
	if st.ElapsedSec > 0 {
		st.RateBps = float64(st.Fetched) / st.ElapsedSec
	}
	return st
}

// Local item states in the library view.
const (
	LocalAbsent      = "absent"
	LocalDownloading = "downloading"
	LocalComplete    = "complete"
	LocalOutdated    = "outdated"
)

// ItemVersion is one manifest of an item and who holds it.
type ItemVersion struct {
	Manifest string   `json:"manifest"`
	Size     int64    `json:"size"`
	Files    int64    `json:"files"`
	Holders  []string `json:"holders"`
	Partial  []string `json:"partial_holders,omitempty"`
	Updated  int64    `json:"updated_ms"`
}

// ItemView is one item of the fleet's library as GET /v1/library shows it.
type ItemView struct {
	ID       string        `json:"id"`
	Name     string        `json:"name"`
	Latest   string        `json:"latest"` // manifest of the most recently updated complete holder
	Versions []ItemVersion `json:"versions"`
	Local    string        `json:"local"`
	LocalVer string        `json:"local_manifest,omitempty"`
}

// View returns every item in the fleet's library, with this node's state.
func (l *Library) View() ([]ItemView, error) {
	lib, err := l.cfg.Doc.Library()
	if err != nil {
		return nil, err
	}
	self := l.cfg.Host.ID().String()
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]ItemView, 0, len(lib))
	for id, it := range lib {
		v := ItemView{ID: id, Name: it.Name, Versions: []ItemVersion{}, Local: LocalAbsent}
		byM := map[string]*ItemVersion{}
		var latest int64 = -1
		for p, h := range it.Holders {
			iv := byM[h.Manifest]
			if iv == nil {
				iv = &ItemVersion{Manifest: h.Manifest, Size: h.Size, Files: h.Files}
				byM[h.Manifest] = iv
			}
			if h.State == crdt.HolderComplete {
				iv.Holders = append(iv.Holders, p)
				if h.UpdatedMs > latest {
					latest, v.Latest = h.UpdatedMs, h.Manifest
				}
			} else {
				iv.Partial = append(iv.Partial, p)
			}
			iv.Updated = max(iv.Updated, h.UpdatedMs)
		}
		for _, iv := range byM {
			sort.Strings(iv.Holders)
			sort.Strings(iv.Partial)
			v.Versions = append(v.Versions, *iv)
		}
		sort.Slice(v.Versions, func(i, j int) bool { return v.Versions[i].Updated > v.Versions[j].Updated })
		if sv := l.local[id]; sv != nil {
			v.LocalVer = sv.Hash.String()
			v.Local = LocalOutdated
			if v.LocalVer == v.Latest {
				v.Local = LocalComplete
			}
		} else if h, ok := it.Holders[self]; ok && h.State == crdt.HolderComplete {
			v.Local, v.LocalVer = LocalComplete, h.Manifest
		}
		if l.busy[id] != "" {
			v.Local = LocalDownloading
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}
