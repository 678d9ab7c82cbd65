package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/crdt"
	"github.com/meshnode/meshnode/internal/atomicfile"
	"github.com/meshnode/meshnode/internal/zslog"
	"github.com/meshnode/meshnode/mesh"
	"github.com/meshnode/meshnode/room"
	"github.com/meshnode/meshnode/transfer"
)

// Node is one running meshnode: it owns the document, the libp2p host and
// every service, and the local API.
type Node struct {
	cfg     Config
	lg      zerolog.Logger
	started time.Time
	// streamTests is the stream tests this node serves right now.
	streamTests atomic.Int32

	Fleet        *mesh.Fleet
	FleetCreated bool
	Host         host.Host
	Gate         *mesh.Gate
	Doc          *crdt.Doc
	Auth         *mesh.Auth
	Replicator   *mesh.Replicator
	Membership   *mesh.Membership
	Discovery    *mesh.Discovery
	Mesh         *mesh.Manager
	RelayService *mesh.RelayService // nil without --relay-service
	RelayClient  *mesh.RelayClient  // nil without --relay
	Library      *transfer.Library
	Rooms        *room.Manager
	roomConfig   room.Config // kept so that tests can rebuild Rooms with other timings
	Events       *Bus

	ps       *pubsub.PubSub
	psCancel context.CancelFunc
	apiToken string
	ui       *uiAuth // the dashboard's sign-in codes and sessions (ui.go)
	apiLn    net.Listener
	// apiStopping is closed when the API shuts down, ending event streams.
	apiStopping chan struct{}
	metrics     *metrics
	// lock is the data dir's lock, held from New until Close.
	lock *dirLock
}

// New prepares a node: data dir (locked: a second daemon on it fails here,
// naming the first one's pid), fleet, identity, document, host (ports are
// bound here, so a taken port fails now with a clear error). Run starts
// it; Close releases everything if Run is never called.
func New(cfg Config) (_ *Node, err error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	lg := cfg.Logger
	n := &Node{cfg: cfg, lg: lg, started: time.Now(), Events: newBus(), apiStopping: make(chan struct{}), ui: newUIAuth()}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	// Before anything in the dir is read or written: a second daemon must
	// not touch the first one's files.
	if n.lock, err = lockDataDir(cfg.DataDir); err != nil {
		return nil, err
	}
	if n.Fleet, n.FleetCreated, err = loadFleet(cfg.DataDir, cfg.Join); err != nil {
		return nil, err
	}
	if n.Fleet.Legacy() {
		lg.Warn().Str("fleet", n.Fleet.ID).Msg("join token has no checksum (an mn1- token of an earlier release); reissue it with `meshnode fleet token`")
	}
	if n.apiToken, err = loadAPIToken(cfg.DataDir); err != nil {
		return nil, err
	}
	key, err := mesh.LoadOrCreateKey(filepath.Join(cfg.DataDir, FileIdentity))
	if err != nil {
		return nil, err
	}
	boot, err := mesh.ParseBootstrap(cfg.Bootstrap)
	if err != nil {
		return nil, fmt.Errorf("--bootstrap: %w", err)
	}
	var listen []ma.Multiaddr
	for _, s := range cfg.Listen {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("--listen %q: %w", s, err)
		}
		listen = append(listen, a)
	}
	if n.Doc, err = crdt.Open(crdt.Config{Dir: filepath.Join(cfg.DataDir, DirDoc), Logger: lg, Key: key,
		CutBytes: cfg.CutBytes, CutMinAge: cfg.CutMinAge, CutGrace: cfg.CutGrace, CutCheck: cfg.cutCheck, Now: cfg.now}); err != nil {
		return nil, err
	}
	for _, d := range n.Doc.Damage() {
		// Sticky: every event client, whenever it connects, learns of it.
		n.Events.PublishSticky(EventDocDamaged, damageData(d))
	}
	newDoc := n.Doc.Empty()
	n.Gate = mesh.NewGate()
	if n.Host, err = mesh.NewHost(mesh.HostConfig{Key: key, Listen: listen, Gate: n.Gate}); err != nil {
		return nil, err
	}
	psCtx, psCancel := context.WithCancel(context.Background())
	n.psCancel = psCancel
	// pubsub logs its lifecycle at info, from a goroutine that outlives
	// Close by a moment (it has no way to wait for it): only warnings and
	// errors are worth a line.
	psLog := lg.With().Str("component", "pubsub").Logger()
	psLog = psLog.Level(max(psLog.GetLevel(), zerolog.WarnLevel))
	// Its tag tracer warns when it bumps a delivery tag of a topic just
	// left, which every clean leave causes: nothing to act on.
	psHandler := zslog.New(psLog).Demote("error bumping delivery tag")
	if n.ps, err = mesh.NewPubSub(psCtx, n.Host, slog.New(psHandler)); err != nil {
		return nil, err
	}
	relays, err := mesh.ParseRelays(cfg.Relays)
	if err != nil {
		return nil, fmt.Errorf("--relay: %w", err)
	}
	n.wire(boot, relays, newDoc)
	if n.apiLn, err = net.Listen("tcp", cfg.API); err != nil {
		return nil, fmt.Errorf("API: cannot listen on %s: %w (is another meshnode running? use --api to pick another address)", cfg.API, err)
	}
	if tcp, ok := n.apiLn.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		return nil, fmt.Errorf("API: %s is not a loopback address; the API is local only", cfg.API)
	}
	n.metrics = newMetrics(n)
	return n, nil
}

func (n *Node) wire(boot, relays []peer.AddrInfo, newDoc bool) {
	lg := n.lg
	n.Auth = mesh.NewAuth(mesh.AuthConfig{
		Host: n.Host, Fleet: n.Fleet, Gate: n.Gate, Logger: lg,
		OnUp: func(p peer.ID) {
			n.Events.Publish(EventPeerUp, map[string]any{"peer": p.String()})
			n.Replicator.PeerUp(p)
			n.Membership.PeerUp(p)
		},
		OnDown: func(p peer.ID) {
			n.Events.Publish(EventPeerDown, map[string]any{"peer": p.String()})
			n.Replicator.PeerDown(p)
		},
	})
	n.Replicator = mesh.NewReplicator(mesh.ReplicatorConfig{
		Host: n.Host, PubSub: n.ps, Fleet: n.Fleet, Auth: n.Auth, Doc: n.Doc, Logger: lg,
		SyncInterval: n.cfg.SyncInterval, Bootstrap: newDoc,
		Gate: n.Gate, OnBadChange: n.badChangeHook(),
		// Membership is made below; the replicator runs only after.
		Stale: func(p peer.ID) bool { return n.Membership != nil && n.Membership.Stale(p) },
		OnBootstrapped: func() {
			if n.Membership != nil {
				_ = n.Membership.EnsureRecord(true)
			}
		},
	})
	if len(relays) > 0 {
		n.RelayClient = mesh.NewRelayClient(mesh.RelayClientConfig{
			Host: n.Host, Auth: n.Auth, Logger: lg, Relays: relays,
			OnChange: func() {
				if err := n.Membership.EnsureRecord(true); err != nil {
					lg.Warn().Err(err).Msg("publishing relayed addresses failed")
				}
			},
		})
	}
	roles := n.cfg.Roles
	if n.cfg.RelayService {
		n.RelayService = mesh.NewRelayService(mesh.RelayServiceConfig{
			Host: n.Host, Auth: n.Auth, Logger: lg,
			Limits: mesh.RelayLimits{
				Duration: n.cfg.RelayLimitDuration, Data: n.cfg.RelayLimitData,
				MaxReservations: n.cfg.RelayMaxReservations, MaxCircuits: n.cfg.RelayMaxCircuits,
			},
		})
		if !slices.Contains(roles, "relay") {
			roles = append(slices.Clone(roles), "relay")
		}
	}
	n.Membership = mesh.NewMembership(mesh.MembershipConfig{
		Host: n.Host, PubSub: n.ps, Fleet: n.Fleet, Auth: n.Auth, Doc: n.Doc, Logger: lg,
		Name: n.cfg.Name, Roles: roles, RelayAddrs: n.relayAddrs,
		Interval: n.cfg.HeartbeatInterval, StaleAfter: n.cfg.StaleAfter, LastSeenEvery: n.cfg.LastSeenEvery,
		OnHeadsUnknown: n.Replicator.RequestSync,
		OnEvent: func(ev mesh.MemberEvent) {
			typ := map[string]string{mesh.StateAlive: EventNodeJoined, mesh.StateStale: EventNodeStale, mesh.StateLeft: EventNodeLeft}[ev.State]
			n.Events.Publish(typ, map[string]any{"peer": ev.Peer.String(), "name": ev.Name})
		},
	})
	n.Discovery = mesh.NewDiscovery(mesh.DiscoveryConfig{
		Host: n.Host, Fleet: n.Fleet, Gate: n.Gate, Doc: n.Doc, Logger: lg,
		MDNS: n.cfg.MDNS, Bootstrap: boot,
	})
	var rendezvous []peer.ID
	for _, b := range boot {
		rendezvous = append(rendezvous, b.ID)
	}
	n.Mesh = mesh.NewManager(mesh.ManagerConfig{
		Host: n.Host, Doc: n.Doc, Logger: lg, Max: n.cfg.MaxMeshPeers, Interval: n.cfg.MeshInterval,
		Fresh: 3 * n.cfg.LastSeenEvery, Rendezvous: rendezvous,
		Silent: func() map[peer.ID]bool {
			out := map[peer.ID]bool{}
			for p, m := range n.Membership.Members() {
				out[p] = m.State != mesh.StateAlive
			}
			return out
		},
		OnOpened: n.Replicator.RequestSync,
	})
	share := n.cfg.Share
	if share == "" {
		share = filepath.Join(n.cfg.DataDir, DirShare)
	}
	n.Library = transfer.NewLibrary(transfer.LibraryConfig{
		Share: share, Dir: filepath.Join(n.cfg.DataDir, DirLibrary), Doc: n.Doc, Host: n.Host,
		Protocol: n.Fleet.Protocol("xfer/1"), Handle: n.Auth.Handle, Logger: lg,
		ScanInterval: n.cfg.ScanInterval, OnEvent: n.Events.Publish,
		Limits:  transfer.Limits{SendRate: n.cfg.MaxSendRate, SpreadCopies: n.cfg.spreadCopies},
		Lineage: n.fleetReadsLineage,
	})
	n.roomConfig = room.Config{
		Self: n.Host.ID(), Doc: n.Doc, PubSub: n.ps, Logger: lg, OnEvent: n.Events.Publish,
		TopicName: func(id room.ID) string { return n.Fleet.Topic("room/" + id.String()) },
		Alive:     func(p peer.ID) bool { return n.Membership.Members()[p].State == mesh.StateAlive },
		LeaseTTL:  n.cfg.RoomLease,
		Host:      n.Host, HistoryProtocol: n.Fleet.Protocol("room/1"),
	}
	n.Rooms = room.NewManager(n.roomConfig)
	n.Auth.Handle(n.Fleet.Protocol("room/1"), func(s network.Stream) { n.Rooms.HandleHistory(s) })
	n.registerStreamTest()
	n.Doc.Watch(func(ev crdt.Event) {
		n.Events.Publish(EventDocChanged, map[string]any{"local": ev.Local, "heads": crdt.HashStrings(ev.Heads)})
	})
}

func (n *Node) relayAddrs() []string {
	if n.RelayClient == nil {
		return nil
	}
	return n.RelayClient.Addrs()
}

// MeshStatus returns what GET /v1/mesh reports.
func (n *Node) MeshStatus() mesh.MeshStatus {
	st := n.Mesh.Status()
	if n.RelayClient != nil {
		st.Relays = n.RelayClient.Status()
	}
	return st
}

// ID returns the node's peer ID.
func (n *Node) ID() peer.ID { return n.Host.ID() }

// APIAddr returns the address the local API listens on.
func (n *Node) APIAddr() string { return n.apiLn.Addr().String() }

// APIToken returns the API bearer token.
func (n *Node) APIToken() string { return n.apiToken }

// Addrs returns the node's full p2p addresses (with /p2p/<id>).
func (n *Node) Addrs() []string {
	var out []string
	for _, a := range n.Host.Addrs() {
		out = append(out, a.String()+"/p2p/"+n.Host.ID().String())
	}
	return out
}

// Run starts every service and blocks until ctx ends or a required
// service fails. On the way out it says Goodbye, stops every service,
// flushes the document and closes the host.
func (n *Node) Run(ctx context.Context) error {
	defer n.Close()
	apiPath := filepath.Join(n.cfg.DataDir, FileAPIAddr)
	if err := atomicfile.WriteFile(apiPath, []byte(n.APIAddr()+"\n"), 0o600); err != nil {
		return fmt.Errorf("write API address: %w", err)
	}
	defer os.Remove(apiPath)
	// No ReadTimeout or WriteTimeout: they would cut event streams; bodies
	// have their own deadline in the handler.
	srv := &http.Server{Handler: n.apiHandler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	srv.RegisterOnShutdown(func() { close(n.apiStopping) })

	svcCtx, stop := context.WithCancel(context.Background())
	defer stop()
	report := func(svc string, err error) {
		n.Events.Publish(EventServiceFailed, map[string]any{"component": svc, "error": err.Error()})
	}
	done := make(chan error, 1)
	go func() {
		svcs := []Service{
			{Name: "auth", Policy: Required, Run: n.Auth.Run},
			{Name: "replicator", Policy: Required, Run: n.Replicator.Run},
			{Name: "membership", Policy: Restart, Run: n.Membership.Run},
			{Name: "discovery", Policy: BestEffort, Run: n.Discovery.Run},
			{Name: "mesh", Policy: Restart, Run: n.Mesh.Run},
			{Name: "library", Policy: Restart, Run: n.Library.Run},
			{Name: "rooms", Policy: Restart, Run: n.Rooms.Run},
			{Name: "api", Policy: Required, Run: func(ctx context.Context) error {
				go func() {
					<-ctx.Done()
					sctx, c := context.WithTimeout(context.Background(), time.Second)
					defer c()
					_ = srv.Shutdown(sctx)
				}()
				if err := srv.Serve(n.apiLn); !errors.Is(err, http.ErrServerClosed) {
					return err
				}
				return nil
			}},
		}
		if n.RelayService != nil {
			svcs = append(svcs, Service{Name: "relay-service", Policy: Restart, Run: n.RelayService.Run})
		}
		if n.RelayClient != nil {
			svcs = append(svcs, Service{Name: "relay-client", Policy: Restart, Run: n.RelayClient.Run})
		}
		done <- supervise(svcCtx, n.lg, defaultBackoff, report, svcs)
	}()
	n.lg.Info().Str("peer", n.ID().String()).Str("fleet", n.Fleet.ID).Strs("addrs", n.Addrs()).Str("api", n.APIAddr()).Msg("node started")

	var err error
	select {
	case err = <-done:
		stop()
	case <-ctx.Done():
		gctx, c := context.WithTimeout(context.Background(), time.Second)
		if lerr := n.Membership.Leave(gctx); lerr != nil {
			n.lg.Warn().Err(lerr).Msg("goodbye failed")
		}
		c()
		// Give the leaving heartbeat a moment to leave the host.
		time.Sleep(150 * time.Millisecond)
		stop()
		err = <-done
	}
	n.lg.Info().Msg("node stopped")
	return err
}

// Close releases the host, flushes the document and, last, releases the
// data dir's lock. Run calls it; call it directly only for a node that was
// never run. It is idempotent.
func (n *Node) Close() error {
	var errs []error
	if n.apiLn != nil {
		n.apiLn.Close()
	}
	if n.psCancel != nil {
		n.psCancel()
	}
	if n.Host != nil {
		errs = append(errs, n.Host.Close())
	}
	if n.Doc != nil {
		errs = append(errs, n.Doc.Close())
	}
	// Last: the next daemon on this dir may start once every file is
	// flushed and closed.
	errs = append(errs, n.lock.release())
	return errors.Join(errs...)
}

// fleetReadsLineage reports whether every node that the document says is
// running speaks a protocol that reads version lineage in holder entries
// (mesh.LineageVersion): until then the library writes entries without
// it, which nodes of an earlier version would refuse.
func (n *Node) fleetReadsLineage() bool {
	nodes, err := n.Doc.Nodes()
	if err != nil {
		return false
	}
	// A record still marked alive but not refreshed for an hour, or three
	// of this node's refresh periods if longer, is of a node that died
	// without a goodbye: it does not hold the fleet back.
	recent := time.Now().Add(-max(time.Hour, 3*n.cfg.LastSeenEvery)).UnixMilli()
	for _, r := range nodes {
		if r.Alive && r.LastSeenMs >= recent && r.Version < mesh.LineageVersion {
			return false
		}
	}
	return true
}
