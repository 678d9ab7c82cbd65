package crdt

import (
	"encoding/hex"
	"slices"

	am "github.com/automerge/automerge-go"
)

// Group commit and rollback.
//
// A local commit appends its record under mu and then calls syncTo with the
// logical offset its record ends at. syncTo takes syncMu; if an fsync that
// started after the record was appended has already completed, it returns
// at once; otherwise it notes the log's end and the heads, fsyncs outside
// mu, and marks everything up to that end durable. So N writers that
// append while one fsync runs share the next one.
//
// A write that fails leaves no trace: an append that fails is cut off and
// the in-memory document is rolled back to the heads before it (a fork at
// those heads, with a fresh actor so no sequence number is reused); an
// fsync that fails rolls the log and the document back to the last durable
// point. Remote changes dropped by such a rollback are fetched again by
// anti-entropy.

// queuedEvent is an Event waiting for delivery. A local commit's event
// waits until its record is durable (end <= synced); events behind it wait
// with it, so watchers see changes in commit order.
type queuedEvent struct {
	ev  Event
	end int64 // 0: needs no fsync
}

// enqueueLocked queues ev; call with mu held, then deliver after unlocking.
func (d *Doc) enqueueLocked(ev Event, end int64) {
	d.evMu.Lock()
	d.evq = append(d.evq, queuedEvent{ev, end})
	d.evMu.Unlock()
}

// deliver hands every deliverable queued event to the watchers. Call it
// without mu held.
func (d *Doc) deliver() {
	d.evMu.Lock()
	defer d.evMu.Unlock()
	synced := d.synced.Load()
	n := 0
	for n < len(d.evq) && d.evq[n].end <= synced {
		n++
	}
	if n == 0 {
		return
	}
	d.watchMu.Lock()
	for _, q := range d.evq[:n] {
		for _, fn := range d.watchers {
			fn(q.ev)
		}
	}
	d.watchMu.Unlock()
	d.evq = slices.Delete(d.evq, 0, n)
}

// syncTo returns once every record up to the logical offset end is on
// disk.
func (d *Doc) syncTo(end int64) error {
	defer d.deliver()
	d.syncMu.Lock()
	defer d.syncMu.Unlock()
	return d.syncLocked(end)
}

// syncLocked is syncTo with syncMu held. It fails if the record ending at
// end was rolled back by a failed fsync, even if the log is durable past it.
func (d *Doc) syncLocked(end int64) error {
	if err := d.lostErr(end); err != nil {
		return err
	}
	if d.synced.Load() >= end {
		return nil
	}
	d.mu.Lock()
	if d.st.log == nil {
		d.mu.Unlock()
		return ErrClosed
	}
	target, heads, f := d.st.end(), *d.heads.Load(), d.st.log
	d.mu.Unlock()
	d.logSyncs.Add(1)
	if err := d.fsync(f); err != nil {
		err = d.st.writeErr("sync change log", f.Name(), err)
		d.mu.Lock()
		defer d.mu.Unlock()
		synced, top := d.synced.Load(), d.st.end()
		d.st.truncate(synced)
		// Offsets are never reused: a waiter whose record was cut off
		// must not mistake a later record's fsync for its own.
		d.st.shift += top - synced
		d.lost = append(d.lost, lostRange{synced, top, err})
		d.rollbackLocked(d.syncedHeads)
		d.dropEventsAfterLocked(synced)
		return err
	}
	d.markSynced(target, heads)
	return nil
}

// lostRange is a run of log records cut off by a failed fsync.
type lostRange struct {
	from, to int64
	err      error
}

// lostErr tells a waiter whose record ends at end whether it was cut off.
// Call with syncMu held.
func (d *Doc) lostErr(end int64) error {
	for _, l := range d.lost {
		if end > l.from && end <= l.to {
			return l.err
		}
	}
	return nil
}

// markSynced records that the log is durable up to target, with heads.
// Call with syncMu held.
func (d *Doc) markSynced(target int64, heads []Hash) {
	if target > d.synced.Load() {
		d.synced.Store(target)
		d.syncedHeads = heads
	}
}

// dropEventsAfterLocked forgets queued local events whose records were
// rolled back, and tells watchers the heads moved back.
func (d *Doc) dropEventsAfterLocked(synced int64) {
	d.evMu.Lock()
	d.evq = slices.DeleteFunc(d.evq, func(q queuedEvent) bool { return q.end > synced })
	d.evq = append(d.evq, queuedEvent{ev: Event{Heads: slices.Clone(*d.heads.Load())}})
	d.evMu.Unlock()
}

// rollbackLocked replaces the document by its state at heads. It costs a
// fork of the whole document, paid only when a write fails.
func (d *Doc) rollbackLocked(heads []Hash) {
	var doc *am.Doc
	if len(heads) == 0 {
		doc = am.New()
	} else {
		f, err := d.doc().Fork(heads...)
		if err != nil {
			// The heads are the document's own; a fork at them cannot
			// fail short of memory exhaustion. Keep serving what is there.
			d.lg.Error().Err(err).Msg("cannot roll back a failed write; the document holds a change that is not on disk")
			return
		}
		doc = f
	}
	d.rolledBack.Add(1)
	d.lg.Warn().Int("heads", len(heads)).Msg("failed write rolled back")
	d.swapLocked(doc, nil)
}

// swapLocked makes doc the live document, with its record index x (built
// from doc when nil), and re-reads the heads.
func (d *Doc) swapLocked(doc *am.Doc, x *recIndex) {
	if x == nil {
		x = d.indexOf(doc)
	}
	// A fork (rollback) gets a random actor: give it a fresh one of this
	// node's, which the carry (carry.go) tells this node's changes by. A
	// document that has one of ours keeps it.
	if a, err := hex.DecodeString(doc.ActorID()); err != nil || !isOwnActor(a, ownActorPrefix(d.self)) {
		if err := doc.SetActorID(newOwnActor(d.self)); err != nil {
			d.lg.Error().Err(err).Msg("cannot set the document's actor")
		}
	}
	x.refresh(doc) // x is not live yet: no reader sees its view
	d.view.Lock()
	d.amp.Store(doc)
	d.recs = x
	d.view.Unlock()
	d.refreshHeads()
	d.settleWaitingLocked()
}

// replay loads the log's records at Open, through the same checks as
// changes from peers (intake.go). A record of changes whose dependencies
// are missing (they were in a later record, or in a lost snapshot) waits:
// its changes apply as soon as their dependencies are there, and keep
// their bytes in the log until then. It returns the records that are not
// automerge data at all, and those refused by the checks.
func (d *Doc) replay(records [][]byte) (unreadable [][]byte, refused []*RefusedError, refusedRecs [][]byte) {
	in := d.newIntake(false)
	for _, r := range records {
		chs, err := splitChanges(r)
		if err != nil {
			// A merged snapshot (a document chunk) is checked and loads whole.
			x, needsSync, ref := d.checkDocument(r)
			if ref != nil || needsSync {
				if ref == nil {
					ref = &RefusedError{Rule: RuleReplay, Detail: "a merged snapshot holds a change whose replay check needs its dependencies"}
				}
				if ref.Rule == RuleDecode {
					unreadable = append(unreadable, r)
				} else {
					refused, refusedRecs = append(refused, ref), append(refusedRecs, r)
				}
				continue
			}
			if err := in.flush(); err != nil {
				unreadable = append(unreadable, r)
				continue
			}
			if err := d.doc().LoadIncremental(r); err != nil {
				// It may have loaded in part: index what is there.
				unreadable = append(unreadable, r)
				d.recs = d.indexOf(d.doc())
				continue
			}
			d.recs.merge(x)
			continue
		}
		for _, c := range chs {
			if err := in.take(c); err != nil {
				if ref, ok := AsRefused(err); ok {
					refused, refusedRecs = append(refused, ref), append(refusedRecs, c.raw)
				}
			}
		}
	}
	if err := in.flush(); err != nil {
		d.lg.Error().Err(err).Msg("change log records do not apply")
	}
	d.recs.refresh(d.doc())
	d.refreshHeads()
	d.settleWaitingLocked()
	return unreadable, refused, refusedRecs
}
