package crdt

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"
)

// The cut rule: when a node proposes a cut, and when it switches. Every
// node runs it on its own copy of the document; no node is in charge.
//
//   - A cut is due when the document takes at least CutBytes on disk,
//     history is at least CutShare of it (1 - bytes right after the last
//     switch / bytes now), and the epoch is at least CutMinAge old on this
//     node.
//   - Proposers take turns: the nodes alive in the node list are ranked
//     by SHA-256(epoch ID | peer ID), and the node of rank r proposes once
//     the cut has been due for r x CutGrace (r capped at maxProposerRank,
//     so a fleet whose first few are gone still cuts). Usually one node
//     proposes; two at once are fine, the lower epoch ID wins.
//   - A node switches once it has seen a proposal for the next epoch for
//     CutGrace: time for concurrent proposals to reach it, so that nodes
//     pick the same winner. A node that switches to a loser moves to the
//     winner as soon as a sync hello shows it the winner (carry.go keeps
//     its writes).

// maxProposerRank caps how many turns a node waits before it proposes.
const maxProposerRank = 4

// EpochStatus describes the document's epoch and its history.
type EpochStatus struct {
	Epoch Epoch
	// DiskBytes is the snapshot plus the change log; StateBytes the keys
	// and values in force; FreshBytes what the document took right after
	// its last switch, about what a document with no history takes (0
	// until known). HistoryShare is 1 - FreshBytes/DiskBytes (with
	// StateBytes while FreshBytes is unknown; 0 for an empty document).
	DiskBytes, StateBytes, FreshBytes int64
	HistoryShare                      float64
	// Switches counts epoch switches since Open.
	Switches uint64
	// NextCut is the epoch a proposal in the document would start; zero
	// when there is none.
	NextCut Epoch
}

// EpochStatus returns the epoch and how much of the document is history.
func (d *Doc) EpochStatus() EpochStatus {
	d.mu.Lock()
	disk, base := d.st.snapSize+d.st.logSize, d.cutBase
	next, _ := d.nextCutLocked()
	d.mu.Unlock()
	state := d.stateBytes()
	s := EpochStatus{Epoch: d.Epoch(), DiskBytes: disk, StateBytes: state, FreshBytes: base, Switches: d.switches.Load(), NextCut: next.epoch}
	if base == 0 {
		base = state // no estimate yet: the keys and values in force
	}
	if disk > 0 && base > 0 {
		s.HistoryShare = max(0, 1-float64(base)/float64(disk))
	}
	return s
}

// stateBytes sums the keys and values in force.
func (d *Doc) stateBytes() int64 {
	d.view.RLock()
	defer d.view.RUnlock()
	var n int64
	for k, v := range d.recs.keys {
		n += int64(len(k)) + int64(recordSize(v.rec))
	}
	for k, v := range d.recs.shared {
		n += int64(len(k) + len(v))
	}
	return n
}

// recordSize is the encoded size of r, without encoding it.
func recordSize(r *record) int {
	n := 3 + 8 // version, kind, counter
	switch r.kind {
	case recNode:
		x := r.node
		n += len(x.Name) + 4*8 + 1
		for _, a := range x.Addrs {
			n += len(a) + 1
		}
		for _, a := range x.Roles {
			n += len(a) + 1
		}
	case recHolder:
		h := r.holder
		n += len(h.Manifest) + len(h.Version) + len(h.State) + len(h.Parent) + len(h.Next) + 5*6
	case recPresence:
		n += 6
	case recAttest:
		n += 65
	}
	return n
}

// cutState is the cut rule's memory between ticks. Owned by epochLoop.
type cutState struct {
	dueSince time.Time // zero when no cut is due
	seen     Epoch     // the next cut last seen
	seenAt   time.Time
	// failedAt is when the last cut failed (a genesis that could not be
	// built, say): the next try waits cutRetry, not one check.
	failedAt time.Time
}

// cutRetry is how long the rule waits after a failed cut.
const cutRetry = 5 * time.Minute

// epochLoop runs the cut rule every CutCheck until Close.
func (d *Doc) epochLoop() {
	defer d.wg.Done()
	t := time.NewTicker(d.cfg.CutCheck)
	defer t.Stop()
	var cs cutState
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
		}
		if err := d.cutTick(&cs, d.cfg.Now()); err != nil {
			d.lg.Warn().Err(err).Msg("epoch cut failed; retrying at the next check")
		}
	}
}

// cutTick applies the cut rule once, at time now.
func (d *Doc) cutTick(cs *cutState, now time.Time) error {
	if !cs.failedAt.IsZero() && now.Sub(cs.failedAt) < cutRetry {
		return nil
	}
	err := d.cutStep(cs, now)
	if err != nil && !errors.Is(err, ErrClosed) {
		cs.failedAt = now
	}
	return err
}

// cutStep is one step of the rule: switch to a proposal seen long
// enough, or propose when a cut is due and it is this node's turn.
func (d *Doc) cutStep(cs *cutState, now time.Time) error {
	if next, ok := d.NextCut(); ok {
		cs.dueSince = time.Time{}
		if next != cs.seen {
			cs.seen, cs.seenAt = next, now
		}
		d.mu.Lock()
		age := now.Sub(d.epochStart)
		d.mu.Unlock()
		// Not before the epoch is CutMinAge old here either: a member
		// that proposes at every chance cuts no more often than the rule.
		if now.Sub(cs.seenAt) < d.cfg.CutGrace || age < d.cfg.CutMinAge {
			return nil
		}
		if _, err := d.SwitchEpoch(); err != nil && !errors.Is(err, ErrNoCut) {
			return err
		}
		return nil
	}
	due, err := d.cutDue(now)
	if err != nil || !due {
		cs.dueSince = time.Time{}
		return err
	}
	if cs.dueSince.IsZero() {
		cs.dueSince = now
	}
	if now.Sub(cs.dueSince) < time.Duration(d.proposerRank())*d.cfg.CutGrace {
		return nil
	}
	cs.dueSince = time.Time{}
	return d.ProposeCut()
}

// cutDue reports whether the document should be cut at time now: it
// takes CutBytes on disk, and at least CutShare of that is history, i.e.
// it is at least 1/(1-CutShare) times what it took right after the last
// switch (what a document with no history takes, cutBase). A node that
// has not switched since it started estimates that once, by building the
// genesis it would cut (stateAt), when the document first reaches
// CutBytes.
func (d *Doc) cutDue(now time.Time) (bool, error) {
	d.mu.Lock()
	disk, age, base := d.st.snapSize+d.st.logSize, now.Sub(d.epochStart), d.cutBase
	d.mu.Unlock()
	if disk < d.cfg.CutBytes || age < d.cfg.CutMinAge {
		return false, nil
	}
	if base == 0 {
		var err error
		if base, err = d.freshEstimate(); err != nil {
			return false, fmt.Errorf("crdt: estimate the document's size without history: %w", err)
		}
		d.mu.Lock()
		if d.cutBase == 0 {
			d.cutBase = base
		}
		d.mu.Unlock()
	}
	return float64(disk) >= float64(base)/(1-d.cfg.CutShare), nil
}

// freshEstimate returns the bytes a snapshot of the document's state with
// no history takes: its genesis at the current heads, saved.
func (d *Doc) freshEstimate() (int64, error) {
	e, heads := d.Epoch(), d.Heads()
	f, err := d.forkAt(heads)
	if err != nil {
		return 0, err
	}
	st, err := stateAt(f, e, e.Num+1, heads)
	if err != nil {
		return 0, err
	}
	g, err := st.build()
	if err != nil {
		return 0, err
	}
	return int64(snapHeaderLen + len(g.Save())), nil
}

// proposerRank is this node's turn to propose in the current epoch.
func (d *Doc) proposerRank() int {
	e := d.Epoch()
	nodes, _ := d.Nodes()
	score := func(p string) []byte {
		h := sha256.Sum256(append(e.ID[:], p...))
		return h[:]
	}
	mine := score(d.self)
	rank := 0
	for p, n := range nodes {
		if p != d.self && n.Alive && bytes.Compare(score(p), mine) < 0 {
			rank++
		}
	}
	return min(rank, maxProposerRank)
}
