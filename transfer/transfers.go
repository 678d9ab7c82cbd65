package transfer

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshnode/meshnode/crdt"
	"github.com/meshnode/meshnode/internal/atomicfile"
)

// Transfer is one download, as the API shows it.
type Transfer struct {
	ID       string    `json:"id"`
	Item     string    `json:"item"`
	Manifest string    `json:"manifest"`
	State    string    `json:"state"` // running, done, failed, cancelled
	Error    string    `json:"error,omitempty"`
	Started  time.Time `json:"started"`
	Sources  []string  `json:"sources"`
	// Pinned: the download was asked for one version. Otherwise it was
	// asked for the item, and moves to a newer version published while
	// it runs, keeping what it verified (MovedFrom lists the versions it
	// left, oldest first).
	Pinned    bool     `json:"pinned"`
	MovedFrom []string `json:"moved_from,omitempty"`

	progress *Progress
	lin      heldVersion // of the version fetched now, when the document knew it
	cancel   context.CancelFunc
	swapping bool // past the point of no return (beginSwap): Cancel refuses
	ended    time.Time
	done     chan struct{} // closed once the transfer has ended
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
	Elsewhere  int64             `json:"elsewhere_requests"`
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

// ErrHeld is returned for a download of a version this node holds.
var ErrHeld = errors.New("transfer: this node already holds")

// ErrBusy is returned for an item with an operation already in flight.
var ErrBusy = errors.New("transfer: the item has a download in flight")

// StartDownload starts downloading item id at manifest version (empty: the
// latest version: versions.go) from every holder of that version.
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
	pinned := version != ""
	if version == "" {
		// The latest version, not the latest some other node holds: a
		// node that holds the latest itself has nothing to download.
		version = latestOf(it, "")
		if h, ok := it.Holders[self]; ok && h.State == crdt.HolderComplete && h.Manifest == version {
			return TransferStatus{}, fmt.Errorf("%w: the latest version of %s (%s)", ErrHeld, id, version)
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
	return l.start(id, mh, sources, pinned, lineageOf(it, version))
}

// holdersOf returns the other nodes holding version of it, complete or
// partial (downloading it and serving what they have, Next included), with extra peers
// added, sorted and without repeats.
func (l *Library) holdersOf(it crdt.Item, version string, extra []peer.ID) []peer.ID {
	set := map[peer.ID]bool{}
	for _, p := range extra {
		set[p] = true
	}
	for p, h := range it.Holders {
		if pid, err := peer.Decode(p); err == nil && (h.Manifest == version || h.Next == version) {
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

// start records a transfer of item id at mh and runs it on a goroutine.
// Its context exists before the goroutine does, so that a Cancel that
// comes first is not lost.
func (l *Library) start(id string, mh Hash, sources []peer.ID, pinned bool, lin heldVersion) (TransferStatus, error) {
	t := &Transfer{ID: newTransferID(), Item: id, Manifest: mh.String(), State: TransferRunning, Started: l.cfg.Now(), Pinned: pinned, lin: lin, progress: &Progress{}, done: make(chan struct{})}
	t.Sources = peerStrings(sources)
	staging := l.stagingFor(id, mh)
	l.mu.Lock()
	if l.busy[id] != "" {
		l.mu.Unlock()
		return TransferStatus{}, ErrBusy
	}
	base := l.local[id]
	if base != nil && base.Hash == mh {
		l.mu.Unlock()
		return TransferStatus{}, fmt.Errorf("%w: %s at %s", ErrHeld, id, mh)
	}
	l.transfers[t.ID] = t
	if run := l.runningLocked(); run == nil {
		t.State, t.Error, t.ended = TransferFailed, "the node is stopping", t.Started
		close(t.done)
	} else {
		ctx, cancel := context.WithCancel(run)
		t.cancel = cancel
		l.busy[id] = "download"
		l.goLocked(func() {
			defer cancel()
			l.runDownload(ctx, t, mh, sources, staging, base)
		})
	}
	l.mu.Unlock()
	return l.status(t), nil
}

// stagingFor is the staging folder of a download of item id at mh.
func (l *Library) stagingFor(id string, mh Hash) string {
	return filepath.Join(l.cfg.Dir, dirStaging, id+"-"+mh.String()[:16])
}

func peerStrings(ps []peer.ID) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

func newTransferID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// jobInfo is a staging folder's job.json: what it downloads, for the
// next start to resume it.
type jobInfo struct {
	Item     string   `json:"item"`
	Manifest string   `json:"manifest"`
	Sources  []string `json:"sources"`
	Pinned   bool     `json:"pinned,omitempty"`
	// Lineage is the version's generation and parent when the download
	// started (versions.go).
	Lineage heldVersion `json:"lineage,omitzero"`
	// Superseded names the version the download moved to: the folder is
	// kept only for that download to reuse its chunks, never resumed.
	Superseded string `json:"superseded,omitempty"`
}

// recordJob creates the staging folder and writes its job.json, so that
// from here on a crash resumes the download at the next start.
func recordJob(staging string, job jobInfo) error {
	_, err := os.Lstat(staging)
	fresh := errors.Is(err, fs.ErrNotExist)
	if err := os.MkdirAll(staging, 0o700); err != nil {
		return diskError("create the staging folder", staging, err)
	}
	b, err := json.Marshal(job)
	if err != nil {
		return fmt.Errorf("transfer: encode %s: %w", jobFile, err)
	}
	p := filepath.Join(staging, jobFile)
	if err := atomicfile.WriteFile(p, b, 0o600); err != nil {
		if fresh {
			_ = os.Remove(staging) // empty: not left for every start to skip
		}
		return diskError("write", p, err)
	}
	return nil
}

// diskError wraps a failed write of path, as ErrNoSpace when the disk is
// full.
func diskError(op, path string, err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("%w: %s %s: %w", ErrNoSpace, op, path, err)
	}
	return fmt.Errorf("transfer: %s %s: %w", op, path, err)
}

// runDownload runs transfer t to its end: record the job, fetch into
// staging, swap the item in, rescan it, report.
func (l *Library) runDownload(ctx context.Context, t *Transfer, mh Hash, sources []peer.ID, staging string, base *Served) {
	var m *Manifest
	var fps map[string]fingerprint
	recorded := false
	err := ctx.Err()
	if err == nil {
		err = recordJob(staging, jobInfo{Item: t.Item, Manifest: mh.String(), Sources: peerStrings(sources), Pinned: t.Pinned, Lineage: t.lin})
		recorded = err == nil
	}
	for err == nil {
		var to Hash
		m, fps, to, err = l.fetchItem(ctx, t, mh, sources, staging, base)
		if err == nil || to == (Hash{}) {
			break
		}
		var next string
		if next, sources, err = l.moveTo(t, staging, to); err != nil {
			break
		}
		mh, staging = to, next
		err = ctx.Err()
	}
	if err == nil && t.lin.Manifest != "" {
		// Remembered before the swap: the publication after it takes the
		// lineage from here, and a crash between the two must not make
		// this version look new (lineage.go).
		l.remember(map[string]heldVersion{t.Item: t.lin})
	}
	if err == nil {
		err = l.swapIn(t.Item, staging)
	}
	if err == nil {
		l.prune(t.Item) // still busy: no download of the item starts meanwhile
	}
	l.mu.Lock()
	cancelled := t.State == TransferCancelled
	l.mu.Unlock()
	if cancelled {
		// Discarded while the item is still marked busy, so a new
		// download of it cannot start in a folder being removed; with
		// the folders of versions it moved from.
		if rerr := os.RemoveAll(staging); rerr != nil {
			l.lg.Warn().Str("item", t.Item).Err(rerr).Msg("cannot remove a cancelled download's staging folder")
		}
		l.dropSuperseded(t.Item, "")
	}
	// Known to the library and published before it is reported done,
	// from the manifest it was verified against (no second hashing), and
	// while the item is still busy: until the new version is this node's,
	// nothing (a follower's pass) may take the old one for current.
	var aerr error
	if err == nil {
		if aerr = l.adopt(t.Item, m, fps); aerr != nil {
			l.setLocal(t.Item, nil) // the old version's files are gone
		}
	}
	l.mu.Lock()
	delete(l.busy, t.Item)
	l.mu.Unlock()
	if aerr != nil {
		l.lg.Warn().Str("item", t.Item).Err(aerr).Msg("the downloaded item is not as its manifest says; scanning it")
		l.scanAndPublish([]string{t.Item})
	}
	l.mu.Lock()
	t.ended = l.cfg.Now()
	switch {
	case err == nil:
		t.State = TransferDone
	case cancelled:
	case ctx.Err() != nil && recorded:
		t.State, t.Error = TransferFailed, "the node stopped; the download resumes at the next start"
	default:
		t.State, t.Error = TransferFailed, err.Error()
	}
	state := t.State
	close(t.done)
	l.mu.Unlock()
	switch state {
	case TransferDone:
		l.followed(t.Item, t.Manifest)
		l.lg.Info().Str("item", t.Item).Str("manifest", t.Manifest).Int64("bytes", m.Size()).Msg("download complete")
		l.cfg.OnEvent("transfer.done", map[string]any{"id": t.ID, "item": t.Item})
	case TransferCancelled:
		l.cfg.OnEvent("transfer.cancelled", map[string]any{"id": t.ID, "item": t.Item})
	default:
		l.lg.Warn().Str("item", t.Item).Str("error", t.Error).Msg("download failed")
		l.cfg.OnEvent("transfer.failed", map[string]any{"id": t.ID, "item": t.Item, "error": t.Error})
	}
}

// fetchItem downloads t into staging, serving its verified chunks to the
// fleet meanwhile and reporting progress every second. When all is
// fetched, unless a cancel came first, it passes beginSwap.
//
// A download asked for the item (not Pinned) whose version is replaced
// meanwhile by a newer one that another node holds stops, and fetchItem
// returns that version as to, with the error of the stop.
func (l *Library) fetchItem(ctx context.Context, t *Transfer, mh Hash, sources []peer.ID, staging string, base *Served) (m *Manifest, fps map[string]fingerprint, to Hash, err error) {
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	var published atomic.Bool
	self := l.cfg.Host.ID().String()
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
			if !t.Pinned {
				// Never back to the version held here: a tie in the
				// order must not make a node fetch what it has.
				if v, ok := newerVersion(it, mh.String(), self, t.lin, base); ok {
					stop(&movedError{to: v})
					return nil
				}
			}
			return l.holdersOf(it, mh.String(), nil)
		},
		Serve:  func(sv *Served) { published.Store(l.servePartial(t.Item, sv)) },
		Reused: func() { l.dropSuperseded(t.Item, staging) },
	}
	cfg.Local = l.reusable(t.Item, staging, base)
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
	defer pw.Wait()
	defer close(stopProgress)
	m, fps, err = fetchStaged(ctx, cfg)
	var mv *movedError
	if err != nil && errors.As(context.Cause(ctx), &mv) {
		to = mv.to
	}
	if err == nil {
		err = l.beginSwap(t)
	}
	// Withdrawn before the staged files move or go; the partial holder
	// entry stays only for the complete one to replace.
	l.withdrawPartial(t.Item, mh, err != nil && published.Load())
	return m, fps, to, err
}

// movedError stops a download whose version was replaced: it moves to.
type movedError struct{ to Hash }

func (e *movedError) Error() string { return "the item has a newer version: " + e.to.String() }

// newerVersion returns the latest version of it that a node other than
// self holds complete, when it ranks above version m, whose lineage the
// download found (lin), and above the version held here (base), if any
// (versions.go).
func newerVersion(it crdt.Item, m, self string, lin heldVersion, base *Served) (Hash, bool) {
	vs := versionsOf(it)
	latest := latestIn(vs, self)
	if latest == "" || latest == m {
		return Hash{}, false
	}
	h, err := ParseHash(latest)
	if err != nil {
		return Hash{}, false
	}
	lv, _ := findVersion(vs, latest)
	cur, known := findVersion(vs, m)
	if lin.Manifest == m {
		// What this node was told, or published itself, rather than what
		// the document says now (its own entry may not carry it yet).
		cur, known = ItemVersion{Manifest: m, Gen: lin.Gen, Updated: cur.Updated}, true
	}
	if known && !lv.rank().above(cur.rank()) {
		return Hash{}, false
	}
	if base != nil {
		if b, ok := findVersion(vs, base.Hash.String()); base.Hash == h || (ok && !lv.rank().above(b.rank())) {
			return Hash{}, false
		}
	}
	return h, true
}

// moveTo makes transfer t, whose version in staging was replaced, a
// download of version to, and returns its staging folder and sources.
// The new folder's job is recorded first, so that from then on a crash
// resumes the new version; then the old folder is marked superseded (kept
// for the new download to reuse its verified chunks, which then removes
// it; never resumed), and t reports the move. A failure to record the new
// job leaves the old folder as it was, to resume.
func (l *Library) moveTo(t *Transfer, staging string, to Hash) (string, []peer.ID, error) {
	it, _, _ := l.cfg.Doc.Item(t.Item)
	sources := l.holdersOf(it, to.String(), nil)
	lin := lineageOf(it, to.String())
	next := l.stagingFor(t.Item, to)
	if err := recordJob(next, jobInfo{Item: t.Item, Manifest: to.String(), Sources: peerStrings(sources), Lineage: lin}); err != nil {
		return "", nil, err
	}
	job, _, err := readJob(staging)
	if err == nil {
		job.Superseded = to.String()
		err = recordJob(staging, job)
	}
	if err != nil {
		// Not reusable then: a folder that could be resumed as the old
		// version must not stay.
		l.lg.Warn().Str("staging", staging).Err(err).Msg("cannot mark a replaced download's staging folder; removing it")
		_ = os.RemoveAll(staging)
	}
	l.mu.Lock()
	from := t.Manifest
	t.MovedFrom = append(t.MovedFrom, from)
	t.Manifest = to.String()
	t.Sources = peerStrings(sources)
	t.lin = lin
	l.mu.Unlock()
	// Done counts the new version's bytes; Fetched and Reused go on.
	t.progress.Done.Store(0)
	l.lg.Info().Str("item", t.Item).Str("from", from).Str("to", to.String()).Msg("download moved to the item's new version")
	l.cfg.OnEvent("transfer.moved", map[string]any{"id": t.ID, "item": t.Item, "from": from, "to": to.String()})
	return next, sources, nil
}

// dropSuperseded removes the staging folders of item id that a download
// moved away from, except keep: the download that moved has reused their
// chunks.
func (l *Library) dropSuperseded(id, keep string) {
	for _, dir := range l.stagingDirs() {
		if job, _, err := readJob(dir); err != nil || dir == keep || job.Item != id || job.Superseded == "" {
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			l.lg.Warn().Str("staging", dir).Err(err).Msg("cannot remove a replaced download's staging folder")
		}
	}
}

// beginSwap is the point of no return of a download that fetched
// everything: from here on Cancel refuses, and a cancel that came before
// wins.
func (l *Library) beginSwap(t *Transfer) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t.State == TransferCancelled {
		return context.Canceled
	}
	t.swapping = true
	l.busy[t.Item] = "swap"
	return nil
}

// reusable supplies, for a download of item id into staging, the chunks
// the node already has: those of the item's current local version (base,
// if any), then the verified chunks of the item's other staging folders
// (a download of another version that failed, was interrupted or was
// replaced), so that a second try at an item whose version moved on
// fetches only what changed. The download checks every chunk's hash.
func (l *Library) reusable(id, staging string, base *Served) ChunkSource {
	var srcs []ChunkSource
	if base != nil {
		srcs = append(srcs, localChunks(base))
	}
	for _, dir := range l.stagingDirs() {
		if dir == staging {
			continue
		}
		if job, _, err := readJob(dir); err == nil && job.Item == id {
			if src := stagedChunks(dir); src != nil {
				srcs = append(srcs, src)
			}
		}
	}
	if len(srcs) == 0 {
		return nil
	}
	return func(h Hash, buf []byte) bool {
		for _, src := range srcs {
			if src(h, buf) {
				return true
			}
		}
		return false
	}
}

// stagedChunks supplies the chunks a staging folder holds written and
// verified (its have log), or nil when it holds none.
func stagedChunks(staging string) ChunkSource {
	mb, err := os.ReadFile(filepath.Join(staging, stagingManifest))
	if err != nil {
		return nil
	}
	m, err := DecodeManifest(mb)
	if err != nil {
		return nil
	}
	log, err := os.ReadFile(filepath.Join(staging, stagingHave))
	if err != nil {
		return nil
	}
	firsts := m.firstChunks()
	where := map[Hash]chunkLoc{}
	for i := 0; i+4 <= len(log); i += 4 {
		g := int(binary.LittleEndian.Uint32(log[i:]))
		fi := sort.SearchInts(firsts, g+1) - 1
		if g < 0 || fi < 0 || fi >= len(m.Files) || g-firsts[fi] >= len(m.Files[fi].Chunks) {
			continue
		}
		f := m.Files[fi]
		where[f.Chunks[g-firsts[fi]]] = chunkLoc{f.Path, g - firsts[fi]}
	}
	if len(where) == 0 {
		return nil
	}
	return chunksIn(filepath.Join(staging, stagingData), where)
}

// chunkLoc is where a chunk lies: a file of an item and its index there.
type chunkLoc struct {
	path string
	idx  int
}

// chunksIn supplies the chunks where lists from the files under root.
func chunksIn(root string, where map[Hash]chunkLoc) ChunkSource {
	return func(h Hash, buf []byte) bool {
		lc, ok := where[h]
		if !ok {
			return false
		}
		r, err := os.OpenRoot(root)
		if err != nil {
			return false
		}
		defer r.Close()
		f, err := r.Open(lc.path)
		if err != nil {
			return false
		}
		defer f.Close()
		n, _ := f.ReadAt(buf, int64(lc.idx)*ChunkSize)
		return n == len(buf)
	}
}

// localChunks supplies chunks from the item's current local version.
func localChunks(sv *Served) ChunkSource {
	where := map[Hash]chunkLoc{}
	for _, f := range sv.Manifest.Files {
		for i, h := range f.Chunks {
			where[h] = chunkLoc{f.Path, i}
		}
	}
	return chunksIn(sv.Root, where)
}

// resumeDownloads restarts the downloads a stop or crash interrupted,
// from every holder of their version today as well as their old sources.
func (l *Library) resumeDownloads() {
	for _, staging := range l.stagingDirs() {
		job, mh, err := readJob(staging)
		if err != nil {
			l.lg.Warn().Str("staging", staging).Err(err).Msg("staging folder left alone: not resumable")
			continue
		}
		if job.Superseded != "" {
			continue // kept for the download that moved on, if it resumes
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
		lin := job.Lineage
		if lin.Manifest != job.Manifest {
			lin = lineageOf(it, job.Manifest)
		}
		if _, err := l.start(job.Item, mh, list, job.Pinned, lin); err != nil {
			l.lg.Warn().Str("item", job.Item).Err(err).Msg("cannot resume download")
		}
	}
	// A folder a download moved away from, with no download of its item
	// left to reuse it, is of no use.
	var left []string
	for _, dir := range l.stagingDirs() {
		if job, _, err := readJob(dir); err == nil && job.Superseded != "" {
			left = append(left, job.Item)
		}
	}
	for _, id := range left {
		l.mu.Lock()
		idle := l.busy[id] == ""
		l.mu.Unlock()
		if idle {
			l.dropSuperseded(id, "")
		}
	}
}

// readJob reads a staging folder's job.json.
func readJob(staging string) (jobInfo, Hash, error) {
	var job jobInfo
	p := filepath.Join(staging, jobFile)
	b, err := os.ReadFile(p)
	if err != nil {
		return job, Hash{}, err
	}
	if err := json.Unmarshal(b, &job); err != nil {
		return job, Hash{}, fmt.Errorf("transfer: %s: %w", p, err)
	}
	if err := ValidItemID(job.Item); err != nil {
		return job, Hash{}, fmt.Errorf("transfer: %s: item %q: %w", p, job.Item, err)
	}
	mh, err := ParseHash(job.Manifest)
	if err != nil {
		return job, Hash{}, fmt.Errorf("transfer: %s: %w", p, err)
	}
	return job, mh, nil
}

// Cancel stops a running transfer between chunks and discards its
// staging. Once the transfer has fetched everything and its item is being
// put in place, it is too late: Cancel fails and the transfer ends done.
func (l *Library) Cancel(id string) error {
	l.mu.Lock()
	t, ok := l.transfers[id]
	var err error
	switch {
	case !ok:
		err = fmt.Errorf("transfer: no transfer %s", id)
	case t.State != TransferRunning:
		err = fmt.Errorf("transfer: %s already %s", id, t.State)
	case t.swapping:
		err = fmt.Errorf("transfer: %s has fetched everything and its item is being put in place", id)
	default:
		t.State = TransferCancelled
	}
	l.mu.Unlock()
	if err != nil {
		return err
	}
	t.cancel()
	return nil
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

// WaitTransfer returns transfer id once it has ended, or as it is when
// ctx ends first.
func (l *Library) WaitTransfer(ctx context.Context, id string) (TransferStatus, bool) {
	l.mu.Lock()
	t, ok := l.transfers[id]
	l.mu.Unlock()
	if !ok {
		return TransferStatus{}, false
	}
	select {
	case <-t.done:
	case <-ctx.Done():
	}
	return l.status(t), true
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
	st.Elsewhere = p.Elsewhere.Load()
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

// servePartial makes a download's verified chunks available to the fleet
// and publishes this node as their holder, so that others downloading the
// same version find it: as a partial holder when this node holds no
// version of the item, else by naming the version in its entry's Next. It
// reports whether it published.
func (l *Library) servePartial(id string, sv *Served) bool {
	l.mu.Lock()
	l.partial[sv.Hash] = sv
	l.mu.Unlock()
	self := l.cfg.Host.ID().String()
	it, _, err := l.cfg.Doc.Item(id)
	if err != nil {
		return false
	}
	m := sv.Hash.String()
	h, held := it.Holders[self]
	withLineage := l.lineageOK()
	switch {
	case held && h.State == crdt.HolderComplete && !withLineage:
		return false // Next is unknown to some nodes: served, not advertised
	case held && h.State == crdt.HolderComplete && h.Manifest != m:
		// Its update time stays: it orders versions of generation 0.
		h.Next = m
	case held && h.State == crdt.HolderComplete:
		return false
	default:
		h = crdt.Holder{Manifest: m, Size: sv.Manifest.Size(), Files: int64(len(sv.Manifest.Files)), State: crdt.HolderPartial, UpdatedMs: l.cfg.Now().UnixMilli()}
		if v, ok := knownVersion(it, m); ok && withLineage {
			h.Gen, h.Parent = v.Gen, v.Parent
		}
	}
	_, err = l.cfg.Doc.Update("library partial", func(tx *crdt.Tx) error {
		tx.SetHolder(id, self, h)
		return nil
	})
	if err != nil {
		l.lg.Warn().Str("item", id).Err(err).Msg("publishing a partial holder entry failed")
		return false
	}
	return true
}

// withdrawPartial stops serving a download's chunks; with unpublish (a
// download that failed or was cancelled: a finished one is replaced by
// its complete entry), it also takes back what servePartial published:
// the partial holder entry, or the Next of a complete one.
func (l *Library) withdrawPartial(id string, h Hash, unpublish bool) {
	l.mu.Lock()
	delete(l.partial, h)
	l.mu.Unlock()
	if !unpublish {
		return
	}
	self := l.cfg.Host.ID().String()
	it, _, err := l.cfg.Doc.Item(id)
	if err != nil {
		return
	}
	cur, held := it.Holders[self]
	m := h.String()
	switch {
	case !held:
		return
	case cur.State == crdt.HolderComplete && cur.Next == m:
		cur.Next = ""
	case cur.State != crdt.HolderPartial || cur.Manifest != m:
		return
	}
	_, err = l.cfg.Doc.Update("library partial withdrawn", func(tx *crdt.Tx) error {
		if cur.State == crdt.HolderComplete {
			tx.SetHolder(id, self, cur)
		} else {
			tx.RemoveHolder(id, self)
		}
		return nil
	})
	if err != nil {
		l.lg.Warn().Str("item", id).Err(err).Msg("withdrawing a partial holder entry failed")
	}
}
