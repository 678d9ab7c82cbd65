package mesh

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/crdt"
)

// protectTag marks supplementary connections for the connection manager.
const protectTag = "meshnode-mesh"

// ManagerConfig configures a Manager.
type ManagerConfig struct {
	Host   host.Host
	Doc    *crdt.Doc
	Logger zerolog.Logger
	// Max is the cap on supplementary connections; 0 disables the manager.
	Max int
	// Interval between reconcile passes. Default 30 s.
	Interval time.Duration
	// Debounce: a pass runs this long after the node list changes.
	// Default 1 s.
	Debounce time.Duration
	// Fresh: a node's last_seen_ms must be this recent. Default 30 min
	// (three refreshes at the default --last-seen-every).
	Fresh time.Duration
	// Rendezvous peers are never chosen for supplementary connections.
	Rendezvous []peer.ID
	// Silent returns the peers membership heard whose heartbeats have since
	// stopped; called once per pass. Must not block. Optional.
	Silent func() map[peer.ID]bool
	// OnOpened is called once a supplementary connection is up, to start
	// anti-entropy over it. Must not block. Optional.
	OnOpened func(peer.ID)
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// MeshSlot is one supplementary connection, as shown by Status.
type MeshSlot struct {
	Peer   string  `json:"peer"`
	AgeSec float64 `json:"age_sec"`
	// Relayed is true while the connection goes through a relay.
	Relayed bool `json:"relayed,omitempty"`
}

// MeshEvent records a drop or skip with its reason.
type MeshEvent struct {
	Peer   string    `json:"peer"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// MeshStatus is what GET /v1/mesh shows.
type MeshStatus struct {
	Cap           int               `json:"cap"`
	Eligible      []string          `json:"eligible"`
	Slots         []MeshSlot        `json:"slots"`
	Skipped       map[string]string `json:"skipped"`
	RecentDrops   []MeshEvent       `json:"recent_drops"`
	LastReconcile time.Time         `json:"last_reconcile"`
	Passes        uint64            `json:"passes"`
	Opened        uint64            `json:"opened_total"`
	Dropped       uint64            `json:"dropped_total"`
	MaxSlotsSeen  int               `json:"max_slots_seen"`
	// RelayedPeers are connected only through a relay.
	RelayedPeers []string `json:"relayed_peers"`
	// Upgrades counts relayed connections replaced by direct ones.
	Upgrades uint64 `json:"relay_upgrades_total"`
	// Relays is this node's reservation on each --relay (set by the node).
	Relays []RelayState `json:"relays"`
}

// Manager keeps up to Max supplementary connections to alive peers from
// the document's node list, so that the fleet stays one connected graph
// whichever single node (a rendezvous included) fails. Decisions come
// from Reconcile; the Manager only dials, closes and keeps the books.
type Manager struct {
	cfg  ManagerConfig
	lg   zerolog.Logger
	kick chan struct{}
	rv   map[peer.ID]bool
	// ids keeps the peer IDs decoded by the last pass, by their string
	// form: decoding 10,000 IDs cost half of a pass. Used only by input,
	// which only the pass calls.
	ids map[string]peer.ID

	mu      sync.Mutex
	slots   map[peer.ID]time.Time // when each supplementary connection opened
	pending map[peer.ID]bool      // slots still dialling
	// own are the connections this manager dialled for its slots. A slot
	// to a peer already connected (it dialled us, or discovery did) has
	// none: a drop leaves that connection to its owner and to the
	// connection manager.
	own    map[peer.ID][]network.Conn
	failed map[peer.ID]dialFailure
	// direct dials of peers reached only through a relay: in flight, and
	// when the last one failed.
	upgrading     map[peer.ID]bool
	upgradeFailed map[peer.ID]time.Time
	last          Plan
	lastAt        time.Time
	drops         []MeshEvent
	maxSeen       int
	dialing       sync.WaitGroup
	passes        atomic.Uint64
	opened        atomic.Uint64
	dropped       atomic.Uint64
	upgrades      atomic.Uint64
}

// NewManager returns a Manager; Run starts it.
func NewManager(cfg ManagerConfig) *Manager {
	if cfg.Interval <= 0 {
		cfg.Interval = 30 * time.Second
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = time.Second
	}
	if cfg.Fresh <= 0 {
		cfg.Fresh = 30 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Silent == nil {
		cfg.Silent = func() map[peer.ID]bool { return nil }
	}
	if cfg.OnOpened == nil {
		cfg.OnOpened = func(peer.ID) {}
	}
	m := &Manager{
		cfg: cfg, lg: cfg.Logger.With().Str("component", "mesh").Logger(),
		kick: make(chan struct{}, 1), rv: map[peer.ID]bool{},
		slots: map[peer.ID]time.Time{}, pending: map[peer.ID]bool{}, own: map[peer.ID][]network.Conn{}, failed: map[peer.ID]dialFailure{},
		upgrading: map[peer.ID]bool{}, upgradeFailed: map[peer.ID]time.Time{},
	}
	for _, p := range cfg.Rendezvous {
		m.rv[p] = true
	}
	return m
}

// Run reconciles every Interval and soon after the node list changes,
// until ctx ends; then it waits for its dials.
func (m *Manager) Run(ctx context.Context) error {
	if m.cfg.Max <= 0 {
		m.lg.Info().Msg("supplementary mesh connections disabled (--max-mesh-peers=0)")
		<-ctx.Done()
		return nil
	}
	stop := m.cfg.Doc.Watch(func(crdt.Event) {
		select {
		case m.kick <- struct{}{}:
		default:
		}
	})
	defer stop()
	// A direct connection to a peer reached through a relay lets the
	// next pass close the relayed one.
	nb := &network.NotifyBundle{ConnectedF: func(_ network.Network, c network.Conn) {
		if !IsRelayed(c) && len(m.cfg.Host.Network().ConnsToPeer(c.RemotePeer())) > 1 {
			m.Kick()
		}
	}}
	m.cfg.Host.Network().Notify(nb)
	defer m.cfg.Host.Network().StopNotify(nb)
	defer m.dialing.Wait()
	tick := time.NewTicker(m.cfg.Interval)
	defer tick.Stop()
	var debounce <-chan time.Time
	m.reconcile(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			m.reconcile(ctx)
		case <-m.kick:
			if debounce == nil {
				debounce = time.After(m.cfg.Debounce)
			}
		case <-debounce:
			debounce = nil
			m.reconcile(ctx)
		}
	}
}

// Kick asks for a reconcile pass soon (debounced).
func (m *Manager) Kick() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

func (m *Manager) input() PlanInput {
	recs, err := m.cfg.Doc.Nodes()
	if err != nil {
		m.lg.Warn().Err(err).Msg("reading the node list failed")
	}
	now := m.cfg.Now()
	in := PlanInput{
		Self: m.cfg.Host.ID(), Rendezvous: m.rv, Now: now, Max: m.cfg.Max, Fresh: m.cfg.Fresh,
		DialBackoff: 2 * m.cfg.Interval, Slots: map[peer.ID]PlanSlot{}, DialFailed: map[peer.ID]time.Time{},
	}
	silent := m.cfg.Silent()
	addrsOf := make(map[peer.ID][]string, len(recs))
	ids := make(map[string]peer.ID, len(recs))
	in.Nodes = make([]PlanNode, 0, len(recs))
	for id, r := range recs {
		p, ok := m.ids[id]
		if !ok {
			var err error
			if p, err = peer.Decode(id); err != nil {
				continue
			}
		}
		ids[id] = p
		in.Nodes = append(in.Nodes, PlanNode{ID: p, Addrs: r.Addrs, Alive: r.Alive, LastSeenMs: r.LastSeenMs, Silent: silent[p]})
		addrsOf[p] = r.Addrs
	}
	m.ids = ids
	m.mu.Lock()
	defer m.mu.Unlock()
	for p, at := range m.slots {
		up := m.pending[p] || m.cfg.Host.Network().Connectedness(p) == network.Connected
		in.Slots[p] = PlanSlot{Opened: at, Connected: up}
	}
	for p, f := range m.failed {
		// A peer that has published new addresses since (a relayed one,
		// say) is worth a dial now.
		if f.addrs == addrKey(addrsOf[p]) {
			in.DialFailed[p] = f.at
		}
	}
	return in
}

func (m *Manager) reconcile(ctx context.Context) {
	in := m.input()
	plan := Reconcile(in)
	m.passes.Add(1)
	m.mu.Lock()
	m.last, m.lastAt = plan, in.Now
	addrs := map[peer.ID][]string{}
	for _, n := range in.Nodes {
		addrs[n.ID] = n.Addrs
	}
	var closing []network.Conn
	for _, a := range plan.Actions {
		if a.Open {
			m.slots[a.Peer] = in.Now // held while dialling: the cap counts it
			m.pending[a.Peer] = true
			m.dialing.Add(1)
			go m.open(ctx, a.Peer, addrs[a.Peer], in.Now)
			continue
		}
		delete(m.slots, a.Peer)
		delete(m.pending, a.Peer) // a dial still running sees the slot gone
		// The connection manager's books, not the network: kept under mu
		// so a slot and its protection come and go together.
		m.cfg.Host.ConnManager().Unprotect(a.Peer, protectTag)
		closing = append(closing, m.own[a.Peer]...)
		delete(m.own, a.Peer)
		m.dropped.Add(1)
		m.drops = append(m.drops, MeshEvent{Peer: a.Peer.String(), Reason: a.Reason, At: in.Now})
		if len(m.drops) > 20 {
			m.drops = m.drops[len(m.drops)-20:]
		}
		m.lg.Info().Str("peer", a.Peer.String()).Str("reason", a.Reason).Msg("supplementary connection dropped")
	}
	m.maxSeen = max(m.maxSeen, len(m.slots))
	m.mu.Unlock()
	for _, c := range closing {
		closeIdle(c)
	}
	m.upgradeRelayed(ctx, addrs, in.Now, in.DialBackoff)
}

// closeIdle closes a connection the manager dialled, unless one of our
// protocols (anti-entropy, a transfer, a room's history) has a stream on
// it: libp2p opens new streams on whichever connection to the peer it
// likes best, so that stream may be anyone's. A connection left open is
// no longer protected, and the connection manager trims it when the node
// has too many.
func closeIdle(c network.Conn) {
	if c.IsClosed() {
		return
	}
	for _, s := range c.GetStreams() {
		if strings.HasPrefix(string(s.Protocol()), "/meshnode/") {
			return
		}
	}
	_ = c.Close()
}

// upgradeRelayed replaces relayed connections with direct ones: it closes
// the relayed connections of peers that also have a direct one, and dials
// the direct addresses of peers reached only through a relay (at most once
// per backoff period).
func (m *Manager) upgradeRelayed(ctx context.Context, addrs map[peer.ID][]string, now time.Time, backoff time.Duration) {
	nw := m.cfg.Host.Network()
	for _, p := range nw.Peers() {
		direct, relayed := splitConns(nw.ConnsToPeer(p))
		if len(relayed) == 0 {
			continue
		}
		if len(direct) > 0 {
			m.closeRelayed(p, relayed)
			continue
		}
		var da []ma.Multiaddr
		for _, a := range ParseAddrs(addrs[p]) {
			if !isCircuit(a) {
				da = append(da, a)
			}
		}
		m.mu.Lock()
		skip := len(da) == 0 || m.upgrading[p] || now.Sub(m.upgradeFailed[p]) < backoff
		if !skip {
			m.upgrading[p] = true
			m.dialing.Add(1)
		}
		m.mu.Unlock()
		if skip {
			continue
		}
		go func() {
			defer m.dialing.Done()
			dctx, cancel := context.WithTimeout(network.WithForceDirectDial(ctx, "replace relayed connection"), 15*time.Second)
			defer cancel()
			err := m.cfg.Host.Connect(dctx, peer.AddrInfo{ID: p, Addrs: preferQUIC(da)})
			m.mu.Lock()
			delete(m.upgrading, p)
			if err != nil {
				m.upgradeFailed[p] = m.cfg.Now()
			} else {
				delete(m.upgradeFailed, p)
			}
			m.mu.Unlock()
			if err != nil {
				m.lg.Debug().Str("peer", p.String()).Err(err).Msg("direct dial of a relayed peer failed; staying relayed")
				return
			}
			_, relayed := splitConns(nw.ConnsToPeer(p))
			m.closeRelayed(p, relayed)
		}()
	}
}

func (m *Manager) closeRelayed(p peer.ID, relayed []network.Conn) {
	for _, c := range relayed {
		_ = c.Close()
	}
	if len(relayed) > 0 {
		m.upgrades.Add(1)
		m.lg.Info().Str("peer", p.String()).Int("relayed", len(relayed)).Msg("direct connection replaces the relayed one")
	}
}

func splitConns(cs []network.Conn) (direct, relayed []network.Conn) {
	for _, c := range cs {
		if IsRelayed(c) {
			relayed = append(relayed, c)
		} else {
			direct = append(direct, c)
		}
	}
	return direct, relayed
}

// open dials p over QUIC (any direct address if it has no QUIC one, and
// its relayed addresses, which libp2p tries after the direct ones) for
// the slot opened at, and protects the peer from the connection manager's
// trimming. A peer already connected is not dialled again; the slot
// relies on the existing connection.
func (m *Manager) open(ctx context.Context, p peer.ID, addrs []string, at time.Time) {
	defer m.dialing.Done()
	ctx, cancel := context.WithTimeout(network.WithAllowLimitedConn(ctx, "mesh"), 15*time.Second)
	defer cancel()
	var direct, relayed []ma.Multiaddr
	for _, a := range ParseAddrs(addrs) {
		if isCircuit(a) {
			relayed = append(relayed, a)
		} else {
			direct = append(direct, a)
		}
	}
	nw := m.cfg.Host.Network()
	before := nw.ConnsToPeer(p)
	ai := peer.AddrInfo{ID: p, Addrs: append(preferQUIC(direct), relayed...)}
	err := m.cfg.Host.Connect(ctx, ai)
	var mine []network.Conn
	for _, c := range nw.ConnsToPeer(p) {
		if c.Stat().Direction == network.DirOutbound && !slices.Contains(before, c) {
			mine = append(mine, c)
		}
	}
	m.mu.Lock()
	if cur, ok := m.slots[p]; !ok || !cur.Equal(at) || !m.pending[p] {
		// Dropped while dialling.
		m.mu.Unlock()
		for _, c := range mine {
			closeIdle(c)
		}
		return
	}
	delete(m.pending, p)
	if err != nil {
		delete(m.slots, p)
		m.failed[p] = dialFailure{at: m.cfg.Now(), addrs: addrKey(addrs)}
		m.mu.Unlock()
		m.lg.Debug().Str("peer", p.String()).Err(err).Msg("supplementary dial failed")
		return
	}
	delete(m.failed, p)
	m.own[p] = mine
	m.cfg.Host.ConnManager().Protect(p, protectTag)
	m.opened.Add(1)
	m.mu.Unlock()
	dc, _ := splitConns(nw.ConnsToPeer(p))
	m.lg.Info().Str("peer", p.String()).Bool("supplementary", true).Bool("relayed", len(dc) == 0).Bool("new_connection", len(mine) > 0).Msg("supplementary connection opened")
	m.cfg.OnOpened(p)
}

// dialFailure is when a dial to a peer failed, and the addresses tried.
type dialFailure struct {
	at    time.Time
	addrs string
}

func addrKey(addrs []string) string { return strings.Join(addrs, " ") }

func preferQUIC(addrs []ma.Multiaddr) []ma.Multiaddr {
	var quic []ma.Multiaddr
	for _, a := range addrs {
		if _, err := a.ValueForProtocol(ma.P_QUIC_V1); err == nil {
			quic = append(quic, a)
		}
	}
	if len(quic) > 0 {
		return quic
	}
	return addrs
}

// Status reports the cap, the last pass and the current slots.
func (m *Manager) Status() MeshStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := MeshStatus{
		Cap: max(m.cfg.Max, 0), LastReconcile: m.lastAt, Skipped: map[string]string{},
		Eligible: []string{}, Slots: []MeshSlot{}, RecentDrops: append([]MeshEvent{}, m.drops...),
		Passes: m.passes.Load(), Opened: m.opened.Load(), Dropped: m.dropped.Load(), MaxSlotsSeen: m.maxSeen,
		RelayedPeers: []string{}, Upgrades: m.upgrades.Load(), Relays: []RelayState{},
	}
	nw := m.cfg.Host.Network()
	for _, p := range nw.Peers() {
		if RelayedOnly(nw, p) {
			st.RelayedPeers = append(st.RelayedPeers, p.String())
		}
	}
	slices.Sort(st.RelayedPeers)
	for _, p := range m.last.Eligible {
		st.Eligible = append(st.Eligible, p.String())
	}
	for p, why := range m.last.Skipped {
		st.Skipped[p.String()] = why
	}
	now := m.cfg.Now()
	for p, at := range m.slots {
		st.Slots = append(st.Slots, MeshSlot{Peer: p.String(), AgeSec: now.Sub(at).Seconds(), Relayed: RelayedOnly(nw, p)})
	}
	return st
}

// Slots returns the peers this node holds supplementary connections to.
func (m *Manager) Slots() []peer.ID {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Collect(maps.Keys(m.slots))
}

// MeshStats are the manager's figures for metrics: cheap to read, unlike
// Status, which lists every eligible and skipped peer.
type MeshStats struct {
	Cap, Slots, Eligible              int
	Passes, Opened, Dropped, Upgrades uint64
}

// Stats returns the current figures.
func (m *Manager) Stats() MeshStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return MeshStats{
		Cap: max(m.cfg.Max, 0), Slots: len(m.slots), Eligible: len(m.last.Eligible),
		Passes: m.passes.Load(), Opened: m.opened.Load(), Dropped: m.dropped.Load(), Upgrades: m.upgrades.Load(),
	}
}
