package crdt

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	am "github.com/automerge/automerge-go"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/internal/atomicfile"
	"github.com/meshnode/meshnode/internal/cmem"
)

// Hash identifies one change (a document head).
type Hash = am.ChangeHash

// ErrClosed is returned by operations on a closed Doc.
var ErrClosed = errors.New("crdt: document closed")

// Config configures a Doc.
type Config struct {
	// Dir holds the snapshot and change log. Required.
	Dir string
	// Logger receives the document's log events.
	Logger zerolog.Logger
	// CompactBytes: once the change log outgrows both this and the
	// snapshot, it is folded into a new snapshot. Default 4 MiB.
	CompactBytes int64
	// CompactRecords: the log is also folded after this many records, which
	// bounds start-up replay time. Default 20,000.
	CompactRecords int
	// The cut rule (cutrule.go): a cut is due when the document takes at
	// least CutBytes on disk (default 128 KiB), history is at least
	// CutShare of it (default 0.5) and the epoch is at least CutMinAge old
	// (default 30 s). A node switches once it has seen a proposal for
	// CutGrace (default 10 s), and proposers take turns CutGrace apart.
	// The rule is checked every CutCheck (default 5 s; negative: never,
	// and the document is cut only by ProposeCut and SwitchEpoch).
	CutBytes  int64
	CutShare  float64
	CutMinAge time.Duration
	CutGrace  time.Duration
	CutCheck  time.Duration
	// Now is the clock of the cut rule. Default time.Now.
	Now func() time.Time
	// Key is this node's identity (its libp2p key): it signs the node's
	// single-writer records (its node record, holder entries and presence
	// leases). Nil gives a fresh random identity (tests).
	Key crypto.PrivKey
}

func (c *Config) validate() error {
	if c.Dir == "" {
		return errors.New("crdt: Config.Dir is required")
	}
	if c.CompactBytes <= 0 {
		c.CompactBytes = 4 << 20
	}
	if c.CompactRecords <= 0 {
		c.CompactRecords = 20_000
	}
	if c.CutBytes <= 0 {
		c.CutBytes = 128 << 10
	}
	if c.CutShare <= 0 || c.CutShare >= 1 {
		c.CutShare = 0.5
	}
	if c.CutMinAge <= 0 {
		c.CutMinAge = 30 * time.Second
	}
	if c.CutGrace <= 0 {
		c.CutGrace = 10 * time.Second
	}
	if c.CutCheck == 0 {
		c.CutCheck = 5 * time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Key == nil {
		k, _, err := crypto.GenerateEd25519Key(nil)
		if err != nil {
			return fmt.Errorf("crdt: make an identity key: %w", err)
		}
		c.Key = k
	}
	return nil
}

// Event tells a watcher that the document changed.
type Event struct {
	// Local is true for a commit made on this node.
	Local bool
	// Change is the encoded change of a local commit (automerge's
	// Change.Save format), ready to publish. Nil for remote changes.
	Change []byte
	// Hash is the local commit's hash and Deps its dependencies.
	Hash Hash
	Deps []Hash
	// Heads are the document heads after the change.
	Heads []Hash
	// Epoch is true when the document moved to a new epoch (a cut, or a
	// peer's snapshot of a later epoch): peers' sync states are stale.
	Epoch bool
}

// Stats are cumulative counters of a Doc.
type Stats struct {
	LocalCommits   uint64
	RemoteChanges  uint64
	SnapshotMerges uint64
	Compactions    uint64
	// LogSyncs counts fsyncs of the change log; below LocalCommits when
	// concurrent writers share them (group commit).
	LogSyncs uint64
	// RolledBack counts writes rolled back (refused by the disk, or by automerge).
	RolledBack uint64
}

// Doc is the replicated fleet document with its persistence. All methods
// are safe for concurrent use.
//
// Locking: mu serialises mutations of the automerge document and appends
// to the change log; it is never held across an fsync or a snapshot write.
// syncMu serialises fsyncs of the log and compactions (commit.go,
// compact.go): a local commit appends under mu, then waits under syncMu
// until one fsync covers its record, so concurrent writers share one fsync
// and gossip and sync deliveries never wait for another writer's disk.
// Lock order: syncMu, then mu, then evMu, then watchMu.
type Doc struct {
	cfg Config
	lg  zerolog.Logger

	syncMu sync.Mutex
	// synced is the logical log offset up to which every record is
	// durable, and syncedHeads the heads of the document at that offset:
	// a failed fsync rolls the document back to them. Written under
	// syncMu (and mu); synced is read without locks by event delivery.
	synced      atomic.Int64
	syncedHeads []Hash
	// fsync syncs the log; tests replace it to make an fsync fail.
	fsync func(*os.File) error
	lost  []lostRange // records cut off by failed fsyncs; under syncMu

	mu sync.Mutex
	// amp is the automerge document. It is replaced when MergeSnapshot
	// adopts a peer's larger document and when a failed write is rolled
	// back; readers that loaded the old pointer finish on a consistent
	// (older) state.
	amp atomic.Pointer[am.Doc]
	// heads caches am.Heads(), refreshed under mu after every mutation:
	// heartbeats and gossip ask about heads far more often than they
	// change, and each automerge call crosses cgo.
	heads atomic.Pointer[[]Hash]
	// view guards the record index and its view (view.go), so readers
	// never see a change half applied: every mutation holds it while it
	// applies a change and refreshes the view, readers share it.
	view   sync.RWMutex
	st     *store
	closed bool
	damage []Damage
	// epoch is the document's epoch (switch.go); written under syncMu
	// and mu, read without locks. switching holds off mutations while a
	// switch writes its files (waitSwitchLocked); under mu, with
	// switchCond on mu. epochStart is when this node entered the epoch.
	epoch      atomic.Pointer[Epoch]
	switching  bool
	switchCond *sync.Cond
	epochStart time.Time
	// broken is set when a switch failed after its commit point: no
	// mutation runs after it (waitSwitchLocked). Under mu.
	broken error
	// cutBase is what the document took on disk right after the last
	// switch (cutrule.go); 0 until known. Under mu.
	cutBase int64
	// waiting holds changes from the change log (or from a sync message)
	// whose dependencies this node lacks, e.g. after its snapshot was
	// lost. They apply when the dependencies arrive (settleWaitingLocked
	// after every remote change); until then compaction keeps their bytes
	// in the log. Under mu.
	waiting []rawChange

	// key signs this node's records; self is its peer ID. keys caches
	// writers' public keys and the changes whose signatures verified
	// (record.go).
	key  crypto.PrivKey
	self string
	keys *keys
	// recs says which record is in force at each single-writer key
	// (recindex.go). Written under mu and view, read under view.
	recs *recIndex

	evMu sync.Mutex
	evq  []queuedEvent // see commit.go

	watchMu  sync.Mutex
	watchers map[int]func(Event)
	nextW    int

	// saved caches the last Save output by heads: serving snapshots to
	// several joiners, metrics and compaction need not re-encode an
	// unchanged document. Guarded by mu.
	savedHeads string
	saved      []byte

	compactKick chan struct{}
	stop        chan struct{}
	wg          sync.WaitGroup

	localCommits, remoteChanges, snapshotMerges, compactions atomic.Uint64
	logSyncs, rolledBack, switches                           atomic.Uint64
}

// Open loads the document from cfg.Dir (creating an empty one if there is
// none), recovering every intact record of damaged files.
func Open(cfg Config) (*Doc, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	lg := cfg.Logger.With().Str("component", "crdt").Logger()
	old, err := checkFormat(cfg.Dir, lg)
	if err != nil {
		return nil, err
	}
	st, ld, err := openStore(cfg.Dir, lg)
	if err != nil {
		return nil, err
	}
	d := &Doc{cfg: cfg, lg: lg, st: st, damage: ld.damage, watchers: map[int]func(Event){}, fsync: (*os.File).Sync,
		compactKick: make(chan struct{}, 1), stop: make(chan struct{}), key: cfg.Key, keys: newKeys()}
	id, err := peer.IDFromPrivateKey(cfg.Key)
	if err != nil {
		st.close()
		return nil, fmt.Errorf("crdt: identity key: %w", err)
	}
	d.self = id.String()
	d.switchCond = sync.NewCond(&d.mu)
	d.epochStart = cfg.Now()
	d.amp.Store(am.New())
	d.recs = newRecIndex()
	var snapOps *DocOps
	if ld.snap != nil {
		doc, err := am.Load(ld.snap)
		if err != nil {
			path := filepath.Join(st.dir, snapFile)
			kept, kerr := st.keepDamaged(path, true)
			if kerr != nil {
				kept = fmt.Sprintf("(not moved: %v)", kerr)
			}
			d.damage = append(d.damage, Damage{File: path, KeptAs: kept, Lost: lostSnapshot,
				Problem: fmt.Sprintf("passed its checksum but automerge cannot load it: %v", err)})
			lg.Error().Err(err).Str("kept_as", kept).Msg("document snapshot unloadable")
			st.snapSize = 0
		} else {
			d.amp.Store(doc)
			if snapOps, err = decodeDocumentOnly(ld.snap, rootScalar); err == nil {
				d.recs = indexOps(snapOps)
			} else {
				d.recs = d.indexOf(doc)
			}
		}
	}
	ld.records = d.openEpoch(snapOps, ld.records)
	if err := d.doc().SetActorID(newOwnActor(d.self)); err != nil {
		st.close()
		return nil, fmt.Errorf("crdt: set the document's actor: %w", err)
	}
	d.mu.Lock() // replay's helpers expect it; nothing else runs yet
	unreadable, refused, refusedRecs := d.replay(ld.records)
	d.mu.Unlock()
	d.refreshHeads()
	if len(unreadable) > 0 {
		d.keepRecords(unreadable, "unreadable", fmt.Sprintf("%d records pass their checksum but are not automerge changes", len(unreadable)))
	}
	if len(refused) > 0 {
		d.keepRecords(refusedRecs, "refused", fmt.Sprintf("%d changes break the document's rules (first: %v)", len(refused), refused[0]))
		lg.Error().Int("changes", len(refused)).Err(refused[0]).Msg("change log holds changes that break the document's rules; kept aside, not applied")
	}
	if n := len(d.waiting); n > 0 {
		d.damage = append(d.damage, Damage{File: filepath.Join(st.dir, logFile),
			Problem: fmt.Sprintf("%d changes depend on changes this node does not hold (a lost snapshot or log record)", n),
			Lost:    "nothing yet: the changes are kept and apply as soon as a peer sends what they depend on"})
		lg.Warn().Int("changes", n).Msg("change log holds changes whose dependencies are missing; kept until a peer sends them")
	}
	if len(d.damage) > 0 || len(ld.records) >= 1000 {
		// Fold the recovered state into a fresh snapshot so the next start
		// neither replays a long log nor meets the same damage again.
		// Waiting changes stay in the new log.
		if err := d.compact(); err != nil {
			st.close()
			return nil, err
		}
	}
	d.synced.Store(st.end())
	d.syncedHeads = d.Heads()
	d.wg.Add(1)
	go d.compactLoop()
	if cfg.CutCheck > 0 {
		d.wg.Add(1)
		go d.epochLoop()
	}
	if old != nil {
		if err := d.carry(old); err == nil {
			err = old.done(cfg.Dir)
		}
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("crdt: carry the format 1 document over: %w", err)
		}
	}
	lg.Info().Int("heads", len(d.Heads())).Int("log_records", len(ld.records)).Msg("document opened")
	return d, nil
}

// keepRecords copies records the document cannot use to a file beside
// the log and reports them as damage.
func (d *Doc) keepRecords(recs [][]byte, what, problem string) {
	path := filepath.Join(d.st.dir, logFile)
	kept := fmt.Sprintf("%s.%s-%d", path, what, time.Now().UnixNano())
	var b []byte
	for _, r := range recs {
		b = appendRecord(b, r)
	}
	if err := atomicfile.WriteFile(kept, b, 0o600); err != nil {
		kept = fmt.Sprintf("(not kept: %v)", err)
	}
	d.damage = append(d.damage, Damage{File: path, KeptAs: kept, Problem: problem, Lost: fmt.Sprintf("%d records", len(recs))})
}

// Self is the peer ID this document signs records as.
func (d *Doc) Self() string { return d.self }

// Damage describes damage found and recovered from when the document was
// opened; empty when the files were intact.
func (d *Doc) Damage() []Damage { return slices.Clone(d.damage) }

// WaitingRecords returns how many changes from the change log (or from
// peers) this node keeps, on disk and in memory, because they depend on
// changes it does not hold yet (after a lost snapshot, say). They apply as
// soon as anti-entropy brings their dependencies from a peer.
func (d *Doc) WaitingRecords() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.waiting)
}

// Close folds the change log into the snapshot and closes the files. Writes
// still waiting for their fsync are covered by the final compaction. It is
// idempotent.
func (d *Doc) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()
	close(d.stop)
	d.wg.Wait()
	d.syncMu.Lock()
	defer d.syncMu.Unlock()
	err := d.compact()
	if cerr := d.st.close(); err == nil {
		err = cerr
	}
	d.deliver()
	return err
}

// Watch calls fn after every change, in commit order; a local commit is
// reported once it is durable. fn must not block and must not call methods
// of d that write; it runs under the document's event lock. The returned
// function removes the watcher.
func (d *Doc) Watch(fn func(Event)) (cancel func()) {
	d.watchMu.Lock()
	id := d.nextW
	d.nextW++
	d.watchers[id] = fn
	d.watchMu.Unlock()
	return func() {
		d.watchMu.Lock()
		delete(d.watchers, id)
		d.watchMu.Unlock()
	}
}

// Update runs fn to collect writes and commits them as one change, which is
// on disk (fsynced) before Update returns. If fn returns an error or records
// an invalid write, nothing is written; if the change cannot be written to
// disk, the document is rolled back to exactly what it was and the error
// wraps ErrDiskFull or names the file. An Update with no effective write
// returns a zero Hash and no error.
//
// Readers running while Update waits for its fsync may already see the
// change; peers and watchers see it only once it is durable.
func (d *Doc) Update(msg string, fn func(*Tx) error) (Hash, error) {
	h, end, err := d.commit(msg, fn)
	if err != nil || end == 0 {
		return h, err
	}
	if err := d.syncTo(end); err != nil {
		return Hash{}, err
	}
	return h, nil
}

// commit applies the writes of one Update in memory and appends the change
// to the log, returning the logical offset its record ends at.
func (d *Doc) commit(msg string, fn func(*Tx) error) (Hash, int64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.waitSwitchLocked(); err != nil {
		return Hash{}, 0, err
	}
	if d.closed {
		return Hash{}, 0, ErrClosed
	}
	tx := d.newTx()
	if err := fn(tx); err != nil {
		return Hash{}, 0, err
	}
	if err := errors.Join(tx.w.errs...); err != nil {
		return Hash{}, 0, err
	}
	before := *d.heads.Load()
	h, ch, err := d.apply(tx, msg)
	if err != nil {
		// Automerge, or the checks peers run, refused a write that
		// passed the Tx's own: drop the writes before it too.
		d.rollbackLocked(before)
		return Hash{}, 0, fmt.Errorf("crdt: write: %w", err)
	}
	if h == (Hash{}) {
		return Hash{}, 0, nil // nothing changed
	}
	raw := ch.Save()
	end, err := d.st.append(raw)
	if err != nil {
		d.rollbackLocked(before)
		return Hash{}, 0, err
	}
	heads := d.refreshHeads()
	d.localCommits.Add(1)
	d.enqueueLocked(Event{Local: true, Change: raw, Hash: h, Deps: ch.Dependencies(), Heads: heads}, end)
	d.kickCompactionLocked()
	return h, end, nil
}

// apply runs the writes of tx and commits them, with readers held off so
// none sees the writes half done, and returns the change. A zero hash
// means nothing changed.
func (d *Doc) apply(tx *Tx, msg string) (Hash, *am.Change, error) {
	d.view.Lock()
	defer d.view.Unlock()
	for _, op := range tx.w.ops {
		if err := op(d.doc()); err != nil {
			return Hash{}, nil, err
		}
	}
	if err := d.attestLocked(tx, d.doc()); err != nil {
		return Hash{}, nil, err
	}
	msg, err := tx.w.signRecords(msg)
	if err != nil {
		return Hash{}, nil, err
	}
	h, err := d.doc().Commit(msg)
	if err != nil {
		// automerge-go reports a commit without operations as this one
		// error (it has no sentinel); anything else is a real failure.
		if err.Error() == "Commit is empty" {
			return Hash{}, nil, nil
		}
		return Hash{}, nil, err
	}
	ch, err := d.doc().Change(h)
	if err != nil {
		return Hash{}, nil, fmt.Errorf("read back commit: %w", err)
	}
	// The checks peers will run, so that this node never makes a change
	// they refuse (too large, say, or a record that does not decode).
	co, _, err := decodeChange(ch.Save())
	if err != nil {
		return Hash{}, nil, fmt.Errorf("read back commit: %w", err)
	}
	if _, ref := d.checkBytes(co, false); ref != nil {
		return Hash{}, nil, fmt.Errorf("%w: peers would refuse this write: %v", ErrInvalidValue, ref)
	}
	d.recs.applyChange(co)
	d.recs.refresh(d.doc())
	return h, ch, nil
}

// ErrMissingDeps is returned by ApplyChange when the change depends on
// changes this node lacks; the caller should run anti-entropy with the
// sender, which brings the whole missing history.
var ErrMissingDeps = errors.New("crdt: change depends on changes this node lacks")

// ApplyChange applies one change received from a peer, in automerge's
// Change.Save format, whose hash and dependencies the sender announced. It
// reports whether the change was new. A change we already have is a no-op.
// The change is checked first (validate.go): one that breaks a rule
// returns an error wrapping *RefusedError and never enters the document.
// It is appended to the log before it is applied, so a change that cannot
// be written (a full disk) never enters memory: anti-entropy brings it
// again later.
func (d *Doc) ApplyChange(raw []byte, hash Hash, deps []Hash) (bool, error) {
	defer d.deliver()
	d.mu.Lock()
	defer d.mu.Unlock()
	_, fresh, err := d.applyChangeLocked(raw, hash, deps)
	return fresh, err
}

// applyChangeLocked is ApplyChange with mu held; it also returns the
// logical log offset the change's record ends at.
func (d *Doc) applyChangeLocked(raw []byte, hash Hash, deps []Hash) (int64, bool, error) {
	if err := d.waitSwitchLocked(); err != nil {
		return 0, false, err
	}
	if d.closed {
		return 0, false, ErrClosed
	}
	if d.has(hash) {
		return 0, false, nil
	}
	if !d.hasAllLocked(deps) {
		return 0, false, ErrMissingDeps
	}
	c, n, err := parseChange(raw)
	if err != nil || n != len(raw) {
		return 0, false, &RefusedError{Change: hash, Rule: RuleDecode, Detail: fmt.Sprintf("not one automerge change (%v)", err)}
	}
	if c.hash != hash {
		return 0, false, fmt.Errorf("%w: change bytes do not hash to the announced %s", ErrCorrupt, hash)
	}
	if !d.hasAllLocked(c.deps) || len(c.deps) == 0 && d.Epoch().Num > 0 {
		// A change with no dependencies in an epoch after the first is
		// the root of another epoch's document (a node that has not
		// switched yet): anti-entropy's hello sorts the epochs out.
		return 0, false, ErrMissingDeps
	}
	in := d.newIntake(true)
	if err := in.take(c); err != nil {
		return 0, false, err
	}
	if err := in.done(); err != nil {
		return 0, false, err
	}
	return d.st.end(), in.applied > 0, nil
}

// remoteChangedLocked is the common tail of every remote mutation: count,
// settle waiting changes, tell the watchers, consider compaction.
func (d *Doc) remoteChangedLocked(n int) {
	d.remoteChanges.Add(uint64(n))
	d.settleWaitingLocked()
	d.enqueueLocked(Event{Heads: d.refreshHeads()}, 0)
	d.kickCompactionLocked()
}

func (d *Doc) has(h Hash) bool {
	_, err := d.doc().Change(h)
	return err == nil
}

// Snapshot returns the whole document in automerge's Save format: the way
// to bootstrap an empty peer (far cheaper than a full sync) and a backup.
// The bytes may be shared with other callers: do not modify them.
func (d *Doc) Snapshot() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.saveLocked()
}

// saveLocked returns the document's Save output, from the cache when the
// heads have not moved. The bytes are shared: callers must not modify them.
func (d *Doc) saveLocked() []byte {
	key := hashKey(*d.heads.Load())
	if d.saved == nil || key != d.savedHeads {
		d.saved, d.savedHeads = d.doc().Save(), key
	}
	return d.saved
}

// MergeSnapshot merges a peer's snapshot into this document. The merged
// state is durable before MergeSnapshot returns: a new node adopts the
// peer's bytes as its snapshot; otherwise the snapshot is appended to the
// change log as one record.
func (d *Doc) MergeSnapshot(b []byte) error {
	// Automerge sees the bytes only once the decoder has found no action
	// but set and delete (a text bomb or a nested object is refused from
	// the action column, before any op is read). It then loads them on
	// another core while every operation and signature is checked (keys,
	// types, sizes, root only, no inserts), and a snapshot that fails the
	// checks is dropped unused: the load is most of a join's time, and
	// its memory is bounded by the ops the decoder has counted.
	doc, err := decodeDocumentOnly(b, rootScalar)
	if err != nil {
		return decodeRefusal(Hash{}, err)
	}
	loadc := make(chan loadResult, 1)
	go func() {
		// A scratch doc: LoadIncremental of a damaged snapshot must not
		// leave half of it in the live document.
		l, err := am.Load(b)
		loadc <- loadResult{l, err}
	}()
	x, needsSync, ref := d.checkDecoded(doc)
	lr := <-loadc
	if ref != nil {
		return ref
	}
	_, hdr, _ := genesisOf(doc) // checked by checkDecoded
	if needsSync && !hdrEpoch(hdr).After(d.Epoch()) {
		return ErrSnapshotNeedsSync
	}
	// A snapshot of a later epoch cannot be replaced by a sync (epochs
	// never sync), and a record below a higher one at its key, which is
	// what needsSync flags, is one readers never read (recindex.go): two
	// nodes carrying one writer's records across a cut make that in
	// honest histories.
	if lr.err != nil {
		return fmt.Errorf("%w: snapshot from peer: %v", ErrCorrupt, lr.err)
	}
	loaded := lr.doc
	adopted := false
	defer func() {
		if adopted {
			// After the locks: a join's check leaves tens of MiB of Go
			// garbage and automerge's load frees as much C heap. Hand both
			// back now rather than keep them resident (the Go scavenger
			// takes minutes; glibc never returns the middle of its heap).
			debug.FreeOSMemory()
			cmem.Trim()
		}
	}()
	// syncMu first: an adopted snapshot is written outside mu, and no
	// local commit may be acknowledged before it is on disk.
	d.syncMu.Lock()
	defer d.syncMu.Unlock()
	defer d.deliver()
	d.mu.Lock()
	broken := d.broken
	d.mu.Unlock()
	if broken != nil {
		return broken
	}
	if snapEpoch := hdrEpoch(hdr); snapEpoch != d.Epoch() {
		if !snapEpoch.After(d.Epoch()) {
			return ErrEpochBehind
		}
		gen, _, _ := genesisOf(doc)
		if err := d.adoptSnapshot(doc, loaded, hdr, gen); err != nil {
			return err
		}
		d.snapshotMerges.Add(1)
		adopted = true
		return nil
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return ErrClosed
	}
	beforeHeads := *d.heads.Load()
	before := hashKey(beforeHeads)
	cur := d.doc()
	if d.st.snapSize == 0 && int64(len(b)) > d.st.logSize {
		// A new node: everything it has is in its change log, and the
		// peer's document is bigger. Adopt the loaded document and merge
		// ours into it: one Load, instead of Load + LoadIncremental + Save
		// (3x faster for a large fleet). The peer's bytes become the
		// snapshot; our changes stay in the log and replay on top.
		if _, err := loaded.Merge(cur); err != nil {
			d.mu.Unlock()
			return fmt.Errorf("crdt: merge into snapshot: %w", err)
		}
		if err := loaded.SetActorID(cur.ActorID()); err != nil {
			d.mu.Unlock()
			return fmt.Errorf("crdt: keep actor: %w", err)
		}
		d.mu.Unlock()
		size, err := d.st.replaceSnapshot(b)
		d.mu.Lock()
		if err != nil {
			d.mu.Unlock()
			return err
		}
		// Commits and remote changes that landed in cur while the
		// snapshot was written come across too.
		if _, err := loaded.Merge(d.doc()); err != nil {
			d.mu.Unlock()
			return fmt.Errorf("crdt: merge into snapshot: %w", err)
		}
		d.st.snapSize = size
		x.merge(d.recs) // ours came across too
		d.swapLocked(loaded, x)
		adopted = true
	} else {
		d.view.Lock()
		err := cur.LoadIncremental(b)
		if err == nil {
			d.recs.merge(x)
			d.recs.refresh(cur)
		}
		d.view.Unlock()
		if err != nil {
			d.refreshHeads()
			d.mu.Unlock()
			return fmt.Errorf("crdt: merge snapshot: %w", err)
		}
		if hashKey(d.refreshHeads()) != before {
			if _, err := d.st.append(b); err != nil {
				d.rollbackLocked(beforeHeads)
				d.mu.Unlock()
				return err
			}
		}
	}
	d.snapshotMerges.Add(1)
	if heads := d.refreshHeads(); hashKey(heads) != before {
		d.remoteChangedLocked(0)
	}
	end, heads := d.st.end(), *d.heads.Load()
	d.mu.Unlock()
	// Changes merged from the peer are made durable like any other record
	// before this returns (syncMu is held: sync directly).
	if err := d.syncLocked(end); err != nil {
		return err
	}
	if d.synced.Load() == end {
		// An adopted snapshot is durable too: a later failed fsync must
		// not roll the document back to before it.
		d.syncedHeads = heads
	}
	return nil
}

type loadResult struct {
	doc *am.Doc
	err error
}

// doc returns the current automerge document.
func (d *Doc) doc() *am.Doc { return d.amp.Load() }

// Heads returns the current document heads.
func (d *Doc) Heads() []Hash { return slices.Clone(*d.heads.Load()) }

// refreshHeads re-reads the heads after a mutation; call it with mu held.
func (d *Doc) refreshHeads() []Hash {
	h := d.doc().Heads()
	d.heads.Store(&h)
	return slices.Clone(h)
}

// HeadStrings returns the heads as hex strings, sorted as automerge sorts them.
func (d *Doc) HeadStrings() []string { return HashStrings(*d.heads.Load()) }

// HashStrings renders hashes as hex.
func HashStrings(hs []Hash) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = h.String()
	}
	return out
}

// ParseHash parses a hex change hash.
func ParseHash(s string) (Hash, error) {
	h, err := am.NewChangeHash(s)
	if err != nil {
		return Hash{}, fmt.Errorf("crdt: bad change hash %q: %w", s, err)
	}
	return h, nil
}

// HasAll reports whether every given change is already in the document.
// It checks the cached heads first: the hashes asked about (a heartbeat's
// heads, a gossiped change's deps) are usually among them, and that is far
// cheaper than fetching changes by hash across cgo.
//
// It takes mu when it must ask automerge: automerge commits the writes an
// Update has made so far on any question about the history, so none may
// be asked beside one (it would split the Update's change from its
// signature).
func (d *Doc) HasAll(hs []Hash) bool {
	heads := *d.heads.Load()
	if !slices.ContainsFunc(hs, func(h Hash) bool { return !slices.Contains(heads, h) }) {
		return true
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.hasAllLocked(hs)
}

// hasAllLocked is HasAll with mu held.
func (d *Doc) hasAllLocked(hs []Hash) bool {
	heads := *d.heads.Load()
	for _, h := range hs {
		if !slices.Contains(heads, h) && !d.has(h) {
			return false
		}
	}
	return true
}

// Empty reports whether the document holds no change at all.
func (d *Doc) Empty() bool { return len(*d.heads.Load()) == 0 }

// SavedSize returns the byte size of the document in automerge's compact
// Save format, cached per heads.
func (d *Doc) SavedSize() int { return len(d.Snapshot()) }

// DiskBytes returns the bytes the document takes on disk: its snapshot
// and its change log. Unlike SavedSize it encodes nothing, so status and
// metrics can ask for it on every call (a Save of a 100,000-record
// document costs about 0.2 s).
func (d *Doc) DiskBytes() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.st.snapSize + d.st.logSize
}

// Stats returns cumulative counters.
func (d *Doc) Stats() Stats {
	return Stats{
		LocalCommits:   d.localCommits.Load(),
		RemoteChanges:  d.remoteChanges.Load(),
		SnapshotMerges: d.snapshotMerges.Load(),
		Compactions:    d.compactions.Load(),
		LogSyncs:       d.logSyncs.Load(),
		RolledBack:     d.rolledBack.Load(),
	}
}

func hashKey(hs []Hash) string {
	b := make([]byte, 0, len(hs)*32)
	for _, h := range hs {
		b = append(b, h[:]...)
	}
	return hex.EncodeToString(b)
}
