package mesh

// Fleet simulation (issue 15): the mesh manager's k-out graph, gossip and
// anti-entropy at sizes this machine cannot run as processes.
//
// Real: every node decides with Reconcile and the product's defaults, over
// the node list read from a crdt.Doc that holds one signed record per
// simulated node, written as one change each as a fleet's history has it;
// the bytes of a change, of its gossip message and of a sync session are
// measured on real documents.
//
// Modelled: the clock (one-second steps; each node passes, and syncs, at
// its own phase of the interval); connections (undirected; a dial to a
// live node succeeds at once, to a dead one fails at once; a dead node's
// connections end); membership (a node hears the heartbeats of every node
// of its connected component, so a dead node, or one cut off, turns Silent
// StaleAfter after it was last heard); Discovery's fallback (a node with
// fewer than 2 peers dials 3 random nodes of the node list every 10 s);
// GossipSub (each node's mesh kept
// between Dlo and Dhi by heartbeats, flood publish from the writer,
// forwarding to mesh peers but the sender and the origin); anti-entropy
// (each node runs a session with every neighbour once per SyncInterval,
// and with a new neighbour as soon as the slot opens). The rendezvous runs
// no passes: it is connected to every node already.
//
// Left out: heads notices and heartbeat-triggered pulls (both make repair
// faster than the periodic sessions counted here), GossipSub's IHAVE/IWANT,
// relays, mDNS, latency, and last_seen_ms refreshes (a run must end within
// the Fresh window, or it fails).

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	mrand "math/rand/v2"
	"net"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshnode/meshnode/crdt"
)

// The product's defaults.
const (
	simMax        = 4                // node/config.go: MaxMeshPeers
	simInterval   = 30 * time.Second // node/config.go: MeshInterval (ManagerConfig.Interval)
	simFresh      = 30 * time.Minute // node.go: Fresh is 3 x LastSeenEvery (10 min)
	simBackoff    = 2 * simInterval  // Manager.input: DialBackoff is 2 x Interval
	simStaleAfter = 20 * time.Second // node/config.go: StaleAfter
	simSyncEvery  = 30 * time.Second // node/config.go: SyncInterval
	// DiscoveryConfig defaults: every 10 s, a node with fewer than 2
	// connected peers dials 3 random nodes of the node list.
	simFindEvery, simFindBelow, simFindDials = 10 * time.Second, 2, 3

	// go-libp2p-pubsub v0.15.0 GossipSub defaults.
	gossipD, gossipDlo, gossipDhi = 6, 5, 12
)

// BenchmarkFleetSim simulates fleets of 1,000 and 10,000 nodes: steady
// state with the rendezvous alive, then from that state (a) the rendezvous
// dies, (b) 10% of the nodes and the rendezvous die at once, (c) 30% and
// the rendezvous. Each scenario reports the graph and a change's gossip
// right after the deaths and again after repair, with how long repair and
// the convergence of a change written at the deaths took. Baselines in
// the same run: rrg-distance, ln N / ln(d-1) for a random regular graph
// of the same mean degree (of the gossip mesh for rrg-hops), and flooding
// the change from its writer to every node (bytes/flood). Run with
// -benchtime 1x; the table is logged too.
func BenchmarkFleetSim(b *testing.B) {
	// A pass at 10,000 nodes allocates about a megabyte that is garbage
	// as soon as it returns, tens of thousands of times: collect less often.
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			r := runFleetSim(b, n, 1, true)
			for _, row := range r.rows {
				b.Run(row.name, func(b *testing.B) { row.report(b) })
			}
			b.Run("summary", func(b *testing.B) { // a parent's log is not shown
				r.costs.report(b)
				b.Log(r.table()) // 9 lines: a benchmark's log shows 10 at most
			})
		})
	}
}

// TestFleetSimSmall runs the simulation at 200 nodes and checks what must
// hold whatever the figures: repair reconnects the live nodes and refills
// their slots, no node ever holds more than Max, every live node gets a
// change by gossip and anti-entropy, and skipping unchanged passes gives
// the same graph as running every one.
func TestFleetSimSmall(t *testing.T) {
	t.Parallel()
	r := runFleetSim(t, 200, 7, true)
	t.Logf("200 nodes:\n%s", r.table())
	for _, row := range r.rows {
		checkSimRow(t, r, row)
	}
	full := runFleetSim(t, 200, 7, false)
	if !slices.EqualFunc(r.finalSlots, full.finalSlots, slices.Equal[[]int32]) {
		t.Error("skipping passes whose input did not change gave another graph than running every pass")
	}
}

func checkSimRow(t *testing.T, r *simResult, row simRow) {
	t.Helper()
	g := row.graph
	if g.maxSlots > simMax {
		t.Errorf("%s: a node holds %d slots, above the cap %d", row.name, g.maxSlots, simMax)
	}
	if gs := row.gossip; gs.msgs < gs.reach-1 || gs.reach > g.largest || gs.hopsMax > gs.reach {
		t.Errorf("%s: gossip figures not sane: %+v, largest component %d", row.name, gs, g.largest)
	}
	if !strings.HasSuffix(row.name, "after") && row.name != "steady" {
		return
	}
	if g.comps != 1 || row.gossip.reach != g.live {
		t.Errorf("%s: %d components among %d live nodes, gossip reached %d", row.name, g.comps, g.live, row.gossip.reach)
	}
	if g.minSlots != simMax {
		t.Errorf("%s: a live node holds %d slots; repair must refill to %d", row.name, g.minSlots, simMax)
	}
	if g.meanDist < 1 || g.meanDist > 3*row.rrgDist || g.diameter > 3*int(math.Ceil(row.rrgDist)) {
		t.Errorf("%s: mean distance %.2f, diameter %d, against %.2f for a random regular graph", row.name, g.meanDist, g.diameter, row.rrgDist)
	}
	if rp := row.repair; rp != nil && !rp.settled {
		t.Errorf("%s: the mesh was still changing %v after the deaths", row.name, simRepairCap)
	}
	if rp := row.repair; rp != nil && (rp.convergeSec < 0 || rp.maxSlotsEver > simMax) {
		t.Errorf("%s: the change written at the deaths never reached every live node (%d of %d), or slots went above the cap (%d)", row.name, rp.holders, g.live, rp.maxSlotsEver)
	}
	if row.bytes() <= int64(r.costs.change) {
		t.Errorf("%s: %d bytes for a change of %d", row.name, row.bytes(), r.costs.change)
	}
}

// simResult is one fleet's run.
type simResult struct {
	n          int
	costs      simCosts
	rows       []simRow
	finalSlots [][]int32 // each node's slots at the end of each scenario
}

func runFleetSim(tb testing.TB, n int, seed uint64, memo bool) *simResult {
	f := newSimFleet(tb, n, seed)
	w := newSimWorld(tb, f, seed, memo)
	w.settle()
	res := &simResult{n: n, costs: f.costs}
	res.rows = append(res.rows, w.row("steady", nil))
	for _, sc := range []struct {
		name string
		frac float64
	}{{"rendezvous-dies", 0}, {"10pct-die", 0.1}, {"30pct-die", 0.3}} {
		s := w.clone()
		s.kill(sc.frac)
		res.rows = append(res.rows, s.row(sc.name+"/before", nil))
		rp := s.repair()
		res.rows = append(res.rows, s.row(sc.name+"/after", rp))
		for v := range s.slots {
			res.finalSlots = append(res.finalSlots, sortedKeys(s.slots[v]))
		}
	}
	return res
}

// simFleet is what the scenarios share: identities, the node list as
// Manager.input builds it from the real document, and the measured costs.
type simFleet struct {
	tb    testing.TB
	n     int
	ids   []peer.ID
	index map[peer.ID]int32
	nodes []PlanNode // in index order; node 0 is the rendezvous
	rv    map[peer.ID]bool
	start time.Time
	costs simCosts
}

func newSimFleet(tb testing.TB, n int, seed uint64) *simFleet {
	f := &simFleet{tb: tb, n: n, index: map[peer.ID]int32{}, start: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
	keys := simKeys(tb, n, seed)
	for i, k := range keys {
		id, err := peer.IDFromPrivateKey(k)
		if err != nil {
			tb.Fatal(err)
		}
		f.ids = append(f.ids, id)
		f.index[id] = int32(i)
	}
	f.rv = map[peer.ID]bool{f.ids[0]: true}
	doc := openSimDoc(tb, keys[0])
	for i, k := range keys {
		if _, err := doc.Update("join", func(tx *crdt.Tx) error {
			tx.As(k).SetNode(f.ids[i].String(), simRecord(i, f.start))
			return nil
		}); err != nil {
			tb.Fatal(err)
		}
	}
	f.nodes = f.readNodes(doc)
	f.costs = measureSimCosts(tb, doc, keys[1], f.ids[1], simRecord(1, f.start))
	return f
}

// simKeys returns n Ed25519 keys drawn from a seeded stream, so that a
// run's ranking, and so its graph, repeats.
func simKeys(tb testing.TB, n int, seed uint64) []crypto.PrivKey {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	src := mrand.NewChaCha8(s)
	keys := make([]crypto.PrivKey, n)
	for i := range keys {
		k, _, err := crypto.GenerateEd25519Key(src)
		if err != nil {
			tb.Fatal(err)
		}
		keys[i] = k
	}
	return keys
}

func openSimDoc(tb testing.TB, key crypto.PrivKey) *crdt.Doc {
	d, err := crdt.Open(crdt.Config{Dir: tb.TempDir(), Key: key})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	return d
}

func simRecord(i int, now time.Time) crdt.NodeRecord {
	ip := fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)
	return crdt.NodeRecord{
		Name:    fmt.Sprintf("agent-%05d", i),
		Addrs:   []string{"/ip4/" + ip + "/udp/4700/quic-v1", "/ip4/" + ip + "/tcp/4700"},
		Version: ProtocolVersion, Roles: []string{"build"}, StartedMs: now.Add(-time.Hour).UnixMilli(),
		LastSeenMs: now.UnixMilli(), Alive: true,
	}
}

// readNodes builds the PlanNodes as Manager.input does, from Doc.Nodes.
func (f *simFleet) readNodes(doc *crdt.Doc) []PlanNode {
	recs, err := doc.Nodes()
	if err != nil {
		f.tb.Fatal(err)
	}
	nodes := make([]PlanNode, f.n)
	for id, r := range recs {
		p, err := peer.Decode(id)
		if err != nil {
			f.tb.Fatal(err)
		}
		nodes[f.index[p]] = PlanNode{ID: p, Addrs: r.Addrs, Alive: r.Alive, LastSeenMs: r.LastSeenMs}
	}
	if len(recs) != f.n {
		f.tb.Fatalf("the document lists %d nodes, want %d", len(recs), f.n)
	}
	return nodes
}

// simCosts are byte figures measured on real documents.
type simCosts struct {
	change int // the encoded change of a last_seen_ms refresh (Event.Change)
	msg    int // its gossip payload: wire.go's 0x01 message, sealed
	wire   int // msg inside GossipSub's RPC envelope (signed, origin, seqno, topic)
	// One anti-entropy session, the side lacking the change initiating:
	syncWarm int // with a peer synced before (the periodic case)
	syncCold int // first session with that peer (a new connection)
	syncIdle int // a periodic session that finds nothing to exchange
	// coldIdle is the first session of two peers in sync: what each new
	// connection costs, twice (each side starts one).
	coldIdle  int
	heartbeat int // one heartbeat in its RPC envelope
}

func (c simCosts) report(b *testing.B) {
	b.ReportMetric(float64(c.change), "change-bytes")
	b.ReportMetric(float64(c.msg), "gossip-msg-bytes")
	b.ReportMetric(float64(c.wire), "gossip-wire-bytes")
	b.ReportMetric(float64(c.syncWarm), "sync-warm-bytes")
	b.ReportMetric(float64(c.syncCold), "sync-cold-bytes")
	b.ReportMetric(float64(c.syncIdle), "sync-idle-bytes")
	b.ReportMetric(float64(c.coldIdle), "sync-cold-idle-bytes")
	b.ReportMetric(float64(c.heartbeat), "heartbeat-wire-bytes")
}

// measureSimCosts makes one last_seen_ms refresh on the fleet document a
// (signed by key, as node id) and syncs it to two replicas that lack it,
// one synced with a before, one never.
func measureSimCosts(tb testing.TB, a *crdt.Doc, key crypto.PrivKey, id peer.ID, rec crdt.NodeRecord) simCosts {
	warm, cold := openReplica(tb, a), openReplica(tb, a)
	psA, psW := a.NewPeerState(), warm.NewPeerState()
	var c simCosts
	c.coldIdle = syncBytes(tb, warm, a, psW, psA) // in sync already: this warms the states
	ev := refreshRecord(tb, a, key, id, rec)
	c.syncWarm = syncBytes(tb, warm, a, psW, psA)
	c.syncCold = syncBytes(tb, cold, a, cold.NewPeerState(), a.NewPeerState())
	c.syncIdle = syncBytes(tb, warm, a, psW, psA)
	if !warm.HasAll([]crdt.Hash{ev.Hash}) || !cold.HasAll([]crdt.Hash{ev.Hash}) {
		tb.Fatal("a sync session did not bring the change")
	}
	fleet, err := NewFleet()
	if err != nil {
		tb.Fatal(err)
	}
	topic := fleet.Topic("doc/1")
	sealed := fleet.Seal(encodeDocChange(ev.Hash, ev.Deps, ev.Change), topic)
	c.change, c.msg, c.wire = len(ev.Change), len(sealed), gossipWireSize(id, sealed, topic)
	c.heartbeat = heartbeatWireSize(fleet, a, id, rec)
	return c
}

// heartbeatWireSize is the size of the heartbeat Membership.publish
// would send for rec, with the document's heads, in its RPC envelope.
func heartbeatWireSize(fleet *Fleet, d *crdt.Doc, id peer.ID, rec crdt.NodeRecord) int {
	hb, _ := json.Marshal(Heartbeat{Peer: id.String(), Name: rec.Name, Addrs: rec.Addrs, Heads: d.HeadStrings(), Seq: 1000, SentMs: rec.LastSeenMs})
	topic := fleet.Topic("hb/1")
	return gossipWireSize(id, fleet.Seal(hb, topic), topic)
}

func openReplica(tb testing.TB, of *crdt.Doc) *crdt.Doc {
	d := openSimDoc(tb, nil)
	if err := d.MergeSnapshot(of.Snapshot()); err != nil {
		tb.Fatal(err)
	}
	return d
}

// refreshRecord writes the coarse last_seen_ms refresh a node makes every
// LastSeenEvery and returns the event the gossip publisher would send.
func refreshRecord(tb testing.TB, d *crdt.Doc, key crypto.PrivKey, id peer.ID, rec crdt.NodeRecord) crdt.Event {
	evs := make(chan crdt.Event, 1)
	stop := d.Watch(func(ev crdt.Event) {
		if ev.Local {
			select {
			case evs <- ev:
			default:
			}
		}
	})
	defer stop()
	rec.LastSeenMs += (10 * time.Minute).Milliseconds()
	if _, err := d.Update("last seen", func(tx *crdt.Tx) error {
		tx.As(key).SetNode(id.String(), rec)
		return nil
	}); err != nil {
		tb.Fatal(err)
	}
	select {
	case ev := <-evs:
		return ev
	case <-time.After(10 * time.Second):
		tb.Fatal("no event for the refresh")
		return crdt.Event{}
	}
}

// syncBytes runs one Doc.Sync session over an in-memory pipe and returns
// the bytes both sides wrote, frame headers included.
func syncBytes(tb testing.TB, init, resp *crdt.Doc, psI, psR *crdt.PeerState) int {
	c1, c2 := net.Pipe()
	var n atomic.Int64
	done := make(chan error, 1)
	go func() {
		_, err := resp.Sync(countingRW{c2, &n}, psR, false)
		c2.Close()
		done <- err
	}()
	_, err := init.Sync(countingRW{c1, &n}, psI, true)
	c1.Close()
	if rerr := <-done; err != nil || rerr != nil {
		tb.Fatalf("sync: %v / %v", err, rerr)
	}
	return int(n.Load())
}

type countingRW struct {
	io.ReadWriter
	n *atomic.Int64
}

func (c countingRW) Write(p []byte) (int, error) {
	n, err := c.ReadWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// gossipWireSize is the size of one GossipSub RPC carrying payload under
// StrictSign: origin, 8-byte seqno, topic and a 64-byte Ed25519
// signature (the key is left out: an Ed25519 peer ID holds it), plus the
// RPC's length prefix.
func gossipWireSize(from peer.ID, payload []byte, topic string) int {
	rpc := &pb.RPC{Publish: []*pb.Message{{
		From: []byte(from), Data: payload, Seqno: make([]byte, 8), Topic: &topic, Signature: make([]byte, 64),
	}}}
	n := rpc.Size()
	return n + len(binary.AppendUvarint(nil, uint64(n)))
}

// simWorld is the fleet's state at one instant of the simulated clock.
type simWorld struct {
	tb   testing.TB
	f    *simFleet
	rng  *mrand.Rand
	memo bool // skip passes whose input has not changed (see skip)
	now  time.Time
	died time.Time // when the nodes died; zero before

	alive  []bool
	slots  []map[int32]time.Time // supplementary slots each node opened: peer -> opened
	failed []map[int32]time.Time // failed dials: peer -> when
	adj    []map[int32]uint8     // connections: reasons, linkSlot(...) | linkRV
	gmesh  []map[int32]bool      // each node's GossipSub mesh on the document topic
	phase  []int                 // second of the interval at which a node passes
	sphase []int                 // second of SyncInterval at which it syncs
	fphase []int                 // second of Discovery's interval at which it runs
	memos  []simMemo

	comp   []int32 // component of each live node; valid while compOK
	compOK bool
	views  map[int32][]PlanNode  // node list by component, this component labelling
	prints map[uint64][]PlanNode // node lists by silent set, kept so an unchanged one stays the same slice

	change *simChange // the change anti-entropy is carrying, if any
	stats  simStats
}

type simMemo struct {
	idle  bool      // the last pass had no action
	view  *PlanNode // the node list it saw
	until time.Time // when a Fresh or DialBackoff window next ends
}

type simStats struct {
	calls, skipped, opens, drops, failedDials, maxSlots int
	newConns                                            int // opens that made a connection
	found, findFails                                    int // Discovery's connections and failed dials
	lastAction                                          time.Time
}

// simChange tracks which nodes hold one change.
type simChange struct {
	writer   int32
	has      []bool
	aeHops   []int // anti-entropy sessions between the gossip and the node
	holders  int
	sessions int
	bytes    int64
	doneAt   time.Time
}

func newSimWorld(tb testing.TB, f *simFleet, seed uint64, memo bool) *simWorld {
	w := &simWorld{tb: tb, f: f, rng: mrand.New(mrand.NewPCG(seed, 2)), memo: memo, now: f.start}
	n := f.n
	w.alive = make([]bool, n)
	w.phase, w.sphase, w.fphase = make([]int, n), make([]int, n), make([]int, n)
	w.memos = make([]simMemo, n)
	for v := range n {
		w.alive[v] = true
		w.slots = append(w.slots, map[int32]time.Time{})
		w.failed = append(w.failed, map[int32]time.Time{})
		w.adj = append(w.adj, map[int32]uint8{})
		w.gmesh = append(w.gmesh, map[int32]bool{})
		w.phase[v] = w.rng.IntN(int(simInterval / time.Second))
		w.sphase[v] = w.rng.IntN(int(simSyncEvery / time.Second))
		w.fphase[v] = w.rng.IntN(int(simFindEvery / time.Second))
	}
	for v := 1; v < n; v++ { // --bootstrap: every node dials the rendezvous
		w.link(0, int32(v), linkRV)
	}
	return w
}

// Why a connection exists; it ends when no reason is left.
const (
	linkLow   uint8 = 1 << iota // a slot opened by the lower-numbered end
	linkHigh                    // a slot opened by the higher-numbered end
	linkRV                      // the rendezvous link
	linkFound                   // dialled by Discovery from the node list
)

func linkSlot(owner, other int32) uint8 {
	if owner < other {
		return linkLow
	}
	return linkHigh
}

// link adds a reason for the connection v-u and reports whether the
// connection is new.
func (w *simWorld) link(v, u int32, why uint8) bool {
	old := w.adj[v][u]
	w.adj[v][u], w.adj[u][v] = old|why, old|why
	if old == 0 {
		w.compOK = false
	}
	return old == 0
}

func (w *simWorld) unlink(v, u int32, why uint8) {
	r, ok := w.adj[v][u]
	if !ok {
		return // ended already (u died)
	}
	if r &^= why; r != 0 {
		w.adj[v][u], w.adj[u][v] = r, r
		return
	}
	w.disconnect(v, u)
}

func (w *simWorld) disconnect(v, u int32) {
	delete(w.adj[v], u)
	delete(w.adj[u], v)
	delete(w.gmesh[v], u)
	delete(w.gmesh[u], v)
	w.compOK = false
}

func (w *simWorld) clone() *simWorld {
	c := *w
	c.rng = mrand.New(mrand.NewPCG(w.rng.Uint64(), 3))
	c.alive = slices.Clone(w.alive)
	c.memos = slices.Clone(w.memos)
	c.slots, c.failed, c.adj, c.gmesh = cloneMaps(w.slots), cloneMaps(w.failed), cloneMaps(w.adj), cloneMaps(w.gmesh)
	c.comp, c.compOK, c.views, c.prints = nil, false, nil, nil
	c.change = nil
	return &c
}

func cloneMaps[V any](ms []map[int32]V) []map[int32]V {
	out := make([]map[int32]V, len(ms))
	for i, m := range ms {
		out[i] = make(map[int32]V, len(m))
		for k, v := range m {
			out[i][k] = v
		}
	}
	return out
}

// settle starts the fleet and runs passes until the graph is stable:
// every live node has passed since the last action. A starting node's
// first pass runs a second after its node list arrives (the debounce of a
// document change), before Discovery's first look at its peer count; all
// nodes start at once here.
func (w *simWorld) settle() {
	w.stats = simStats{lastAction: w.now}
	w.now = w.now.Add(time.Second)
	w.passes(func(int) bool { return true })
	for !w.stable() {
		w.step()
	}
	w.gossipHeartbeats()
}

func (w *simWorld) stable() bool {
	quiet := w.stats.lastAction
	if !w.died.IsZero() {
		quiet = later(quiet, w.died.Add(simStaleAfter)) // silence changes every node's input
	}
	return w.now.Sub(quiet) > simInterval
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func (w *simWorld) step() {
	w.now = w.now.Add(time.Second)
	if w.now.Sub(w.f.start) >= simFresh {
		w.tb.Fatal("simulation ran into the Fresh window; last_seen_ms refreshes are not modelled")
	}
	sec := int(w.now.Sub(w.f.start) / time.Second)
	w.discover(sec)
	w.passes(func(v int) bool { return w.phase[v] == sec%int(simInterval/time.Second) })
	w.antiEntropy(sec)
}

// discover is Discovery's fallback, which rescues a node cut off from the
// fleet: the manager no longer chooses peers it has stopped hearing, and
// from a lone node that is every peer. The node list holds no dead flag
// for a crashed node, so the fallback may dial the dead too.
func (w *simWorld) discover(sec int) {
	for v := range w.f.n {
		if !w.alive[v] || w.fphase[v] != sec%int(simFindEvery/time.Second) || len(w.adj[v]) >= simFindBelow {
			continue
		}
		for range simFindDials {
			u := int32(w.rng.IntN(w.f.n))
			if u == int32(v) || !w.alive[u] {
				w.stats.findFails++
				continue
			}
			if w.link(int32(v), u, linkFound) {
				w.stats.found++
				w.sync(int32(v), u, true) // a new peer: anti-entropy at once
			}
		}
	}
}

// kill ends the rendezvous and a random frac of the other nodes at once,
// and writes a change at a random survivor, right after.
func (w *simWorld) kill(frac float64) {
	w.died = w.now
	victims := []int{0}
	for _, v := range w.rng.Perm(w.f.n - 1)[:int(frac*float64(w.f.n))] {
		victims = append(victims, v+1) // node 0 is the rendezvous
	}
	for _, v := range victims {
		w.alive[v] = false
		for _, u := range sortedKeys(w.adj[v]) {
			w.disconnect(int32(v), u)
			if _, ok := w.slots[u][int32(v)]; ok {
				w.memos[u].idle = false // a slot of u ended
			}
		}
	}
	w.gossipHeartbeats()
	w.change = w.newChange(w.randomLive())
}

func (w *simWorld) randomLive() int32 {
	for {
		if v := int32(1 + w.rng.IntN(w.f.n-1)); w.alive[v] {
			return v
		}
	}
}

// repair runs passes and anti-entropy until the graph is stable and the
// change written at the deaths has reached every live node, or has
// stopped spreading; it gives up after simRepairCap.
func (w *simWorld) repair() *simRepair {
	w.stats = simStats{lastAction: w.died}
	var grown time.Time
	settled := false
	for held := -1; !settled && w.now.Sub(w.died) < simRepairCap; {
		if w.change.holders != held {
			held, grown = w.change.holders, w.now
		}
		settled = w.stable() && (w.change.holders == w.liveCount() || w.now.Sub(grown) > 2*simSyncEvery)
		if !settled {
			w.step()
		}
	}
	w.gossipHeartbeats()
	r := w.repairFigures()
	r.settled = settled
	return r
}

// simRepairCap bounds a repair: with the steady state's first minutes,
// it keeps a run inside the Fresh window.
const simRepairCap = 15 * time.Minute

// passes runs the reconcile passes of the live nodes due: the inputs are
// built in turn, Reconcile runs in parallel (it is pure), the plans are
// carried out in node order.
func (w *simWorld) passes(due func(v int) bool) {
	type job struct {
		v    int32
		in   PlanInput
		plan Plan
	}
	var jobs []job
	for v := 1; v < w.f.n; v++ {
		if !w.alive[v] || !due(v) {
			continue
		}
		in := w.input(int32(v))
		if w.skip(int32(v), in) {
			w.stats.skipped++
			continue
		}
		jobs = append(jobs, job{v: int32(v), in: in})
	}
	parallel(len(jobs), func(i int) { jobs[i].plan = Reconcile(jobs[i].in) })
	for _, j := range jobs {
		w.apply(j.v, j.in, j.plan)
	}
	w.stats.calls += len(jobs)
}

func parallel(n int, fn func(int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(n, runtime.GOMAXPROCS(0)) {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				fn(i)
			}
		})
	}
	wg.Wait()
}

// input is what Manager.input would hand Reconcile on node v now.
func (w *simWorld) input(v int32) PlanInput {
	in := PlanInput{
		Self: w.f.ids[v], Nodes: w.view(v), Rendezvous: w.f.rv, Now: w.now, Max: simMax,
		Fresh: simFresh, DialBackoff: simBackoff,
		Slots: map[peer.ID]PlanSlot{}, DialFailed: map[peer.ID]time.Time{},
	}
	for u, at := range w.slots[v] {
		in.Slots[w.f.ids[u]] = PlanSlot{Opened: at, Connected: w.alive[u]}
	}
	for u, at := range w.failed[v] {
		in.DialFailed[w.f.ids[u]] = at
	}
	return in
}

// skip reports whether v's pass can be skipped: Reconcile is pure, and
// its input has not changed since a pass that planned nothing, but for
// Now, which it compares only with last_seen_ms and dial failures, and no
// such window has ended since. TestFleetSimSmall checks that skipping
// changes nothing.
func (w *simWorld) skip(v int32, in PlanInput) bool {
	m := w.memos[v]
	return w.memo && m.idle && m.view == &in.Nodes[0] && w.now.Before(m.until)
}

func (w *simWorld) apply(v int32, in PlanInput, plan Plan) {
	for _, a := range plan.Actions {
		u := w.f.index[a.Peer]
		switch {
		case !a.Open:
			delete(w.slots[v], u)
			w.unlink(v, u, linkSlot(v, u))
			w.stats.drops++
		case !w.alive[u]:
			w.failed[v][u] = w.now // the manager frees the slot of a failed dial
			w.stats.failedDials++
		default:
			w.slots[v][u] = w.now
			fresh := w.link(v, u, linkSlot(v, u))
			w.stats.opens++
			w.stats.newConns += boolInt(fresh)
			w.sync(v, u, fresh) // OnOpened: anti-entropy at once
		}
	}
	w.stats.maxSlots = max(w.stats.maxSlots, len(w.slots[v]))
	w.memos[v] = simMemo{idle: len(plan.Actions) == 0, view: &in.Nodes[0], until: w.windowEnd(v)}
	if len(plan.Actions) > 0 {
		w.stats.lastAction = w.now
	}
}

// windowEnd is when a Fresh or DialBackoff comparison of v's next input
// can next change its outcome.
func (w *simWorld) windowEnd(v int32) time.Time {
	end := w.f.start.Add(simFresh) // every record's last_seen_ms is start
	for _, at := range w.failed[v] {
		if t := at.Add(simBackoff); t.After(w.now) && t.Before(end) {
			end = t
		}
	}
	return end
}

// view is the node list as v sees it: a node is Silent once it has not
// been heard for StaleAfter, that is, it died or is cut off from v's
// component. Nodes sharing a silent set share one slice.
func (w *simWorld) view(v int32) []PlanNode {
	if w.died.IsZero() || w.now.Sub(w.died) <= simStaleAfter {
		return w.f.nodes // every node heard within StaleAfter
	}
	w.components()
	if nodes, ok := w.views[w.comp[v]]; ok {
		return nodes
	}
	h := fnv.New64a()
	silent := make([]bool, w.f.n)
	for u := range silent {
		if silent[u] = !w.alive[u] || w.comp[u] != w.comp[v]; silent[u] {
			_ = binary.Write(h, binary.LittleEndian, int32(u))
		}
	}
	nodes, ok := w.prints[h.Sum64()]
	if !ok {
		nodes = slices.Clone(w.f.nodes)
		for u := range nodes {
			nodes[u].Silent = silent[u]
		}
		w.prints[h.Sum64()] = nodes
	}
	w.views[w.comp[v]] = nodes
	return nodes
}

// components labels the live nodes by connected component.
func (w *simWorld) components() {
	if w.compOK {
		return
	}
	w.comp = slices.Repeat([]int32{-1}, w.f.n)
	for s := range w.f.n {
		if !w.alive[s] || w.comp[s] >= 0 {
			continue
		}
		w.comp[s] = int32(s)
		for q := []int32{int32(s)}; len(q) > 0; q = q[1:] {
			for u := range w.adj[q[0]] {
				if w.comp[u] < 0 {
					w.comp[u] = int32(s)
					q = append(q, u)
				}
			}
		}
	}
	w.compOK, w.views = true, map[int32][]PlanNode{}
	if w.prints == nil {
		w.prints = map[uint64][]PlanNode{}
	}
}

// gossipHeartbeats runs GossipSub heartbeats until the meshes settle: a
// node below Dlo grafts neighbours up to D, one above Dhi prunes down to D
// (at random: all scores are equal), and a pruned pair stays apart for
// the prune backoff, longer than this takes.
func (w *simWorld) gossipHeartbeats() {
	backoff := map[[2]int32]bool{}
	for range 60 {
		changed := false
		for _, v := range w.rng.Perm(w.f.n) {
			if w.alive[v] {
				changed = w.graft(int32(v), backoff) || changed
				changed = w.prune(int32(v), backoff) || changed
			}
		}
		if !changed {
			return
		}
	}
}

func (w *simWorld) graft(v int32, backoff map[[2]int32]bool) bool {
	if len(w.gmesh[v]) >= gossipDlo {
		return false
	}
	var cand []int32
	for _, u := range sortedKeys(w.adj[v]) {
		if !w.gmesh[v][u] && !backoff[pair(v, u)] {
			cand = append(cand, u)
		}
	}
	w.rng.Shuffle(len(cand), func(i, j int) { cand[i], cand[j] = cand[j], cand[i] })
	for _, u := range cand[:min(len(cand), gossipD-len(w.gmesh[v]))] {
		w.gmesh[v][u], w.gmesh[u][v] = true, true
	}
	return len(cand) > 0
}

func (w *simWorld) prune(v int32, backoff map[[2]int32]bool) bool {
	if len(w.gmesh[v]) <= gossipDhi {
		return false
	}
	peers := sortedKeys(w.gmesh[v])
	w.rng.Shuffle(len(peers), func(i, j int) { peers[i], peers[j] = peers[j], peers[i] })
	for _, u := range peers[gossipD:] {
		delete(w.gmesh[v], u)
		delete(w.gmesh[u], v)
		backoff[pair(v, u)] = true
	}
	return true
}

func pair(a, b int32) [2]int32 {
	if a > b {
		a, b = b, a
	}
	return [2]int32{a, b}
}

func sortedKeys[V any](m map[int32]V) []int32 {
	ks := make([]int32, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// simGossip is one change's spread by gossip alone.
type simGossip struct {
	writer                    int32
	reach                     int // nodes holding it, the writer included
	hopsP50, hopsP99, hopsMax int
	msgs                      int // deliveries, duplicates included
}

// gossip spreads a change published by writer: flood publish to every
// neighbour, then each node forwards the first copy it receives to its
// mesh peers but the one it came from and the origin. It returns the
// hop at which each node first got it (-1: never).
func (w *simWorld) gossip(writer int32) (simGossip, []int) {
	g := simGossip{writer: writer}
	depth := slices.Repeat([]int{-1}, w.f.n)
	from := make([]int32, w.f.n)
	depth[writer] = 0
	q := []int32{}
	for _, u := range sortedKeys(w.adj[writer]) {
		g.msgs++
		depth[u], from[u] = 1, writer
		q = append(q, u)
	}
	for ; len(q) > 0; q = q[1:] {
		v := q[0]
		for _, u := range sortedKeys(w.gmesh[v]) {
			if u == from[v] || u == writer {
				continue
			}
			g.msgs++
			if depth[u] < 0 {
				depth[u], from[u] = depth[v]+1, v
				q = append(q, u)
			}
		}
	}
	var hops []int
	for v, d := range depth {
		if d > 0 && int32(v) != writer {
			hops = append(hops, d)
		}
	}
	g.reach = len(hops) + 1
	g.hopsP50, g.hopsP99, g.hopsMax = percentile(hops, 0.5), percentile(hops, 0.99), percentile(hops, 1)
	return g, depth
}

func percentile(xs []int, p float64) int {
	if len(xs) == 0 {
		return 0
	}
	slices.Sort(xs)
	return xs[min(len(xs)-1, int(math.Ceil(p*float64(len(xs))))-1)]
}

// newChange writes a change at writer and lets gossip carry it; the
// nodes it missed wait for anti-entropy.
func (w *simWorld) newChange(writer int32) *simChange {
	_, depth := w.gossip(writer)
	c := &simChange{writer: writer, has: make([]bool, w.f.n), aeHops: make([]int, w.f.n)}
	for v, d := range depth {
		if d >= 0 {
			c.has[v] = true
			c.holders++
		}
	}
	if c.holders == w.liveCount() {
		c.doneAt = w.now
	}
	return c
}

// antiEntropy runs the periodic sessions due this second: each node due
// syncs with its neighbours one after another.
func (w *simWorld) antiEntropy(sec int) {
	if w.change == nil {
		return
	}
	for v := range w.f.n {
		if w.alive[v] && w.sphase[v] == sec%int(simSyncEvery/time.Second) {
			for _, u := range sortedKeys(w.adj[v]) {
				w.sync(int32(v), u, false)
			}
		}
	}
}

// sync is one anti-entropy session between v and u; it carries the
// change if one of them lacks it. A session on a new connection is cold:
// no sync state with that peer yet.
func (w *simWorld) sync(v, u int32, cold bool) {
	c := w.change
	if c == nil || c.has[v] == c.has[u] {
		return
	}
	if c.has[u] {
		v, u = u, v
	}
	c.has[u], c.aeHops[u] = true, c.aeHops[v]+1
	c.holders++
	c.sessions++
	c.bytes += int64(w.f.costs.syncWarm)
	if cold {
		c.bytes += int64(w.f.costs.syncCold - w.f.costs.syncWarm)
	}
	if c.holders == w.liveCount() {
		c.doneAt = w.now
	}
}

func (w *simWorld) liveCount() int {
	n := 0
	for _, a := range w.alive {
		if a {
			n++
		}
	}
	return n
}

// simRepair is how repair went after the deaths.
type simRepair struct {
	settled             bool // stable within simRepairCap
	seconds, rounds     int  // until the last action; rounds of the manager's interval
	calls, skipped      int  // Reconcile calls made and passes skipped as unchanged
	opens, drops, fails int
	newConns            int   // connections the manager's opens made
	found               int   // connections Discovery's fallback made
	syncBytes           int64 // the first sessions on those connections
	maxSlotsEver        int
	convergeSec         int // the change written at the deaths on every live node (-1: never)
	holders, aeMaxHops  int
	aeSessions          int
	aeBytes             int64
}

func (w *simWorld) repairFigures() *simRepair {
	s, c := w.stats, w.change
	r := &simRepair{
		seconds: int(s.lastAction.Sub(w.died) / time.Second), calls: s.calls, skipped: s.skipped,
		opens: s.opens, drops: s.drops, fails: s.failedDials, maxSlotsEver: s.maxSlots, newConns: s.newConns,
		found: s.found, syncBytes: int64(s.newConns+s.found) * 2 * int64(w.f.costs.coldIdle),
		convergeSec: -1, holders: c.holders, aeMaxHops: slices.Max(c.aeHops), aeSessions: c.sessions, aeBytes: c.bytes,
	}
	r.rounds = int(math.Ceil(float64(r.seconds) / simInterval.Seconds()))
	if !c.doneAt.IsZero() {
		r.convergeSec = int(c.doneAt.Sub(w.died) / time.Second)
	}
	return r
}

// simRow is the figures of one instant of a scenario.
type simRow struct {
	name     string
	graph    simGraph
	gossip   simGossip
	rrgDist  float64 // ln N / ln(d-1), d the mean degree of the connections
	rrgHops  float64 // the same for the gossip mesh's mean degree
	msgBytes int
	hbBytes  int
	repair   *simRepair // after rows only
}

func (r simRow) bytes() int64 { return int64(r.gossip.msgs) * int64(r.msgBytes) }

// heartbeatLoad is what heartbeats cost each node, inbound: every live
// node heartbeats every 5 s (node/config.go), and each heartbeat spreads
// as a change does, so a node takes in msgs/live copies of each.
func (r simRow) heartbeatLoad() float64 {
	const every = 5.0 // seconds
	return float64(r.graph.live) / every * float64(r.gossip.msgs) / float64(r.graph.live) * float64(r.hbBytes)
}

// floodRatio compares gossip's bytes with the writer sending the change
// to every other live node itself.
func (r simRow) floodRatio() float64 {
	return float64(r.gossip.msgs) / float64(max(r.graph.live-1, 1))
}

// row measures the graph and the gossip of a change: the one written at
// the deaths for a before row, a new one otherwise.
func (w *simWorld) row(name string, rp *simRepair) simRow {
	writer := w.randomLive()
	if strings.HasSuffix(name, "/before") {
		writer = w.change.writer
	}
	r := simRow{name: name, graph: w.measureGraph(), msgBytes: w.f.costs.msg, hbBytes: w.f.costs.heartbeat, repair: rp}
	r.gossip, _ = w.gossip(writer)
	r.rrgDist = rrg(r.graph.largest, r.graph.meanDeg)
	r.rrgHops = rrg(r.graph.largest, r.graph.meshDeg)
	return r
}

// rrg is the typical distance in a random d-regular graph of n nodes.
func rrg(n int, d float64) float64 {
	if d <= 2 {
		return math.Inf(1)
	}
	return math.Log(float64(n)) / math.Log(d-1)
}

// simGraph is the live connection graph's shape.
type simGraph struct {
	live, comps, largest int
	meanDeg, meshDeg     float64
	maxDeg               int
	minSlots             int // fewest connected slots of a live node (the rendezvous aside)
	maxSlots             int // most slots held, connected or not
	diameter             int // of the largest component
	exact                bool
	sources              int
	meanDist             float64
}

func (w *simWorld) measureGraph() simGraph {
	g := simGraph{minSlots: math.MaxInt}
	sizes := map[int32]int{}
	w.components()
	var deg, mdeg int
	for v := range w.f.n {
		if !w.alive[v] {
			continue
		}
		g.live++
		sizes[w.comp[v]]++
		deg += len(w.adj[v])
		mdeg += len(w.gmesh[v])
		g.maxDeg = max(g.maxDeg, len(w.adj[v]))
		if v != 0 {
			g.minSlots, g.maxSlots = min(g.minSlots, w.connectedSlots(int32(v))), max(g.maxSlots, len(w.slots[v]))
		}
	}
	g.comps = len(sizes)
	g.meanDeg, g.meshDeg = float64(deg)/float64(g.live), float64(mdeg)/float64(g.live)
	big := int32(-1)
	for c, n := range sizes {
		if n > g.largest || n == g.largest && c < big {
			g.largest, big = n, c
		}
	}
	w.distances(&g, newCSR(w, big))
	return g
}

func (w *simWorld) connectedSlots(v int32) int {
	n := 0
	for u := range w.slots[v] {
		n += boolInt(w.alive[u])
	}
	return n
}

// csr is one component in compressed adjacency form, for BFS.
type csr struct {
	off, to []int32
}

func newCSR(w *simWorld, comp int32) csr {
	dense := map[int32]int32{}
	var members []int32
	for v := range w.f.n {
		if w.alive[v] && w.comp[v] == comp {
			dense[int32(v)] = int32(len(members))
			members = append(members, int32(v))
		}
	}
	g := csr{off: make([]int32, 1, len(members)+1)}
	for _, v := range members {
		for _, u := range sortedKeys(w.adj[v]) {
			g.to = append(g.to, dense[u])
		}
		g.off = append(g.off, int32(len(g.to)))
	}
	return g
}

func (g csr) n() int { return len(g.off) - 1 }

// bfs returns the eccentricity of src, the sum of its distances and a
// farthest node.
func (g csr) bfs(src int32, dist, q []int32) (ecc int, sum int64, far int32) {
	for i := range dist {
		dist[i] = -1
	}
	dist[src], q = 0, append(q[:0], src)
	far = src
	for i := 0; i < len(q); i++ {
		v := q[i]
		for _, u := range g.to[g.off[v]:g.off[v+1]] {
			if dist[u] < 0 {
				dist[u] = dist[v] + 1
				sum += int64(dist[u])
				far = u
				q = append(q, u)
			}
		}
	}
	return int(dist[far]), sum, far
}

// distances finds the diameter and mean distance of the largest
// component: exactly, by a BFS from every node, up to 2,000 nodes; above,
// from 500 random sources and then a double sweep from the farthest node
// found, which gives a lower bound that is the diameter on graphs like
// these almost always.
func (w *simWorld) distances(g *simGraph, c csr) {
	n := c.n()
	dist, q := make([]int32, n), make([]int32, 0, n)
	var srcs []int32
	g.exact = n <= 2000
	if g.exact {
		for v := range n {
			srcs = append(srcs, int32(v))
		}
	} else {
		for _, v := range w.rng.Perm(n)[:500] {
			srcs = append(srcs, int32(v))
		}
	}
	var sum int64
	far := int32(0)
	for _, s := range srcs {
		ecc, sm, f := c.bfs(s, dist, q)
		sum += sm
		if ecc > g.diameter {
			g.diameter, far = ecc, f
		}
	}
	for range 3 * boolInt(!g.exact) {
		ecc, _, f := c.bfs(far, dist, q)
		g.diameter, far = max(g.diameter, ecc), f
	}
	g.sources = len(srcs)
	if n > 1 {
		g.meanDist = float64(sum) / float64(len(srcs)) / float64(n-1)
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (r simRow) report(b *testing.B) {
	g, gs := r.graph, r.gossip
	for _, m := range []struct {
		v    float64
		unit string
	}{
		{float64(g.live), "live-nodes"}, {float64(g.comps), "components"}, {float64(g.largest), "largest-component"},
		{float64(g.diameter), "diameter"}, {float64(boolInt(g.exact)), "diameter-exact"}, {g.meanDist, "mean-distance"},
		{r.rrgDist, "rrg-distance"}, {g.meanDeg, "mean-degree"}, {float64(g.maxDeg), "max-degree"},
		{float64(g.maxSlots), "max-slots"}, {float64(g.minSlots), "min-slots"}, {g.meshDeg, "gossip-mesh-degree"},
		{float64(gs.reach), "gossip-reach"}, {float64(gs.hopsP50), "hops-p50"}, {float64(gs.hopsP99), "hops-p99"},
		{float64(gs.hopsMax), "hops-max"}, {r.rrgHops, "rrg-hops"}, {float64(gs.msgs), "msgs/change"},
		{float64(r.bytes()), "bytes/change"}, {r.floodRatio(), "bytes/flood"},
		{r.heartbeatLoad(), "hb-bytes-in/node/s"},
	} {
		b.ReportMetric(m.v, m.unit)
	}
	if rp := r.repair; rp != nil {
		for _, m := range []struct {
			v    float64
			unit string
		}{
			{float64(boolInt(rp.settled)), "repair-settled"}, {float64(rp.seconds), "repair-s"}, {float64(rp.rounds), "repair-intervals"}, {float64(rp.calls), "reconcile-calls"},
			{float64(rp.opens), "opens"}, {float64(rp.drops), "drops"}, {float64(rp.fails), "failed-dials"},
			{float64(rp.newConns), "new-conns"}, {float64(rp.found), "discovery-conns"}, {float64(rp.syncBytes), "repair-sync-bytes"},
			{float64(rp.maxSlotsEver), "max-slots-ever"}, {float64(rp.convergeSec), "converge-s"},
			{float64(rp.aeMaxHops), "ae-hops-max"}, {float64(rp.aeSessions), "ae-sessions"}, {float64(rp.aeBytes), "ae-bytes"},
		} {
			b.ReportMetric(m.v, m.unit)
		}
	}
}

// table renders the rows for BENCHMARKS.md.
func (r *simResult) table() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "| %d nodes | live | components (largest) | diameter (*: sampled) | mean dist (rrg) | mean degree | slots up min, held max | gossip reach | hops p50/p99/max (rrg) | msgs/change | bytes/change (x flood) | repair s (intervals) | change converged s (ae hops, sessions, bytes) |\n", r.n)
	sb.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, row := range r.rows {
		g, gs := row.graph, row.gossip
		diam := fmt.Sprint(g.diameter)
		if !g.exact {
			diam += "*"
		}
		repair, conv := "", ""
		if rp := row.repair; rp != nil {
			repair = fmt.Sprintf("%d (%d)", rp.seconds, rp.rounds)
			conv = fmt.Sprintf("%d (%d, %d, %d)", rp.convergeSec, rp.aeMaxHops, rp.aeSessions, rp.aeBytes)
		}
		fmt.Fprintf(&sb, "| %s | %d | %d (%d) | %s | %.2f (%.2f) | %.2f | %d-%d | %d | %d/%d/%d (%.2f) | %d | %d (%.3f) | %s | %s |\n",
			row.name, g.live, g.comps, g.largest, diam, g.meanDist, row.rrgDist, g.meanDeg, g.minSlots, g.maxSlots,
			gs.reach, gs.hopsP50, gs.hopsP99, gs.hopsMax, row.rrgHops, gs.msgs, row.bytes(), row.floodRatio(), repair, conv)
	}
	return strings.TrimSuffix(sb.String(), "\n")
}
