package crdt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	am "github.com/automerge/automerge-go"

	"github.com/meshnode/meshnode/internal/atomicfile"
)

// The epoch switch: building or adopting the next epoch's document,
// carrying what the cut left out, and the files that make it durable.
// doc.go ("Bounded history") has the design and the failure cases.

// ErrNoCut is returned by SwitchEpoch when no proposal for the next epoch
// is ready.
var ErrNoCut = errors.New("crdt: no cut proposal for the next epoch")

// ErrEpochBehind is returned by MergeSnapshot for a snapshot of an epoch
// this document has left behind: the peer that sent it switches when it
// learns of ours (the sync hello tells it).
var ErrEpochBehind = errors.New("crdt: snapshot of an older epoch")

// switchHook is called after each file step of a switch ("prev",
// "snapshot", "log"): tests stop the process there.
var switchHook = func(step string) {}

// prevFile keeps the document of the epoch before the current one: a
// node that switched on one side of a partition needs it to carry its
// side's writes into the other side's epoch (carry.go).
const prevFile = "doc.prev"

// Epoch returns the document's epoch.
func (d *Doc) Epoch() Epoch { return *d.epoch.Load() }

// markerMagic opens the first record of a change log of epoch 1 or later:
// the epoch the log's changes belong to. A log whose marker does not
// name the snapshot's epoch predates a switch that a crash cut short, and
// is set aside at Open (its changes were carried into the snapshot).
const markerMagic = "MNEPOCH1"

func epochMarker(e Epoch) []byte {
	if e.Num == 0 {
		return nil
	}
	b := append([]byte(markerMagic), e.ID[:]...)
	return binary.AppendUvarint(b, e.Num)
}

// parseMarker returns the epoch a log marker names; ok is false for a
// record that is not a marker.
func parseMarker(b []byte) (Epoch, bool) {
	if len(b) < len(markerMagic)+33 || string(b[:len(markerMagic)]) != markerMagic {
		return Epoch{}, false
	}
	var e Epoch
	copy(e.ID[:], b[len(markerMagic):])
	n, k := binary.Uvarint(b[len(markerMagic)+32:])
	if k <= 0 || k != len(b)-len(markerMagic)-32 || n == 0 || k != len(binary.AppendUvarint(nil, n)) {
		return Epoch{}, false
	}
	e.Num = n
	return e, true
}

// ProposeCut writes this node's proposal to cut the document at its
// current heads into the next epoch. Every node switches to the lowest
// proposal of that epoch once it has seen it for the switch grace
// (SwitchEpoch); the proposal itself is dropped from the new epoch.
func (d *Doc) ProposeCut() error {
	heads := d.Heads()
	if len(heads) == 0 {
		return errors.New("crdt: an empty document has nothing to cut")
	}
	slices.SortFunc(heads, compareHash)
	p := proposal{num: d.Epoch().Num + 1, cut: heads}
	_, err := d.Update("propose a cut", func(tx *Tx) error {
		tx.add(nil, func(doc *am.Doc) error { return doc.Path(cutKey(d.self)).Set(p.String()) })
		return nil
	})
	return err
}

// cutCandidate is a proposal for the next epoch that this node can build.
type cutCandidate struct {
	p     proposal
	epoch Epoch
}

// nextCutLocked returns the winning proposal for the next epoch among
// those in the document: the one with the lowest epoch ID whose cut
// heads this node holds (it holds them all for a proposal it holds, as
// the change that wrote it depends on them). Call with mu held.
func (d *Doc) nextCutLocked() (cutCandidate, bool) {
	cur := d.Epoch()
	var best cutCandidate
	found := false
	d.view.RLock()
	vals := make([]string, 0, len(d.recs.view.cuts))
	for _, v := range d.recs.view.cuts {
		vals = append(vals, v)
	}
	d.view.RUnlock()
	for _, v := range vals {
		p, err := parseProposal(v)
		if err != nil || p.num != cur.Num+1 || !d.hasAllLocked(p.cut) {
			continue
		}
		c := cutCandidate{p, Epoch{Num: p.num, ID: epochID(p.num, cur.ID, p.cut)}}
		if !found || c.epoch.After(best.epoch) {
			best, found = c, true
		}
	}
	return best, found
}

// NextCut returns the epoch the winning proposal in the document would
// start, if there is one.
func (d *Doc) NextCut() (Epoch, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, ok := d.nextCutLocked()
	return c.epoch, ok
}

// SwitchEpoch builds the genesis of the winning proposal for the next
// epoch (nextCutLocked) from this node's own copy of the document, and
// switches to it, carrying across every write of this document that the
// cut left out. It returns ErrNoCut when there is no proposal to build.
func (d *Doc) SwitchEpoch() (Epoch, error) {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return Epoch{}, ErrClosed
	}
	c, ok := d.nextCutLocked()
	oldEpoch := d.Epoch()
	d.mu.Unlock()
	if !ok {
		return Epoch{}, ErrNoCut
	}
	cur, err := d.forkAt(c.p.cut)
	if err != nil {
		return Epoch{}, err
	}
	// The genesis is built from a fork at the cut with no lock held:
	// writes go on, and are carried below. Only the carry and the files
	// hold them off.
	start := time.Now()
	st, err := stateAt(cur, oldEpoch, c.p.num, c.p.cut)
	var g *am.Doc
	if err == nil {
		g, err = st.build()
	}
	if err != nil {
		return Epoch{}, err
	}
	d.syncMu.Lock()
	defer d.syncMu.Unlock()
	defer d.deliver()
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return Epoch{}, ErrClosed
	}
	if d.Epoch() != oldEpoch {
		d.mu.Unlock()
		return Epoch{}, ErrNoCut // switched meanwhile, by another path
	}
	d.beginSwitchLocked()
	old, oldx := d.doc(), d.recs
	d.mu.Unlock()
	if err := d.adopt(g, st.header, st.shared, old, oldx, oldEpoch); err != nil {
		return Epoch{}, err
	}
	d.lg.Info().Str("epoch", c.epoch.String()).Str("from", oldEpoch.String()).Dur("took", time.Since(start)).
		Int("records", len(st.records)).Int("shared", len(st.shared)).Int("signatures", len(st.header.groups)).
		Msg("document cut into a new epoch")
	return c.epoch, nil
}

// beginSwitchLocked holds off every mutation (commits, changes from
// peers) until endSwitch: the switch writes its files with mu released,
// and a change that landed in the old document meanwhile would be lost.
// Call with syncMu and mu held.
func (d *Doc) beginSwitchLocked() { d.switching = true }

// endSwitch lets mutations run again.
func (d *Doc) endSwitch() {
	d.mu.Lock()
	d.switching = false
	d.switchCond.Broadcast()
	d.mu.Unlock()
}

// waitSwitchLocked waits while an epoch switch runs, and returns the
// error of one that was cut short after its commit point (the document
// then takes no more changes). Call with mu held.
func (d *Doc) waitSwitchLocked() error {
	for d.switching {
		d.switchCond.Wait()
	}
	return d.broken
}

// adopt makes g (a genesis, or a peer's document of a later epoch,
// starting with the genesis hdr describes, whose shared values were
// genShared) the document, carrying this node's writes from old. Call
// with syncMu held, mu not held, and a switch begun; it ends it.
// oldx is old's record index (the live one: no mutation runs while the
// switch does).
func (d *Doc) adopt(g *am.Doc, hdr *epochHeader, genShared map[string]string, old *am.Doc, oldx *recIndex, oldEpoch Epoch) error {
	defer d.endSwitch()
	gx := d.indexOf(g)
	gx.refresh(g)
	cr, err := d.carryAcross(old, oldx, oldEpoch, hdr, g, gx, genShared)
	if err != nil {
		return fmt.Errorf("crdt: carry writes across the cut: %w", err)
	}
	if err := g.SetActorID(newOwnActor(d.self)); err != nil {
		return err
	}
	carried, err := cr.commit(d, g)
	if err != nil {
		return fmt.Errorf("crdt: carry writes across the cut: %w", err)
	}
	e := hdr.epoch()
	// Durable before it is visible. The old document (kept for a later
	// carry from a losing side), the new snapshot and a log of the new
	// epoch are written and fsynced under temporary names; then the
	// snapshot is renamed into place (the commit point) and the directory
	// synced; then the old document and the log. A crash between the
	// snapshot and the log leaves a log that Open sets aside: what it
	// held is carried in the snapshot. Nothing that can run out of space
	// comes after the commit point.
	prevTmp, err := writeTemp(d.st.dir, prevFile, encodeSnapshot(old.Save()))
	if err != nil {
		return d.st.writeErr("keep the previous epoch's document", prevFile, err)
	}
	defer os.Remove(prevTmp)
	switchHook("prev")
	marker := epochMarker(e)
	start := []byte(logMagic)
	if marker != nil {
		start = appendRecord(start, marker)
	}
	snapEnc := encodeSnapshot(g.Save())
	snapTmp, err := writeTemp(d.st.dir, snapFile, snapEnc)
	if err != nil {
		return d.st.writeErr("write snapshot", snapFile, err)
	}
	defer os.Remove(snapTmp)
	logTmp, err := writeTemp(d.st.dir, logFile, start)
	if err != nil {
		return d.st.writeErr("write change log", logFile, err)
	}
	defer os.Remove(logTmp)
	f, err := os.OpenFile(logTmp, os.O_RDWR, 0o600)
	if err == nil {
		if _, err = f.Seek(0, io.SeekEnd); err != nil {
			f.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("crdt: open change log %s: %w", logTmp, err)
	}
	snapPath, logPath := filepath.Join(d.st.dir, snapFile), filepath.Join(d.st.dir, logFile)
	if err := os.Rename(snapTmp, snapPath); err != nil {
		f.Close()
		return d.st.writeErr("replace snapshot", snapPath, err)
	}
	// The commit point: the new snapshot is in place. It is made durable
	// before the log names the new epoch, or a power loss could keep the
	// new log and lose the snapshot it belongs to.
	switchHook("snapshot")
	size := int64(len(snapEnc))
	broken := func(op, path string, err error) error {
		// The new snapshot is in place and the log may be the old
		// epoch's: a write acknowledged now could be set aside at the
		// next start. Stop taking writes; a restart finds the state in
		// the snapshot.
		f.Close()
		d.mu.Lock()
		d.broken = fmt.Errorf("crdt: an epoch switch was cut short (%s %s: %v); restart the node", op, path, err)
		d.mu.Unlock()
		d.lg.Error().Err(err).Str("op", op).Msg("epoch switch cut short after its snapshot; the document takes no more writes: restart the node")
		return d.st.writeErr(op, path, err)
	}
	if err := syncDir(d.st.dir); err != nil {
		return broken("sync document dir", d.st.dir, err)
	}
	if err := os.Rename(prevTmp, filepath.Join(d.st.dir, prevFile)); err != nil {
		d.lg.Warn().Err(err).Msg("cannot keep the previous epoch's document; a later move to a sibling epoch carries less")
	}
	if err := os.Rename(logTmp, logPath); err != nil {
		return broken("replace change log", logPath, err)
	}
	if err := syncDir(d.st.dir); err != nil {
		return broken("sync document dir", d.st.dir, err)
	}
	switchHook("log")
	d.mu.Lock()
	// Mutations are held off (switching): the log's end has not moved.
	prevEnd := d.st.end()
	d.st.marker = marker
	d.st.log.Close()
	d.st.log, d.st.logSize = f, int64(len(start))
	d.st.snapSize = size
	// Logical offsets keep rising across the new log, as after a
	// compaction: a commit waiting for its fsync compares with them.
	d.st.shift = prevEnd - d.st.logSize
	d.st.records = 1
	d.waiting = nil
	d.saved, d.savedHeads = nil, ""
	d.epoch.Store(&e)
	d.swapLocked(g, nil)
	heads := d.Heads()
	// Commits of the old epoch still waiting for their fsync are carried
	// in the new snapshot, which is durable: they are acknowledged, but
	// their old-epoch changes are not published.
	d.evMu.Lock()
	d.evq = slices.DeleteFunc(d.evq, func(q queuedEvent) bool { return q.ev.Local })
	d.evMu.Unlock()
	for _, c := range carried {
		d.localCommits.Add(1)
		d.enqueueLocked(Event{Local: true, Change: c.Save(), Hash: c.Hash(), Deps: c.Dependencies(), Heads: heads}, 0)
	}
	d.enqueueLocked(Event{Heads: heads, Epoch: true}, 0)
	d.epochStart = d.cfg.Now()
	d.cutBase = size + d.st.logSize
	d.switches.Add(1)
	d.synced.Store(d.st.end())
	d.syncedHeads = heads
	d.mu.Unlock()
	return nil
}

// hdrEpoch is the epoch a genesis header starts; epoch 0 for none.
func hdrEpoch(h *epochHeader) Epoch {
	if h == nil {
		return Epoch{}
	}
	return h.epoch()
}

// adoptSnapshot switches to a peer's document of a later epoch (doc is
// its decoded chunk, loaded its automerge document): a node that missed
// one or more cuts, a node on the losing side of two concurrent ones, or
// a new node whose fleet has cut before. Call with syncMu held and mu
// not held.
func (d *Doc) adoptSnapshot(doc *DocOps, loaded *am.Doc, hdr *epochHeader, gen int) error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return ErrClosed
	}
	cur := d.Epoch()
	if !hdr.epoch().After(cur) {
		d.mu.Unlock()
		return ErrEpochBehind
	}
	d.beginSwitchLocked()
	old, oldx := d.doc(), d.recs
	d.mu.Unlock()
	genShared := map[string]string{}
	cx := newChangeIndex(doc)
	for i := range doc.Ops {
		op := &doc.Ops[i]
		if op.Action == ActSet && op.Type == ValStr && op.Root && op.KeyIsStr && cx.of(op.ID) == gen {
			genShared[op.Key] = string(op.Value)
		}
	}
	if err := d.adopt(loaded, hdr, genShared, old, oldx, cur); err != nil {
		return err
	}
	d.lg.Info().Str("epoch", hdr.epoch().String()).Str("from", cur.String()).Msg("document moved to a later epoch from a peer's snapshot")
	return nil
}

// openEpoch sets the document's epoch from its snapshot at Open and
// strips the log's marker from records, setting the log aside when it
// belongs to an earlier epoch than the snapshot.
func (d *Doc) openEpoch(doc *DocOps, records [][]byte) [][]byte {
	e := Epoch{}
	if doc != nil {
		if _, h, err := genesisOf(doc); err == nil && h != nil {
			e = h.epoch()
		}
	}
	d.epoch.Store(&e)
	d.st.marker = epochMarker(e)
	var logEpoch Epoch
	if len(records) > 0 {
		if m, ok := parseMarker(records[0]); ok {
			logEpoch, records = m, records[1:]
		}
	}
	if e.Num > 0 && logEpoch != e {
		// A crash between the switch's snapshot and its log: the log
		// holds the old epoch's changes, and the snapshot everything of
		// them this node carries. Kept aside, not replayed.
		path := filepath.Join(d.st.dir, logFile)
		kept := fmt.Sprintf("%s.epoch-%d", path, time.Now().UnixNano())
		var b []byte
		for _, r := range records {
			b = appendRecord(b, r)
		}
		if err := atomicfile.WriteFile(kept, append([]byte(logMagic), b...), 0o600); err != nil {
			kept = fmt.Sprintf("(not kept: %v)", err)
		}
		d.lg.Warn().Str("epoch", e.String()).Str("log_epoch", logEpoch.String()).Str("kept_as", kept).Int("records", len(records)).
			Msg("change log predates the snapshot's epoch (a switch cut short); set aside")
		records = nil
		if err := d.st.rewriteLog(nil); err != nil {
			d.lg.Error().Err(err).Msg("cannot start the new epoch's change log")
		}
	}
	return records
}

// writeTemp writes b to a new temporary file beside name in dir (one that
// Open removes if a crash leaves it) and fsyncs it.
func writeTemp(dir, name string, b []byte) (string, error) {
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return "", err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Chmod(0o600)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// readPrev loads the previous epoch's document kept by the last switch,
// or nil.
func (d *Doc) readPrev() *am.Doc {
	b, err := os.ReadFile(filepath.Join(d.st.dir, prevFile))
	if err != nil {
		return nil
	}
	data, err := decodeSnapshot(b)
	if err != nil {
		return nil
	}
	doc, err := am.Load(data)
	if err != nil {
		return nil
	}
	return doc
}

// epochOfDoc returns the epoch of an automerge document from its genesis.
func epochOfDoc(doc *am.Doc) (Epoch, *epochHeader) {
	dops, err := decodeDocumentOnly(doc.Save(), rootScalar)
	if err != nil {
		return Epoch{}, nil
	}
	if _, h, err := genesisOf(dops); err == nil && h != nil {
		return h.epoch(), h
	}
	return Epoch{}, nil
}
