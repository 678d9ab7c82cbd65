package room

import (
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshnode/meshnode/crdt"
)

// Presence and credentials live in the document. The loop never touches
// it: a reader goroutine reads the topics' rooms (and asks Alive about
// their lease holders) and posts a snapshot; a writer goroutine makes the
// core's writes, one at a time and in the order asked, so that a lease
// withdrawn is never overwritten by an earlier renewal.

// roomView is one topic as the document holds it.
type roomView struct {
	creds string
	// present: another participant holds a fresh lease and is alive.
	present bool
	// leases are the other participants with a fresh lease, alive ones
	// first: whom to ask for history after those in the room.
	leases []peer.ID
}

// readReq asks the reader for the rooms of topics; seq numbers the reads.
type readReq struct {
	seq    uint64
	topics []string
}

type snapshot struct {
	seq   uint64
	views map[string]roomView
}

// docWrite is one document write: this node's lease on topics (a zero
// until withdraws it), or creds for topic.
type docWrite struct {
	leases []string
	until  time.Time
	topic  string
	creds  Creds
	why    string
	done   chan error // the caller waiting for it, if any (buffered)
}

// writeLease queues a write of this node's lease on topics.
func (c *core) writeLease(topics []string, until time.Time, done chan error) {
	for _, t := range topics {
		c.topic(t).leaseBusy++
	}
	c.rd.writes = append(c.rd.writes, docWrite{leases: topics, until: until, done: done})
}

// renewLeases queues one write of the leases due, at half their life.
func (c *core) renewLeases(now time.Time) {
	var due []string
	for _, name := range c.names() {
		ts := c.topics[name]
		if ts.open && ts.leaseBusy == 0 && ts.leaseUntil.Sub(now) < c.cfg.LeaseTTL/2 {
			due = append(due, name)
		}
	}
	if len(due) > 0 {
		c.writeLease(due, now.Add(c.cfg.LeaseTTL), nil)
	}
}

// leaseWritten takes the result of a lease write.
func (c *core) leaseWritten(w docWrite, err error) {
	for _, t := range w.leases {
		ts := c.topics[t]
		if ts == nil {
			continue
		}
		ts.leaseBusy = max(ts.leaseBusy-1, 0)
		if err == nil && ts.open && !w.until.IsZero() {
			ts.leaseUntil = w.until
			ts.stats.Renewals++
		}
	}
	if err != nil && w.done == nil {
		c.lg.Warn().Strs("topics", w.leases).Err(err).Msg("renewing the presence lease failed")
	}
}

// credsWritten takes the result of a creds write; nextRead is the number
// of the next read of the document, the first that shows them.
func (c *core) credsWritten(w docWrite, err error, nextRead uint64) {
	enc := w.creds.Encode()
	ts := c.topics[w.topic]
	if ts != nil && ts.minted == enc {
		if err != nil {
			ts.minted = ""
		} else {
			ts.mintedRead = nextRead
		}
	}
	if err != nil {
		if w.done == nil {
			c.lg.Warn().Str("topic", w.topic).Err(err).Msg("writing minted credentials failed")
		}
		return
	}
	c.lg.Info().Str("topic", w.topic).Str("room", w.creds.ID.String()).Str("why", w.why).Msg("room minted")
	c.rd.notes = append(c.rd.notes, note{"room.minted", map[string]any{"topic": w.topic, "room": w.creds.ID.String(), "why": w.why}})
	c.rd.read = true
}

// write makes one document write.
func (m *Manager) write(w docWrite) error {
	if w.leases == nil {
		_, err := m.cfg.Doc.Update("room creds", func(tx *crdt.Tx) error {
			tx.SetRoomCreds(w.topic, w.creds.Encode())
			return nil
		})
		return err
	}
	var ms int64
	if !w.until.IsZero() {
		ms = w.until.UnixMilli()
	}
	return m.writeLeases(w.leases, ms)
}

func (m *Manager) writeLeases(topics []string, expiryMs int64) error {
	self := m.cfg.Self.String()
	_, err := m.cfg.Doc.Update("room presence", func(tx *crdt.Tx) error {
		for _, t := range topics {
			tx.SetPresence(t, self, expiryMs)
		}
		return nil
	})
	return err
}

// writer makes the loop's document writes in order; each result goes
// back to the loop and to the caller waiting for it.
func (l *loop) writer() {
	defer close(l.writerDone)
	for {
		var w docWrite
		select {
		case <-l.ctx.Done():
			return
		case w = <-l.writes:
		}
		err := l.m.write(w)
		l.post(func() { l.written(w, err) })
		if w.done != nil {
			w.done <- err
		}
	}
}

// written, on the loop: the core takes a write's result.
func (l *loop) written(w docWrite, err error) {
	if w.leases != nil {
		l.c.leaseWritten(w, err)
		return
	}
	l.c.credsWritten(w, err, l.readSeq+1)
}

// reader reads the rooms of the topics the loop asks about, off the
// loop, and posts each snapshot back.
func (l *loop) reader() {
	for {
		var r readReq
		select {
		case <-l.ctx.Done():
			return
		case r = <-l.reads:
		}
		views, ok := l.m.readViews(r.topics)
		if !ok {
			continue
		}
		select {
		case l.snaps <- snapshot{seq: r.seq, views: views}:
		case <-l.ctx.Done():
			return
		}
	}
}

// readViews reads topics' rooms from the document and judges presence.
func (m *Manager) readViews(topics []string) (map[string]roomView, bool) {
	now := m.cfg.Now()
	self := m.cfg.Self.String()
	out := make(map[string]roomView, len(topics))
	for _, t := range topics {
		r, _, err := m.cfg.Doc.Room(t)
		if err != nil {
			m.lg.Warn().Err(err).Str("topic", t).Msg("reading rooms failed")
			return nil, false
		}
		v := roomView{creds: r.Creds}
		alive := map[peer.ID]bool{}
		for p, exp := range r.Presence {
			if exp <= now.UnixMilli() || p == self {
				continue
			}
			id, err := peer.Decode(p)
			if err != nil {
				continue
			}
			alive[id] = m.cfg.Alive(id)
			v.present = v.present || alive[id]
			v.leases = append(v.leases, id)
		}
		slices.SortFunc(v.leases, func(a, b peer.ID) int {
			switch {
			case alive[a] && !alive[b]:
				return -1
			case alive[b] && !alive[a]:
				return 1
			}
			return slices.Compare([]byte(a), []byte(b))
		})
		out[t] = v
	}
	return out, true
}
