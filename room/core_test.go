package room

import (
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/meshnode/meshnode/internal/testutil"
	"github.com/rs/zerolog"
)

// coreRig drives a core by hand, with no network, no document and a
// clock of its own: the tests play the shell.
type coreRig struct {
	t     *testing.T
	c     *core
	now   time.Time
	reads uint64
	evs   []Event
	rd    ready // what the last steps asked for, accumulated
}

func newCoreRig(t *testing.T, history bool) *coreRig {
	cfg := Config{Self: testutil.RandomPeer(t), TopicName: func(id ID) string { return "room/" + id.String() }, GapWait: 2 * time.Second}
	cfg.defaults()
	c := newCore(&cfg, zerolog.New(zerolog.NewTestWriter(t)))
	c.history = history
	return &coreRig{t: t, c: c, now: t0}
}

// step collects what the core asked for since the last step.
func (r *coreRig) step() ready {
	rd := r.c.take()
	r.evs = append(r.evs, rd.events...)
	r.rd.drops = append(r.rd.drops, rd.drops...)
	r.rd.connects = append(r.rd.connects, rd.connects...)
	r.rd.writes = append(r.rd.writes, rd.writes...)
	r.rd.fetches = append(r.rd.fetches, rd.fetches...)
	return rd
}

func (r *coreRig) snapshot(views map[string]roomView) ready {
	r.reads++
	r.c.snapshot(r.now, r.reads, views)
	return r.step()
}

func (r *coreRig) advance(d time.Duration) ready {
	r.now = r.now.Add(d)
	r.c.wake(r.now)
	return r.step()
}

// events returns the types of the events so far, with each message as
// "m<seq>" and each gap as "gap<from>-<to>".
func (r *coreRig) events(types ...string) []string {
	var out []string
	for _, ev := range r.evs {
		switch ev.Type {
		case "message":
			out = append(out, fmt.Sprintf("m%d", ev.Message.Seq))
		case "gap":
			out = append(out, fmt.Sprintf("gap%d-%d", ev.Gap.From, ev.Gap.To))
		default:
			for _, t := range types {
				if t == ev.Type {
					out = append(out, ev.Type)
				}
			}
		}
	}
	return out
}

// joined opens topic with creds advertised and other present, and plays
// the link's join and other appearing in the room; history is asked for
// and answered empty.
func (r *coreRig) joined(topic string, cr Creds, other peer.ID) *link {
	r.t.Helper()
	r.c.open(topic, false, r.now)
	r.step()
	view := roomView{creds: cr.Encode(), present: true, leases: []peer.ID{other}}
	rd := r.snapshot(map[string]roomView{topic: view})
	if len(rd.connects) != 1 {
		r.t.Fatalf("joining: %+v", rd)
	}
	gen := rd.connects[0].gen
	r.c.linkUp(topic, gen, nil, r.now)
	r.c.peerEvent(topic, gen, other, true, r.now)
	rd = r.step()
	if r.c.history {
		if len(rd.fetches) != 1 {
			r.t.Fatalf("no catch-up asked for: %+v", rd)
		}
		r.c.historyDone(fetchResult{fetchReq: rd.fetches[0], from: []peer.ID{other}}, r.now)
		r.step()
	}
	_, l := r.c.link(topic, gen)
	if l == nil || l.state != Connected {
		r.t.Fatalf("link %+v not connected", l)
	}
	return l
}

func (r *coreRig) receive(topic string, l *link, m Message) {
	r.c.received(incoming{topic: topic, gen: l.gen, from: m.Sender, msg: m}, r.now)
	r.step()
}

// A message lost on the way (a gap that stays open past RefillAfter) is
// asked of the participants, its sender first, and delivered in order
// once the answer has it: nothing is reported.
func TestCoreRefillsGapFromHistory(t *testing.T) {
	r := newCoreRig(t, true)
	s, other := testutil.RandomPeer(t), testutil.RandomPeer(t)
	l := r.joined("t", NewCreds(t0, time.Hour), other)
	r.c.peerEvent("t", l.gen, s, true, r.now)
	msg := func(seq uint64) Message { return Message{Sender: s, Epoch: uint64(r.now.UnixMilli()) + 1, Seq: seq} }
	m1, m2, m3 := msg(1), msg(2), msg(3)
	r.receive("t", l, m1)
	r.receive("t", l, m3)
	if rd := r.advance(r.c.cfg.RefillAfter / 2); len(rd.fetches) != 0 {
		t.Fatal("asked before RefillAfter: most gaps close by themselves")
	}
	rd := r.advance(r.c.cfg.RefillAfter)
	if len(rd.fetches) != 1 {
		t.Fatalf("no refill asked for: %+v", rd)
	}
	f := rd.fetches[0]
	if !f.refill || len(f.want) != 1 || f.want[0].From != 2 || f.want[0].To != 2 || f.cands[0] != s || f.cands[1] != other {
		t.Fatalf("refill %+v: want gap 2-2 asked of the sender, then the other participant", f)
	}
	// A sender not in the room (not connected, maybe gone) comes after
	// those in it.
	if got := r.c.others(r.c.topics["t"], &link{peers: map[peer.ID]bool{other: true}}, []peer.ID{s}); len(got) != 2 || got[0] != other || got[1] != s {
		t.Fatalf("candidates %v: want the participant in the room first", got)
	}
	if at, ok := r.c.nextWake(); ok && !at.After(r.now) {
		t.Fatal("the loop would spin while the refill is under way")
	}
	r.c.historyDone(fetchResult{fetchReq: f, msgs: []Message{m1, m2, m3}, from: []peer.ID{s}}, r.now)
	r.step()
	r.advance(10 * time.Second)
	if got, want := fmt.Sprint(r.events()), "[m1 m2 m3]"; got != want {
		t.Fatalf("delivered %s, want %s", got, want)
	}
	st := r.c.topics["t"].stats
	if st.Gaps != 0 || st.Refills != 1 || st.Dups != 0 {
		t.Fatalf("stats %+v: want no gap, one refill, no duplicate counted for history", st)
	}
}

// A gap nobody can fill is asked twice (the second time catches messages
// still on their way), then reported once GapWait has passed, and what
// follows it is delivered.
func TestCoreReportsGapNobodyFills(t *testing.T) {
	r := newCoreRig(t, true)
	s, other := testutil.RandomPeer(t), testutil.RandomPeer(t)
	l := r.joined("t", NewCreds(t0, time.Hour), other)
	epoch := uint64(r.now.UnixMilli()) + 1
	for _, q := range []uint64{1, 4} {
		r.receive("t", l, Message{Sender: s, Epoch: epoch, Seq: q})
	}
	var asks int
	for range 40 {
		rd := r.advance(100 * time.Millisecond)
		for _, f := range rd.fetches {
			if len(f.want) > 0 {
				asks++
			}
			r.c.historyDone(fetchResult{fetchReq: f, from: []peer.ID{s}}, r.now) // answered without them
			r.step()
		}
	}
	if asks != maxAsks {
		t.Fatalf("asked %d times, want %d", asks, maxAsks)
	}
	if got, want := fmt.Sprint(r.events()), "[m1 gap2-3 m4]"; got != want {
		t.Fatalf("events %s, want %s", got, want)
	}
	if at, ok := r.c.nextWake(); ok {
		t.Fatalf("a wake-up at %v with nothing held", at)
	}
}

// Without a host to ask with, a gap is reported after GapWait, as before.
func TestCoreReportsGapWithoutHistory(t *testing.T) {
	r := newCoreRig(t, false)
	s, other := testutil.RandomPeer(t), testutil.RandomPeer(t)
	l := r.joined("t", NewCreds(t0, time.Hour), other)
	epoch := uint64(r.now.UnixMilli()) + 1
	r.receive("t", l, Message{Sender: s, Epoch: epoch, Seq: 2})
	if at, ok := r.c.nextWake(); !ok || !at.Equal(r.now.Add(r.c.cfg.GapWait)) {
		t.Fatalf("next wake %v %v, want at GapWait", at, ok)
	}
	if rd := r.advance(r.c.cfg.GapWait); len(rd.fetches) != 0 {
		t.Fatal("a fetch without a host")
	}
	if got, want := fmt.Sprint(r.events()), "[gap1-1 m2]"; got != want {
		t.Fatalf("events %s, want %s", got, want)
	}
}

// Creds this node minted count as advertised until a read of the
// document taken after the write shows what won: a read older than the
// write does not make it mint again.
func TestCoreMintedCredsOutliveStaleReads(t *testing.T) {
	r := newCoreRig(t, false)
	other := testutil.RandomPeer(t)
	r.c.open("t", true, r.now)
	r.step()
	empty := map[string]roomView{"t": {present: true, leases: []peer.ID{other}}}
	rd := r.snapshot(empty)
	if len(rd.writes) != 1 || rd.writes[0].leases != nil || len(rd.connects) != 1 {
		t.Fatalf("first pass: %+v; want a mint and a join", rd)
	}
	mint := rd.writes[0]
	if rd := r.snapshot(empty); len(rd.writes)+len(rd.connects)+len(rd.drops) != 0 {
		t.Fatalf("a read older than the mint minted again: %+v", rd)
	}
	r.c.credsWritten(mint, nil, r.reads+1)
	r.step()
	// The document kept another node's concurrent mint: migrate to it.
	won := NewCreds(t0, time.Hour)
	rd = r.snapshot(map[string]roomView{"t": {creds: won.Encode(), present: true, leases: []peer.ID{other}}})
	if len(rd.connects) != 1 || rd.connects[0].sealer.id != won.ID || len(rd.drops) != 1 {
		t.Fatalf("after the write: %+v; want a join of the winner and a drop of ours", rd)
	}
}

// A link's join that fails is forgotten, so the next pass joins again;
// a late result of a link already dropped is ignored.
func TestCoreLinkResults(t *testing.T) {
	r := newCoreRig(t, false)
	other := testutil.RandomPeer(t)
	cr := NewCreds(t0, time.Hour)
	r.c.open("t", false, r.now)
	r.step()
	view := map[string]roomView{"t": {creds: cr.Encode(), present: true, leases: []peer.ID{other}}}
	gen := r.snapshot(view).connects[0].gen
	r.c.linkUp("t", gen, fmt.Errorf("topic already exists"), r.now)
	r.step()
	rd := r.snapshot(view)
	if len(rd.connects) != 1 || rd.connects[0].gen == gen {
		t.Fatalf("after a failed join: %+v; want a new join", rd)
	}
	r.c.peerEvent("t", gen, other, true, r.now) // the failed link's: ignored
	if _, ok := r.c.currentLink("t"); ok {
		t.Fatal("a link not yet joined counts as current")
	}
	st := r.c.status()["t"]
	if len(st.links) != 1 || st.links[0].State != "connecting" {
		t.Fatalf("status %+v", st)
	}
}

// A lost last message leaves no gap to see: once the room has been quiet
// for GapWait/2 after a live message, a participant in the room is asked
// for what comes after this node's position in each stream (the last
// sender first), and what it has is delivered.
func TestCoreTailCheck(t *testing.T) {
	r := newCoreRig(t, true)
	s, other := testutil.RandomPeer(t), testutil.RandomPeer(t)
	l := r.joined("t", NewCreds(t0, time.Hour), other)
	r.c.peerEvent("t", l.gen, s, true, r.now)
	// s appearing in the room makes a tail check due: s may have sent
	// what this node could not receive.
	rd := r.advance(time.Minute)
	if len(rd.fetches) != 1 || rd.fetches[0].cands[0] != s {
		t.Fatalf("no tail check asking s first after s appeared: %+v", rd)
	}
	r.c.historyDone(fetchResult{fetchReq: rd.fetches[0]}, r.now)
	r.step()
	epoch := uint64(r.now.UnixMilli()) + 1
	msg := func(seq uint64) Message { return Message{Sender: s, Epoch: epoch, Seq: seq} }
	r.receive("t", l, msg(1))
	if rd := r.advance(r.c.tailAfter() / 2); len(rd.fetches) != 0 {
		t.Fatal("a tail check while the room is busy")
	}
	if at, ok := r.c.nextWake(); !ok || at.After(r.now.Add(r.c.tailAfter())) {
		t.Fatalf("no wake-up for the tail check: %v %v", at, ok)
	}
	rd = r.advance(r.c.tailAfter())
	if len(rd.fetches) != 1 {
		t.Fatalf("no tail check: %+v", rd)
	}
	f := rd.fetches[0]
	if f.cands[0] != s || len(f.cands) != 2 || len(f.want) != 0 || f.since[s] != (position{epoch, 2}) {
		t.Fatalf("tail check %+v: want s then other asked for s's messages from seq 2", f)
	}
	r.c.historyDone(fetchResult{fetchReq: f, msgs: []Message{msg(2)}, from: []peer.ID{s}}, r.now)
	r.step()
	if rd := r.advance(time.Minute); len(rd.fetches) != 0 {
		t.Fatal("a second tail check with no live message since")
	}
	if got, want := fmt.Sprint(r.events()), "[m1 m2]"; got != want {
		t.Fatalf("delivered %s, want %s", got, want)
	}
}

// The since list of a ranged history request round-trips, and the
// responder's filter keeps what comes at or after each position.
func TestSinceRoundTripAndFilter(t *testing.T) {
	a, b := testutil.RandomPeer(t), testutil.RandomPeer(t)
	pos := map[peer.ID]position{a: {epoch: 5, next: 3}, b: {epoch: 1, next: 1}}
	got, err := decodeSince(encodeSince(pos))
	if err != nil || len(got) != 2 || got[a] != pos[a] || got[b] != pos[b] {
		t.Fatalf("round trip: %v %v", err, got)
	}
	for _, tc := range []struct {
		m    Message
		want bool
	}{
		{Message{Sender: a, Epoch: 5, Seq: 2}, false},
		{Message{Sender: a, Epoch: 5, Seq: 3}, true},
		{Message{Sender: a, Epoch: 4, Seq: 9}, false},
		{Message{Sender: a, Epoch: 6, Seq: 1}, true},
		{Message{Sender: testutil.RandomPeer(t), Epoch: 6, Seq: 1}, false}, // not listed
	} {
		if g := got[tc.m.Sender].before(tc.m); g != tc.want {
			t.Errorf("%+v: sent %v, want %v", tc.m, g, tc.want)
		}
	}
	for name, b := range map[string][]byte{
		"empty":    {},
		"too many": {0xff, 0x0f},
		"short":    encodeSince(pos)[:10],
		"trailing": append(encodeSince(pos), 0),
	} {
		if _, err := decodeSince(b); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

func FuzzDecodeSince(f *testing.F) {
	f.Add(encodeSince(map[peer.ID]position{peer.ID("\x00\x04abcd"): {epoch: 1, next: 2}}))
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, b []byte) {
		pos, err := decodeSince(b)
		if err != nil {
			return
		}
		again, err := decodeSince(encodeSince(pos))
		if err != nil || len(again) != len(pos) {
			t.Fatalf("decoded since does not round-trip: %v", err)
		}
		for p, x := range pos {
			if again[p] != x {
				t.Fatalf("decoded since does not round-trip at %s", p)
			}
		}
	})
}
