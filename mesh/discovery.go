package mesh

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/crdt"
)

// DiscoveryConfig configures Discovery.
type DiscoveryConfig struct {
	Host   host.Host
	Fleet  *Fleet
	Gate   *Gate
	Doc    *crdt.Doc
	Logger zerolog.Logger
	// MDNS enables LAN discovery under the fleet's service name.
	MDNS bool
	// Bootstrap are rendezvous peers, redialled while disconnected.
	Bootstrap []peer.AddrInfo
	// Interval between redial passes. Default 10 s.
	Interval time.Duration
	// MinPeers: below this many connected peers, nodes from the document's
	// node list are dialled too. Default 2.
	MinPeers int
}

// Discovery finds fleet peers: mDNS on the LAN, bootstrap (rendezvous)
// peers, and nodes learned from the document.
type Discovery struct {
	cfg DiscoveryConfig
	lg  zerolog.Logger
	wg  sync.WaitGroup
	ctx context.Context

	mu      sync.Mutex
	dialing map[peer.ID]bool
}

// ParseBootstrap parses rendezvous multiaddrs, which must end in /p2p/<id>.
func ParseBootstrap(addrs []string) ([]peer.AddrInfo, error) {
	return parseP2PAddrs("bootstrap", addrs)
}

func parseP2PAddrs(what string, addrs []string) ([]peer.AddrInfo, error) {
	var out []peer.AddrInfo
	for _, s := range addrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("%s address %q: %w", what, s, err)
		}
		ai, err := peer.AddrInfoFromP2pAddr(a)
		if err != nil {
			return nil, fmt.Errorf("%s address %q must end in /p2p/<peer id>: %w", what, s, err)
		}
		out = append(out, *ai)
	}
	return out, nil
}

// NewDiscovery returns Discovery; Run starts it.
func NewDiscovery(cfg DiscoveryConfig) *Discovery {
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Second
	}
	if cfg.MinPeers <= 0 {
		cfg.MinPeers = 2
	}
	return &Discovery{cfg: cfg, lg: cfg.Logger.With().Str("component", "discovery").Logger(), dialing: map[peer.ID]bool{}}
}

// Run discovers until ctx ends and waits for the dials it started.
func (d *Discovery) Run(ctx context.Context) error {
	d.ctx = ctx
	defer d.wg.Wait()
	if d.cfg.MDNS {
		svc := mdns.NewMdnsService(d.cfg.Host, d.cfg.Fleet.MDNSService(), d)
		if err := svc.Start(); err != nil {
			return fmt.Errorf("mesh: start mDNS: %w", err)
		}
		defer svc.Close()
	}
	d.pass()
	t := time.NewTicker(d.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			d.pass()
		}
	}
}

// HandlePeerFound is mDNS's callback.
func (d *Discovery) HandlePeerFound(ai peer.AddrInfo) {
	if ai.ID == d.cfg.Host.ID() {
		return
	}
	d.lg.Debug().Str("peer", ai.ID.String()).Msg("found on LAN")
	d.dial(ai)
}

func (d *Discovery) pass() {
	for _, ai := range d.cfg.Bootstrap {
		d.dial(ai)
	}
	if len(d.cfg.Host.Network().Peers()) >= d.cfg.MinPeers || d.cfg.Doc == nil {
		return
	}
	nodes, _ := d.cfg.Doc.Nodes()
	var cands []peer.AddrInfo
	for id, rec := range nodes {
		p, err := peer.Decode(id)
		if err != nil || p == d.cfg.Host.ID() || !rec.Alive || len(rec.Addrs) == 0 {
			continue
		}
		cands = append(cands, peer.AddrInfo{ID: p, Addrs: ParseAddrs(rec.Addrs)})
	}
	rand.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
	for _, ai := range cands[:min(len(cands), 3)] {
		d.dial(ai)
	}
}

func (d *Discovery) dial(ai peer.AddrInfo) {
	if d.cfg.Host.Network().Connectedness(ai.ID) == network.Connected || !d.cfg.Gate.Allowed(ai.ID) {
		return
	}
	d.mu.Lock()
	if d.dialing[ai.ID] || d.ctx == nil || d.ctx.Err() != nil {
		d.mu.Unlock()
		return
	}
	d.dialing[ai.ID] = true
	d.wg.Add(1)
	d.mu.Unlock()
	go func() {
		defer d.wg.Done()
		defer func() { d.mu.Lock(); delete(d.dialing, ai.ID); d.mu.Unlock() }()
		ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
		defer cancel()
		if err := d.cfg.Host.Connect(ctx, ai); err != nil && d.ctx.Err() == nil {
			d.lg.Debug().Str("peer", ai.ID.String()).Err(err).Msg("dial failed")
		}
	}()
}
