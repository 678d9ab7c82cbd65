package room

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/crdt"
)

// Errors of the manager's API.
var (
	ErrNotJoined    = errors.New("room: topic not joined here")
	ErrNotConnected = errors.New("room: not connected to the topic's room yet")
	ErrBadTopic     = errors.New("room: bad topic")
	ErrStopped      = errors.New("room: manager stopped")
)

// Config configures a Manager.
type Config struct {
	Self   peer.ID
	Doc    *crdt.Doc
	PubSub *pubsub.PubSub
	// TopicName returns the pubsub topic of a room (scoped to the fleet).
	TopicName func(ID) string
	// Alive reports whether a peer's heartbeats are fresh. A lease of a
	// peer that is not alive does not count: it died, or left. Called off
	// the manager's loop, from any goroutine.
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
	// GapWait: a message after a gap is held at least this long for the
	// gap to fill. Default 2 s. With a Host, a gap still open after
	// RefillAfter is asked of the participants (history), and reported
	// only once that answer is in and GapWait has passed.
	GapWait time.Duration
	// RefillAfter is how long a gap may stay open before it is asked of
	// the participants: GossipSub delivers out of order, so most gaps
	// close by themselves within milliseconds. Default 250 ms (at most
	// GapWait/2).
	RefillAfter time.Duration
	// History is how many recent messages each topic keeps for late
	// joiners and refills. Default 256.
	History int
	// Host and HistoryProtocol let a late joiner fetch recent messages
	// from a participant, and any node refill a gap (HandleHistory serves
	// them). Without a Host, joiners start with live messages only and
	// gaps are reported after GapWait.
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
	if c.RefillAfter <= 0 {
		c.RefillAfter = 250 * time.Millisecond
	}
	c.RefillAfter = min(c.RefillAfter, c.GapWait/2)
	if c.History <= 0 {
		c.History = 256
	}
}

// Manager keeps this node in the rooms of the topics it has open: it
// writes presence leases, runs Reconcile per topic and carries out its
// actions, and moves sealed messages between the room and local
// subscribers.
//
// One goroutine, Run's loop (loop.go), owns every topic's state (core)
// and the subscribers; the API methods hand it calls over a channel and
// wait for the answer, so they block while Run has not started yet and
// return ErrStopped once it has ended. Pubsub, the network and document
// writes happen on other goroutines, never on the loop and never under a
// lock.
type Manager struct {
	cfg  Config
	lg   zerolog.Logger
	core *core
	// subs are the topics' local subscribers; only the loop touches them.
	subs    map[string]map[int]chan Event
	nextSub int
	// conns are the pubsub side of the core's links, by link generation;
	// only the loop touches them.
	conns map[uint64]*conn

	calls   chan func() // run on the loop, in order
	running atomic.Bool
	stopped chan struct{} // closed once Run ended with its context
	stop    sync.Once
	final   atomic.Pointer[totals] // Totals after stopping
}

// TopicStats counts a topic's traffic on this node.
type TopicStats struct {
	Sent     uint64 `json:"sent"`
	Received uint64 `json:"received"`
	Dups     uint64 `json:"duplicates"`
	Gaps     uint64 `json:"gaps"`
	Refills  uint64 `json:"refills"` // messages recovered from a participant's history after a gap
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
	s.Refills += o.Refills
	s.Rejected += o.Rejected
	s.Lagged += o.Lagged
	s.Sweeps += o.Sweeps
	s.Mints += o.Mints
	s.Renewals += o.Renewals
}

type totals struct {
	stats       TopicStats
	open, links int
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
	lg := cfg.Logger.With().Str("component", "rooms").Logger()
	return &Manager{cfg: cfg, lg: lg, core: newCore(&cfg, lg), subs: map[string]map[int]chan Event{}, conns: map[uint64]*conn{},
		calls: make(chan func()), stopped: make(chan struct{})}
}

// ValidTopic accepts a topic name: a document key of at most 128 bytes
// without '/' or control characters.
func ValidTopic(t string) error {
	if t == "" || len(t) > 128 {
		return fmt.Errorf("%w: %q is empty or longer than 128 bytes", ErrBadTopic, t)
	}
	if !utf8.ValidString(t) || t == "." || t == ".." {
		return fmt.Errorf("%w: %q is not valid UTF-8, or is a dot path", ErrBadTopic, t)
	}
	for _, r := range t {
		if r < 0x20 || r == 0x7f || r == '/' {
			return fmt.Errorf("%w: %q contains '/' or a control character", ErrBadTopic, t)
		}
	}
	return nil
}

// errCallFailed: the loop panicked running a call (the supervisor runs
// it again).
var errCallFailed = errors.New("room: the manager failed during the call")

// do runs fn on the loop and waits for it: fn may read and change the
// core and the subscribers, and must not block.
func (m *Manager) do(fn func()) error {
	done := make(chan bool, 1)
	call := func() {
		ok := false
		defer func() { done <- ok }()
		fn()
		ok = true
	}
	select {
	case m.calls <- call:
	case <-m.stopped:
		return ErrStopped
	}
	if !<-done { // the loop runs every call it takes before it takes another
		return errCallFailed
	}
	return nil
}

// Totals returns the counters of every topic since start, and how many
// topics are open here and how many rooms this node is linked to.
func (m *Manager) Totals() (t TopicStats, open, links int) {
	var tt totals
	if err := m.do(func() { tt = m.core.totals() }); err != nil {
		if f := m.final.Load(); f != nil {
			tt = *f
		}
	}
	return tt.stats, tt.open, tt.links
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
	var done <-chan error
	if err := m.do(func() { done = m.core.open(topic, hold, m.cfg.Now()) }); err != nil {
		return err
	}
	return m.await(done)
}

// await waits for a document write the loop queued.
func (m *Manager) await(done <-chan error) error {
	select {
	case err := <-done:
		return err
	case <-m.stopped:
		return ErrStopped
	}
}

// Leave closes a topic here: the lease is withdrawn and the room left.
func (m *Manager) Leave(topic string) error {
	if err := ValidTopic(topic); err != nil {
		return err
	}
	var done <-chan error
	var err error
	if derr := m.do(func() { done, err = m.core.close(topic) }); derr != nil {
		return derr
	}
	if err != nil {
		return err
	}
	return m.await(done)
}

// Rotate mints new credentials for an open topic; every participant
// migrates to the new room.
func (m *Manager) Rotate(topic string) (Creds, error) {
	var c Creds
	var done <-chan error
	var err error
	if derr := m.do(func() { c, done, err = m.core.rotate(topic, m.cfg.Now()) }); derr != nil {
		return Creds{}, derr
	}
	if err != nil {
		return Creds{}, err
	}
	if err := m.await(done); err != nil {
		return Creds{}, err
	}
	return c, nil
}

// Send seals a message and publishes it to the topic's current room. It
// is also delivered to this node's own subscribers.
func (m *Manager) Send(ctx context.Context, topic, typ string, payload []byte) (Message, error) {
	if err := checkSize(typ, payload); err != nil {
		return Message{}, err
	}
	var msg Message
	var sealed []byte
	var t *pubsub.Topic
	var err error
	if derr := m.do(func() {
		var gen uint64
		if msg, sealed, gen, err = m.core.send(topic, typ, payload, m.cfg.Now()); err == nil {
			t = m.conns[gen].pt
		}
	}); derr != nil {
		return Message{}, derr
	}
	if err != nil {
		return Message{}, err
	}
	if err := t.Publish(ctx, sealed); err != nil {
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
	ch := make(chan Event, buffer)
	var id int
	if err := m.do(func() {
		m.core.follow(topic, 1)
		id = m.nextSub
		m.nextSub++
		if m.subs[topic] == nil {
			m.subs[topic] = map[int]chan Event{}
		}
		m.subs[topic][id] = ch
	}); err != nil {
		return nil, nil, err
	}
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			_ = m.do(func() {
				delete(m.subs[topic], id)
				if len(m.subs[topic]) == 0 {
					delete(m.subs, topic)
				}
				m.core.follow(topic, -1)
			})
		})
	}, nil
}

// PublishSealed publishes bytes already sealed for the topic's current
// room, as they are: a relay of a captured message, which receivers judge
// like any other (a test uses it to replay one).
func (m *Manager) PublishSealed(ctx context.Context, topic string, b []byte) error {
	var t *pubsub.Topic
	if err := m.do(func() {
		if gen, ok := m.core.currentLink(topic); ok {
			t = m.conns[gen].pt
		}
	}); err != nil {
		return err
	}
	if t == nil {
		return fmt.Errorf("%w: %s", ErrNotConnected, topic)
	}
	return t.Publish(ctx, b)
}
