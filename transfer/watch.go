package transfer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/meshnode/meshnode/crdt"
	"github.com/meshnode/meshnode/internal/atomicfile"
)

// watch rescans items on watch events, debounced, and every item every
// ScanInterval, until ctx ends.
func (l *Library) watch(ctx context.Context) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		l.lg.Warn().Err(err).Msg("cannot watch the share folder; relying on periodic scans")
	} else {
		defer w.Close()
		l.watchTree(w, l.cfg.Share)
		// The removal of a staging folder ends a download's swap: it
		// comes after the swap's own events for its item in the same
		// queue, so those can be told from a user's.
		if err := w.Add(l.stagingDir()); err != nil {
			l.lg.Debug().Err(err).Msg("cannot watch the staging folder")
		}
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
			return
		case <-tick.C:
			l.ScanAll()
		case err := <-werrs:
			l.lg.Warn().Err(err).Msg("share folder watch error; the periodic scan repairs what it missed")
		case ev := <-events:
			if filepath.Dir(ev.Name) == l.stagingDir() {
				if id, ok := l.swapEnded(ev); ok {
					delete(due, id) // the events of its swap, not a user's change
				}
				continue
			}
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

// swapEnded reports whether ev is the removal of the staging folder of a
// swap this run made, and its item: the events before it for that item
// are the swap's own. The removal of a cancelled or failed download's
// staging folder ends nothing.
func (l *Library) swapEnded(ev fsnotify.Event) (string, bool) {
	if ev.Op&fsnotify.Remove == 0 {
		return "", false
	}
	name := filepath.Base(ev.Name)
	l.mu.Lock()
	defer l.mu.Unlock()
	id, ok := l.swaps[name]
	delete(l.swaps, name)
	return id, ok
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

// scanRetries bounds how often a failed item scan is tried again, and
// scanRetryWait is the wait before each try: a scan fails when files
// change under it (a file listed and gone before it is read), and the
// events that caused that may all have come while it ran.
const (
	scanRetries   = 3
	scanRetryWait = 500 * time.Millisecond
)

// RequestScan rescans one item soon: dropped while the item has an
// operation in flight; if a scan of it is running, that scan runs once
// more when it ends. A scan that fails is tried again, a few times.
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
	started := l.goFunc(func(ctx context.Context) {
		retries := 0
		for {
			_, f := l.scanAndPublish([]string{id})
			failed := len(f) > 0
			l.mu.Lock()
			again := l.pending[id]
			delete(l.pending, id)
			retry := failed && !again && retries < scanRetries
			if !again && !retry {
				delete(l.scanning, id)
			}
			l.mu.Unlock()
			if !again && !retry {
				return
			}
			if retry {
				retries++
				select {
				case <-ctx.Done():
					l.mu.Lock()
					delete(l.scanning, id)
					l.mu.Unlock()
					return
				case <-time.After(scanRetryWait):
				}
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
	HashedBytes          int64 // read and hashed by scans since the start
}

// ScanStatus returns the scan counters.
func (l *Library) ScanStatus() ScanStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := ScanStatus{Scans: l.scans, DroppedEvents: l.dropped, HashedBytes: l.hashed}
	for id := range l.scanning {
		st.Scanning = append(st.Scanning, id)
	}
	return st
}

// ScanAll scans every item of the share folder and publishes the
// results as it goes (see scanAndPublish).
func (l *Library) ScanAll() {
	start := time.Now()
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
	first := l.scans == 0
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
	st, _ := l.scanAndPublish(list)
	ev := l.lg.Debug()
	if first {
		ev = l.lg.Info()
	}
	ev.Int("items", len(list)).Bool("stopped", l.stopping.Load()).Int("files", st.Files).Int("hashed_files", st.Hashed).Int64("hashed_bytes", st.BytesHashed).
		Float64("took_ms", float64(time.Since(start).Microseconds())/1000).Msg("share folder scanned")
}

// publishEvery: a scanned item is published at most this long after its
// own scan ended, while the scan goes on with the next items; the items
// scanned meanwhile go in the same document change.
const publishEvery = 200 * time.Millisecond

// scanAndPublish scans the given items (skipping busy ones) and writes
// this node's holder entries for them: a publisher goroutine that it
// waits for writes what has been scanned every publishEvery, so that an
// item can be downloaded as soon as its own scan is done, not after the
// whole share folder's. It returns the scan's figures and the items
// whose scan failed.
func (l *Library) scanAndPublish(ids []string) (total ScanStats, failed []string) {
	var settle []string          // items with racy files
	results := make(chan string) // items scanned (or found gone)
	published := make(chan struct{})
	go func() {
		defer close(published)
		var batch []string
		var due <-chan time.Time
		for {
			select {
			case r, ok := <-results:
				if !ok {
					l.publish(batch, "")
					return
				}
				batch = append(batch, r)
				if due == nil {
					due = time.After(publishEvery)
				}
			case <-due:
				l.publish(batch, "")
				batch, due = nil, nil
			}
		}
	}()
	for _, id := range ids {
		if l.stopping.Load() {
			break // what was scanned is still published
		}
		l.mu.Lock()
		busy := l.busy[id] != ""
		l.mu.Unlock()
		if busy {
			continue
		}
		root := filepath.Join(l.cfg.Share, id)
		fi, err := os.Lstat(root)
		if err != nil || !fi.IsDir() {
			l.setLocal(id, nil)
			results <- id
			continue
		}
		if err := ValidItemID(id); err != nil {
			l.lg.Warn().Str("folder", id).Str("why", err.Error()).Msg("share subfolder is not shared: its name cannot be an item ID")
			continue
		}
		if l.cfg.beforeScan != nil {
			l.cfg.beforeScan(id)
		}
		sv, st, err := l.scanItem(id, root)
		if errors.Is(err, errScanStopped) {
			break
		}
		if err != nil {
			l.lg.Warn().Str("item", id).Err(err).Msg("scan failed")
			failed = append(failed, id)
			continue
		}
		total.Files += st.Files
		total.Hashed += st.Hashed
		total.Skipped += st.Skipped
		total.BytesHashed += st.BytesHashed
		l.lg.Debug().Str("item", id).Int("files", st.Files).Int("hashed", st.Hashed).Int64("bytes_hashed", st.BytesHashed).Msg("item scanned")
		l.setLocal(id, sv) // served at once, published soon
		results <- id
		if sv.racy != nil {
			settle = append(settle, id)
		}
	}
	close(results)
	<-published
	if len(settle) > 0 {
		l.rescanWhenSettled(settle)
	}
	l.prune("")
	l.mu.Lock()
	l.scans++
	l.hashed += total.BytesHashed
	l.mu.Unlock()
	return total, failed
}

// rescanWhenSettled scans the items again once the files that were racy
// at their scan are past racyWindow: the rescan hashes them once more,
// and from then on their chunks are served without a hash each.
func (l *Library) rescanWhenSettled(ids []string) {
	l.goFunc(func(ctx context.Context) {
		t := time.NewTimer(racyWindow + 500*time.Millisecond)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
			for _, id := range ids {
				l.RequestScan(id)
			}
		}
	})
}

// setLocal makes a scanned item served, or a gone one (nil) not.
func (l *Library) setLocal(id string, sv *Served) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if sv == nil {
		delete(l.local, id)
	} else {
		l.local[id] = sv
	}
}

// publish writes this node's holder entries for the given items in one
// document change, only where they changed: what is served now (a
// download that ended since their scan may have replaced it), or their
// removal where nothing is; items busy again are left to their download.
//
// own is an item the caller itself keeps busy (a download adopting its
// version), published all the same ("" for none).
func (l *Library) publish(ids []string, own string) {
	type served struct {
		id string
		sv *Served // nil: gone
	}
	l.mu.Lock()
	var results []served
	for _, id := range ids {
		if l.busy[id] == "" || id == own {
			results = append(results, served{id, l.local[id]})
		}
	}
	l.mu.Unlock()
	if len(results) == 0 {
		return
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
	withLineage := l.lineageOK()
	type memory struct {
		v     heldVersion
		known bool
		prev  heldVersion
	}
	mem := map[string]memory{}
	for _, r := range results {
		if r.sv != nil {
			v, known, prev := l.heldOf(r.id, r.sv.Hash.String())
			mem[r.id] = memory{v, known, prev}
		}
	}
	published := map[string]heldVersion{}
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
			mm := mem[r.id]
			prev := mm.prev
			if had && old.State == crdt.HolderComplete && old.Manifest != want.Manifest {
				prev = heldVersion{Manifest: old.Manifest, Gen: old.Gen}
			} else if top, _ := topGen(versionsOf(cur)); !had && prev.Manifest != "" && top > prev.Gen {
				// The item's folder was gone while the fleet moved past
				// what this node held (a backup came back): what it
				// brings is no newer than the fleet's.
				prev = heldVersion{}
			}
			lin := mm.v // a download's is remembered before its swap
			if !mm.known {
				lin.Gen, lin.Parent = lineage(cur, want.Manifest, prev.Manifest)
			}
			lin.Manifest = want.Manifest
			// Remembered even while nodes of protocol 1 run: written
			// into the entry by the first publication after they are
			// gone (the periodic scan at the latest).
			published[r.id] = lin
			switch {
			case withLineage:
				want.Gen, want.Parent = lin.Gen, lin.Parent
			case had && old.Manifest == want.Manifest:
				// Nodes of protocol 1 run: an unchanged entry keeps what
				// it has, a new one carries no lineage.
				want.Gen, want.Parent = old.Gen, old.Parent
			}
			if had && sameHolding(old, want) {
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
		return
	}
	l.remember(published)
	for _, id := range changed {
		l.cfg.OnEvent("item.scanned", map[string]any{"item": id})
	}
}

// lineageOK reports whether holder entries may carry version lineage
// (LibraryConfig.Lineage).
func (l *Library) lineageOK() bool { return l.cfg.Lineage == nil || l.cfg.Lineage() }

// spreadOK is lineageOK for the server, which may answer "elsewhere" only
// when every peer reads it; asked per request, so the answer is kept for
// a second.
func (l *Library) spreadOK() bool {
	if l.cfg.Lineage == nil {
		return true
	}
	now := time.Now()
	l.gateMu.Lock()
	if now.Sub(l.gateAt) < time.Second {
		v := l.gateOK
		l.gateMu.Unlock()
		return v
	}
	l.gateMu.Unlock()
	v := l.cfg.Lineage()
	l.gateMu.Lock()
	l.gateAt, l.gateOK = now, v
	l.gateMu.Unlock()
	return v
}

// sameHolding reports whether a published holder entry already says
// what want says, apart from its update time.
func sameHolding(old, want crdt.Holder) bool {
	old.UpdatedMs, old.Version = want.UpdatedMs, want.Version
	return old == want
}

// adopt makes a downloaded item known and published without hashing it
// again: its index comes from the manifest its chunks were verified
// against, with each file's fingerprint as the download left it (fps).
// It fails, for the caller to scan instead, if any file differs from
// that fingerprint now: someone changed it since it was written.
// It is published with the lineage the download remembered (lineage.go).
func (l *Library) adopt(id string, m *Manifest, fps map[string]fingerprint) error {
	root := filepath.Join(l.cfg.Share, id)
	ix := &Index{Files: make(map[string]indexEntry, len(m.Files)), Manifest: m.Hash(), dirty: true}
	for _, f := range m.Files {
		fi, err := os.Lstat(filepath.Join(root, filepath.FromSlash(f.Path)))
		if err != nil {
			return err
		}
		fp, want := fingerprintOf(fi), fps[f.Path]
		if !fi.Mode().IsRegular() || fp != want || fp.Size != f.Size || fp.Mode != f.Mode {
			return fmt.Errorf("%s changed since it was downloaded", f.Path)
		}
		// Not racy: this node wrote the file just now, from chunks it
		// verified; a user's write in the same tick of the file clock is
		// left to the downloaders' own check.
		ix.Files[f.Path] = indexEntry{FP: fp, Chunks: f.Chunks}
	}
	sv, err := l.keep(id, root, ix, m)
	if err != nil {
		return err
	}
	l.setLocal(id, sv)
	l.publish([]string{id}, id)
	l.prune("")
	return nil
}

// prune removes the manifest files of versions this node no longer holds
// (nothing reads them back; they are kept for people and tools) and, for
// item done ("" for none), the staging folders of its other downloads.
// For an item, call it while the item is still busy with the swap that
// put its new version in place: no download of it can start meanwhile,
// and the version now held makes those folders useless (it has every
// chunk of its own, and a later version reuses from it).
func (l *Library) prune(done string) {
	l.mu.Lock()
	held := map[string]bool{}
	for _, sv := range l.local {
		held[sv.Hash.String()] = true
	}
	l.mu.Unlock()
	dir := filepath.Join(l.cfg.Dir, dirManifests)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if !held[e.Name()] && !strings.HasPrefix(e.Name(), ".") {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				l.lg.Debug().Str("manifest", e.Name()).Err(err).Msg("cannot remove an old manifest")
			}
		}
	}
	if done == "" {
		return
	}
	for _, staging := range l.stagingDirs() {
		if job, _, err := readJob(staging); err != nil || job.Item != done {
			continue
		}
		if _, err := os.Lstat(filepath.Join(staging, swapFile)); err == nil {
			continue // a swap cut short: its recovery needs the folder
		}
		if err := os.RemoveAll(staging); err != nil {
			l.lg.Warn().Str("staging", staging).Err(err).Msg("cannot remove an old download's staging folder")
		} else {
			l.lg.Info().Str("item", done).Str("staging", staging).Msg("old download's staging folder removed: the item's new version is held")
		}
	}
}

// scanItem scans one item with its persisted index and keeps its manifest.
func (l *Library) scanItem(id, root string) (*Served, ScanStats, error) {
	ix := LoadIndex(l.indexFile(id))
	m, st, err := scan(root, ix, l.stopping.Load)
	if err != nil {
		return nil, st, err
	}
	sv, err := l.keep(id, root, ix, m)
	return sv, st, err
}

func (l *Library) indexFile(id string) string { return filepath.Join(l.cfg.Dir, dirIndex, id+".json") }

// keep saves an item's index and manifest and returns what serves it.
func (l *Library) keep(id, root string, ix *Index, m *Manifest) (*Served, error) {
	if err := ix.Save(l.indexFile(id)); err != nil {
		return nil, err
	}
	enc := m.Encode()
	h := ix.Manifest // the scan or the download computed it
	mf := filepath.Join(l.cfg.Dir, dirManifests, h.String())
	if _, err := os.Stat(mf); err != nil {
		if err := atomicfile.WriteFile(mf, enc, 0o644); err != nil {
			return nil, err
		}
	}
	ig, err := LoadIgnore(root)
	if err != nil {
		return nil, err
	}
	sv := &Served{Root: root, Manifest: m, Hash: h, Encoded: enc, Ignore: ig, fps: ix.fingerprints(m), racy: ix.racy(m),
		changed: func() { l.RequestScan(id) }}
	return sv, nil
}
