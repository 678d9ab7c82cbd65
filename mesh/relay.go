package mesh

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/rs/zerolog"
)

// RelayLimits are what a relay service grants fleet members. A zero
// Duration or Data means no limit on that dimension; with both zero,
// relayed connections are unlimited, so libp2p does not mark them
// "limited" and every protocol (GossipSub included) runs over them.
type RelayLimits struct {
	// Duration a relayed connection may last before the relay resets it.
	Duration time.Duration
	// Data relayed in each direction before the relay resets it.
	Data int64
	// MaxReservations is how many nodes may hold a slot at once.
	MaxReservations int
	// MaxCircuits is how many relayed connections one node may have open
	// through this relay.
	MaxCircuits int
	// ReservationTTL is how long a slot lasts before its holder must
	// refresh it.
	ReservationTTL time.Duration
}

// DefaultRelayLimits are the relay service's defaults: no per-connection
// duration or data limit (only authenticated fleet members get a slot),
// 1,024 slots, 64 relayed connections per node, slots of one hour.
func DefaultRelayLimits() RelayLimits {
	return RelayLimits{MaxReservations: 1024, MaxCircuits: 64, ReservationTTL: time.Hour}
}

// resources turns the limits into libp2p's relay resources. Per-IP and
// per-ASN caps are lifted: they defend an open relay against strangers,
// and ours serves only peers that proved the fleet secret (several of
// which may share one NAT address).
func (l RelayLimits) resources() relay.Resources {
	rc := relay.DefaultResources()
	rc.Limit = nil
	if l.Duration > 0 || l.Data > 0 {
		rc.Limit = &relay.RelayLimit{Duration: l.Duration, Data: l.Data}
		if l.Duration <= 0 {
			rc.Limit.Duration = math.MaxUint32 * time.Second
		}
		if l.Data <= 0 {
			rc.Limit.Data = math.MaxInt64
		}
	}
	if l.MaxReservations > 0 {
		rc.MaxReservations = l.MaxReservations
	}
	if l.MaxCircuits > 0 {
		rc.MaxCircuits = l.MaxCircuits
	}
	if l.ReservationTTL > 0 {
		rc.ReservationTTL = l.ReservationTTL
	}
	rc.MaxReservationsPerIP = rc.MaxReservations
	rc.MaxReservationsPerASN = rc.MaxReservations
	// Larger copy buffers than libp2p's 2 KiB: relayed replication and
	// transfers are bulk traffic.
	rc.BufferSize = 64 << 10
	return rc
}

// RelayServiceConfig configures a RelayService.
type RelayServiceConfig struct {
	Host   host.Host
	Auth   *Auth
	Logger zerolog.Logger
	Limits RelayLimits
	// AuthWait bounds how long a request from a peer that has connected but
	// not yet finished fleet authentication waits for it. Default 10 s.
	AuthWait time.Duration
}

// RelayService makes this node a circuit-relay-v2 relay for authenticated
// fleet members only: a reservation or a relayed connection is granted to
// a peer once it has proven the fleet secret, and a relayed connection
// only to a destination that has too.
type RelayService struct {
	cfg RelayServiceConfig
	lg  zerolog.Logger
	ctx context.Context
}

// NewRelayService returns a RelayService; Run starts it.
func NewRelayService(cfg RelayServiceConfig) *RelayService {
	if cfg.AuthWait <= 0 {
		cfg.AuthWait = 10 * time.Second
	}
	return &RelayService{cfg: cfg, lg: cfg.Logger.With().Str("component", "relay-service").Logger()}
}

// Run serves relaying until ctx ends.
func (s *RelayService) Run(ctx context.Context) error {
	s.ctx = ctx
	rc := s.cfg.Limits.resources()
	r, err := relay.New(s.cfg.Host,
		relay.WithResources(rc),
		relay.WithACL(s),
		// Fleet members on a LAN or in a private site have private
		// addresses; the relay must vouch for them too.
		relay.WithReservationAddressFilter(func(ma.Multiaddr) bool { return true }),
	)
	if err != nil {
		return fmt.Errorf("mesh: start relay service: %w", err)
	}
	defer r.Close()
	ev := s.lg.Info().Int("max_reservations", rc.MaxReservations).Int("max_circuits", rc.MaxCircuits).Dur("reservation_ttl", rc.ReservationTTL)
	if rc.Limit != nil {
		ev = ev.Dur("limit_duration", rc.Limit.Duration).Int64("limit_data", rc.Limit.Data)
	} else {
		ev = ev.Str("limit", "none")
	}
	ev.Msg("relaying for fleet members")
	<-ctx.Done()
	return nil
}

// AllowReserve implements relay.ACLFilter: only fleet members get a slot.
func (s *RelayService) AllowReserve(p peer.ID, _ ma.Multiaddr) bool {
	ok := s.cfg.Auth.WaitAuthenticated(s.ctx, p, s.cfg.AuthWait)
	if !ok {
		s.lg.Warn().Str("peer", p.String()).Msg("relay reservation refused: not an authenticated fleet member")
	} else {
		s.lg.Debug().Str("peer", p.String()).Msg("relay reservation granted")
	}
	return ok
}

// AllowConnect implements relay.ACLFilter: both ends must be fleet members.
func (s *RelayService) AllowConnect(src peer.ID, _ ma.Multiaddr, dest peer.ID) bool {
	ok := s.cfg.Auth.WaitAuthenticated(s.ctx, src, s.cfg.AuthWait) && s.cfg.Auth.IsAuthenticated(dest)
	if !ok {
		s.lg.Warn().Str("src", src.String()).Str("dest", dest.String()).Msg("relayed connection refused: both ends must be authenticated fleet members")
	}
	return ok
}

// RelayClientConfig configures a RelayClient.
type RelayClientConfig struct {
	Host   host.Host
	Auth   *Auth
	Logger zerolog.Logger
	// Relays are the relays to hold a slot on (--relay), with /p2p/<id>.
	Relays []peer.AddrInfo
	// OnChange is called when the set of relayed addresses changes. Must
	// not block for long.
	OnChange func()
	// RetryMax caps the backoff between failed reservation attempts.
	// Default 1 min.
	RetryMax time.Duration
}

// RelayState is one relay as RelayClient.Status shows it.
type RelayState struct {
	Relay     string    `json:"relay"`
	Reserved  bool      `json:"reserved"`
	Expires   time.Time `json:"expires,omitzero"`
	Addrs     []string  `json:"addrs"`
	LastError string    `json:"last_error,omitempty"`
}

// RelayClient holds a reservation on each configured relay, refreshes it
// before it expires and takes a new one when the connection to the relay
// drops, so the node stays reachable at its relayed addresses
// (<relay addr>/p2p/<relay>/p2p-circuit), which Addrs returns for the node
// record.
type RelayClient struct {
	cfg RelayClientConfig
	lg  zerolog.Logger

	mu    sync.Mutex
	state map[peer.ID]*RelayState
}

// NewRelayClient returns a RelayClient; Run starts it.
func NewRelayClient(cfg RelayClientConfig) *RelayClient {
	if cfg.OnChange == nil {
		cfg.OnChange = func() {}
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = time.Minute
	}
	c := &RelayClient{cfg: cfg, lg: cfg.Logger.With().Str("component", "relay-client").Logger(), state: map[peer.ID]*RelayState{}}
	for _, r := range cfg.Relays {
		c.state[r.ID] = &RelayState{Relay: r.ID.String(), Addrs: []string{}}
	}
	return c
}

// ParseRelays parses --relay multiaddrs, which must end in /p2p/<id>.
func ParseRelays(addrs []string) ([]peer.AddrInfo, error) {
	infos, err := parseP2PAddrs("relay", addrs)
	if err != nil {
		return nil, err
	}
	// One relay given at several addresses is one relay.
	var out []peer.AddrInfo
	for _, ai := range infos {
		i := slices.IndexFunc(out, func(o peer.AddrInfo) bool { return o.ID == ai.ID })
		if i < 0 {
			out = append(out, ai)
			continue
		}
		out[i].Addrs = append(out[i].Addrs, ai.Addrs...)
	}
	return out, nil
}

// Run keeps the reservations until ctx ends, then waits for its workers.
func (c *RelayClient) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, r := range c.cfg.Relays {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.keep(ctx, r)
		}()
	}
	wg.Wait()
	return nil
}

// keep holds a reservation on relay r until ctx ends.
func (c *RelayClient) keep(ctx context.Context, r peer.AddrInfo) {
	backoff := time.Second
	down := make(chan struct{}, 1)
	nb := &network.NotifyBundle{DisconnectedF: func(n network.Network, conn network.Conn) {
		if conn.RemotePeer() == r.ID && n.Connectedness(r.ID) != network.Connected {
			select {
			case down <- struct{}{}:
			default:
			}
		}
	}}
	c.cfg.Host.Network().Notify(nb)
	defer c.cfg.Host.Network().StopNotify(nb)
	defer c.set(r.ID, nil, nil)
	for ctx.Err() == nil {
		rsvp, err := c.reserve(ctx, r)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.set(r.ID, nil, err)
			c.lg.Warn().Str("relay", r.ID.String()).Err(err).Dur("retry_in", backoff).Msg("relay reservation failed")
			if !sleepCtx(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, c.cfg.RetryMax)
			continue
		}
		backoff = time.Second
		c.set(r.ID, rsvp, nil)
		// Refresh when two thirds of the slot's life have passed.
		refresh := time.Until(rsvp.Expiration) * 2 / 3
		c.lg.Info().Str("relay", r.ID.String()).Time("expires", rsvp.Expiration).Strs("addrs", c.Addrs()).Msg("relay slot reserved; reachable through the relay")
		select {
		case <-ctx.Done():
			return
		case <-time.After(max(refresh, time.Second)):
		case <-down:
			c.set(r.ID, nil, errors.New("connection to the relay closed"))
			c.lg.Warn().Str("relay", r.ID.String()).Msg("connection to the relay closed; reserving again")
			if !sleepCtx(ctx, backoff) {
				return
			}
		}
	}
}

func (c *RelayClient) reserve(ctx context.Context, r peer.AddrInfo) (*client.Reservation, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := c.cfg.Host.Connect(ctx, r); err != nil {
		return nil, fmt.Errorf("dial relay: %w", err)
	}
	if !c.cfg.Auth.WaitAuthenticated(ctx, r.ID, 15*time.Second) {
		return nil, errors.New("the relay did not authenticate as a member of this fleet")
	}
	rsvp, err := client.Reserve(ctx, c.cfg.Host, r)
	if err != nil {
		return nil, fmt.Errorf("reserve a slot (is the node at --relay started with --relay-service?): %w", err)
	}
	return rsvp, nil
}

// set records the outcome for relay p and reports an address change.
func (c *RelayClient) set(p peer.ID, rsvp *client.Reservation, err error) {
	c.mu.Lock()
	st := c.state[p]
	before := slices.Clone(st.Addrs)
	st.Reserved, st.Expires, st.Addrs, st.LastError = false, time.Time{}, []string{}, ""
	if err != nil {
		st.LastError = err.Error()
	}
	if rsvp != nil {
		st.Reserved, st.Expires = true, rsvp.Expiration
		for _, ri := range c.cfg.Relays {
			if ri.ID != p {
				continue
			}
			for _, a := range ri.Addrs {
				st.Addrs = append(st.Addrs, a.String()+"/p2p/"+p.String()+"/p2p-circuit")
			}
		}
	}
	changed := !slices.Equal(before, st.Addrs)
	c.mu.Unlock()
	if changed {
		c.cfg.OnChange()
	}
}

// Addrs returns this node's relayed addresses on the relays it holds a
// slot on, without the trailing /p2p/<self>.
func (c *RelayClient) Addrs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, r := range c.cfg.Relays {
		out = append(out, c.state[r.ID].Addrs...)
	}
	return out
}

// Status returns each relay's reservation state.
func (c *RelayClient) Status() []RelayState {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := []RelayState{}
	for _, r := range c.cfg.Relays {
		st := *c.state[r.ID]
		st.Addrs = slices.Clone(st.Addrs)
		out = append(out, st)
	}
	return out
}

// RelayedOnly reports whether the host is connected to p, through relays
// only.
func RelayedOnly(nw network.Network, p peer.ID) bool {
	direct, relayed := splitConns(nw.ConnsToPeer(p))
	return len(direct) == 0 && len(relayed) > 0
}

// IsRelayed reports whether a connection goes through a relay.
func IsRelayed(c network.Conn) bool {
	return isCircuit(c.RemoteMultiaddr())
}

func isCircuit(a ma.Multiaddr) bool {
	_, err := a.ValueForProtocol(ma.P_CIRCUIT)
	return err == nil
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
