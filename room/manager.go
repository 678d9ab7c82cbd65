package room

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/crdt"
)

// maxPending bounds the live messages a joiner holds while it fetches
// history; beyond it they go straight to ordering.
const maxPending = 4096

// Errors of the manager's API.
var (
	ErrNotJoined    = errors.New("room: topic not joined here")
	ErrNotConnected = errors.New("room: not connected to the topic's room yet")
	ErrBadTopic     = errors.New("room: bad topic")
)

// Config configures a Manager.
type Config struct {
	Self   peer.ID
	Doc    *crdt.Doc
	PubSub *pubsub.PubSub
	// TopicName returns the pubsub topic of a room (scoped to the fleet).
	TopicName func(ID) string
	// Alive reports whether a peer's heartbeats are fresh. A lease of a
	// peer that is not alive does not count: it died, or left.
	Alive  func(peer.ID) bool
	Logger zerolog.Logger
	// OnEvent receives room events (room.minted, room.connected,
	// room.dropped, room.gap). Must not block.
	OnEvent func(typ string, data map[string]any)
	// Now is the clock; default time.Now.
	Now func() time.Time
	// LeaseTTL is how long a presence lease written to the document
	// lasts; it is renewed at half its life. Default 10 min. Liveness in
	// between comes from heartbeats (Alive), so the document gets one
	// write per participant per LeaseTTL/2.
	LeaseTTL time.Duration
	// CredsTTL is the lifetime of minted credentials. Default 24 h.
	CredsTTL time.Duration
	// ConnectTimeout: a link still connecting after this is swept and
	// retried. Default 15 s.
	ConnectTimeout time.Duration
	// Interval between reconcile passes (they also run on every document
	// change and API call). Default 1 s.
	Interval time.Duration
	// GapWait: a message after a gap is held this long for the gap to
	// fill before the gap is reported. Default 2 s.
	GapWait time.Duration
	// History is how many recent messages each topic keeps for late
	// joiners. Default 256.
	History int
	// Host and HistoryProtocol let a late joiner fetch recent messages
	// from a participant (HandleHistory serves them). Without a Host,
	// joiners start with live messages only.
	Host            host.Host
	HistoryProtocol protocol.ID
}

func (c *Config) defaults() {
	if c.OnEvent == nil {
		c.OnEvent = func(string, map[string]any) {}
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Alive == nil {
		c.Alive = func(peer.ID) bool { return true }
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = 10 * time.Minute
	}
	if c.CredsTTL <= 0 {
		c.CredsTTL = 24 * time.Hour
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 15 * time.Second
	}
	if c.Interval <= 0 {
		c.Interval = time.Second
	}
	if c.GapWait <= 0 {
		c.GapWait = 2 * time.Second
	}
	if c.History <= 0 {
		c.History = 256
	}
}

// Manager keeps this node in the rooms of the topics it has open: it
// writes presence leases, runs Reconcile per topic and carries out its
// actions, and moves sealed messages between the room and local
// subscribers.
type Manager struct {
	cfg  Config
	lg   zerolog.Logger
	kick chan struct{}
	wg   sync.WaitGroup

	mu          sync.Mutex
	ctx         context.Context // Run's; nil before Run
	topics      map[string]*topicState
	settleTimer *time.Timer // pending wake-up for settling senders
	retired     TopicStats  // counters of topics no longer tracked
}

type topicState struct {
	name       string
	open, hold bool
	epoch      uint64
	seq        uint64
	leaseUntil time.Time // the lease this node last wrote
	links      map[ID]*link
	current    ID // the advertised room, once linked
	inbox      *inbox
	recent     []Message // last History messages, oldest first
	// A joiner holds live messages in pending while it fetches history
	// (catching), then delivers history, then pending, through the inbox,
	// so the seam has no duplicate. Until refillUntil, a gap held in the
	// inbox triggers one more fetch, which fills it if a participant has
	// the missing messages.
	needHistory bool
	catching    bool
	pending     []Message
	refillUntil time.Time
	refilling   bool
	subs        map[int]chan Event
	nextSub     int
	stats       TopicStats
}

// TopicStats counts a topic's traffic on this node.
type TopicStats struct {
	Sent     uint64 `json:"sent"`
	Received uint64 `json:"received"`
	Dups     uint64 `json:"duplicates"`
	Gaps     uint64 `json:"gaps"`
	Rejected uint64 `json:"rejected"`
	Lagged   uint64 `json:"lagged"` // events a slow subscriber missed
	Sweeps   uint64 `json:"sweeps"`
	Mints    uint64 `json:"mints"`
	Renewals uint64 `json:"lease_writes"`
}

func (s *TopicStats) add(o TopicStats) {
	s.Sent += o.Sent
	s.Received += o.Received
	s.Dups += o.Dups
	s.Gaps += o.Gaps
	s.Rejected += o.Rejected
	s.Lagged += o.Lagged
	s.Sweeps += o.Sweeps
	s.Mints += o.Mints
	s.Renewals += o.Renewals
}

// Totals returns the counters of every topic since start, and how many
// topics are open here and how many rooms this node is linked to.
func (m *Manager) Totals() (t TopicStats, open, links int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t = m.retired
	for _, ts := range m.topics {
		t.add(ts.stats)
		if ts.open {
			open++
		}
		links += len(ts.links)
	}
	return t, open, links
}

type link struct {
	name   string
	creds  Creds
	sealer *sealer
	topic  *pubsub.Topic
	sub    *pubsub.Subscription
	state  LinkState
	since  time.Time
	peers  *pubsub.TopicEventHandler
	cancel context.CancelFunc
	done   chan struct{} // receive returned
	// peersDone: the peer-event goroutine returned
	peersDone chan struct{}
}

// Event is what a topic's subscribers receive.
type Event struct {
	Type    string   `json:"type"`              // message, gap, joining, connected, dropped, live
	History bool     `json:"history,omitempty"` // a message from before this node joined
	Topic   string   `json:"topic"`
	Room    string   `json:"room,omitempty"`
	Message *Message `json:"message,omitempty"`
	Gap     *Gap     `json:"gap,omitempty"`
	Why     string   `json:"why,omitempty"`
}

// NewManager returns a Manager; Run starts it.
func NewManager(cfg Config) *Manager {
	cfg.defaults()
	return &Manager{cfg: cfg, lg: cfg.Logger.With().Str("component", "rooms").Logger(), kick: make(chan struct{}, 1), topics: map[string]*topicState{}}
}

// ValidTopic accepts a topic name: a document key of at most 128 bytes
// without '/' or control characters.
func ValidTopic(t string) error {
	if t == "" || len(t) > 128 {
		return fmt.Errorf("%w: %q is empty or longer than 128 bytes", ErrBadTopic, t)
	}
	for _, r := range t {
		if r < 0x20 || r == 0x7f || r == '/' {
			return fmt.Errorf("%w: %q contains '/' or a control character", ErrBadTopic, t)
		}
	}
	return nil
}

func (m *Manager) poke() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// Run reconciles every Interval, on document changes and on API calls,
// until ctx ends; then it leaves every room, withdraws this node's
// leases and waits for its goroutines.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	m.ctx = ctx
	m.mu.Unlock()
	stop := m.cfg.Doc.Watch(func(crdt.Event) { m.poke() })
	defer stop()
	tick := time.NewTicker(m.cfg.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			m.shutdown()
			m.wg.Wait()
			return nil
		case <-tick.C:
		case <-m.kick:
		}
		m.reconcileAll()
	}
}

func (m *Manager) shutdown() {
	m.mu.Lock()
	if m.settleTimer != nil {
		m.settleTimer.Stop()
		m.settleTimer = nil
	}
	var open []string
	for name, ts := range m.topics {
		if ts.open {
			open = append(open, name)
		}
		for id := range ts.links {
			m.dropLocked(ts, id, "the node is stopping")
		}
	}
	m.mu.Unlock()
	if len(open) > 0 {
		_ = m.writeLeases(open, 0)
	}
}

// Join opens a topic here: this node writes a presence lease and joins
// whatever room the document advertises, minting one when another
// participant is present and none is.
func (m *Manager) Join(topic string) error { return m.open(topic, false) }

// Offer opens a topic and keeps a room up even before anyone else joins:
// it mints credentials at once when none are advertised.
func (m *Manager) Offer(topic string) error { return m.open(topic, true) }

func (m *Manager) open(topic string, hold bool) error {
	if err := ValidTopic(topic); err != nil {
		return err
	}
	now := m.cfg.Now()
	m.mu.Lock()
	ts := m.topicLocked(topic)
	if !ts.open {
		ts.open = true
		ts.epoch = max(uint64(now.UnixMilli()), ts.epoch+1)
		ts.seq = 0
		ts.inbox.joined = ts.epoch
	}
	ts.hold = ts.hold || hold
	m.mu.Unlock()
	if err := m.renew(topic, now); err != nil {
		return err
	}
	m.poke()
	return nil
}

func (m *Manager) topicLocked(topic string) *topicState {
	ts := m.topics[topic]
	if ts == nil {
		ts = &topicState{name: topic, links: map[ID]*link{}, inbox: newInbox(m.cfg.GapWait), subs: map[int]chan Event{}}
		m.topics[topic] = ts
	}
	return ts
}

// Leave closes a topic here: the lease is withdrawn and the room left.
func (m *Manager) Leave(topic string) error {
	if err := ValidTopic(topic); err != nil {
		return err
	}
	m.mu.Lock()
	ts := m.topics[topic]
	if ts == nil || !ts.open {
		m.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrNotJoined, topic)
	}
	ts.open, ts.hold = false, false
	ts.leaseUntil = time.Time{}
	ts.recent = nil // a later join catches up afresh; the inbox still drops what was seen
	m.mu.Unlock()
	err := m.writeLeases([]string{topic}, 0)
	m.poke()
	return err
}

// Rotate mints new credentials for an open topic; every participant
// migrates to the new room.
func (m *Manager) Rotate(topic string) (Creds, error) {
	m.mu.Lock()
	ts := m.topics[topic]
	open := ts != nil && ts.open
	m.mu.Unlock()
	if !open {
		return Creds{}, fmt.Errorf("%w: %s", ErrNotJoined, topic)
	}
	c := NewCreds(m.cfg.Now(), m.cfg.CredsTTL)
	if err := m.writeCreds(topic, c, "rotated on request"); err != nil {
		return Creds{}, err
	}
	m.poke()
	return c, nil
}

// renew writes this node's lease for topic.
func (m *Manager) renew(topic string, now time.Time) error {
	until := now.Add(m.cfg.LeaseTTL)
	if err := m.writeLeases([]string{topic}, until.UnixMilli()); err != nil {
		return err
	}
	m.mu.Lock()
	if ts := m.topics[topic]; ts != nil && ts.open {
		ts.leaseUntil = until
		ts.stats.Renewals++
	}
	m.mu.Unlock()
	return nil
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

func (m *Manager) writeCreds(topic string, c Creds, why string) error {
	_, err := m.cfg.Doc.Update("room creds", func(tx *crdt.Tx) error {
		tx.SetRoomCreds(topic, c.Encode())
		return nil
	})
	if err != nil {
		return err
	}
	m.lg.Info().Str("topic", topic).Str("room", c.ID.String()).Str("why", why).Msg("room minted")
	m.cfg.OnEvent("room.minted", map[string]any{"topic": topic, "room": c.ID.String(), "why": why})
	return nil
}

// reconcileAll renews due leases, then runs Reconcile for every topic
// that is open or still linked, and carries out the actions.
func (m *Manager) reconcileAll() {
	m.mu.Lock()
	idle := len(m.topics) == 0
	m.mu.Unlock()
	if idle {
		// Nothing open, linked or followed here: every document change
		// and tick would otherwise read all rooms for nothing.
		return
	}
	now := m.cfg.Now()
	rooms, err := m.cfg.Doc.Rooms()
	if err != nil {
		m.lg.Warn().Err(err).Msg("reading rooms failed")
		return
	}
	m.mu.Lock()
	var due []string
	for name, ts := range m.topics {
		if ts.open && ts.leaseUntil.Sub(now) < m.cfg.LeaseTTL/2 {
			due = append(due, name)
		}
	}
	m.mu.Unlock()
	sort.Strings(due)
	for _, t := range due {
		if err := m.renew(t, now); err != nil {
			m.lg.Warn().Str("topic", t).Err(err).Msg("renewing the presence lease failed")
		}
	}
	type mintJob struct {
		topic string
		c     Creds
		why   string
	}
	var mints []mintJob
	m.mu.Lock()
	for name, ts := range m.topics {
		r := rooms[name]
		present := m.peerPresent(r, now)
		v := View{Now: now, Open: ts.open, Hold: ts.hold, Creds: r.Creds, PeerPresent: present, ConnectTimeout: m.cfg.ConnectTimeout}
		for id, l := range ts.links {
			if l.state == Connecting && (len(l.topic.ListPeers()) > 0 || !present) {
				l.state = Connected
				m.emitLocked(ts, Event{Type: "connected", Room: id.String()})
				m.cfg.OnEvent("room.connected", map[string]any{"topic": name, "room": id.String()})
				if ts.needHistory {
					ts.needHistory = false
					m.startCatchUp(ts, l, r, now, false)
				}
			}
			v.Links = append(v.Links, Link{Room: id, State: l.state, Since: l.since})
		}
		sort.Slice(v.Links, func(i, j int) bool { return v.Links[i].Since.Before(v.Links[j].Since) })
		for _, a := range Reconcile(v, func() Creds { return NewCreds(now, m.cfg.CredsTTL) }) {
			switch a.Kind {
			case Mint:
				ts.stats.Mints++
				mints = append(mints, mintJob{name, a.Creds, a.Why})
			case Connect:
				if err := m.connectLocked(ts, a.Creds, now); err != nil {
					// A room just left may still be closing: next pass.
					m.lg.Debug().Str("topic", name).Err(err).Msg("joining the room failed; retrying")
				}
			case Drop:
				if l := ts.links[a.Room]; l != nil && l.state == Connecting && a.Room == ts.current {
					ts.stats.Sweeps++
				}
				m.dropLocked(ts, a.Room, a.Why)
			}
		}
		if now.Before(ts.refillUntil) && !ts.refilling && !ts.catching && ts.inbox.holding() {
			if l := ts.links[ts.current]; l != nil {
				m.startCatchUp(ts, l, r, now, true)
			}
		}
		d, gaps := ts.inbox.expire(now)
		m.deliverLocked(ts, d, gaps, false)
		if !ts.open && len(ts.links) == 0 && len(ts.subs) == 0 {
			m.retired.add(ts.stats)
			delete(m.topics, name)
		}
	}
	m.mu.Unlock()
	for _, j := range mints {
		if err := m.writeCreds(j.topic, j.c, j.why); err != nil {
			m.lg.Warn().Str("topic", j.topic).Err(err).Msg("writing minted credentials failed")
		}
	}
}

// peerPresent: another peer holds an unexpired lease and is alive.
func (m *Manager) peerPresent(r crdt.Room, now time.Time) bool {
	for p, exp := range r.Presence {
		if exp <= now.UnixMilli() || p == m.cfg.Self.String() {
			continue
		}
		if id, err := peer.Decode(p); err == nil && m.cfg.Alive(id) {
			return true
		}
	}
	return false
}

func (m *Manager) connectLocked(ts *topicState, c Creds, now time.Time) error {
	if m.ctx == nil {
		return errors.New("room: manager not running")
	}
	if _, ok := ts.links[c.ID]; ok {
		return nil
	}
	name := m.cfg.TopicName(c.ID)
	s := newSealer(c)
	err := m.cfg.PubSub.RegisterTopicValidator(name, func(_ context.Context, _ peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
		if _, err := s.open(msg.Data); err != nil {
			return pubsub.ValidationReject
		}
		return pubsub.ValidationAccept
	})
	if err != nil {
		return err
	}
	t, err := m.cfg.PubSub.Join(name)
	if err != nil {
		_ = m.cfg.PubSub.UnregisterTopicValidator(name)
		return err
	}
	sub, err := t.Subscribe()
	if err != nil {
		_ = t.Close()
		_ = m.cfg.PubSub.UnregisterTopicValidator(name)
		return err
	}
	peers, err := t.EventHandler()
	if err != nil {
		sub.Cancel()
		_ = t.Close()
		_ = m.cfg.PubSub.UnregisterTopicValidator(name)
		return err
	}
	ctx, cancel := context.WithCancel(m.ctx)
	l := &link{name: name, creds: c, sealer: s, topic: t, sub: sub, peers: peers, state: Connecting, since: now, cancel: cancel, done: make(chan struct{}), peersDone: make(chan struct{})}
	if len(ts.links) == 0 && ts.open && m.cfg.Host != nil && len(ts.recent) == 0 {
		// A join, not a migration: take history once connected, and
		// hold live messages until then.
		ts.needHistory, ts.catching = true, true
	}
	ts.links[c.ID] = l
	ts.current = c.ID
	m.emitLocked(ts, Event{Type: "joining", Room: c.ID.String()})
	m.wg.Add(2)
	go func() {
		defer m.wg.Done()
		m.receive(ctx, ts, l)
	}()
	go func() {
		// A participant appearing in the room's topic is what a
		// connecting link waits for: reconcile at once, not at the tick.
		defer m.wg.Done()
		defer close(l.peersDone)
		for {
			if _, err := peers.NextPeerEvent(ctx); err != nil {
				return
			}
			m.poke()
		}
	}()
	m.lg.Debug().Str("topic", ts.name).Str("room", c.ID.String()).Msg("joining room")
	return nil
}

// dropLocked leaves one room. Its receive goroutine stops, and the topic
// is closed behind it by a goroutine Run waits for: the receiver may be
// waiting for m.mu, which the caller holds.
func (m *Manager) dropLocked(ts *topicState, id ID, why string) {
	l := ts.links[id]
	if l == nil {
		return
	}
	delete(ts.links, id)
	l.cancel()
	l.sub.Cancel()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		<-l.done
		<-l.peersDone
		l.peers.Cancel()
		// Cancel is processed by pubsub's loop: Close fails until it is.
		for i := 0; l.topic.Close() != nil && i < 100; i++ {
			time.Sleep(10 * time.Millisecond)
		}
		_ = m.cfg.PubSub.UnregisterTopicValidator(l.name)
	}()
	m.emitLocked(ts, Event{Type: "dropped", Room: id.String(), Why: why})
	m.cfg.OnEvent("room.dropped", map[string]any{"topic": ts.name, "room": id.String(), "why": why})
	m.lg.Debug().Str("topic", ts.name).Str("room", id.String()).Str("why", why).Msg("left room")
}

func (m *Manager) receive(ctx context.Context, ts *topicState, l *link) {
	defer close(l.done)
	for {
		msg, err := l.sub.Next(ctx)
		if err != nil {
			return
		}
		mm, err := l.sealer.open(msg.Data)
		if err == nil {
			mm.signed, err = msg.Message.Marshal()
		}
		m.mu.Lock()
		if ctx.Err() != nil {
			m.mu.Unlock()
			return
		}
		switch {
		case msg.GetFrom() == m.cfg.Self:
			// Our own, delivered locally when sent: keep its signed form
			// for the history we serve.
			if err == nil {
				m.attachSigned(ts, mm)
			}
		case err != nil:
			ts.stats.Rejected++
		case mm.Sender != msg.GetFrom():
			ts.stats.Rejected++
			m.lg.Warn().Str("topic", ts.name).Str("from", msg.GetFrom().String()).Str("claimed", mm.Sender.String()).Msg("room message with a forged sender dropped")
		case ts.catching && len(ts.pending) < maxPending:
			ts.pending = append(ts.pending, mm)
		default:
			m.addLocked(ts, mm, false)
		}
		m.mu.Unlock()
	}
}

func (m *Manager) addLocked(ts *topicState, mm Message, history bool) {
	d, gaps, dup := ts.inbox.add(mm, m.cfg.Now())
	if dup {
		ts.stats.Dups++
	}
	m.deliverLocked(ts, d, gaps, history)
	if ts.inbox.settling() && m.settleTimer == nil {
		// A reconcile pass after the settle period delivers them.
		m.settleTimer = time.AfterFunc(settleFor, func() {
			m.mu.Lock()
			m.settleTimer = nil
			m.mu.Unlock()
			m.poke()
		})
	}
}

func (m *Manager) deliverLocked(ts *topicState, d []Message, gaps []Gap, history bool) {
	for i := range gaps {
		ts.stats.Gaps++
		g := gaps[i]
		m.emitLocked(ts, Event{Type: "gap", Gap: &g})
		m.cfg.OnEvent("room.gap", map[string]any{"topic": ts.name, "sender": g.Sender.String(), "from": g.From, "to": g.To})
	}
	for i := range d {
		ts.stats.Received++
		m.remember(ts, d[i])
		msg := d[i]
		m.emitLocked(ts, Event{Type: "message", Message: &msg, History: history})
	}
}

// attachSigned gives our own remembered message its signed form.
func (m *Manager) attachSigned(ts *topicState, mm Message) {
	for i := len(ts.recent) - 1; i >= 0; i-- {
		r := &ts.recent[i]
		if r.Sender == mm.Sender && r.Epoch == mm.Epoch && r.Seq == mm.Seq {
			r.signed = mm.signed
			return
		}
	}
}

func (m *Manager) remember(ts *topicState, msg Message) {
	ts.recent = append(ts.recent, msg)
	if over := len(ts.recent) - m.cfg.History; over > 0 {
		ts.recent = append(ts.recent[:0], ts.recent[over:]...)
	}
}

func (m *Manager) emitLocked(ts *topicState, ev Event) {
	ev.Topic = ts.name
	for _, ch := range ts.subs {
		select {
		case ch <- ev:
		default:
			ts.stats.Lagged++
		}
	}
}

// Send seals a message and publishes it to the topic's current room. It
// is also delivered to this node's own subscribers.
func (m *Manager) Send(ctx context.Context, topic, typ string, payload []byte) (Message, error) {
	if err := checkSize(typ, payload); err != nil {
		return Message{}, err
	}
	m.mu.Lock()
	ts := m.topics[topic]
	if ts == nil || !ts.open {
		m.mu.Unlock()
		return Message{}, fmt.Errorf("%w: %s (join it first)", ErrNotJoined, topic)
	}
	l := ts.links[ts.current]
	if l == nil || l.state != Connected {
		m.mu.Unlock()
		return Message{}, fmt.Errorf("%w: %s", ErrNotConnected, topic)
	}
	ts.seq++
	msg := Message{Sender: m.cfg.Self, Epoch: ts.epoch, Seq: ts.seq, Type: typ, Payload: payload}
	b, err := l.sealer.seal(msg)
	if err != nil {
		ts.seq--
		m.mu.Unlock()
		return Message{}, err
	}
	ts.stats.Sent++
	m.remember(ts, msg)
	m.emitLocked(ts, Event{Type: "message", Message: &msg})
	t := l.topic
	m.mu.Unlock()
	if err := t.Publish(ctx, b); err != nil {
		return msg, fmt.Errorf("room: publish: %w", err)
	}
	return msg, nil
}

// Subscribe returns a channel of the topic's events on this node, and a
// function that ends the subscription. Events beyond buffer while the
// reader is slow are dropped and counted (Lagged).
func (m *Manager) Subscribe(topic string, buffer int) (<-chan Event, func(), error) {
	if err := ValidTopic(topic); err != nil {
		return nil, nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	ts := m.topicLocked(topic)
	id := ts.nextSub
	ts.nextSub++
	ch := make(chan Event, buffer)
	ts.subs[id] = ch
	return ch, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		delete(ts.subs, id)
	}, nil
}

// PublishSealed publishes bytes already sealed for the topic's current
// room, as they are: a relay of a captured message, which receivers judge
// like any other (a test uses it to replay one).
func (m *Manager) PublishSealed(ctx context.Context, topic string, b []byte) error {
	m.mu.Lock()
	ts := m.topics[topic]
	var t *pubsub.Topic
	if ts != nil {
		if l := ts.links[ts.current]; l != nil {
			t = l.topic
		}
	}
	m.mu.Unlock()
	if t == nil {
		return fmt.Errorf("%w: %s", ErrNotConnected, topic)
	}
	return t.Publish(ctx, b)
}
