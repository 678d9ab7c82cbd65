package mesh

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/crdt"
	"github.com/meshnode/meshnode/internal/frame"
)

// ReplicatorConfig configures a Replicator.
type ReplicatorConfig struct {
	Host   host.Host
	PubSub *pubsub.PubSub
	Fleet  *Fleet
	Auth   *Auth
	Doc    *crdt.Doc
	Logger zerolog.Logger
	// SyncInterval is how often anti-entropy runs with every authenticated
	// peer. Default 30 s.
	SyncInterval time.Duration
	// Bootstrap asks the first authenticated peer for a snapshot before
	// syncing: set it when the local document is new.
	Bootstrap bool
	// MaxGossip is the largest sealed change published on the topic; larger
	// ones are announced by heads and pulled by anti-entropy. Default
	// 900 KiB (GossipSub drops messages over 1 MiB silently).
	MaxGossip int
	// Workers is the number of concurrent outbound sync sessions. Default 4.
	Workers int
	// OnBootstrapped is called after a snapshot was merged. Must not block.
	OnBootstrapped func()
	// Stale reports a peer whose heartbeats stopped (membership's view).
	// The periodic pass does not queue a stale peer: a peer that died
	// without closing its connection stays authenticated until the
	// transport's idle timeout (30 s for QUIC), and sessions with it
	// would hold sync workers that live peers need. Nil: no peer is
	// stale. Must not block.
	Stale func(peer.ID) bool
	// SyncIdle bounds how long a sync session waits for the peer's next
	// message, or for the peer to take ours; the session as a whole is
	// bounded by 2 min. Default 15 s: a document of 10,000 nodes is
	// checked and applied in well under that.
	SyncIdle time.Duration

	// Gate bans peers struck out for refused changes (see strikes.go);
	// without one they are only disconnected.
	Gate *Gate
	// OnBadChange is called for every change, sync message or snapshot
	// from a peer that the document refused, after the strike is counted
	// and, if it struck the peer out, after the peer was banned (its
	// disconnect runs on a goroutine of its own and may still be under
	// way). It is called from one goroutine of the replicator's, one
	// report at a time and in order, never from the topic validator or a
	// stream handler. It may take its time, but reports that find
	// maxBadReports others waiting are dropped (BadReportsDropped).
	OnBadChange func(BadChange)
	// StrikeLimit refusals of a peer's changes within StrikeWindow strike
	// it out. Default 3 within 10 min.
	StrikeLimit  int
	StrikeWindow time.Duration
	// RefusedPause is how long after a refusal the replicator neither
	// starts nor answers an anti-entropy session with that peer, nor
	// bootstraps from it. Default 30 s.
	RefusedPause time.Duration
}

// Paths a refused change can come by (BadChange.Via).
const (
	ViaGossip   = "gossip"
	ViaSync     = "sync"
	ViaSnapshot = "snapshot"
)

// BadChange reports a change (or sync message, or snapshot) from a peer
// that the document refused.
type BadChange struct {
	// Peer is the peer it is attributed to: for gossip the message's
	// signed origin, for sync and snapshots the peer on the stream.
	Peer peer.ID
	// Refused says which rule it broke and where.
	Refused *crdt.RefusedError
	// Via is ViaGossip, ViaSync or ViaSnapshot.
	Via string
	// Strikes is the peer's refusals within the strike window, this one
	// included.
	Strikes int
	// Disconnected is true when this refusal struck the peer out: it was
	// banned at the Gate for Ban, and its connections closed.
	Disconnected bool
	Ban          time.Duration
}

// BadChangeKind is a rule broken, and the path the change came by.
type BadChangeKind struct{ Rule, Via string }

// ReplicatorStats are cumulative counters.
type ReplicatorStats struct {
	ChangesSent, ChangesReceived, GossipRejected, GossipDropped   uint64
	SyncSessions, SyncFailures, SnapshotsFetched, SnapshotsServed uint64
	// BytesIn and BytesOut count document payload bytes moved by
	// anti-entropy and snapshots (not gossip, not stream framing).
	BytesIn, BytesOut uint64
	// BadChanges counts refusals by rule and path; BadPeersDisconnected
	// the peers struck out for them.
	BadChanges           map[BadChangeKind]uint64
	BadPeersDisconnected uint64
	// BadReportsDropped counts refusals OnBadChange did not hear of
	// because too many reports were waiting for it.
	BadReportsDropped uint64
	// SyncsPaused counts anti-entropy sessions not run, asked for by us
	// or by the peer, because the peer was paused after a refusal.
	SyncsPaused uint64
	// EpochCatchUps counts moves to a peer's later epoch by its snapshot.
	EpochCatchUps uint64
}

// Replicator keeps the document converged with the fleet: every local
// commit goes out on GossipSub (fast, lossy), and anti-entropy over direct
// streams (automerge's sync protocol) repairs whatever gossip lost: on
// every newly authenticated peer, periodically, and at once when gossip or
// a heartbeat shows a change we lack.
type Replicator struct {
	cfg                  ReplicatorConfig
	lg                   zerolog.Logger
	topicName            string
	syncProto, snapProto protocol.ID
	needBoot             atomic.Bool
	lastDiskFull         atomic.Int64 // Unix ns of the last disk-full log line
	dropGossip           atomic.Bool
	outbox               chan crdt.Event
	notice               chan struct{} // coalesced: announce our heads
	wake                 chan struct{}
	topic                *pubsub.Topic
	reports              chan BadChange // for OnBadChange, see reportLoop
	closeWake            chan struct{}  // coalesced: toClose has peers

	bootMu sync.Mutex // one snapshot bootstrap at a time

	mu      sync.Mutex
	pending map[peer.ID]bool
	order   []peer.ID
	running map[peer.ID]bool // peers a worker is syncing with (next, done)
	states  map[stateKey]*crdt.PeerState

	changesSent, changesRecv, rejected, dropped   atomic.Uint64
	sessions, failures, snapsFetched, snapsServed atomic.Uint64
	bytesIn, bytesOut                             atomic.Uint64
	syncsPaused, reportsDropped, catchUps         atomic.Uint64

	strikeMu  sync.Mutex // guards strikes, bad, struckOut and toClose
	strikes   *strikes
	bad       map[BadChangeKind]uint64
	struckOut uint64
	// toClose are the peers struck out and banned whose connections
	// closeLoop has yet to close. A set, not a channel: a disconnect is
	// never dropped, and a peer struck out twice meanwhile is closed once.
	toClose map[peer.ID]struct{}
}

// maxBadReports is how many reports wait for OnBadChange at most; a
// flood of refused gossip (any member can sign it as any number of fresh
// identities) then costs dropped reports, not memory or a blocked
// validator.
const maxBadReports = 256

type stateKey struct {
	p         peer.ID
	initiator bool
}

// NewReplicator returns a Replicator; Run starts it.
func NewReplicator(cfg ReplicatorConfig) *Replicator {
	if cfg.SyncInterval <= 0 {
		cfg.SyncInterval = 30 * time.Second
	}
	if cfg.MaxGossip <= 0 {
		cfg.MaxGossip = 900 << 10
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.Stale == nil {
		cfg.Stale = func(peer.ID) bool { return false }
	}
	if cfg.SyncIdle <= 0 {
		cfg.SyncIdle = 15 * time.Second
	}
	if cfg.OnBootstrapped == nil {
		cfg.OnBootstrapped = func() {}
	}
	if cfg.OnBadChange == nil {
		cfg.OnBadChange = func(BadChange) {}
	}
	if cfg.StrikeLimit <= 0 {
		cfg.StrikeLimit = 3
	}
	if cfg.StrikeWindow <= 0 {
		cfg.StrikeWindow = 10 * time.Minute
	}
	if cfg.RefusedPause <= 0 {
		cfg.RefusedPause = 30 * time.Second
	}
	r := &Replicator{
		cfg:       cfg,
		lg:        cfg.Logger.With().Str("component", "replicator").Logger(),
		topicName: cfg.Fleet.Topic("doc/1"),
		syncProto: cfg.Fleet.Protocol("sync/2"),
		snapProto: cfg.Fleet.Protocol("snapshot/1"),
		outbox:    make(chan crdt.Event, 4096),
		notice:    make(chan struct{}, 1),
		wake:      make(chan struct{}, 1),
		reports:   make(chan BadChange, maxBadReports),
		closeWake: make(chan struct{}, 1),
		toClose:   map[peer.ID]struct{}{},
		pending:   map[peer.ID]bool{},
		running:   map[peer.ID]bool{},
		states:    map[stateKey]*crdt.PeerState{},
		strikes:   newStrikes(cfg.StrikeLimit, cfg.StrikeWindow, cfg.RefusedPause, defaultMaxStrikes),
		bad:       map[BadChangeKind]uint64{},
	}
	r.needBoot.Store(cfg.Bootstrap)
	return r
}

// Stats returns cumulative counters.
func (r *Replicator) Stats() ReplicatorStats {
	r.strikeMu.Lock()
	bad, out := maps.Clone(r.bad), r.struckOut
	r.strikeMu.Unlock()
	return ReplicatorStats{
		BadChanges: bad, BadPeersDisconnected: out,
		ChangesSent: r.changesSent.Load(), ChangesReceived: r.changesRecv.Load(),
		GossipRejected: r.rejected.Load(), GossipDropped: r.dropped.Load(),
		SyncSessions: r.sessions.Load(), SyncFailures: r.failures.Load(),
		SnapshotsFetched: r.snapsFetched.Load(), SnapshotsServed: r.snapsServed.Load(),
		BytesIn: r.bytesIn.Load(), BytesOut: r.bytesOut.Load(),
		BadReportsDropped: r.reportsDropped.Load(), SyncsPaused: r.syncsPaused.Load(),
		EpochCatchUps: r.catchUps.Load(),
	}
}

// DropGossip makes the replicator discard incoming document gossip while
// on, simulating a lossy mesh or a subscriber too slow to keep up. Anti-
// entropy must still converge; tests and benchmarks use it.
func (r *Replicator) DropGossip(on bool) { r.dropGossip.Store(on) }

// Run replicates until ctx ends, then waits for everything it started.
func (r *Replicator) Run(ctx context.Context) error {
	topic, sub, leave, err := joinTopic(r.cfg.PubSub, r.topicName, r.validate)
	if err != nil {
		return err
	}
	defer leave()
	r.topic = topic

	unwatch := r.cfg.Doc.Watch(func(ev crdt.Event) {
		if ev.Epoch {
			// Peers learn of the new epoch from the next session's
			// hello: start one with each now.
			for _, p := range r.cfg.Auth.Authenticated() {
				r.RequestSync(p)
			}
		}
		if !ev.Local {
			return
		}
		select {
		case r.outbox <- ev:
		default:
			// Anti-entropy will carry it; never block a commit on gossip.
			r.dropped.Add(1)
		}
	})
	defer unwatch()
	r.cfg.Auth.Handle(r.syncProto, r.serveSync)
	r.cfg.Auth.Handle(r.snapProto, r.serveSnapshot)
	defer r.cfg.Host.RemoveStreamHandler(r.syncProto)
	defer r.cfg.Host.RemoveStreamHandler(r.snapProto)

	for _, p := range r.cfg.Auth.Authenticated() {
		r.PeerUp(p)
	}

	var wg sync.WaitGroup
	run := func(fn func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); fn(ctx) }()
	}
	run(r.publishLoop)
	run(func(ctx context.Context) { r.receiveLoop(ctx, sub) })
	for range r.cfg.Workers {
		run(r.syncWorker)
	}
	run(r.periodic)
	run(r.closeLoop)
	run(r.reportLoop)
	<-ctx.Done()
	wg.Wait()
	return nil
}

// diskFull logs a change left unstored for a full disk, once per 10 s.
func (r *Replicator) diskFull(err error) {
	now := time.Now().UnixNano()
	if last := r.lastDiskFull.Load(); now-last < int64(10*time.Second) || !r.lastDiskFull.CompareAndSwap(last, now) {
		return
	}
	r.lg.Error().Err(err).Msg("changes from peers not stored: the disk is full; anti-entropy fetches them again once space frees")
}

// PeerUp is called when a peer authenticates: bootstrap from it if our
// document is new, then sync. It does not block.
func (r *Replicator) PeerUp(p peer.ID) { r.RequestSync(p) }

// PeerDown forgets a peer's sync state; a new connection starts afresh.
func (r *Replicator) PeerDown(p peer.ID) {
	r.mu.Lock()
	delete(r.states, stateKey{p, true})
	delete(r.states, stateKey{p, false})
	r.mu.Unlock()
}

// RequestSync queues an anti-entropy session with p; requests for a peer
// already queued coalesce. It does not block.
func (r *Replicator) RequestSync(p peer.ID) {
	if p == r.cfg.Host.ID() {
		return
	}
	r.mu.Lock()
	if !r.pending[p] {
		r.pending[p] = true
		r.order = append(r.order, p)
	}
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// next takes the first queued peer that no worker is syncing with: a
// peer that stopped answering holds one worker (for SyncIdle), never all
// of them, however often the periodic pass asks for it. done releases it.
func (r *Replicator) next() (peer.ID, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, p := range r.order {
		if r.running[p] {
			continue
		}
		r.order = slices.Delete(r.order, i, i+1)
		delete(r.pending, p)
		r.running[p] = true
		if len(r.order) > 0 {
			select {
			case r.wake <- struct{}{}:
			default:
			}
		}
		return p, true
	}
	return "", false
}

// done ends a worker's turn with p; a request queued meanwhile runs next.
func (r *Replicator) done(p peer.ID) {
	r.mu.Lock()
	delete(r.running, p)
	again := r.pending[p]
	r.mu.Unlock()
	if again {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
}

func (r *Replicator) state(p peer.ID, initiator bool) *crdt.PeerState {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := stateKey{p, initiator}
	s, ok := r.states[k]
	if !ok {
		s = r.cfg.Doc.NewPeerState()
		r.states[k] = s
	}
	return s
}

func (r *Replicator) syncWorker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		}
		for {
			p, ok := r.next()
			if !ok || ctx.Err() != nil {
				if ok {
					r.done(p)
				}
				break
			}
			r.turn(ctx, p)
			r.done(p)
		}
	}
}

// turn is one worker's session with p: bootstrap if the document still
// needs it, then anti-entropy.
func (r *Replicator) turn(ctx context.Context, p peer.ID) {
	if !r.cfg.Auth.IsAuthenticated(p) {
		return
	}
	if r.skipPaused(p) {
		// A paused peer's requests are dropped, not deferred:
		// heartbeats and the periodic pass ask again later.
		return
	}
	r.maybeBootstrap(ctx, p)
	if r.skipPaused(p) {
		return // its snapshot was refused
	}
	if err := r.syncWith(ctx, p); err != nil && ctx.Err() == nil {
		r.failures.Add(1)
		r.lg.Debug().Str("peer", p.String()).Err(err).Msg("anti-entropy failed")
	}
}

func (r *Replicator) periodic(ctx context.Context) {
	t := time.NewTicker(r.cfg.SyncInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			for _, p := range r.cfg.Auth.Authenticated() {
				if !r.cfg.Stale(p) {
					r.RequestSync(p)
				}
			}
		}
	}
}

// idleStream is a stream whose every read and write must make progress
// within idle: a session with a peer that stopped answering ends then,
// not when the transport gives up on the connection.
type idleStream struct {
	s    network.Stream
	idle time.Duration
}

func (t idleStream) Read(b []byte) (int, error) {
	_ = t.s.SetReadDeadline(time.Now().Add(t.idle))
	return t.s.Read(b)
}

func (t idleStream) Write(b []byte) (int, error) {
	_ = t.s.SetWriteDeadline(time.Now().Add(t.idle))
	return t.s.Write(b)
}

// openStream opens a stream to p (relayed connections allowed) that is
// reset when ctx ends; release stops that watch and closes the stream.
func (r *Replicator) openStream(ctx context.Context, p peer.ID, proto protocol.ID, why string) (network.Stream, func(), error) {
	s, err := r.cfg.Host.NewStream(network.WithAllowLimitedConn(ctx, why), p, proto)
	if err != nil {
		return nil, nil, err
	}
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	return s, func() { stop(); s.Close() }, nil
}

func (r *Replicator) syncWith(ctx context.Context, p peer.ID) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	s, release, err := r.openStream(ctx, p, r.syncProto, "sync")
	if err != nil {
		return err
	}
	defer release()
	st, err := r.cfg.Doc.Sync(idleStream{s, r.cfg.SyncIdle}, r.state(p, true), true)
	r.sessions.Add(1)
	r.countSync(st)
	if mm, ok := errors.AsType[*crdt.EpochMismatchError](err); ok {
		_ = s.CloseWrite()
		if mm.Peer.After(mm.Local) {
			// Even when this node holds the same cut, the peer's snapshot
			// is taken rather than the cut built here: the carry then sees
			// what the peer wrote and carried in the new epoch, and does
			// not write an older value over it (carry.go).
			r.catchUp(ctx, p, mm.Peer)
		}
		return nil // a peer behind moves when it syncs with us
	}
	if err != nil {
		s.Reset()
		r.PeerDown(p) // the automerge states may disagree now; start afresh
		if rf, ok := crdt.AsRefused(err); ok {
			r.refused(p, rf, ViaSync)
		}
		return err
	}
	_ = s.CloseWrite()
	if st.Changes > 0 {
		r.lg.Debug().Str("peer", p.String()).Int("changes", st.Changes).Int("rounds", st.Rounds).Msg("anti-entropy received changes")
	}
	return nil
}

func (r *Replicator) countSync(st crdt.SyncStats) {
	r.bytesIn.Add(uint64(st.BytesReceived))
	r.bytesOut.Add(uint64(st.BytesSent))
	if st.Changes > 0 {
		// Changes that came by anti-entropy are not gossiped; announce the
		// new heads so peers that lack them pull at once (after a heal,
		// a bootstrap or lost gossip) instead of at their next heartbeat.
		select {
		case r.notice <- struct{}{}:
		default:
		}
	}
}

func (r *Replicator) serveSync(s network.Stream) {
	p := s.Conn().RemotePeer()
	defer s.Close()
	if r.skipPaused(p) {
		// It just sent a change we refused; its document most likely
		// offers it again.
		s.Reset()
		return
	}
	if r.needBoot.Load() {
		// Answering a sync with an empty document would make the peer
		// send its whole history (~25x a snapshot): take its snapshot
		// first, then answer with what is left.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		stop := context.AfterFunc(ctx, func() { s.Reset() })
		r.maybeBootstrap(ctx, p)
		stop()
		cancel()
		if r.skipPaused(p) {
			s.Reset() // its snapshot was refused
			return
		}
	}
	// The whole session is bounded too; idleStream's deadlines bound
	// each step.
	limit := time.AfterFunc(2*time.Minute, func() { s.Reset() })
	defer limit.Stop()
	st, err := r.cfg.Doc.Sync(idleStream{s, r.cfg.SyncIdle}, r.state(p, false), false)
	r.countSync(st)
	if mm, ok := errors.AsType[*crdt.EpochMismatchError](err); ok {
		if mm.Peer.After(mm.Local) {
			r.RequestSync(p) // a worker takes its snapshot
		}
		return
	}
	if err != nil {
		s.Reset()
		r.PeerDown(p)
		r.lg.Debug().Str("peer", p.String()).Err(err).Msg("serving anti-entropy failed")
		if rf, ok := crdt.AsRefused(err); ok {
			r.refused(p, rf, ViaSync)
		}
	}
}

// maybeBootstrap fetches a snapshot from p if the document still needs one.
// Other workers wait here meanwhile, then sync incrementally, instead of
// each pulling the whole document.
func (r *Replicator) maybeBootstrap(ctx context.Context, p peer.ID) {
	if !r.needBoot.Load() {
		return
	}
	r.bootMu.Lock()
	defer r.bootMu.Unlock()
	if r.needBoot.Load() {
		r.bootstrap(ctx, p)
	}
}

// maxSnapshot bounds a snapshot received from a peer.
const maxSnapshot = 512 << 20

// fetchSnapshot asks p for its snapshot.
func (r *Replicator) fetchSnapshot(ctx context.Context, p peer.ID) ([]byte, error) {
	s, release, err := r.openStream(ctx, p, r.snapProto, "snapshot")
	if err != nil {
		return nil, err
	}
	defer release()
	_ = s.CloseWrite()
	b, err := frame.Read(bufio.NewReader(s), maxSnapshot)
	if err != nil {
		return nil, err
	}
	r.bytesIn.Add(uint64(len(b)))
	return b, nil
}

// catchUp moves the document to p's later epoch by p's snapshot: a node
// that missed a cut (offline, partitioned, or on the losing side of two
// concurrent ones). The document carries this node's writes across.
func (r *Replicator) catchUp(ctx context.Context, p peer.ID, theirs crdt.Epoch) {
	r.bootMu.Lock()
	defer r.bootMu.Unlock()
	ours := r.cfg.Doc.Epoch()
	if !theirs.After(ours) {
		return // another worker got there first
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	start := time.Now()
	b, err := r.fetchSnapshot(ctx, p)
	if err == nil {
		err = r.cfg.Doc.MergeSnapshot(b)
	}
	if rf, ok := crdt.AsRefused(err); ok {
		r.refused(p, rf, ViaSnapshot)
		return
	}
	if err == nil || errors.Is(err, crdt.ErrEpochBehind) {
		if now := r.cfg.Doc.Epoch(); now != theirs && !now.After(theirs) {
			// Its hello named a later epoch than its snapshot holds:
			// without this a peer could make us fetch snapshots forever.
			r.refused(p, &crdt.RefusedError{Rule: crdt.RuleEpoch,
				Detail: fmt.Sprintf("its sync hello named epoch %s, its snapshot did not take us there (we are on %s)", theirs, now)}, ViaSnapshot)
			return
		}
	}
	if err != nil {
		if ctx.Err() == nil && !errors.Is(err, crdt.ErrEpochBehind) {
			r.lg.Warn().Str("peer", p.String()).Err(err).Msg("moving to the peer's epoch failed; retrying at the next session")
		}
		return
	}
	r.catchUps.Add(1)
	r.snapsFetched.Add(1)
	r.lg.Info().Str("peer", p.String()).Str("from", ours.String()).Str("epoch", r.cfg.Doc.Epoch().String()).
		Int("bytes", len(b)).Dur("took", time.Since(start)).Msg("document moved to the fleet's epoch")
	r.RequestSync(p)
}

func (r *Replicator) bootstrap(ctx context.Context, p peer.ID) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	start := time.Now()
	err := func() error {
		b, err := r.fetchSnapshot(ctx, p)
		if err != nil {
			return err
		}
		if err := r.cfg.Doc.MergeSnapshot(b); err != nil {
			return err
		}
		r.lg.Info().Str("peer", p.String()).Int("bytes", len(b)).Dur("took", time.Since(start)).Msg("document bootstrapped from snapshot")
		return nil
	}()
	if rf, ok := crdt.AsRefused(err); ok {
		// Reported, and p is paused: the next peer the workers take
		// bootstraps us instead, so ask every other one now.
		r.refused(p, rf, ViaSnapshot)
		for _, q := range r.cfg.Auth.Authenticated() {
			if q != p {
				r.RequestSync(q)
			}
		}
		return
	}
	if errors.Is(err, crdt.ErrSnapshotNeedsSync) {
		// Not the peer's fault (a concurrent replay every node accepted
		// needs the change path's exact check): the sync that follows
		// brings the document change by change, and no other snapshot
		// would do better.
		r.lg.Info().Str("peer", p.String()).Msg("snapshot holds a change that needs the full replay check; bootstrapping by sync")
		r.needBoot.Store(false)
		return
	}
	if err != nil {
		if ctx.Err() == nil {
			r.lg.Warn().Str("peer", p.String()).Err(err).Msg("snapshot bootstrap failed; falling back to sync")
		}
		return
	}
	r.snapsFetched.Add(1)
	r.needBoot.Store(false)
	r.cfg.OnBootstrapped()
}

func (r *Replicator) serveSnapshot(s network.Stream) {
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(2 * time.Minute))
	snap := r.cfg.Doc.Snapshot()
	if err := frame.Write(s, snap); err != nil {
		s.Reset()
		return
	}
	r.bytesOut.Add(uint64(len(snap)))
	r.snapsServed.Add(1)
}

func (r *Replicator) publishLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.notice:
			if err := r.topic.Publish(ctx, r.cfg.Fleet.Seal(encodeDocHeads(r.cfg.Doc.Heads()), r.topicName)); err != nil && ctx.Err() == nil {
				r.lg.Debug().Err(err).Msg("publish heads notice failed")
			}
		case ev := <-r.outbox:
			plain := encodeDocChange(ev.Hash, ev.Deps, ev.Change)
			sealed := r.cfg.Fleet.Seal(plain, r.topicName)
			if len(sealed) > r.cfg.MaxGossip {
				sealed = r.cfg.Fleet.Seal(encodeDocHeads(ev.Heads), r.topicName)
			}
			if err := r.topic.Publish(ctx, sealed); err != nil {
				if ctx.Err() == nil {
					r.lg.Debug().Err(err).Msg("publish change failed")
				}
				continue
			}
			r.changesSent.Add(1)
		}
	}
}

// validate runs inside pubsub for every message on the document topic,
// before it is delivered or forwarded.
func (r *Replicator) validate(_ context.Context, from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
	if r.cfg.Gate != nil && r.cfg.Gate.Banned(m.GetFrom()) {
		// Struck out for refused changes: what it publishes while banned
		// is neither applied nor forwarded by us. Ignore, not Reject: the
		// neighbour that relayed it did nothing wrong.
		return pubsub.ValidationIgnore
	}
	res := validateFrom(r.cfg.Auth.IsAuthenticated, r.cfg.Fleet, r.cfg.Host.ID(), from, m, r.topicName, &r.rejected)
	if res != pubsub.ValidationAccept || m.GetFrom() == r.cfg.Host.ID() {
		return res
	}
	// The checks that depend on the change's bytes alone run here, before
	// pubsub forwards the message: a bad change stops at the first honest
	// node and is never relayed. Whether it replays a record depends on
	// the document and is checked when it is applied.
	plain, _ := m.ValidatorData.([]byte)
	if dm, err := decodeDocMsg(plain); err == nil && dm.kind == msgChange {
		if rf, refused := crdt.AsRefused(r.cfg.Doc.Precheck(dm.change)); refused {
			r.rejected.Add(1)
			r.refused(gossipCulprit(m), rf, ViaGossip)
			return pubsub.ValidationReject
		}
	}
	return res
}

// validateFrom accepts a message only when the neighbour that sent it to us
// authenticated (or it is our own) and it opens with the fleet key; the
// plaintext is handed on in ValidatorData.
func validateFrom(authed func(peer.ID) bool, f *Fleet, self, from peer.ID, m *pubsub.Message, topic string, rejected *atomic.Uint64) pubsub.ValidationResult {
	if from != self && !authed(from) {
		rejected.Add(1)
		return pubsub.ValidationReject
	}
	plain, err := f.Open(m.Data, topic)
	if err != nil {
		rejected.Add(1)
		return pubsub.ValidationReject
	}
	m.ValidatorData = plain
	return pubsub.ValidationAccept
}

func (r *Replicator) receiveLoop(ctx context.Context, sub *pubsub.Subscription) {
	self := r.cfg.Host.ID()
	for {
		m, err := sub.Next(ctx)
		if err != nil {
			return
		}
		if m.ReceivedFrom == self || m.GetFrom() == self {
			continue
		}
		if r.dropGossip.Load() {
			r.dropped.Add(1)
			continue
		}
		plain, _ := m.ValidatorData.([]byte)
		dm, err := decodeDocMsg(plain)
		if err != nil {
			r.rejected.Add(1)
			r.lg.Warn().Str("peer", m.GetFrom().String()).Err(err).Msg("malformed document gossip")
			continue
		}
		switch dm.kind {
		case msgChange:
			fresh, err := r.cfg.Doc.ApplyChange(dm.change, dm.hash, dm.deps)
			rf, refused := crdt.AsRefused(err)
			switch {
			case errors.Is(err, crdt.ErrDiskFull):
				// Not the peer's fault: the change stays out of memory
				// and anti-entropy brings it again once space frees.
				r.diskFull(err)
			case refused:
				r.rejected.Add(1)
				r.refused(gossipCulprit(m), rf, ViaGossip)
			case errors.Is(err, crdt.ErrMissingDeps):
				r.RequestSync(m.ReceivedFrom)
			case err != nil:
				r.rejected.Add(1)
				r.lg.Warn().Str("peer", m.GetFrom().String()).Err(err).Msg("document change refused")
			case fresh:
				r.changesRecv.Add(1)
			}
		case msgHeads:
			if !r.cfg.Doc.HasAll(dm.deps) {
				r.syncOrigin(m)
			}
		}
	}
}

// gossipCulprit is the peer a refused change on gossip is attributed to:
// the message's origin (GetFrom), not the neighbour that forwarded it
// (ReceivedFrom). The topic validator runs every check that depends on a
// change's bytes alone, so honest nodes do not forward such a change; but
// whether a change replays a record is known only when it is applied,
// after pubsub has forwarded it, so an honest node may relay a replay
// before refusing it, and blaming the forwarder would have honest nodes
// disconnect each other over one bad publisher. The origin
// cannot be forged by a relay: StrictSign makes pubsub check the origin's
// signature over the message before our validator runs, and only the
// node that made a change publishes it (publishLoop sends local commits
// only). A member can still sign as any identity it mints; see strikes.go.
func gossipCulprit(m *pubsub.Message) peer.ID { return m.GetFrom() }

// refused counts a refusal of p's change as a strike; a peer struck out
// is banned at the Gate (at once, so that it cannot dial straight back)
// and handed to closeLoop to be disconnected. Then reportLoop hands the
// report to OnBadChange. It never blocks: it runs in the topic validator,
// inside pubsub's validation workers, and in stream handlers.
func (r *Replicator) refused(p peer.ID, rf *crdt.RefusedError, via string) {
	r.strikeMu.Lock()
	n, out := r.strikes.strike(p, time.Now())
	r.bad[BadChangeKind{Rule: rf.Rule, Via: via}]++
	if out {
		r.struckOut++
		r.toClose[p] = struct{}{}
	}
	r.strikeMu.Unlock()
	bc := BadChange{Peer: p, Refused: rf, Via: via, Strikes: n, Disconnected: out}
	if out {
		if r.cfg.Gate != nil {
			bc.Ban = r.cfg.Gate.Ban(p)
		}
		select {
		case r.closeWake <- struct{}{}:
		default:
		}
	}
	r.lg.Debug().Str("peer", p.String()).Str("via", via).Int("strikes", n).Bool("disconnected", out).Err(rf).Msg("change from peer refused")
	select {
	case r.reports <- bc:
	default:
		r.reportsDropped.Add(1)
	}
}

// closeLoop closes the connections of the peers refused struck out.
func (r *Replicator) closeLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.closeWake:
		}
		r.strikeMu.Lock()
		ps := r.toClose
		r.toClose = map[peer.ID]struct{}{}
		r.strikeMu.Unlock()
		for p := range ps {
			_ = r.cfg.Host.Network().ClosePeer(p)
		}
	}
}

// reportLoop hands refused's reports to OnBadChange.
func (r *Replicator) reportLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case bc := <-r.reports:
			r.cfg.OnBadChange(bc)
		}
	}
}

// paused reports whether anti-entropy with p is paused after a refusal.
func (r *Replicator) paused(p peer.ID) bool {
	r.strikeMu.Lock()
	defer r.strikeMu.Unlock()
	return r.strikes.paused(p, time.Now())
}

// skipPaused is paused, counting a session skipped for it.
func (r *Replicator) skipPaused(p peer.ID) bool {
	if !r.paused(p) {
		return false
	}
	r.syncsPaused.Add(1)
	return true
}

// syncOrigin pulls from the message's origin when connected to it, else
// from the neighbour that forwarded it.
func (r *Replicator) syncOrigin(m *pubsub.Message) {
	if o := m.GetFrom(); r.cfg.Auth.IsAuthenticated(o) {
		r.RequestSync(o)
		return
	}
	r.RequestSync(m.ReceivedFrom)
}
