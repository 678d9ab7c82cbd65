package crdt

import (
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	am "github.com/automerge/automerge-go"
	"github.com/rs/zerolog"
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
}

// Stats are cumulative counters of a Doc.
type Stats struct {
	LocalCommits   uint64
	RemoteChanges  uint64
	SnapshotMerges uint64
	Compactions    uint64
}

// Doc is the replicated fleet document with its persistence. All methods
// are safe for concurrent use. Writes, remote applies and sync steps are
// serialised under one lock; every change is appended to the change log and
// fsynced before the call that made it returns.
type Doc struct {
	cfg Config
	lg  zerolog.Logger

	mu sync.Mutex // serialises mutations and persistence
	// amp is the automerge document. It is replaced only by MergeSnapshot
	// adopting a peer's larger document; readers that loaded the old
	// pointer finish on a consistent (older) state.
	amp atomic.Pointer[am.Doc]
	// heads caches am.Heads(), refreshed under mu after every mutation:
	// heartbeats and gossip ask about heads far more often than they
	// change, and each automerge call crosses cgo.
	heads atomic.Pointer[[]Hash]
	// nodes caches Nodes by heads: the node list is read on every mesh
	// pass and API call, and decoding it crosses cgo per field.
	nodes  atomic.Pointer[nodesCache]
	st     *store
	closed bool
	damage []Damage

	watchMu  sync.Mutex
	watchers map[int]func(Event)
	nextW    int

	// saved caches the last Save output by heads: serving snapshots to
	// several joiners, metrics and compaction need not re-encode an
	// unchanged document. Guarded by mu.
	savedHeads string
	saved      []byte

	localCommits, remoteChanges, snapshotMerges, compactions atomic.Uint64
}

// Open loads the document from cfg.Dir (creating an empty one if there is
// none), recovering the valid part of damaged files.
func Open(cfg Config) (*Doc, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	lg := cfg.Logger.With().Str("component", "crdt").Logger()
	st, snap, records, damage, err := openStore(cfg.Dir, lg)
	if err != nil {
		return nil, err
	}
	d := &Doc{cfg: cfg, lg: lg, st: st, damage: damage, watchers: map[int]func(Event){}}
	d.amp.Store(am.New())
	if snap != nil {
		doc, err := am.Load(snap)
		if err != nil {
			kept, kerr := st.keepDamaged(st.dir+"/"+snapFile, true)
			if kerr != nil {
				kept = fmt.Sprintf("(not moved: %v)", kerr)
			}
			d.damage = append(d.damage, Damage{File: st.dir + "/" + snapFile, KeptAs: kept,
				Problem: fmt.Sprintf("passed its checksum but automerge cannot load it: %v", err),
				Lost:    "the snapshot's changes until a peer sends them again"})
			lg.Error().Err(err).Str("kept_as", kept).Msg("document snapshot unloadable")
		} else {
			d.amp.Store(doc)
		}
	}
	bad := replay(d.doc(), records)
	d.refreshHeads()
	for _, i := range bad {
		lg.Error().Int("record", i).Msg("document change log record unreadable; skipped")
	}
	if len(bad) > 0 {
		d.damage = append(d.damage, Damage{File: st.dir + "/" + logFile,
			Problem: fmt.Sprintf("%d change log records could not be applied", len(bad)), Lost: fmt.Sprintf("%d records", len(bad))})
	}
	if len(d.damage) > 0 || len(records) >= 1000 {
		// Fold the recovered state into a fresh snapshot so the next start
		// neither replays a long log nor meets the same damage again.
		if err := d.compactLocked(); err != nil {
			st.close()
			return nil, err
		}
	}
	lg.Info().Int("heads", len(d.Heads())).Int("log_records", len(records)).Msg("document opened")
	return d, nil
}

// Damage describes damage found and recovered from when the document was
// opened; empty when the files were intact.
func (d *Doc) Damage() []Damage { return slices.Clone(d.damage) }

// WaitingRecords returns how many change-log records are kept on disk and
// in memory because they depend on changes this node does not hold yet
// (after a lost snapshot, say); they apply as soon as anti-entropy brings
// their dependencies from a peer.
func (d *Doc) WaitingRecords() int { return 0 }

// Close folds the change log into the snapshot and closes the files.
// It is idempotent.
func (d *Doc) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	err := d.compactLocked()
	if cerr := d.st.close(); err == nil {
		err = cerr
	}
	return err
}

// Watch calls fn after every change, in commit order. fn must not block and
// must not call methods of d that write; it runs under the document lock.
// The returned function removes the watcher.
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

func (d *Doc) notify(ev Event) {
	d.watchMu.Lock()
	defer d.watchMu.Unlock()
	for _, fn := range d.watchers {
		fn(ev)
	}
}

// Update runs fn to collect writes and commits them as one change, which is
// on disk (fsynced) before Update returns. If fn returns an error or records
// an invalid write, nothing is written. An Update with no effective write
// returns a zero Hash and no error.
func (d *Doc) Update(msg string, fn func(*Tx) error) (Hash, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return Hash{}, ErrClosed
	}
	tx := &Tx{read: d}
	if err := fn(tx); err != nil {
		return Hash{}, err
	}
	if err := errors.Join(tx.errs...); err != nil {
		return Hash{}, err
	}
	for _, op := range tx.ops {
		if err := op(d.doc()); err != nil {
			// Automerge refused a write that passed validation. The writes
			// before it stay pending and go out with the next commit; say so.
			return Hash{}, fmt.Errorf("crdt: write: %w", err)
		}
	}
	h, err := d.doc().Commit(msg)
	if err != nil {
		return Hash{}, nil // nothing changed
	}
	heads := d.refreshHeads()
	ch, err := d.doc().Change(h)
	if err != nil {
		return Hash{}, fmt.Errorf("crdt: read back commit: %w", err)
	}
	raw := ch.Save()
	if err := d.st.append(raw); err != nil {
		return Hash{}, err
	}
	d.localCommits.Add(1)
	// Watchers (the publisher) see the change while it is being fsynced:
	// the fsync is off the fleet's delivery path. Publishing a change
	// before it is durable is safe: every process start uses a fresh
	// actor, so a crash here cannot make this node reuse the change's
	// sequence number; peers simply hold a change the caller was never
	// told succeeded, as with any write cut short by a crash.
	d.notify(Event{Local: true, Change: raw, Hash: h, Deps: ch.Dependencies(), Heads: heads})
	if err := d.st.sync(); err != nil {
		return Hash{}, err
	}
	return h, d.maybeCompactLocked()
}

// ErrMissingDeps is returned by ApplyChange when the change depends on
// changes this node lacks; the caller should run anti-entropy with the
// sender, which brings the whole missing history.
var ErrMissingDeps = errors.New("crdt: change depends on changes this node lacks")

// ApplyChange applies one change received from a peer, in automerge's
// Change.Save format, whose hash and dependencies the sender announced. It
// reports whether the change was new. A change we already have is a no-op.
func (d *Doc) ApplyChange(raw []byte, hash Hash, deps []Hash) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false, ErrClosed
	}
	if d.has(hash) {
		return false, nil
	}
	if !d.HasAll(deps) {
		return false, ErrMissingDeps
	}
	if err := d.doc().LoadIncremental(raw); err != nil {
		return false, fmt.Errorf("%w: change %s: %v", ErrCorrupt, hash, err)
	}
	heads := d.refreshHeads()
	if !d.has(hash) {
		return false, fmt.Errorf("%w: change bytes do not hash to the announced %s", ErrCorrupt, hash)
	}
	if err := d.st.append(raw); err != nil {
		return true, err
	}
	d.remoteChanges.Add(1)
	d.notify(Event{Heads: heads})
	return true, d.maybeCompactLocked()
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

// MergeSnapshot merges a peer's snapshot into this document and writes a new
// local snapshot holding the result.
func (d *Doc) MergeSnapshot(b []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	// Load the bytes in a scratch doc first: LoadIncremental of a damaged
	// snapshot must not leave half of it in the live document.
	loaded, err := am.Load(b)
	if err != nil {
		return fmt.Errorf("%w: snapshot from peer: %v", ErrCorrupt, err)
	}
	before := hashKey(*d.heads.Load())
	cur := d.doc()
	if d.st.snapSize == 0 && int64(len(b)) > d.st.logSize {
		// A new node: everything it has is in its change log, and the
		// peer's document is bigger. Adopt the loaded document and merge
		// ours into it: one Load, instead of Load + LoadIncremental + Save
		// (3x faster for a large fleet). The peer's bytes become the
		// snapshot; our changes stay in the log and replay on top.
		if _, err := loaded.Merge(cur); err != nil {
			return fmt.Errorf("crdt: merge into snapshot: %w", err)
		}
		if err := loaded.SetActorID(cur.ActorID()); err != nil {
			return fmt.Errorf("crdt: keep actor: %w", err)
		}
		if err := d.st.replaceSnapshot(b); err != nil {
			return err
		}
		d.amp.Store(loaded)
	} else {
		err := cur.LoadIncremental(b)
		d.refreshHeads() // before compaction: the Save cache is keyed by heads
		if err != nil {
			return fmt.Errorf("crdt: merge snapshot: %w", err)
		}
		if err := d.compactLocked(); err != nil {
			return err
		}
	}
	d.snapshotMerges.Add(1)
	heads := d.refreshHeads()
	if hashKey(heads) != before {
		d.notify(Event{Heads: heads})
	}
	return nil
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
func (d *Doc) HasAll(hs []Hash) bool {
	if len(hs) == 0 {
		return true
	}
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

// Stats returns cumulative counters.
func (d *Doc) Stats() Stats {
	return Stats{
		LocalCommits:   d.localCommits.Load(),
		RemoteChanges:  d.remoteChanges.Load(),
		SnapshotMerges: d.snapshotMerges.Load(),
		Compactions:    d.compactions.Load(),
	}
}

func (d *Doc) maybeCompactLocked() error {
	if d.st.logSize > max(d.cfg.CompactBytes, d.st.snapSize) || d.st.records >= d.cfg.CompactRecords {
		return d.compactLocked()
	}
	return nil
}

func (d *Doc) compactLocked() error {
	if err := d.st.writeSnapshot(d.saveLocked()); err != nil {
		return err
	}
	d.compactions.Add(1)
	return nil
}

// replay loads log records in order. A record whose dependencies are not
// there yet (possible for changes a sync message delivered out of order) is
// retried after the others until no more progress is made; it returns the
// indexes of the records that never loaded.
func replay(doc *am.Doc, records [][]byte) (bad []int) {
	pending := make([]int, len(records))
	for i := range pending {
		pending[i] = i
	}
	for len(pending) > 0 {
		var next []int
		for _, i := range pending {
			if err := doc.LoadIncremental(records[i]); err != nil {
				next = append(next, i)
			}
		}
		if len(next) == len(pending) {
			return next
		}
		pending = next
	}
	return nil
}

func hashKey(hs []Hash) string {
	b := make([]byte, 0, len(hs)*32)
	for _, h := range hs {
		b = append(b, h[:]...)
	}
	return hex.EncodeToString(b)
}
