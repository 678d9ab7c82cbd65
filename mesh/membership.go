package mesh

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/crdt"
)

// ProtocolVersion is written to the node record and bumped on any
// incompatible wire change. 2: holder entries carry a version's
// generation, parent and next version, and the transfer protocol answers
// "elsewhere" (6); a node of version 1 refuses both, so nodes write them
// only while every live node's record says 2 or more (LineageVersion).
const ProtocolVersion = 2

// LineageVersion is the first protocol version that reads version
// lineage in holder entries (transfer/versions.go).
const LineageVersion = 2

// Member states.
const (
	StateAlive = "alive" // heartbeats are fresh
	StateStale = "stale" // no fresh heartbeat: authoritative
	StateLeft  = "left"  // said Goodbye (a hint; a new heartbeat revives it)
)

// MembershipConfig configures Membership.
type MembershipConfig struct {
	Host   host.Host
	PubSub *pubsub.PubSub
	Fleet  *Fleet
	Auth   *Auth
	Doc    *crdt.Doc
	Logger zerolog.Logger
	Name   string
	Roles  []string
	// Interval between heartbeats. Default 5 s.
	Interval time.Duration
	// StaleAfter: a peer with no heartbeat for this long is stale.
	// Default 4 x Interval.
	StaleAfter time.Duration
	// LastSeenEvery is how often this node refreshes last_seen_ms in its
	// document record: coarse on purpose, each refresh is a document
	// change. Default 10 min.
	LastSeenEvery time.Duration
	// ForgetAfter: a peer not heard for this long is forgotten (Members
	// no longer lists it), so peers that leave for good do not pile up.
	// Default 1 h or 4 x LastSeenEvery, whichever is longer: longer than
	// a silent peer's record can look fresh to the mesh manager (whose
	// window the node sets to 3 x LastSeenEvery). At least StaleAfter.
	ForgetAfter time.Duration
	// MaxMembers bounds the peers tracked; past it, those heard longest
	// ago are forgotten. Default 16,384.
	MaxMembers int
	// OnHeadsUnknown is called with a peer whose heartbeat shows document
	// heads we lack. Must not block.
	OnHeadsUnknown func(peer.ID)
	// OnEvent receives membership transitions. Must not block.
	OnEvent func(MemberEvent)
	// Now is the clock; default time.Now.
	Now func() time.Time
	// RelayAddrs returns this node's relayed addresses, published after
	// its listener addresses. Optional.
	RelayAddrs func() []string
}

// MemberEvent is a membership transition of one peer.
type MemberEvent struct {
	Peer  peer.ID
	Name  string
	State string // StateAlive, StateStale or StateLeft
}

// Member is what heartbeats tell about a peer.
type Member struct {
	Peer      peer.ID
	Name      string
	Addrs     []string
	LastHeard time.Time
	State     string
}

// Membership publishes this node's heartbeats and record, and tracks which
// peers are alive from theirs.
type Membership struct {
	cfg       MembershipConfig
	lg        zerolog.Logger
	topicName string
	started   time.Time
	seq       atomic.Uint64
	rejected  atomic.Uint64
	topic     atomic.Pointer[pubsub.Topic]

	// announce asks Run for a heartbeat now (buffer 1: requests coalesce).
	announce chan struct{}

	mu       sync.Mutex
	members  map[peer.ID]*Member
	lastSeen time.Time
}

// NewMembership returns Membership; Run starts it.
func NewMembership(cfg MembershipConfig) *Membership {
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.StaleAfter <= 0 {
		cfg.StaleAfter = 4 * cfg.Interval
	}
	if cfg.LastSeenEvery <= 0 {
		cfg.LastSeenEvery = 10 * time.Minute
	}
	if cfg.ForgetAfter <= 0 {
		cfg.ForgetAfter = max(time.Hour, 4*cfg.LastSeenEvery)
	}
	cfg.ForgetAfter = max(cfg.ForgetAfter, cfg.StaleAfter)
	if cfg.MaxMembers <= 0 {
		cfg.MaxMembers = 16384
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.OnHeadsUnknown == nil {
		cfg.OnHeadsUnknown = func(peer.ID) {}
	}
	if cfg.OnEvent == nil {
		cfg.OnEvent = func(MemberEvent) {}
	}
	if cfg.RelayAddrs == nil {
		cfg.RelayAddrs = func() []string { return nil }
	}
	return &Membership{
		cfg:       cfg,
		lg:        cfg.Logger.With().Str("component", "membership").Logger(),
		topicName: cfg.Fleet.Topic("hb/1"),
		started:   cfg.Now(),
		members:   map[peer.ID]*Member{},
		announce:  make(chan struct{}, 1),
	}
}

// PeerUp records that p just proved fleet membership (authentication is
// as fresh a sign of life as a heartbeat): p is alive from now, and this
// node announces itself so that p hears it without waiting for a tick.
func (m *Membership) PeerUp(p peer.ID) {
	now := m.cfg.Now()
	m.mu.Lock()
	mem, ok := m.members[p]
	if !ok {
		mem = &Member{Peer: p}
		m.members[p] = mem
	}
	changed := mem.State != StateAlive
	mem.LastHeard, mem.State = now, StateAlive
	name := mem.Name
	m.mu.Unlock()
	if changed {
		m.cfg.OnEvent(MemberEvent{Peer: p, Name: name, State: StateAlive})
	}
	m.Announce()
}

// Announce asks for a heartbeat now rather than at the next tick, so a
// peer that just joined hears this node at once. Requests coalesce; it
// does not block.
func (m *Membership) Announce() {
	select {
	case m.announce <- struct{}{}:
	default:
	}
}

// Run heartbeats until ctx ends. Call Leave first for a clean Goodbye.
func (m *Membership) Run(ctx context.Context) error {
	topic, sub, leave, err := joinTopic(m.cfg.PubSub, m.topicName, m.validate)
	if err != nil {
		return err
	}
	defer leave()
	m.topic.Store(topic)
	defer m.topic.Store(nil)

	if err := m.EnsureRecord(true); err != nil {
		return err
	}
	// A peer whose subscription to the topic arrives can receive our
	// heartbeats from now on: send one rather than leave it seeing this
	// node as stale until the next tick.
	joins, err := topic.EventHandler()
	if err != nil {
		return fmt.Errorf("mesh: heartbeat topic events: %w", err)
	}
	defer joins.Cancel()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); m.receiveLoop(ctx, sub) }()
	go func() {
		defer wg.Done()
		for {
			ev, err := joins.NextPeerEvent(ctx)
			if err != nil {
				return
			}
			if ev.Type == pubsub.PeerJoin {
				m.Announce()
			}
		}
	}()
	defer wg.Wait()

	t := time.NewTicker(m.cfg.Interval)
	defer t.Stop()
	m.publish(ctx, false)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-m.announce:
			m.publish(ctx, false)
		case <-t.C:
			m.publish(ctx, false)
			m.sweep()
			if err := m.EnsureRecord(true); err != nil {
				m.lg.Warn().Err(err).Msg("refreshing own node record failed")
			}
		}
	}
}

// Leave is the Goodbye: it marks this node's record alive=false (on disk
// before it returns) and publishes a leaving heartbeat.
func (m *Membership) Leave(ctx context.Context) error {
	err := m.EnsureRecord(false)
	m.publish(ctx, true)
	return err
}

// listenAddrs returns this node's listener addresses (interface addresses
// of its listeners, never ephemeral source ports), loopback last, then
// its relayed addresses.
func (m *Membership) listenAddrs() []string {
	var out, loop []string
	for _, a := range m.cfg.Host.Addrs() {
		if isCircuit(a) {
			continue // ours come from RelayAddrs, in a stable order
		}
		if manet.IsIPLoopback(a) {
			loop = append(loop, a.String())
		} else {
			out = append(out, a.String())
		}
	}
	sort.Strings(out)
	sort.Strings(loop)
	out = append(out, loop...)
	return append(out, m.cfg.RelayAddrs()...)
}

// EnsureRecord makes this node's document record say what it should,
// writing only the fields that differ. Besides start-up and Goodbye, it
// runs every heartbeat: after a snapshot merge or a partition heal an
// older record of ours may have won, and rewriting it now makes our write
// causally later so it wins everywhere.
func (m *Membership) EnsureRecord(alive bool) error {
	now := m.cfg.Now()
	self := m.cfg.Host.ID().String()
	cur, exists, _ := m.cfg.Doc.Node(self)
	want := crdt.NodeRecord{
		Name:      m.cfg.Name,
		Addrs:     m.listenAddrs(),
		Version:   ProtocolVersion,
		Roles:     append([]string{}, m.cfg.Roles...),
		StartedMs: m.started.UnixMilli(),
		Alive:     alive,
	}
	m.mu.Lock()
	refresh := !exists || cur.LastSeenMs == 0 || now.Sub(m.lastSeen) >= m.cfg.LastSeenEvery || !alive
	if refresh {
		want.LastSeenMs = now.UnixMilli()
	} else {
		want.LastSeenMs = cur.LastSeenMs
	}
	m.mu.Unlock()
	if exists && cur.Name == want.Name && slices.Equal(cur.Addrs, want.Addrs) && cur.Version == want.Version &&
		slices.Equal(cur.Roles, want.Roles) && cur.StartedMs == want.StartedMs && cur.Alive == want.Alive &&
		cur.LastSeenMs == want.LastSeenMs {
		return nil
	}
	if _, err := m.cfg.Doc.Update("node record", func(tx *crdt.Tx) error {
		tx.SetNode(self, want)
		return nil
	}); err != nil {
		return fmt.Errorf("mesh: write own node record: %w", err)
	}
	if refresh {
		m.mu.Lock()
		m.lastSeen = now
		m.mu.Unlock()
	}
	return nil
}

func (m *Membership) publish(ctx context.Context, leaving bool) {
	topic := m.topic.Load()
	if topic == nil {
		return
	}
	hb := Heartbeat{
		Peer:    m.cfg.Host.ID().String(),
		Name:    m.cfg.Name,
		Addrs:   m.listenAddrs(),
		Heads:   m.cfg.Doc.HeadStrings(),
		Seq:     m.seq.Add(1),
		SentMs:  m.cfg.Now().UnixMilli(),
		Leaving: leaving,
	}
	if len(hb.Addrs) > maxHBAddrs {
		hb.Addrs = hb.Addrs[:maxHBAddrs]
	}
	if len(hb.Heads) > maxHashes {
		hb.Heads = hb.Heads[:maxHashes]
	}
	b, _ := json.Marshal(hb)
	if err := topic.Publish(ctx, m.cfg.Fleet.Seal(b, m.topicName)); err != nil && ctx.Err() == nil {
		m.lg.Debug().Err(err).Msg("publish heartbeat failed")
	}
}

func (m *Membership) validate(_ context.Context, from peer.ID, msg *pubsub.Message) pubsub.ValidationResult {
	return validateFrom(m.cfg.Auth.IsAuthenticated, m.cfg.Fleet, m.cfg.Host.ID(), from, msg, m.topicName, &m.rejected)
}

func (m *Membership) receiveLoop(ctx context.Context, sub *pubsub.Subscription) {
	self := m.cfg.Host.ID()
	for {
		msg, err := sub.Next(ctx)
		if err != nil {
			return
		}
		if msg.GetFrom() == self {
			continue
		}
		plain, _ := msg.ValidatorData.([]byte)
		hb, heads, err := decodeHeartbeat(plain)
		if err != nil || hb.Peer != msg.GetFrom().String() {
			m.rejected.Add(1)
			m.lg.Warn().Str("peer", msg.GetFrom().String()).Err(err).Msg("malformed heartbeat")
			continue
		}
		m.heard(msg.GetFrom(), hb)
		if !hb.Leaving && !m.cfg.Doc.HasAll(heads) {
			if m.cfg.Auth.IsAuthenticated(msg.GetFrom()) {
				m.cfg.OnHeadsUnknown(msg.GetFrom())
			} else {
				m.cfg.OnHeadsUnknown(msg.ReceivedFrom)
			}
		}
	}
}

func (m *Membership) heard(p peer.ID, hb Heartbeat) {
	state := StateAlive
	if hb.Leaving {
		state = StateLeft
	}
	m.cfg.Auth.vouch(p)
	now := m.cfg.Now()
	m.mu.Lock()
	mem, ok := m.members[p]
	if !ok {
		if len(m.members) >= m.cfg.MaxMembers {
			m.forgetLocked(now)
			prune(m.members, m.cfg.MaxMembers*3/4, func(a, b *Member) int { return a.LastHeard.Compare(b.LastHeard) })
		}
		mem = &Member{Peer: p}
		m.members[p] = mem
	}
	changed := mem.State != state
	mem.Name, mem.Addrs, mem.LastHeard, mem.State = hb.Name, hb.Addrs, now, state
	m.mu.Unlock()
	if changed {
		m.lg.Info().Str("peer", p.String()).Str("name", hb.Name).Str("state", state).Msg("member state changed")
		m.cfg.OnEvent(MemberEvent{Peer: p, Name: hb.Name, State: state})
	}
}

func (m *Membership) sweep() {
	now := m.cfg.Now()
	var evs []MemberEvent
	m.mu.Lock()
	for p, mem := range m.members {
		if mem.State == StateAlive && now.Sub(mem.LastHeard) > m.cfg.StaleAfter {
			mem.State = StateStale
			evs = append(evs, MemberEvent{Peer: p, Name: mem.Name, State: StateStale})
		}
	}
	m.forgetLocked(now)
	m.mu.Unlock()
	for _, ev := range evs {
		m.lg.Info().Str("peer", ev.Peer.String()).Str("name", ev.Name).Msg("member stale")
		m.cfg.OnEvent(ev)
	}
}

// forgetLocked drops peers not heard for ForgetAfter. Call with m.mu held.
func (m *Membership) forgetLocked(now time.Time) {
	for p, mem := range m.members {
		if now.Sub(mem.LastHeard) > m.cfg.ForgetAfter {
			delete(m.members, p)
		}
	}
}

// HeartbeatsSent returns how many heartbeats this node has published.
func (m *Membership) HeartbeatsSent() uint64 { return m.seq.Load() }

// Members returns what heartbeats told about every peer heard from within
// ForgetAfter, with states current as of now.
func (m *Membership) Members() map[peer.ID]Member {
	now := m.cfg.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[peer.ID]Member, len(m.members))
	for p, mem := range m.members {
		c := *mem
		if c.State == StateAlive && now.Sub(c.LastHeard) > m.cfg.StaleAfter {
			c.State = StateStale
		}
		out[p] = c
	}
	return out
}

// Stale reports whether p was heard from but its heartbeats stopped
// (stale) or it said goodbye (left). A peer not heard from yet is not
// stale: it may have just connected.
func (m *Membership) Stale(p peer.ID) bool {
	now := m.cfg.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	mem, ok := m.members[p]
	if !ok {
		return false
	}
	return mem.State != StateAlive || now.Sub(mem.LastHeard) > m.cfg.StaleAfter
}

// ParseAddrs parses multiaddr strings, skipping ones that do not parse.
func ParseAddrs(ss []string) []ma.Multiaddr {
	var out []ma.Multiaddr
	for _, s := range ss {
		if a, err := ma.NewMultiaddr(s); err == nil {
			out = append(out, a)
		}
	}
	return out
}
