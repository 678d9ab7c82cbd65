package crdt

import (
	"fmt"
	"slices"
)

// Intake: every change from outside this node (gossip, a sync message,
// the change log at start-up, POST /v1/doc/changes) comes in through
// takeLocked, which checks it (validate.go) before automerge sees it.
// automerge is never handed a change this package has not checked: sync
// messages reach automerge's sync state with their changes stripped
// (syncmsg.go), and a change whose dependencies are missing waits here,
// not in automerge's own queue, and is checked when they arrive.

// intake is one batch of changes being taken in.
type intake struct {
	d *Doc
	// log is false for changes already in the change log (replay).
	log bool
	// over: counters raised by checked changes of this batch.
	over map[string]uint64
	// pend: checked changes not yet applied; pendSet their hashes.
	pend    []rawChange
	pendOps []*ChangeOps
	pendSet map[Hash]bool
	applied int
	// lastHash is the last change of the batch being flushed.
	lastHash Hash
	// waited counts changes set aside for missing dependencies.
	waited int
}

func (d *Doc) newIntake(log bool) *intake {
	return &intake{d: d, log: log, over: map[string]uint64{}, pendSet: map[Hash]bool{}}
}

// take checks one change and queues it to apply. A change this node has
// is skipped; one whose dependencies are missing passes the checks on its
// bytes and then waits (and is logged, so it survives a restart), up to
// maxWaiting changes and maxWaitingBytes. A refused change stops the
// batch: later changes may depend on it.
func (in *intake) take(c rawChange) error {
	d := in.d
	if in.pendSet[c.hash] || d.has(c.hash) {
		return nil
	}
	co, _ := d.keys.wasChecked(c.hash) // decoded by the gossip validator
	if co == nil {
		var ref *RefusedError
		if co, ref = d.decodeChecked(c.raw); ref != nil {
			return ref
		}
	}
	for _, dep := range c.deps {
		if !in.pendSet[dep] && !d.has(dep) {
			if _, ref := d.checkBytes(co, true); ref != nil {
				return ref
			}
			return in.wait(c)
		}
	}
	if ref := d.checkChangeLocked(co, in.over, in.flush); ref != nil {
		return ref
	}
	in.pend = append(in.pend, c)
	in.pendOps = append(in.pendOps, co)
	in.pendSet[c.hash] = true
	return nil
}

// Bounds of the changes kept waiting for their dependencies: past them a
// change is not kept, and anti-entropy brings it again once what it
// depends on is here.
const (
	maxWaiting      = 4096
	maxWaitingBytes = 64 << 20
)

func (in *intake) wait(c rawChange) error {
	d := in.d
	size := len(c.raw)
	for _, w := range d.waiting {
		if w.hash == c.hash {
			return nil
		}
		size += len(w.raw)
	}
	if len(d.waiting) >= maxWaiting || size > maxWaitingBytes {
		d.lg.Warn().Str("change", c.hash.String()).Int("waiting", len(d.waiting)).Msg("too many changes wait for their dependencies; not keeping another")
		return nil
	}
	if in.log {
		if _, err := d.st.append(c.raw); err != nil {
			return err
		}
	}
	d.waiting = append(d.waiting, c)
	in.waited++
	return nil
}

// flush logs and applies the checked changes. A change that cannot be
// logged never enters memory; one automerge refuses is cut from the log.
func (in *intake) flush() error {
	if len(in.pend) == 0 {
		return nil
	}
	d := in.d
	var b []byte
	for _, c := range in.pend {
		b = append(b, c.raw...)
	}
	n, ops := len(in.pend), in.pendOps
	in.lastHash = in.pend[n-1].hash
	in.pend, in.pendOps, in.pendSet = in.pend[:0], nil, map[Hash]bool{}
	before, heads := d.st.end(), d.doc().Heads()
	if in.log {
		if _, err := d.st.append(b); err != nil {
			clear(in.over)
			return err
		}
	}
	d.view.Lock()
	err := d.doc().LoadIncremental(b)
	if err == nil {
		for _, co := range ops {
			d.recs.applyChange(co)
		}
		d.recs.refresh(d.doc())
	}
	d.view.Unlock()
	if err != nil {
		// automerge refused a change our checks passed (a sequence number
		// reused, say): it may have applied the ones before it, so go
		// back to where the batch started, in memory and on disk.
		if in.log {
			d.st.truncate(before)
		}
		clear(in.over)
		d.rollbackLocked(heads)
		return &RefusedError{Change: in.lastHash, Rule: RuleDecode, Detail: fmt.Sprintf("automerge refused a batch of %d changes: %v", n, err)}
	}
	clear(in.over)
	in.applied += n
	return nil
}

// done applies what is pending and, if anything changed, tells watchers.
func (in *intake) done() error {
	err := in.flush()
	if in.applied > 0 {
		in.d.remoteChangedLocked(in.applied)
	} else if in.waited > 0 {
		in.d.kickCompactionLocked()
	}
	return err
}

// settleWaitingLocked checks and applies every waiting change whose
// dependencies are now in the document, until none is left that can, and
// forgets the ones the document holds and the ones refused.
func (d *Doc) settleWaitingLocked() {
	for progress := true; progress && len(d.waiting) > 0; {
		progress = false
		d.waiting = slices.DeleteFunc(d.waiting, func(c rawChange) bool {
			if d.has(c.hash) {
				return true
			}
			if !d.hasAllLocked(c.deps) {
				return false
			}
			in := d.newIntake(false)
			if err := in.take(c); err != nil {
				d.lg.Warn().Err(err).Str("change", c.hash.String()).Msg("waiting change refused; dropped")
				return true
			}
			if err := in.flush(); err != nil {
				d.lg.Warn().Err(err).Str("change", c.hash.String()).Msg("waiting change does not apply; dropped")
				return true
			}
			progress = true
			return true
		})
		if progress {
			d.refreshHeads()
		}
	}
}
