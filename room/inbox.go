package room

import (
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
// and then reports the gap and moves on. It is a pure state machine: the
// caller passes the time and delivers what it returns. Not safe for
// concurrent use.
type inbox struct {
	wait    time.Duration
	senders map[peer.ID]*senderState
}

type senderState struct {
	epoch uint64
	next  uint64 // the sequence number to deliver next
	held  map[uint64]Message
	since time.Time // when the oldest held message arrived
}

func newInbox(wait time.Duration) *inbox {
	return &inbox{wait: wait, senders: map[peer.ID]*senderState{}}
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
// The first message of a sender not seen before starts its stream.
func (in *inbox) add(m Message, now time.Time) (deliver []Message, gaps []Gap, dup bool) {
	s := in.senders[m.Sender]
	switch {
	case s == nil || m.Epoch > s.epoch:
		if s != nil {
			deliver, gaps = in.flush(m.Sender, s)
		}
		s = &senderState{epoch: m.Epoch, next: m.Seq, held: map[uint64]Message{}}
		in.senders[m.Sender] = s
	case m.Epoch < s.epoch || m.Seq < s.next:
		return nil, nil, true
	}
	if _, ok := s.held[m.Seq]; ok {
		return deliver, gaps, true
	}
	if m.Seq > s.next {
		if len(s.held) == 0 {
			s.since = now
		}
		s.held[m.Seq] = m
		return deliver, gaps, false
	}
	deliver = append(deliver, m)
	s.next++
	return append(deliver, in.drain(s)...), gaps, false
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
		if len(s.held) == 0 || now.Sub(s.since) < in.wait {
			continue
		}
		d, g := in.flush(p, s)
		deliver, gaps = append(deliver, d...), append(gaps, g...)
		s.since = now
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

// held reports whether any sender has messages waiting on a gap.
func (in *inbox) holding() bool {
	for _, s := range in.senders {
		if len(s.held) > 0 {
			return true
		}
	}
	return false
}
