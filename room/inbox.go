package room

import (
	"slices"
	"sort"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Gap is a run of a sender's messages that never arrived.
type Gap struct {
	Sender   peer.ID `json:"sender"`
	Epoch    uint64  `json:"epoch"`
	From, To uint64  // sequence numbers, inclusive
}

// inbox puts each sender's messages in order. It drops duplicates and
// replays (a sequence number already passed, or an older epoch), holds a
// message that arrives after a gap until the gap fills or wait passes,
// and then reports the gap and moves on. With refill set, a gap is first
// asked of the participants (missing, answered: at most maxAsks times)
// and reported only once wait has passed and no ask is outstanding. It
// is a pure state machine: the caller passes the time and delivers what
// it returns. Not safe for concurrent use.
type inbox struct {
	wait    time.Duration
	refill  bool
	senders map[peer.ID]*senderState
	// joined is this node's own epoch on the topic. A sender whose epoch
	// is not older joined while this node was in the room, so its stream
	// is expected from seq 1: messages arrive out of order (GossipSub
	// validates concurrently), and a later one seen first must not hide
	// the earlier ones. A sender that joined before this node, met
	// without history, starts at the lowest sequence number seen in its
	// first settle period.
	joined uint64
	settle time.Duration
}

type senderState struct {
	epoch uint64
	next  uint64 // the sequence number to deliver next; 0 while settling
	held  map[uint64]Message
	since time.Time // when the oldest held message arrived
	// Refills of the gap held since since: how many were asked, and
	// whether one is outstanding.
	asks   int
	asking bool
}

// maxAsks is how often one gap is asked of the participants before it is
// reported: a second ask catches messages that were still on their way to
// the first responder.
const maxAsks = 2

// maxHeld bounds the messages held for one sender: a sender that skips
// ahead further (a bug, or a hostile member) gets its gap reported at
// once instead of filling memory.
const maxHeld = 1024

// settleFor is how long the first messages of a sender met mid-stream
// are gathered before its stream starts at the lowest.
const settleFor = 200 * time.Millisecond

func newInbox(wait time.Duration) *inbox {
	return &inbox{wait: wait, settle: settleFor, senders: map[peer.ID]*senderState{}}
}

// start records where a sender's stream stands without delivering
// anything: a late joiner's history says it has seen up to seq.
func (in *inbox) start(sender peer.ID, epoch, seq uint64) {
	s := in.senders[sender]
	if s == nil || epoch > s.epoch || epoch == s.epoch && seq+1 > s.next {
		in.senders[sender] = &senderState{epoch: epoch, next: seq + 1, held: map[uint64]Message{}}
	}
}

// add takes one message and returns what is now deliverable, in order.
func (in *inbox) add(m Message, now time.Time) (deliver []Message, gaps []Gap, dup bool) {
	s := in.senders[m.Sender]
	switch {
	case s == nil || m.Epoch > s.epoch:
		if s != nil {
			deliver, gaps = in.flush(m.Sender, s)
		}
		var next uint64 // settle: met mid-stream, start unknown
		if s != nil || m.Epoch >= in.joined || m.Seq == 1 {
			next = 1 // a new session of a known sender, or one begun while here
		}
		s = &senderState{epoch: m.Epoch, next: next, held: map[uint64]Message{}}
		in.senders[m.Sender] = s
	case s.next == 0:
		// settling: gather
	case m.Epoch < s.epoch || m.Seq < s.next:
		return nil, nil, true
	}
	if s.next == 0 {
		if _, ok := s.held[m.Seq]; ok {
			return deliver, gaps, true
		}
		if len(s.held) == 0 {
			s.hold(now)
		}
		s.held[m.Seq] = m
		if len(s.held) > maxHeld { // settle no longer: start at the lowest
			s.next = ^uint64(0)
			for q := range s.held {
				s.next = min(s.next, q)
			}
			deliver = append(deliver, in.drain(s)...)
		}
		return deliver, gaps, false
	}
	if _, ok := s.held[m.Seq]; ok {
		return deliver, gaps, true
	}
	if m.Seq > s.next {
		if len(s.held) == 0 {
			s.hold(now)
		}
		s.held[m.Seq] = m
		if len(s.held) > maxHeld {
			d, g := in.flush(m.Sender, s)
			deliver, gaps = append(deliver, d...), append(gaps, g...)
		}
		return deliver, gaps, false
	}
	deliver = append(deliver, m)
	s.next++
	return append(deliver, in.drain(s)...), gaps, false
}

// hold starts holding for a new gap.
func (s *senderState) hold(now time.Time) {
	s.since, s.asks, s.asking = now, 0, false
}

// drain delivers the held messages that now follow in order.
func (in *inbox) drain(s *senderState) []Message {
	var out []Message
	for {
		m, ok := s.held[s.next]
		if !ok {
			return out
		}
		delete(s.held, s.next)
		out = append(out, m)
		s.next++
	}
}

// expire gives up on gaps held longer than wait: it reports each and
// delivers what follows it.
func (in *inbox) expire(now time.Time) (deliver []Message, gaps []Gap) {
	for p, s := range in.senders {
		if s.next == 0 && len(s.held) > 0 && now.Sub(s.since) >= in.settle {
			s.next = ^uint64(0)
			for q := range s.held {
				s.next = min(s.next, q)
			}
			deliver = append(deliver, in.drain(s)...)
		}
		if len(s.held) == 0 || now.Sub(s.since) < in.wait || in.refill && (s.asking || s.asks < maxAsks) {
			continue
		}
		d, g := in.flush(p, s)
		deliver, gaps = append(deliver, d...), append(gaps, g...)
	}
	return deliver, gaps
}

// flush delivers every held message of s in order, reporting the gaps
// before them.
func (in *inbox) flush(p peer.ID, s *senderState) (deliver []Message, gaps []Gap) {
	seqs := make([]uint64, 0, len(s.held))
	for q := range s.held {
		seqs = append(seqs, q)
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	for _, q := range seqs {
		if q > s.next {
			gaps = append(gaps, Gap{Sender: p, Epoch: s.epoch, From: s.next, To: q - 1})
		}
		deliver = append(deliver, s.held[q])
		delete(s.held, q)
		s.next = q + 1
	}
	return deliver, gaps
}

// gaps returns the runs missing before s's held messages.
func (s *senderState) gaps(p peer.ID) []Gap {
	seqs := make([]uint64, 0, len(s.held))
	for q := range s.held {
		seqs = append(seqs, q)
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	var out []Gap
	next := s.next
	for _, q := range seqs {
		if q > next {
			out = append(out, Gap{Sender: p, Epoch: s.epoch, From: next, To: q - 1})
		}
		next = q + 1
	}
	return out
}

// askAt is when the gap held by s is due to be asked of the participants
// (after, then half the wait), or false when it is not to be asked now.
func (in *inbox) askAt(s *senderState, after time.Duration) (time.Time, bool) {
	if !in.refill || s.next == 0 || len(s.held) == 0 || s.asking || s.asks >= maxAsks {
		return time.Time{}, false
	}
	if s.asks > 0 {
		after = max(after, in.wait/2)
	}
	return s.since.Add(after), true
}

// missing returns the gaps due to be asked of the participants, a gap
// being due once held for after (the second time, half the wait), and
// marks them asked: expire does not report them until answered.
func (in *inbox) missing(now time.Time, after time.Duration) []Gap {
	var out []Gap
	for p, s := range in.senders {
		if at, ok := in.askAt(s, after); ok && !now.Before(at) {
			s.asking = true
			s.asks++
			out = append(out, s.gaps(p)...)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Sender < out[j].Sender || out[i].Sender == out[j].Sender && out[i].From < out[j].From
	})
	return out
}

// answered records that the ask for these gaps' senders has returned
// (filled or not); with final, they are not asked again.
func (in *inbox) answered(gaps []Gap, final bool) {
	for _, g := range gaps {
		if s := in.senders[g.Sender]; s != nil && s.asking {
			s.asking = false
			if final {
				s.asks = maxAsks
			}
		}
	}
}

// deadline is when the inbox next needs the time passed to expire or
// missing: a settle period ending, a gap due to be asked (only if ask:
// the caller can ask now), or a gap's wait ending. False: nothing held,
// or nothing due before an answer or an ask.
func (in *inbox) deadline(after time.Duration, ask bool) (time.Time, bool) {
	var at time.Time
	set := func(t time.Time) {
		if at.IsZero() || t.Before(at) {
			at = t
		}
	}
	for _, s := range in.senders {
		switch {
		case len(s.held) == 0:
		case s.next == 0:
			set(s.since.Add(in.settle))
		case s.asking:
		case in.refill && s.asks < maxAsks:
			if t, ok := in.askAt(s, after); ok && ask {
				set(t)
			}
		default:
			set(s.since.Add(in.wait))
		}
	}
	return at, !at.IsZero()
}

// holding reports whether any sender has messages waiting on a gap.
func (in *inbox) holding() bool {
	for _, s := range in.senders {
		if len(s.held) > 0 && s.next != 0 {
			return true
		}
	}
	return false
}

// positions returns where the inbox stands in each sender's stream (only
// those listed, if any), for senders past their settle period.
func (in *inbox) positions(only []peer.ID) map[peer.ID]position {
	out := map[peer.ID]position{}
	for p, s := range in.senders {
		if s.next != 0 && (only == nil || slices.Contains(only, p)) {
			out[p] = position{epoch: s.epoch, next: s.next}
		}
	}
	return out
}

// known reports whether the inbox has a position for sender.
func (in *inbox) known(sender peer.ID) bool { return in.senders[sender] != nil }
