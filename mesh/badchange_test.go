package mesh

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	am "github.com/automerge/automerge-go"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/crdt"
	"github.com/meshnode/meshnode/internal/frame"
)

// Refused changes here are real ones: automerge changes that write a root
// key outside the document's schema, made with automerge-go by a member
// that passes fleet authentication, and refused by crdt's checks on the
// honest nodes. Nothing of the network is mocked.

// member is an honest fleet member: host, gate, auth, pubsub, document
// and replicator, on 127.0.0.1. Its gate's clock runs skew ahead.
type member struct {
	h    host.Host
	gate *Gate
	auth *Auth
	ps   *pubsub.PubSub
	doc  *crdt.Doc
	repl *Replicator
	skew atomic.Int64
	mesh meshTracer

	mu       sync.Mutex
	bad      []BadChange
	staleSet map[peer.ID]bool // what the replicator's Stale reports
}

func (m *member) stale(p peer.ID) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.staleSet[p]
}

func (m *member) info() peer.AddrInfo { return peer.AddrInfo{ID: m.h.ID(), Addrs: m.h.Addrs()} }

// topicPeers lists the peers m sees on the document topic.
func (m *member) topicPeers(f *Fleet) func() []peer.ID {
	return func() []peer.ID { return m.ps.ListPeers(f.Topic("doc/1")) }
}

// reports returns the bad changes reported so far.
func (m *member) reports() []BadChange {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]BadChange(nil), m.bad...)
}

// testPause is the members' RefusedPause: long enough to check that
// nothing syncs with a paused peer, short enough for a test to outwait.
const testPause = 2 * time.Second

// testIdle is the members' SyncIdle.
const testIdle = time.Second

func newMember(t *testing.T, f *Fleet, bootstrap bool, opts ...func(*ReplicatorConfig)) *member {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	m := &member{gate: NewGate()}
	m.gate.now = func() time.Time { return time.Now().Add(time.Duration(m.skew.Load())) }
	h, err := NewHost(HostConfig{Key: key, Listen: []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/0")}, Gate: m.gate})
	if err != nil {
		t.Fatal(err)
	}
	m.h = h
	ctx, cancel := context.WithCancel(context.Background())
	// NewPubSub's options, and a tracer.
	m.ps, err = pubsub.NewGossipSub(ctx, h, pubsub.WithFloodPublish(true),
		pubsub.WithMessageSignaturePolicy(pubsub.StrictSign), pubsub.WithEventTracer(&m.mesh))
	if err != nil {
		t.Fatal(err)
	}
	// The cut rule never runs: tests cut with ProposeCut and SwitchEpoch.
	if m.doc, err = crdt.Open(crdt.Config{Dir: t.TempDir(), Logger: zerolog.Nop(), Key: key, CutCheck: -1}); err != nil {
		t.Fatal(err)
	}
	lg := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel).With().Str("peer", h.ID().String()[:8]).Logger()
	m.auth = NewAuth(AuthConfig{Host: h, Fleet: f, Gate: m.gate, Logger: lg, Timeout: 5 * time.Second,
		OnUp: func(p peer.ID) { m.repl.PeerUp(p) }, OnDown: func(p peer.ID) { m.repl.PeerDown(p) }})
	rc := ReplicatorConfig{
		Host: h, PubSub: m.ps, Fleet: f, Auth: m.auth, Doc: m.doc, Logger: lg, Gate: m.gate,
		Bootstrap: bootstrap, SyncInterval: 500 * time.Millisecond, SyncIdle: testIdle,
		Stale:       func(p peer.ID) bool { return m.stale(p) },
		StrikeLimit: 3, StrikeWindow: time.Minute, RefusedPause: testPause,
		OnBadChange: func(bc BadChange) {
			m.mu.Lock()
			m.bad = append(m.bad, bc)
			m.mu.Unlock()
		},
	}
	for _, o := range opts {
		o(&rc)
	}
	m.repl = NewReplicator(rc)
	var wg sync.WaitGroup
	for _, run := range []func(context.Context) error{m.auth.Run, m.repl.Run} {
		wg.Add(1)
		go func() { defer wg.Done(); _ = run(ctx) }()
	}
	t.Cleanup(func() { cancel(); wg.Wait(); h.Close(); m.doc.Close() })
	return m
}

// meshTracer follows the peers in a node's GossipSub mesh of each topic:
// GossipSub forwards a message it relays to those only, and a peer grafted
// after the message came does not get it by gossip either.
type meshTracer struct {
	mu sync.Mutex
	in map[string]map[peer.ID]bool
}

// Trace implements pubsub.EventTracer.
func (mt *meshTracer) Trace(ev *pb.TraceEvent) {
	var topic string
	var p peer.ID
	on := ev.GetType() == pb.TraceEvent_GRAFT
	switch ev.GetType() {
	case pb.TraceEvent_GRAFT:
		topic, p = ev.GetGraft().GetTopic(), peer.ID(ev.GetGraft().GetPeerID())
	case pb.TraceEvent_PRUNE:
		topic, p = ev.GetPrune().GetTopic(), peer.ID(ev.GetPrune().GetPeerID())
	default:
		return
	}
	mt.mu.Lock()
	defer mt.mu.Unlock()
	if mt.in == nil {
		mt.in = map[string]map[peer.ID]bool{}
	}
	if mt.in[topic] == nil {
		mt.in[topic] = map[peer.ID]bool{}
	}
	mt.in[topic][p] = on
}

func (mt *meshTracer) has(topic string, p peer.ID) bool {
	mt.mu.Lock()
	defer mt.mu.Unlock()
	return mt.in[topic][p]
}

// rogue is a member (it holds the fleet secret and authenticates) that
// speaks the document protocols with a bare automerge document of its
// own, so it can offer changes no crdt.Doc would make.
type rogue struct {
	tp    testPeer
	f     *Fleet
	topic *pubsub.Topic
	// serve is the document its sync and snapshot handlers offer.
	serve    atomic.Pointer[am.Doc]
	sessions atomic.Int64 // sync sessions peers opened with it
}

func newRogue(t *testing.T, f *Fleet) *rogue {
	t.Helper()
	r := &rogue{tp: newTestPeerTimeout(t, f, 5*time.Second), f: f}
	r.serve.Store(am.New())
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ps, err := NewPubSub(ctx, r.tp.h, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	accept := func(context.Context, peer.ID, *pubsub.Message) pubsub.ValidationResult {
		return pubsub.ValidationAccept
	}
	topic, _, leave, err := joinTopic(ps, f.Topic("doc/1"), accept)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(leave)
	r.topic = topic
	// Straight on the host, not through Auth.Handle: a peer may ask
	// before this side has read the verdict of the exchange.
	r.tp.h.SetStreamHandler(f.Protocol("sync/2"), r.serveSync)
	r.tp.h.SetStreamHandler(f.Protocol("snapshot/1"), func(s network.Stream) {
		defer s.Close()
		_ = frame.Write(s, r.serve.Load().Save())
	})
	return r
}

// serveSync answers crdt's sync protocol from the served document.
func (r *rogue) serveSync(s network.Stream) {
	defer s.Close()
	r.sessions.Add(1)
	ss := am.NewSyncState(r.serve.Load())
	br := bufio.NewReader(s)
	// The hello: the rogue's document is of epoch 0.
	if _, err := frame.Read(br, 64); err != nil || frame.Write(s, crdt.EncodeSyncHello(crdt.Epoch{})) != nil {
		return
	}
	for {
		b, err := frame.Read(br, crdt.MaxSyncFrame)
		if err != nil {
			return
		}
		if len(b) > 0 {
			if _, err := ss.ReceiveMessage(b); err != nil {
				s.Reset()
				return
			}
		}
		var out []byte
		if m, ok := ss.GenerateMessage(); ok {
			out = m.Bytes()
		}
		if err := frame.Write(s, out); err != nil {
			return
		}
	}
}

// publish gossips one change as a member's replicator does.
func (r *rogue) publish(t *testing.T, c *am.Change) {
	t.Helper()
	msg := r.f.Seal(encodeDocChange(c.Hash(), c.Dependencies(), c.Save()), r.f.Topic("doc/1"))
	if err := r.topic.Publish(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}

// commit sets a root key of doc and returns the change.
func commit(t *testing.T, doc *am.Doc, key, value string) *am.Change {
	t.Helper()
	if err := doc.Path(key).Set(value); err != nil {
		t.Fatal(err)
	}
	h, err := doc.Commit("")
	if err != nil {
		t.Fatal(err)
	}
	c, err := doc.Change(h)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// badChange returns a change that writes a root key outside the schema,
// in a document of its own (it depends on nothing).
func badChange(t *testing.T, value string) *am.Change {
	t.Helper()
	return commit(t, am.New(), "evil/key", value)
}

func connect(t *testing.T, from host.Host, to peer.AddrInfo, authed func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := from.Connect(ctx, to); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "authentication", authed)
}

// onTopic waits until list names every one of want (peers on the
// document topic, as a node sees them).
func onTopic(t *testing.T, list func() []peer.ID, want ...peer.ID) {
	t.Helper()
	waitFor(t, 10*time.Second, "peers on the document topic", func() bool {
		have := map[peer.ID]bool{}
		for _, p := range list() {
			have[p] = true
		}
		for _, p := range want {
			if !have[p] {
				return false
			}
		}
		return true
	})
}

// dropPaused asks m's replicator n times, one request at a time, for an
// anti-entropy session with p, which must be paused: it waits until a
// worker has taken each request and the count of sessions skipped for a
// pause has risen, within the pause. A session run instead leaves the
// count where it was and fails the wait.
func dropPaused(t *testing.T, m *member, p peer.ID, n int) {
	t.Helper()
	for range n {
		before := m.repl.Stats().SyncsPaused
		m.repl.RequestSync(p)
		waitFor(t, testPause/2, "a sync request dropped for the pause", func() bool {
			m.repl.mu.Lock()
			queued := m.repl.pending[p]
			m.repl.mu.Unlock()
			return !queued && m.repl.Stats().SyncsPaused > before
		})
	}
}

// TestBadChangesStrikeOut: a member whose changes the document refuses is
// reported, by sync and by gossip, on the node it sent them to and on the
// node a third relayed them to (naming the origin, not the relay); its
// third refusal disconnects and bans it while an honest peer stays; the
// replicator does not sync with it while paused; once the ban is over it
// comes back, and its good changes are taken.
func TestBadChangesStrikeOut(t *testing.T) {
	f, _ := NewFleet()
	a, b := newMember(t, f, false), newMember(t, f, false)
	e := newRogue(t, f)
	eID := e.tp.h.ID()
	if _, err := b.doc.Update("b", func(tx *crdt.Tx) error { tx.SetItemName("shared", "from b"); return nil }); err != nil {
		t.Fatal(err)
	}
	connect(t, b.h, a.info(), func() bool { return a.auth.IsAuthenticated(b.h.ID()) && b.auth.IsAuthenticated(a.h.ID()) })

	// Sync: the rogue's document holds a bad change; a syncs with it as
	// soon as it authenticates, and refuses it.
	served := am.New()
	commit(t, served, "evil/key", "synced")
	e.serve.Store(served)
	connect(t, e.tp.h, a.info(), func() bool { return a.auth.IsAuthenticated(eID) })
	waitFor(t, 10*time.Second, "a's report of the synced change", func() bool { return len(a.reports()) == 1 })
	got := a.reports()[0]
	if got.Peer != eID || got.Via != ViaSync || got.Refused.Rule != crdt.RuleSchema || got.Strikes != 1 || got.Disconnected {
		t.Fatalf("report %+v (%v); want peer %s via sync, rule schema, strike 1, not disconnected", got, got.Refused, eID)
	}
	// Paused: requests to sync with it are dropped, not run.
	dropPaused(t, a, eID, 3)
	if n := e.sessions.Load(); n != 1 {
		t.Fatalf("%d sync sessions with a peer paused after a refused one, want 1", n)
	}
	// From here on its syncs carry nothing: the strikes below are gossip.
	e.serve.Store(am.New())

	// Gossip: a takes it from the rogue and refuses it in its topic
	// validator, before pubsub would forward it: b never sees it.
	onTopic(t, a.topicPeers(f), eID, b.h.ID())
	onTopic(t, e.topic.ListPeers, a.h.ID())
	waitFor(t, 10*time.Second, "b in a's mesh", func() bool { return a.mesh.has(f.Topic("doc/1"), b.h.ID()) })
	e.publish(t, badChange(t, "gossip 1"))
	waitFor(t, 10*time.Second, "a's report of the gossiped change", func() bool { return len(a.reports()) == 2 })
	if bc := a.reports()[1]; bc.Peer != eID || bc.Via != ViaGossip || bc.Refused.Rule != crdt.RuleSchema || bc.Disconnected {
		t.Fatalf("a's report %+v; want peer %s via gossip, rule schema, not disconnected", bc, eID)
	}

	// The third strike.
	e.publish(t, badChange(t, "gossip 2"))
	waitFor(t, 10*time.Second, "the third report", func() bool { return len(a.reports()) == 3 })
	got = a.reports()[2]
	if got.Peer != eID || !got.Disconnected || got.Strikes != 3 || got.Ban != banBase {
		t.Fatalf("third report %+v; want peer %s disconnected at strike 3, banned %v", got, eID, banBase)
	}
	waitFor(t, 10*time.Second, "the rogue disconnected", func() bool {
		return a.h.Network().Connectedness(eID) != network.Connected && !a.auth.IsAuthenticated(eID)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.h.Connect(ctx, e.tp.info()); err == nil {
		t.Fatal("a dialled a banned peer")
	}
	_ = e.tp.h.Connect(ctx, a.info()) // refused as its connection is secured
	// Its side of that connection may have started the exchange: let it
	// end, or it would fail the next connection when its timeout passes.
	waitFor(t, 10*time.Second, "the rogue's attempt to end", func() bool {
		e.tp.auth.mu.Lock()
		busy := e.tp.auth.inflight[a.h.ID()]
		e.tp.auth.mu.Unlock()
		return !busy && e.tp.h.Network().Connectedness(a.h.ID()) != network.Connected && e.tp.gate.Allowed(a.h.ID())
	})
	if a.auth.IsAuthenticated(eID) || !a.gate.Banned(eID) {
		t.Fatalf("the banned rogue came back: authenticated %v, banned %v", a.auth.IsAuthenticated(eID), a.gate.Banned(eID))
	}
	if !a.auth.IsAuthenticated(b.h.ID()) || a.h.Network().Connectedness(b.h.ID()) != network.Connected {
		t.Fatal("the honest peer was disconnected too")
	}
	if st := a.repl.Stats(); st.BadPeersDisconnected != 1 ||
		st.BadChanges[BadChangeKind{crdt.RuleSchema, ViaSync}] != 1 || st.BadChanges[BadChangeKind{crdt.RuleSchema, ViaGossip}] != 2 {
		t.Fatalf("a's stats: %d disconnected, bad changes %v", st.BadPeersDisconnected, st.BadChanges)
	}
	// a did not forward the refused changes: b, meshed with a, never saw one.
	if n := len(b.reports()); n != 0 {
		t.Fatalf("b reported %d bad changes that a should have stopped", n)
	}

	// The ban ends; it comes back with a clean document and good changes.
	clean := am.New()
	good := commit(t, clean, "library/item1/name", "fine")
	e.serve.Store(clean)
	a.skew.Store(int64(banBase + time.Second))
	connect(t, e.tp.h, a.info(), func() bool { return a.auth.IsAuthenticated(eID) })
	waitFor(t, 10*time.Second, "a syncing the good change", func() bool { return a.doc.HasAll([]crdt.Hash{good.Hash()}) })
	onTopic(t, a.topicPeers(f), eID)
	onTopic(t, e.topic.ListPeers, a.h.ID())
	better := commit(t, clean, "library/item1/name", "better")
	e.publish(t, better)
	waitFor(t, 10*time.Second, "a applying the gossiped good change", func() bool { return a.doc.HasAll([]crdt.Hash{better.Hash()}) })
	if n := len(a.reports()); n != 3 {
		t.Fatalf("%d reports after the rogue came back clean, want still 3", n)
	}
}

// TestBadSnapshotBootstrapsElsewhere: a new node whose first peer's
// snapshot is refused reports it, does not sync with that peer, and
// bootstraps from the next.
func TestBadSnapshotBootstrapsElsewhere(t *testing.T) {
	f, _ := NewFleet()
	b := newMember(t, f, false)
	if _, err := b.doc.Update("b", func(tx *crdt.Tx) error { tx.SetItemName("shared", "from b"); return nil }); err != nil {
		t.Fatal(err)
	}
	e := newRogue(t, f)
	eID := e.tp.h.ID()
	served := am.New()
	commit(t, served, "evil/key", "snapshot")
	e.serve.Store(served)
	c := newMember(t, f, true)

	connect(t, e.tp.h, c.info(), func() bool { return c.auth.IsAuthenticated(eID) })
	waitFor(t, 10*time.Second, "c's report of the snapshot", func() bool { return len(c.reports()) == 1 })
	if got := c.reports()[0]; got.Peer != eID || got.Via != ViaSnapshot || got.Refused.Rule != crdt.RuleSchema || got.Disconnected {
		t.Fatalf("report %+v; want peer %s via snapshot, rule schema, not disconnected", got, eID)
	}
	// Paused: the worker that took the snapshot does not sync with it,
	// nor does one asked to afterwards.
	waitFor(t, testPause/2, "the sync after the refused snapshot skipped", func() bool { return c.repl.Stats().SyncsPaused >= 1 })
	dropPaused(t, c, eID, 2)
	if n := e.sessions.Load(); n != 0 {
		t.Fatalf("c ran %d sync sessions with the peer whose snapshot it refused, in its pause", n)
	}
	e.serve.Store(am.New())
	connect(t, b.h, c.info(), func() bool { return c.auth.IsAuthenticated(b.h.ID()) })
	waitFor(t, 10*time.Second, "c bootstrapped from b", func() bool {
		return c.repl.Stats().SnapshotsFetched == 1 && c.doc.HasAll(b.doc.Heads())
	})
	if item, ok, err := c.doc.Item("shared"); err != nil || !ok || item.Name != "from b" {
		t.Fatalf("c's item: %+v %v %v", item, ok, err)
	}
}

// TestBadChangeHookBlocks: refused, which runs in pubsub's validation
// workers, returns at once while OnBadChange is stuck: a peer struck out
// meanwhile is banned at once and disconnected promptly, and the reports
// that find the backlog full are dropped and counted.
func TestBadChangeHookBlocks(t *testing.T) {
	f, _ := NewFleet()
	a, b := newTestPeer(t, nil), newTestPeer(t, nil)
	entered, release := make(chan struct{}, 1), make(chan struct{})
	var heard atomic.Int64
	r := NewReplicator(ReplicatorConfig{
		Host: a.h, Fleet: f, Gate: a.gate, Logger: zerolog.New(zerolog.NewTestWriter(t)), StrikeLimit: 1,
		OnBadChange: func(BadChange) {
			heard.Add(1)
			select {
			case entered <- struct{}{}:
			default:
			}
			<-release
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, loop := range []func(context.Context){r.closeLoop, r.reportLoop} {
		wg.Add(1)
		go func() { defer wg.Done(); loop(ctx) }()
	}
	released := sync.OnceFunc(func() { close(release) })
	t.Cleanup(func() { released(); cancel(); wg.Wait() })

	rf := &crdt.RefusedError{Rule: crdt.RuleSchema}
	refuse := func(ps ...peer.ID) {
		t.Helper()
		done := make(chan struct{})
		go func() {
			defer close(done)
			for _, p := range ps {
				r.refused(p, rf, ViaGossip)
			}
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("refused blocked on the hook")
		}
	}

	ctxc, cancelc := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelc()
	if err := b.h.Connect(ctxc, a.info()); err != nil {
		t.Fatal(err)
	}
	refuse(b.h.ID())
	<-entered // the hook holds b's report and blocks
	if !a.gate.Banned(b.h.ID()) {
		t.Fatal("the struck-out peer is not banned")
	}
	waitFor(t, 5*time.Second, "the struck-out peer disconnected while the hook blocks", func() bool {
		return a.h.Network().Connectedness(b.h.ID()) != network.Connected
	})

	// A flood from fresh identities: the backlog fills and the rest drop,
	// and every one is still banned.
	const extra = 5
	flood := make([]peer.ID, maxBadReports+extra)
	for i := range flood {
		flood[i] = peer.ID(fmt.Sprintf("minted-%d", i))
	}
	refuse(flood...)
	if st := r.Stats(); st.BadReportsDropped != extra || st.BadPeersDisconnected != uint64(len(flood)+1) {
		t.Fatalf("%d reports dropped, %d peers struck out; want %d and %d", st.BadReportsDropped, st.BadPeersDisconnected, extra, len(flood)+1)
	}
	for _, p := range flood {
		if !a.gate.Banned(p) {
			t.Fatalf("%s struck out but not banned", p)
		}
	}
	released()
	waitFor(t, 5*time.Second, "the hook hearing every report not dropped", func() bool { return heard.Load() == 1+maxBadReports })
}
