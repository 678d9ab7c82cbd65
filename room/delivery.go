package room

import (
	"fmt"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Delivery: every message, whether live, from a joiner's history or from
// a refill, goes through the topic's inbox, which orders it, drops it as a
// duplicate or holds it behind a gap; what comes out is remembered for
// history and emitted to the topic's subscribers.

// source says where a message came from.
type source int

const (
	fromLive    source = iota
	fromHistory        // a joiner's catch-up: flagged as history
	fromRefill         // a participant's history, filling a gap
)

// maxRefillAsk bounds how many participants one refill asks.
const maxRefillAsk = 4

// received takes one message off a link's topic.
func (c *core) received(in incoming, now time.Time) {
	ts := c.topics[in.topic]
	if ts == nil || !ts.open {
		return
	}
	switch {
	case in.from == c.cfg.Self:
		// Our own, delivered locally when sent: keep its signed form
		// for the history we serve.
		if in.err == nil {
			c.attachSigned(ts, in.msg)
		}
	case in.err != nil:
		ts.stats.Rejected++
	case in.msg.Sender != in.from:
		ts.stats.Rejected++
		c.lg.Warn().Str("topic", ts.name).Str("from", in.from.String()).Str("claimed", in.msg.Sender.String()).Msg("room message with a forged sender dropped")
	case ts.catching && len(ts.pending) < maxPending:
		ts.pending = append(ts.pending, in.msg)
	default:
		c.add(ts, in.msg, fromLive, now)
	}
}

func (c *core) add(ts *topicState, m Message, src source, now time.Time) {
	d, gaps, dup := ts.inbox.add(m, now)
	switch {
	case dup && src == fromLive:
		ts.stats.Dups++
	case src == fromLive:
		c.tailDue(ts, m.Sender, now)
	case !dup && src == fromRefill:
		ts.stats.Refills++
	}
	c.deliver(ts, d, gaps, src == fromHistory)
}

func (c *core) deliver(ts *topicState, d []Message, gaps []Gap, history bool) {
	for i := range gaps {
		ts.stats.Gaps++
		g := gaps[i]
		c.emit(ts, Event{Type: "gap", Gap: &g})
		c.rd.notes = append(c.rd.notes, note{"room.gap", map[string]any{"topic": ts.name, "sender": g.Sender.String(), "from": g.From, "to": g.To}})
	}
	for i := range d {
		ts.stats.Received++
		c.remember(ts, d[i])
		msg := d[i]
		c.emit(ts, Event{Type: "message", Message: &msg, History: history})
	}
}

// attachSigned gives our own remembered message its signed form.
func (c *core) attachSigned(ts *topicState, mm Message) {
	for i := len(ts.recent) - 1; i >= 0; i-- {
		r := &ts.recent[i]
		if r.Sender == mm.Sender && r.Epoch == mm.Epoch && r.Seq == mm.Seq {
			r.signed = mm.signed
			return
		}
	}
}

func (c *core) remember(ts *topicState, msg Message) {
	ts.recent = append(ts.recent, msg)
	if over := len(ts.recent) - c.cfg.History; over > 0 {
		ts.recent = append(ts.recent[:0], ts.recent[over:]...)
	}
}

// send numbers and seals a message for the topic's current room and
// delivers it to this node's subscribers; the caller publishes the
// sealed bytes on the link of generation gen.
func (c *core) send(topic, typ string, payload []byte, now time.Time) (msg Message, sealed []byte, gen uint64, err error) {
	ts := c.topics[topic]
	if ts == nil || !ts.open {
		return Message{}, nil, 0, fmt.Errorf("%w: %s (join it first)", ErrNotJoined, topic)
	}
	l := ts.links[ts.current]
	if l == nil || l.state != Connected {
		return Message{}, nil, 0, fmt.Errorf("%w: %s", ErrNotConnected, topic)
	}
	msg = Message{Sender: c.cfg.Self, Epoch: ts.epoch, Seq: ts.seq + 1, Type: typ, Payload: payload}
	if sealed, err = l.sealer.seal(msg); err != nil {
		return Message{}, nil, 0, err
	}
	ts.seq++
	ts.stats.Sent++
	c.remember(ts, msg)
	c.emit(ts, Event{Type: "message", Message: &msg})
	return msg, sealed, l.gen, nil
}

// catchUp asks a joiner's participants for the room's recent messages.
func (c *core) catchUp(ts *topicState, l *link, now time.Time) {
	r := fetchReq{topic: ts.name, gen: l.gen, creds: l.creds, sealer: l.sealer, rooms: ts.sealers(), cands: c.others(ts, l, nil)}
	if len(r.cands) == 0 {
		c.historyDone(fetchResult{fetchReq: r}, now)
		return
	}
	c.rd.fetches = append(c.rd.fetches, r)
}

// refill asks the participants for the messages of gaps held long
// enough: the senders first if they are in the room (they have their
// own), then the others in the room (they have what they received), then
// the senders elsewhere. A gap nobody can be asked about is reported
// after GapWait.
func (c *core) refill(ts *topicState, now time.Time) {
	if ts.refilling || ts.catching || !ts.inbox.refill {
		return
	}
	gaps := ts.inbox.missing(now, c.cfg.RefillAfter)
	if len(gaps) == 0 {
		c.checkTail(ts, now)
		return
	}
	l := ts.links[ts.current]
	var cands []peer.ID
	if l != nil && l.attached {
		var senders []peer.ID
		for _, g := range gaps {
			senders = append(senders, g.Sender)
		}
		cands = c.others(ts, l, senders)
	}
	if len(cands) == 0 {
		ts.inbox.answered(gaps, true)
		return
	}
	ts.refilling = true
	senders := make([]peer.ID, 0, len(gaps))
	for _, g := range gaps {
		senders = append(senders, g.Sender)
	}
	c.rd.fetches = append(c.rd.fetches, fetchReq{topic: ts.name, gen: l.gen, creds: l.creds, sealer: l.sealer, rooms: ts.sealers(),
		cands: cands[:min(len(cands), maxRefillAsk)], want: gaps, refill: true, since: ts.inbox.positions(senders)})
	c.lg.Debug().Str("topic", ts.name).Int("gaps", len(gaps)).Msg("asking participants to refill gaps")
}

// tailAfter is how long a room stays quiet before a tail check.
func (c *core) tailAfter() time.Duration { return c.cfg.GapWait / 2 }

// maxTailAsk bounds how many participants one tail check asks.
const maxTailAsk = 2

// tailDue (re)schedules a tail check for tailAfter from now, asking from
// first.
func (c *core) tailDue(ts *topicState, from peer.ID, now time.Time) {
	ts.tailAt, ts.tailFrom = now.Add(c.tailAfter()), from
}

// checkTail asks a participant in the room, once a tail check is due, for
// anything after what this node has of each sender: a lost last message
// leaves no gap to see. With nothing lost the answer is empty.
func (c *core) checkTail(ts *topicState, now time.Time) {
	if ts.tailAt.IsZero() || now.Before(ts.tailAt) {
		return
	}
	ts.tailAt = time.Time{}
	l := ts.links[ts.current]
	if l == nil || l.state != Connected {
		return
	}
	var cands []peer.ID
	for _, p := range c.others(ts, l, []peer.ID{ts.tailFrom}) {
		if l.peers[p] && len(cands) < maxTailAsk {
			cands = append(cands, p)
		}
	}
	if len(cands) == 0 {
		return
	}
	ts.refilling = true
	c.rd.fetches = append(c.rd.fetches, fetchReq{topic: ts.name, gen: l.gen, creds: l.creds, sealer: l.sealer, rooms: ts.sealers(),
		cands: cands, refill: true, since: ts.inbox.positions(nil)})
}

// historyDone takes what a fetch of history brought.
func (c *core) historyDone(r fetchResult, now time.Time) {
	ts := c.topics[r.topic]
	if ts == nil {
		return
	}
	if r.refill {
		if !ts.refilling {
			return
		}
		ts.refilling = false
		for _, h := range r.msgs {
			// Only senders already met: the refill is for their gaps.
			if h.Sender != c.cfg.Self && ts.inbox.known(h.Sender) {
				c.add(ts, h, fromRefill, now)
			}
		}
		ts.inbox.answered(r.want, false)
		return
	}
	if !ts.catching {
		return
	}
	for _, h := range r.msgs {
		if h.Sender == c.cfg.Self {
			continue
		}
		if !ts.inbox.known(h.Sender) {
			// History is in order: a sender starts at its first message.
			ts.inbox.start(h.Sender, h.Epoch, h.Seq-1)
		}
		c.add(ts, h, fromHistory, now)
	}
	for _, p := range ts.pending {
		c.add(ts, p, fromLive, now)
	}
	ts.pending, ts.catching = nil, false
	from := make([]string, len(r.from))
	for i, p := range r.from {
		from[i] = p.String()
	}
	c.emit(ts, Event{Type: "live", Room: r.creds.ID.String(), Why: fmt.Sprintf("%d messages of history from %s", len(r.msgs), strings.Join(from, ", "))})
}

// fanOut, on the loop: events go to the topic's subscribers without
// waiting; a full subscriber misses the event, counted as lagged.
func (l *loop) fanOut(evs []Event) {
	for _, ev := range evs {
		missed := 0
		for _, ch := range l.m.subs[ev.Topic] {
			select {
			case ch <- ev:
			default:
				missed++
			}
		}
		if missed > 0 {
			l.c.lagged(ev.Topic, missed)
		}
	}
}
