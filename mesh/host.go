package mesh

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"

	"github.com/meshnode/meshnode/internal/atomicfile"
)

// HostConfig configures the libp2p host.
type HostConfig struct {
	// Key is the node's identity.
	Key crypto.PrivKey
	// Listen are the listener multiaddrs (QUIC-v1 and TCP).
	Listen []ma.Multiaddr
	// Gate is the connection gater; with Auth running, it also holds
	// peers that have not authenticated to their own budget.
	Gate *Gate
	// ConnLow/ConnHigh are the connection manager's watermarks. Default
	// 64 and 192. The resource manager's hard limits on connections are
	// kept above ConnHigh plus the strangers' budget.
	ConnLow, ConnHigh int
}

// NewHost builds the libp2p host with QUIC-v1 and TCP transports. A listen
// address that cannot be bound is an error naming it: libp2p alone would
// carry on when some, but not all, listeners fail.
func NewHost(cfg HostConfig) (host.Host, error) {
	if err := checkListen(cfg.Listen); err != nil {
		return nil, err
	}
	if cfg.ConnLow <= 0 {
		cfg.ConnLow, cfg.ConnHigh = 64, 192
	}
	cm, err := connmgr.NewConnManager(cfg.ConnLow, cfg.ConnHigh, connmgr.WithGracePeriod(time.Minute))
	if err != nil {
		return nil, fmt.Errorf("mesh: connection manager: %w", err)
	}
	rm, err := resourceManager(cfg.ConnHigh)
	if err != nil {
		cm.Close()
		return nil, fmt.Errorf("mesh: resource manager: %w", err)
	}
	h, err := libp2p.New(
		libp2p.Identity(cfg.Key),
		libp2p.ListenAddrs(cfg.Listen...),
		libp2p.Transport(libp2pquic.NewTransport),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.ConnectionGater(cfg.Gate),
		libp2p.ConnectionManager(cm),
		libp2p.ResourceManager(rm),
		// DCUtR: two nodes behind NATs that meet through a relay try to
		// punch a direct path. libp2p only attempts it from hosts that see
		// a public address of their own.
		libp2p.EnableHolePunching(),
	)
	if err != nil {
		return nil, fmt.Errorf("mesh: start libp2p host: %w", err)
	}
	if got, want := len(h.Network().ListenAddresses()), len(cfg.Listen); got < want {
		h.Close()
		return nil, fmt.Errorf("mesh: only %d of %d listen addresses could be bound (%v); check --listen", got, want, cfg.Listen)
	}
	return h, nil
}

// resourceManager is libp2p's default resource manager, its limits scaled
// to the machine, except that the system's connection limits never fall
// below what the connection manager and the strangers' budget need. They
// scale with the memory libp2p allows itself, an eighth of the RAM: 64
// inbound connections with 1 GiB of RAM, 128 with 8 GiB, where members
// would be refused before the connection manager's high watermark (192)
// is reached. Strangers do not get to fill them: the Gate holds them to
// Auth's budget.
func resourceManager(connHigh int) (network.ResourceManager, error) {
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	scaled := limits.AutoScale()
	pl := scaled.ToPartialLimitConfig()
	need := connHigh + defaultStrangers + 32 // 32: our own dials in flight
	raise := func(v *rcmgr.LimitVal, floor int) {
		if *v >= 0 && int(*v) < floor {
			*v = rcmgr.LimitVal(floor)
		}
	}
	raise(&pl.System.ConnsInbound, need)
	raise(&pl.System.ConnsOutbound, need)
	raise(&pl.System.Conns, 2*need)
	return rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(pl.Build(scaled)))
}

// checkListen binds each fixed port briefly so a taken port is reported by
// name with the operating system's reason.
func checkListen(addrs []ma.Multiaddr) error {
	for _, a := range addrs {
		na, err := manet.ToNetAddr(stripQUIC(a))
		if err != nil {
			continue // not a plain IP listener; libp2p will judge it
		}
		var closer interface{ Close() error }
		switch x := na.(type) {
		case *net.TCPAddr:
			if x.Port != 0 {
				closer, err = net.ListenTCP("tcp", x)
			}
		case *net.UDPAddr:
			if x.Port != 0 {
				closer, err = net.ListenUDP("udp", x)
			}
		}
		if err != nil {
			return fmt.Errorf("mesh: cannot listen on %s: %w (is another meshnode running? pick another port with --listen or --port, or 0 for a random one)", a, err)
		}
		if closer != nil {
			closer.Close()
		}
	}
	return nil
}

func stripQUIC(a ma.Multiaddr) ma.Multiaddr {
	var out ma.Multiaddr
	for _, c := range a {
		if c.Protocol().Code == ma.P_QUIC_V1 || c.Protocol().Code == ma.P_QUIC {
			break
		}
		out = append(out, c)
	}
	return out
}

// LoadOrCreateKey reads the identity key at path, creating an Ed25519 key
// (mode 0600) when there is none.
func LoadOrCreateKey(path string) (crypto.PrivKey, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		k, err := crypto.UnmarshalPrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("mesh: identity key %s is unreadable (%v); move it away to create a new identity", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("mesh: read identity key: %w", err)
	}
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		return nil, err
	}
	b, err = crypto.MarshalPrivateKey(k)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(path, b, 0o600); err != nil {
		return nil, fmt.Errorf("mesh: write identity key: %w", err)
	}
	return k, nil
}

// NewPubSub starts GossipSub on h with flood publishing on (a fresh
// mesh must not lose a node's first changes) and logs routed to lg.
func NewPubSub(ctx context.Context, h host.Host, lg *slog.Logger) (*pubsub.PubSub, error) {
	ps, err := pubsub.NewGossipSub(ctx, h,
		pubsub.WithFloodPublish(true),
		pubsub.WithMessageSignaturePolicy(pubsub.StrictSign),
		pubsub.WithLogger(lg),
		pubsub.WithPeerOutboundQueueSize(1024),
		pubsub.WithValidateQueueSize(1024),
	)
	if err != nil {
		return nil, fmt.Errorf("mesh: start gossipsub: %w", err)
	}
	return ps, nil
}
