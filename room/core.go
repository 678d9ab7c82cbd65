package room

import (
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/rs/zerolog"
)

// core is the manager's state machine, in the manner of etcd raft's
// RawNode: every topic's state and every decision on it, with no I/O, no
// clock and no goroutine. The loop (loop.go) feeds it one input at a time
// — an API call, a received message, a snapshot of the document, the
// result of pubsub or history work, the time — and then carries out what
// the input left in rd: pubsub joins and closes, document writes, history
// fetches, events for subscribers. Not safe for concurrent use: only the
// loop calls it.
type core struct {
	cfg     *Config
	lg      zerolog.Logger
	topics  map[string]*topicState
	retired TopicStats // counters of topics no longer tracked
	gens    uint64     // the last link generation handed out
	// history: there is a Host to fetch history with, so joiners catch up
	// and gaps are asked of the participants.
	history bool
	rd      ready
}

// ready is what the core asks of the shell, each kind in order.
type ready struct {
	drops    []dropReq
	connects []connectReq
	writes   []docWrite
	fetches  []fetchReq
	events   []Event // for the subscribers of Event.Topic
	notes    []note  // for Config.OnEvent
	read     bool    // read the document and reconcile again soon
}

type note struct {
	typ  string
	data map[string]any
}

type topicState struct {
	name       string
	open, hold bool
	epoch      uint64
	seq        uint64
	leaseUntil time.Time // the lease this node last wrote
	leaseBusy  int       // lease writes queued or under way
	// view is the topic as the document held it at the last read.
	view   roomView
	viewed bool
	// minted are creds this node wrote and the read that will first show
	// them (0 while the write is under way): until then reconcile takes
	// them as advertised, so a read older than the write does not make it
	// mint again.
	minted     string
	mintedRead uint64
	links      map[ID]*link
	current    ID // the advertised room, once linked
	// rooms are the sealers of the rooms this topic had here, newest last,
	// by pubsub topic name: history may carry messages of earlier rooms.
	rooms  []knownRoom
	inbox  *inbox
	recent []Message // last History messages, oldest first
	// A joiner holds live messages in pending while it fetches history
	// (catching), then delivers history, then pending, through the inbox,
	// so the seam has no duplicate.
	needHistory bool
	catching    bool
	pending     []Message
	refilling   bool // a refill of a gap, or a tail check, is under way
	// tailAt is when a tail check is due (zero: none), and tailFrom whom
	// to ask first. A lost last message shows no gap, so once the room has
	// been quiet for a while after a live message, or after a participant
	// (re)appeared in it, this node asks whether anything came after what
	// it has.
	tailAt    time.Time
	tailFrom  peer.ID
	followers int // local subscribers
	stats     TopicStats
}

type knownRoom struct {
	name string // its pubsub topic
	s    *sealer
}

// maxRooms bounds the earlier rooms a topic remembers for history.
const maxRooms = 4

// maxPending bounds the live messages a joiner holds while it fetches
// history; beyond it they go straight to ordering.
const maxPending = 4096

func newCore(cfg *Config, lg zerolog.Logger) *core {
	return &core{cfg: cfg, lg: lg, topics: map[string]*topicState{}, history: cfg.Host != nil}
}

// take returns and clears what the last inputs asked for.
func (c *core) take() ready {
	rd := c.rd
	c.rd = ready{}
	return rd
}

func (c *core) topic(name string) *topicState {
	ts := c.topics[name]
	if ts == nil {
		in := newInbox(c.cfg.GapWait)
		in.refill = c.history
		ts = &topicState{name: name, links: map[ID]*link{}, inbox: in}
		c.topics[name] = ts
	}
	return ts
}

// names returns the topics tracked here, sorted.
func (c *core) names() []string {
	out := make([]string, 0, len(c.topics))
	for n := range c.topics {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// open opens a topic (join, or offer with hold) and queues this node's
// lease; the returned channel has the write's result.
func (c *core) open(topic string, hold bool, now time.Time) <-chan error {
	ts := c.topic(topic)
	if !ts.open {
		ts.open = true
		ts.epoch = max(uint64(now.UnixMilli()), ts.epoch+1)
		ts.seq = 0
		ts.inbox.joined = ts.epoch
	}
	ts.hold = ts.hold || hold
	done := make(chan error, 1)
	c.writeLease([]string{topic}, now.Add(c.cfg.LeaseTTL), done)
	c.rd.read = true
	return done
}

// close closes an open topic and queues the withdrawal of its lease.
func (c *core) close(topic string) (<-chan error, error) {
	ts := c.topics[topic]
	if ts == nil || !ts.open {
		return nil, fmt.Errorf("%w: %s", ErrNotJoined, topic)
	}
	ts.open, ts.hold = false, false
	ts.leaseUntil = time.Time{}
	ts.recent = nil // a later join catches up afresh; the inbox still drops what was seen
	done := make(chan error, 1)
	c.writeLease([]string{topic}, time.Time{}, done)
	c.rd.read = true
	return done, nil
}

// rotate mints new credentials for an open topic and queues their write.
func (c *core) rotate(topic string, now time.Time) (Creds, <-chan error, error) {
	ts := c.topics[topic]
	if ts == nil || !ts.open {
		return Creds{}, nil, fmt.Errorf("%w: %s", ErrNotJoined, topic)
	}
	cr := NewCreds(now, c.cfg.CredsTTL)
	done := make(chan error, 1)
	c.rd.writes = append(c.rd.writes, docWrite{topic: topic, creds: cr, why: "rotated on request", done: done})
	return cr, done, nil
}

// follow counts a local subscriber in (+1) or out (-1).
func (c *core) follow(topic string, delta int) {
	c.topic(topic).followers += delta
}

// snapshot takes a read of the document (seq numbers the reads) and runs
// a reconcile pass: due leases are renewed, then every topic read is
// reconciled and its actions taken.
func (c *core) snapshot(now time.Time, seq uint64, views map[string]roomView) {
	c.renewLeases(now)
	for _, name := range c.names() {
		ts := c.topics[name]
		v, ok := views[name]
		if !ok {
			continue // opened after the read was asked for: the next one has it
		}
		ts.view, ts.viewed = v, true
		if ts.minted != "" && ts.mintedRead != 0 && seq >= ts.mintedRead {
			ts.minted = ""
		}
		c.reconcile(ts, now)
	}
	c.wake(now)
	for _, name := range c.names() {
		if ts := c.topics[name]; !ts.open && len(ts.links) == 0 && ts.followers == 0 {
			c.retired.add(ts.stats)
			delete(c.topics, name)
		}
	}
}

// reconcile runs Reconcile for one topic and takes its actions.
func (c *core) reconcile(ts *topicState, now time.Time) {
	v := View{Now: now, Open: ts.open, Hold: ts.hold, Creds: ts.view.creds, PeerPresent: ts.view.present, ConnectTimeout: c.cfg.ConnectTimeout}
	if ts.minted != "" {
		v.Creds = ts.minted
	}
	for _, l := range ts.links {
		if l.state == Connecting && l.attached && (len(l.peers) > 0 || !ts.view.present) {
			c.connected(ts, l, now)
		}
		v.Links = append(v.Links, Link{Room: l.room, State: l.state, Since: l.since})
	}
	sort.Slice(v.Links, func(i, j int) bool { return v.Links[i].Since.Before(v.Links[j].Since) })
	for _, a := range Reconcile(v, func() Creds { return NewCreds(now, c.cfg.CredsTTL) }) {
		switch a.Kind {
		case Mint:
			ts.stats.Mints++
			ts.minted, ts.mintedRead = a.Creds.Encode(), 0
			c.rd.writes = append(c.rd.writes, docWrite{topic: ts.name, creds: a.Creds, why: a.Why})
		case Connect:
			c.connect(ts, a.Creds, now)
		case Drop:
			if l := ts.links[a.Room]; l != nil && l.state == Connecting && a.Room == ts.current {
				ts.stats.Sweeps++
			}
			c.drop(ts, a.Room, a.Why)
		}
	}
}

// wake passes the time: held messages whose wait ended are delivered
// behind their gaps, and gaps due are asked of the participants.
func (c *core) wake(now time.Time) {
	for _, name := range c.names() {
		ts := c.topics[name]
		d, gaps := ts.inbox.expire(now)
		c.deliver(ts, d, gaps, false)
		c.refill(ts, now)
	}
}

// nextWake is when wake is next needed (false: only on other inputs).
func (c *core) nextWake() (time.Time, bool) {
	var at time.Time
	for _, ts := range c.topics {
		ask := !ts.refilling && !ts.catching
		if t, ok := ts.inbox.deadline(c.cfg.RefillAfter, ask); ok && (at.IsZero() || t.Before(at)) {
			at = t
		}
		if t := ts.tailAt; ask && !t.IsZero() && ts.inbox.refill && (at.IsZero() || t.Before(at)) {
			at = t
		}
	}
	return at, !at.IsZero()
}

// stopAll leaves every room and forgets work under way (its results will
// not come back); it returns the topics open here.
func (c *core) stopAll(why string, now time.Time) []string {
	var open []string
	for _, name := range c.names() {
		ts := c.topics[name]
		if ts.open {
			open = append(open, name)
		}
		for _, id := range ts.linkIDs() {
			c.drop(ts, id, why)
		}
		ts.leaseBusy, ts.minted = 0, ""
		ts.refilling, ts.needHistory = false, false
		for _, s := range ts.inbox.senders {
			s.asking = false
		}
		if ts.catching {
			ts.catching = false
			for _, p := range ts.pending {
				c.add(ts, p, fromLive, now)
			}
			ts.pending = nil
		}
	}
	return open
}

func (ts *topicState) linkIDs() []ID {
	ids := make([]ID, 0, len(ts.links))
	for id := range ts.links {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b ID) int { return slices.Compare(a[:], b[:]) })
	return ids
}

// know remembers a room's sealer for the topic's history.
func (ts *topicState) know(name string, s *sealer) {
	ts.rooms = slices.DeleteFunc(ts.rooms, func(r knownRoom) bool { return r.name == name })
	ts.rooms = append(ts.rooms, knownRoom{name, s})
	if len(ts.rooms) > maxRooms {
		ts.rooms = ts.rooms[len(ts.rooms)-maxRooms:]
	}
}

// sealers returns the topic's known rooms by pubsub topic name.
func (ts *topicState) sealers() map[string]*sealer {
	out := make(map[string]*sealer, len(ts.rooms))
	for _, r := range ts.rooms {
		out[r.name] = r.s
	}
	return out
}

func (c *core) totals() totals {
	t := totals{stats: c.retired}
	for _, ts := range c.topics {
		t.stats.add(ts.stats)
		if ts.open {
			t.open++
		}
		t.links += len(ts.links)
	}
	return t
}

// topicStatus is what Rooms shows of a topic beyond the document.
type topicStatus struct {
	open, hold bool
	stats      TopicStats
	links      []LinkInfo
}

func (c *core) status() map[string]topicStatus {
	out := make(map[string]topicStatus, len(c.topics))
	for name, ts := range c.topics {
		st := topicStatus{open: ts.open, hold: ts.hold, stats: ts.stats}
		for _, l := range ts.links {
			st.links = append(st.links, LinkInfo{Room: l.room.String(), State: l.state.String(), Since: l.since, Peers: len(l.peers)})
		}
		sort.Slice(st.links, func(i, j int) bool { return st.links[i].Since.Before(st.links[j].Since) })
		out[name] = st
	}
	return out
}

// emit queues an event for the topic's subscribers.
func (c *core) emit(ts *topicState, ev Event) {
	ev.Topic = ts.name
	c.rd.events = append(c.rd.events, ev)
}

// lagged counts events a slow subscriber of topic missed.
func (c *core) lagged(topic string, n int) {
	if ts := c.topics[topic]; ts != nil {
		ts.stats.Lagged += uint64(n)
	}
}

// others returns the peers to ask for a topic's history, each once and
// never this node: those seen in link's room (prefer first: they are
// connected and in the room), then the rest of prefer, then the other
// lease holders (alive first).
func (c *core) others(ts *topicState, l *link, prefer []peer.ID) []peer.ID {
	seen := map[peer.ID]bool{c.cfg.Self: true}
	var out []peer.ID
	add := func(p peer.ID) {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, p := range prefer {
		if l.peers[p] {
			add(p)
		}
	}
	in := make([]peer.ID, 0, len(l.peers))
	for p := range l.peers {
		in = append(in, p)
	}
	slices.Sort(in)
	for _, p := range in {
		add(p)
	}
	for _, p := range prefer {
		add(p)
	}
	for _, p := range ts.view.leases {
		add(p)
	}
	return out
}
