package node

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/crdt"
	"github.com/meshnode/meshnode/mesh"
)

// The benchmarks below are experiments, not loops: each runs once per
// invocation and reports its figures with b.ReportMetric, next to a
// baseline measured in the same run. Run them with -benchtime=1x
// (scripts/bench.sh does). BENCHMARKS.md records the results.

func benchConfig() func(int, *Config) {
	return func(_ int, c *Config) {
		c.HeartbeatInterval = time.Second
		c.StaleAfter = 5 * time.Second
		c.SyncInterval = 30 * time.Second // gossip carries the changes, as in production
		c.Logger = c.Logger.Level(zerolog.ErrorLevel)
	}
}

// percentile of sorted durations, nearest rank.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.5) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// arrivals records, per node, when each document head or raw message was
// first seen.
type arrivals struct {
	mu  sync.Mutex
	doc []map[crdt.Hash]time.Time
	raw []map[uint64]time.Time
}

// watchDocs records when each node's document first holds each head, until
// the returned function is called.
func (a *arrivals) watchDocs(c *cluster) (stop func()) {
	var stops []func()
	for i, n := range c.nodes {
		a.doc[i] = map[crdt.Hash]time.Time{}
		stops = append(stops, n.Doc.Watch(func(ev crdt.Event) {
			now := time.Now()
			a.mu.Lock()
			defer a.mu.Unlock()
			for _, h := range ev.Heads {
				if _, ok := a.doc[i][h]; !ok {
					a.doc[i][h] = now
				}
			}
		}))
	}
	return func() {
		for _, s := range stops {
			s()
		}
	}
}

// commitRound commits a one-key change on node from and returns the time
// until every other node (but those skip reports) holds it.
func (a *arrivals) commitRound(b *testing.B, c *cluster, r, from int, skip func(int) bool) time.Duration {
	start := time.Now()
	h, err := c.nodes[from].Doc.Update("bench", func(tx *crdt.Tx) error {
		tx.SetItemName("bench", fmt.Sprintf("round %d from n%d", r, from))
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	t, ok := lastArrival(len(c.nodes), from, 90*time.Second, func(i int) (time.Time, bool) {
		if skip != nil && skip(i) {
			return time.Time{}, true
		}
		return a.docAt(i, h)
	})
	if !ok {
		b.Fatalf("round %d: a change from node %d did not reach every node in 90s", r, from)
	}
	return t.Sub(start)
}

func (a *arrivals) docAt(i int, h crdt.Hash) (time.Time, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t, ok := a.doc[i][h]
	return t, ok
}

func (a *arrivals) rawAt(i int, r uint64) (time.Time, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t, ok := a.raw[i][r]
	return t, ok
}

// lastArrival waits up to d until every node but from has seen the item
// and returns the latest arrival time, or false if one never did.
func lastArrival(n, from int, d time.Duration, seen func(i int) (time.Time, bool)) (time.Time, bool) {
	deadline := time.Now().Add(d)
	var last time.Time
	for i := 0; i < n; i++ {
		if i == from {
			continue
		}
		for {
			t, ok := seen(i)
			if ok {
				if t.After(last) {
					last = t
				}
				break
			}
			if time.Now().After(deadline) {
				return time.Time{}, false
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
	return last, true
}

// rawTopic joins every node's pubsub router to an extra topic, the
// baseline of the latency benchmarks: the same routers over the same
// connections, without the document or a room. round publishes a
// 256-byte message numbered r from node from and returns the time until
// every other node got it (false if one did not within wait).
func (a *arrivals) rawTopic(b *testing.B, c *cluster) (round func(r uint64, from int, wait time.Duration) (time.Duration, bool), stop func()) {
	nodes := len(c.nodes)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	topics := make([]*pubsub.Topic, nodes)
	subs := make([]*pubsub.Subscription, nodes)
	for i, n := range c.nodes {
		a.raw[i] = map[uint64]time.Time{}
		t, err := n.ps.Join("bench/raw/" + n.Fleet.ID)
		if err != nil {
			b.Fatal(err)
		}
		sub, err := t.Subscribe()
		if err != nil {
			b.Fatal(err)
		}
		topics[i], subs[i] = t, sub
		self := n.ID()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				m, err := sub.Next(ctx)
				if err != nil {
					return
				}
				if m.GetFrom() == self || len(m.Data) < 8 {
					continue
				}
				now := time.Now()
				r := binary.BigEndian.Uint64(m.Data)
				a.mu.Lock()
				if _, ok := a.raw[i][r]; !ok {
					a.raw[i][r] = now
				}
				a.mu.Unlock()
			}
		}()
	}
	round = func(r uint64, from int, wait time.Duration) (time.Duration, bool) {
		msg := make([]byte, 256) // about the size of a sealed one-key change
		binary.BigEndian.PutUint64(msg, r)
		start := time.Now()
		if err := topics[from].Publish(ctx, msg); err != nil {
			b.Fatal(err)
		}
		t, ok := lastArrival(nodes, from, wait, func(i int) (time.Time, bool) { return a.rawAt(i, r) })
		return t.Sub(start), ok
	}
	return round, func() {
		cancel()
		wg.Wait()
		for i, t := range topics {
			subs[i].Cancel()
			_ = t.Close()
		}
	}
}

// BenchmarkConvergence measures the time from a commit on one node until
// every other node can read it, against raw GossipSub delivery of a
// message of similar size over the same hosts, connections and pubsub
// routers, interleaved round by round.
func BenchmarkConvergence(b *testing.B) {
	for _, tc := range []struct{ nodes, rounds int }{{10, 500}, {30, 150}} {
		b.Run(fmt.Sprintf("nodes=%d", tc.nodes), func(b *testing.B) {
			for range b.N {
				benchConvergence(b, tc.nodes, tc.rounds)
			}
		})
	}
}

func benchConvergence(b *testing.B, nodes, rounds int) {
	c := newCluster(b, nodes, benchConfig())
	waitFor(b, 60*time.Second, "every node authenticated", func() bool { return c.allAuthenticated(1) })
	waitFor(b, 60*time.Second, "document converged", func() bool { return c.converged() })

	a := &arrivals{doc: make([]map[crdt.Hash]time.Time, nodes), raw: make([]map[uint64]time.Time, nodes)}
	defer a.watchDocs(c)()
	rawRound, stopRaw := a.rawTopic(b, c)
	defer stopRaw()
	docRound := func(r uint64, from int) time.Duration { return a.commitRound(b, c, int(r), from, nil) }
	// Warm-up: GossipSub loses messages published before its meshes form,
	// so probe the raw topic from every node until a whole pass arrives.
	probe := uint64(1 << 40)
	waitFor(b, 60*time.Second, "raw topic mesh", func() bool {
		for from := range nodes {
			probe++
			if _, ok := rawRound(probe, from, 2*time.Second); !ok {
				return false
			}
		}
		return true
	})
	for r := range uint64(10) {
		docRound(1<<41+r, int(r)%nodes)
	}
	var raw, doc []time.Duration
	lost := 0
	measureRaw := func(r uint64, from int) {
		if d, ok := rawRound(r, from, 5*time.Second); ok {
			raw = append(raw, d)
		} else {
			lost++
		}
	}
	for r := range uint64(rounds) {
		from := int(r) % nodes
		if r%2 == 0 {
			measureRaw(r, from)
			doc = append(doc, docRound(r, from))
		} else {
			doc = append(doc, docRound(r, from))
			measureRaw(r, from)
		}
	}
	b.ReportMetric(float64(lost), "raw-lost")
	reportAgainst(b, "doc", doc, "raw", raw, "ratio")
}

// reportAgainst reports the p50 and p99 of a measurement and of its
// baseline (<name>-p50-ms, ...) and their ratios (p50-<ratio>,
// p99-<ratio>).
func reportAgainst(b *testing.B, name string, got []time.Duration, baseName string, base []time.Duration, ratio string) {
	slices.Sort(got)
	slices.Sort(base)
	for _, p := range []struct {
		q     float64
		label string
	}{{0.5, "p50"}, {0.99, "p99"}} {
		g, r := ms(percentile(got, p.q)), ms(percentile(base, p.q))
		b.ReportMetric(g, name+"-"+p.label+"-ms")
		b.ReportMetric(r, baseName+"-"+p.label+"-ms")
		b.ReportMetric(g/r, p.label+"-"+ratio)
	}
}

// BenchmarkHeal partitions 4 nodes 2|2, commits 1,000 changes on each side,
// heals, and measures the time until all four hold identical heads. The
// baseline is automerge's own sync protocol between two documents with the
// same divergence, in memory over net.Pipe (no network, no disk).
func BenchmarkHeal(b *testing.B) {
	for range b.N {
		benchHeal(b)
	}
}

func benchHeal(b *testing.B) {
	c := newCluster(b, 4, benchConfig())
	waitFor(b, 30*time.Second, "every node authenticated", func() bool { return c.allAuthenticated(1) })
	waitFor(b, 30*time.Second, "document converged", func() bool { return c.converged() })
	left, right := []int{0, 1}, []int{2, 3}
	c.partition(left, right)
	waitFor(b, 10*time.Second, "partition", func() bool {
		for _, i := range left {
			for _, j := range right {
				if c.nodes[i].Host.Network().Connectedness(c.nodes[j].ID()) == network.Connected {
					return false
				}
			}
		}
		return true
	})
	const perSide = 1000
	var wg sync.WaitGroup
	for _, side := range [][]int{left, right} {
		// A holder identity per side, not the node's own (its library scan
		// would unpublish entries naming it for items it does not share).
		key, holder := testIdentity(b)
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := c.nodes[side[0]]
			for k := range perSide {
				if _, err := n.Doc.Update("bench", func(tx *crdt.Tx) error {
					tx.As(key).SetHolder(fmt.Sprintf("item-%04d", k), holder, crdt.Holder{Manifest: strconv.Itoa(k), Size: int64(k), State: crdt.HolderComplete})
					return nil
				}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	waitFor(b, 60*time.Second, "each side converged", func() bool { return c.converged(left...) && c.converged(right...) })
	snapL, snapR := c.nodes[0].Doc.Snapshot(), c.nodes[2].Doc.Snapshot()

	start := time.Now()
	c.heal(left, right)
	waitFor(b, 120*time.Second, "all converged after heal", func() bool { return c.converged() })
	heal := time.Since(start)

	base := pipeSync(b, snapL, snapR)
	b.ReportMetric(heal.Seconds(), "heal-s")
	b.ReportMetric(base.Seconds(), "baseline-sync-s")
	b.ReportMetric(heal.Seconds()/base.Seconds(), "ratio")
}

// pipeSync loads two snapshots into fresh documents and times automerge's
// sync protocol between them over an in-memory pipe until both agree.
func pipeSync(b *testing.B, x, y []byte) time.Duration {
	open := func(snap []byte) *crdt.Doc {
		d, err := crdt.Open(crdt.Config{Dir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		if err := d.MergeSnapshot(snap); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { d.Close() })
		return d
	}
	dx, dy := open(x), open(y)
	start := time.Now()
	for !slices.Equal(dx.HeadStrings(), dy.HeadStrings()) {
		p, q := net.Pipe()
		errc := make(chan error, 1)
		go func() { _, err := dy.Sync(q, dy.NewPeerState(), false); q.Close(); errc <- err }()
		if _, err := dx.Sync(p, dx.NewPeerState(), true); err != nil {
			b.Fatal(err)
		}
		p.Close()
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(start)
}

// BenchmarkBootstrap builds a fleet document of 100 nodes x 1,000 library
// entries (100,000 holder records) on an in-process node, then starts a
// real meshnode process that joins the fleet and times it until its heads
// match, reading the bytes it received from its /metrics and its peak RSS
// from /proc. Baselines in the same run: an idle meshnode process's RSS,
// loading the same snapshot in memory, and the same bytes over a raw
// libp2p stream between two hosts.
func BenchmarkBootstrap(b *testing.B) {
	if runtime.GOOS != "linux" {
		b.Skip("reads RSS from /proc")
	}
	bin := buildMeshnode(b)
	for range b.N {
		benchBootstrap(b, bin)
	}
}

func benchBootstrap(b *testing.B, bin string) {
	idle := startProcess(b, bin)
	waitFor(b, 30*time.Second, "idle process API", func() bool { return idle.status() != nil })
	time.Sleep(2 * time.Second) // let it settle before reading its RSS
	idleRSS := idle.rss("VmRSS")

	c := newCluster(b, 1, benchConfig())
	src := c.nodes[0]
	fleetNodes, entries := 100, 1000
	if v := os.Getenv("MN_BENCH_SMALL"); v != "" {
		fleetNodes, entries = 10, 100
	}
	fillFleet(b, src, fleetNodes, entries)
	snap := src.Doc.Snapshot()

	start := time.Now()
	joiner := startProcess(b, bin, "--join", c.token, "--bootstrap", strings.Join(c.boot, ","))
	deadline := time.Now().Add(300 * time.Second)
	for {
		st := joiner.status()
		// Converged: identical heads, which include the joiner's own record.
		if st != nil && slices.Equal(st.Heads, src.Doc.HeadStrings()) {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("joiner did not converge in 300s; status %+v\nmetrics:\n%s", st, joiner.get("/metrics"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	took := time.Since(start)
	received := joiner.metric("meshnode_sync_bytes_received_total")
	rss, hwm := joiner.rss("VmRSS"), joiner.rss("VmHWM")

	loadStart := time.Now()
	d, err := crdt.Open(crdt.Config{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	if err := d.MergeSnapshot(snap); err != nil {
		b.Fatal(err)
	}
	load := time.Since(loadStart)
	d.Close()
	stream := rawStreamTime(b, int(received))

	b.ReportMetric(float64(len(snap)), "snapshot-bytes")
	b.ReportMetric(received, "received-bytes")
	b.ReportMetric(took.Seconds(), "bootstrap-s")
	b.ReportMetric(load.Seconds(), "baseline-load-s")
	b.ReportMetric(stream.Seconds(), "baseline-stream-s")
	b.ReportMetric(took.Seconds()/(load+stream).Seconds(), "ratio")
	b.ReportMetric(rss/(1<<20), "rss-MiB")
	b.ReportMetric(hwm/(1<<20), "peak-rss-MiB")
	b.ReportMetric(idleRSS/(1<<20), "idle-rss-MiB")
}

// buildMeshnode builds the real binary once for process benchmarks.
func buildMeshnode(b *testing.B) string {
	bin := filepath.Join(b.TempDir(), "meshnode")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/meshnode").CombinedOutput()
	if err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

type process struct {
	b   *testing.B
	cmd *exec.Cmd
	dir string
}

func startProcess(b *testing.B, bin string, extra ...string) *process {
	dir := b.TempDir()
	args := append([]string{"run", "--data", dir, "--mdns=false", "--api", "127.0.0.1:0", "--log-level", "warn",
		"--listen", "/ip4/127.0.0.1/tcp/0,/ip4/127.0.0.1/udp/0/quic-v1"}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return &process{b: b, cmd: cmd, dir: dir}
}

func (p *process) get(path string) []byte {
	addr, tok, err := ReadClientInfo(p.dir)
	if err != nil {
		return nil
	}
	b, err := httpGet(addr, tok, path)
	if err != nil {
		return nil
	}
	return b
}

func (p *process) status() *Status {
	var st Status
	if b := p.get("/v1/status"); b == nil || json.Unmarshal(b, &st) != nil {
		return nil
	}
	return &st
}

func (p *process) metric(name string) float64 {
	for _, line := range strings.Split(string(p.get("/metrics")), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == name {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	p.b.Fatalf("metric %s not found", name)
	return 0
}

// rss reads a /proc/<pid>/status memory field in bytes.
func (p *process) rss(field string) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		p.b.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == field+":" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb * 1024
		}
	}
	p.b.Fatalf("%s not in /proc status", field)
	return 0
}

func httpGet(addr, tok, path string) ([]byte, error) {
	req, _ := http.NewRequest("GET", "http://"+addr+path, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", path, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

// rawStreamTime times sending n bytes over one raw libp2p stream (QUIC on
// loopback, as the joiner uses) between two fresh hosts: the transport
// floor for moving the bootstrap's bytes.
func rawStreamTime(b *testing.B, n int) time.Duration {
	mk := func() host.Host {
		key, _, err := crypto.GenerateEd25519Key(rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		h, err := mesh.NewHost(mesh.HostConfig{Key: key, Listen: []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/udp/0/quic-v1")}, Gate: mesh.NewGate()})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { h.Close() })
		return h
	}
	src, dst := mk(), mk()
	done := make(chan int64, 1)
	dst.SetStreamHandler("/bench/raw/1", func(s network.Stream) {
		n, _ := io.Copy(io.Discard, s)
		s.Close()
		done <- n
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := src.Connect(ctx, peer.AddrInfo{ID: dst.ID(), Addrs: dst.Addrs()}); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	start := time.Now()
	s, err := src.NewStream(ctx, dst.ID(), "/bench/raw/1")
	if err != nil {
		b.Fatal(err)
	}
	for left := n; left > 0; left -= len(buf) {
		if _, err := s.Write(buf[:min(left, len(buf))]); err != nil {
			b.Fatal(err)
		}
	}
	_ = s.CloseWrite()
	if got := <-done; got != int64(n) {
		b.Fatalf("raw stream moved %d bytes, want %d", got, n)
	}
	return time.Since(start)
}

// BenchmarkRendezvousLoss measures convergence among 9 nodes that met
// through one rendezvous node (mDNS off, cap 3 supplementary links each):
// commit on one survivor, time until every survivor holds the change;
// rounds before the rendezvous is killed, then the same rounds after,
// when only mesh links remain. The "before" rounds are the baseline.
func BenchmarkRendezvousLoss(b *testing.B) {
	for range b.N {
		benchRendezvousLoss(b, 10, 200)
	}
}

func benchRendezvousLoss(b *testing.B, nodes, rounds int) {
	c := newCluster(b, nodes, benchConfig(), func(_ int, cfg *Config) {
		cfg.MaxMeshPeers = 3
		cfg.MeshInterval = time.Second
	})
	survivors := make([]int, 0, nodes-1)
	for i := 1; i < nodes; i++ {
		survivors = append(survivors, i)
	}
	waitFor(b, 60*time.Second, "every survivor holds 3 supplementary links", func() bool {
		for _, i := range survivors {
			if len(c.nodes[i].Mesh.Slots()) != 3 {
				return false
			}
		}
		return c.converged()
	})
	a := &arrivals{doc: make([]map[crdt.Hash]time.Time, nodes)}
	defer a.watchDocs(c)()
	round := func(r int) time.Duration {
		// The rendezvous (node 0) is not a survivor.
		return a.commitRound(b, c, r, survivors[r%len(survivors)], func(i int) bool { return i == 0 })
	}
	measure := func(offset int) []time.Duration {
		for r := range 10 { // warm-up
			round(offset + r)
		}
		var out []time.Duration
		for r := range rounds {
			out = append(out, round(offset+100+r))
		}
		slices.Sort(out)
		return out
	}
	before := measure(0)
	c.stop(0)
	waitFor(b, 60*time.Second, "survivors see the rendezvous gone", func() bool {
		for _, i := range survivors {
			if c.nodes[i].Host.Network().Connectedness(c.nodes[0].ID()) == network.Connected {
				return false
			}
		}
		return true
	})
	after := measure(1_000_000)
	reportAgainst(b, "after", after, "before", before, "after/before")
}
