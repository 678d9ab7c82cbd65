package crdt

import (
	"bytes"
	"crypto/sha256"
	"time"
)

// The cut rule: when a node proposes a cut, and when it switches. Every
// node runs it on its own copy of the document; no node is in charge.
//
//   - A cut is due when the document takes at least CutBytes on disk,
//     history is at least CutShare of it (1 - state bytes / disk bytes,
//     where the state is the keys and values in force), and the epoch is
//     at least CutMinAge old on this node.
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
	// and values in force, about what a fresh document holding the same
	// state takes. HistoryShare is 1 - StateBytes/DiskBytes (0 when the
	// document is empty).
	DiskBytes, StateBytes int64
	HistoryShare          float64
	// Switches counts epoch switches since Open.
	Switches uint64
	// NextCut is the epoch a proposal in the document would start; zero
	// when there is none.
	NextCut Epoch
}

// EpochStatus returns the epoch and how much of the document is history.
func (d *Doc) EpochStatus() EpochStatus {
	d.mu.Lock()
	disk := d.st.snapSize + d.st.logSize
	next, _ := d.nextCutLocked()
	d.mu.Unlock()
	state := d.stateBytes()
	s := EpochStatus{Epoch: d.Epoch(), DiskBytes: disk, StateBytes: state, Switches: d.switches.Load(), NextCut: next.epoch}
	if disk > 0 {
		s.HistoryShare = max(0, 1-float64(state)/float64(disk))
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
		n += len(h.Manifest) + len(h.Version) + len(h.State) + 4*6
	case recPresence:
		n += 6
	}
	return n
}

// cutState is the cut rule's memory between ticks. Owned by epochLoop.
type cutState struct {
	dueSince time.Time // zero when no cut is due
	seen     Epoch     // the next cut last seen
	seenAt   time.Time
}

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
	if next, ok := d.NextCut(); ok {
		cs.dueSince = time.Time{}
		if next != cs.seen {
			cs.seen, cs.seenAt = next, now
		}
		if now.Sub(cs.seenAt) < d.cfg.CutGrace {
			return nil
		}
		_, err := d.SwitchEpoch()
		return err
	}
	if !d.cutDue(now) {
		cs.dueSince = time.Time{}
		return nil
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

// cutDue reports whether the document should be cut at time now.
func (d *Doc) cutDue(now time.Time) bool {
	d.mu.Lock()
	disk, age := d.st.snapSize+d.st.logSize, now.Sub(d.epochStart)
	d.mu.Unlock()
	if disk < d.cfg.CutBytes || age < d.cfg.CutMinAge {
		return false
	}
	return 1-float64(d.stateBytes())/float64(disk) >= d.cfg.CutShare
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
