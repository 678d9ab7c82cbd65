package mesh

import (
	"crypto/rand"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/meshnode/meshnode/crdt"
)

// BenchmarkDocGrowthDay simulates one day of a 50-node fleet with a
// heartbeat every 5 s and two restarts per node (one clean Goodbye, one
// crash), driving each node's real Membership record logic (EnsureRecord,
// which every heartbeat tick runs) with a simulated clock, each node on
// its own document (its own actor), then merges the 50 documents into one
// fleet document and reports its size. The baseline in the same run is the
// naive design, a last_seen write on every heartbeat, simulated for 10
// minutes and scaled to a day. Run with -benchtime=1x.
func BenchmarkDocGrowthDay(b *testing.B) {
	for range b.N {
		ours := simulateFleet(b, 50, 5*time.Second, 24*time.Hour, 10*time.Minute, true)
		naive := simulateFleet(b, 50, 5*time.Second, 10*time.Minute, 5*time.Second, false)
		naiveDay := float64(naive.end-naive.start) * float64(24*time.Hour/(10*time.Minute))
		b.ReportMetric(float64(ours.start), "start-bytes")
		b.ReportMetric(float64(ours.end), "end-bytes")
		b.ReportMetric(float64(ours.end-ours.start)/50, "growth-bytes/node/day")
		b.ReportMetric(float64(ours.heartbeats), "heartbeats")
		b.ReportMetric(float64(ours.changes), "doc-changes")
		b.ReportMetric(naiveDay, "naive-growth-bytes/day")
		b.ReportMetric(naiveDay/float64(ours.end-ours.start), "naive/ours")
	}
}

type growth struct {
	start, end          int
	heartbeats, changes int
}

func simulateFleet(b *testing.B, nodes int, interval, span, lastSeenEvery time.Duration, restarts bool) growth {
	fleet, err := NewFleet()
	if err != nil {
		b.Fatal(err)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	docs := make([]*crdt.Doc, nodes)
	members := make([]*Membership, nodes)
	hosts := make([]host.Host, nodes)
	start := func(i int) {
		members[i] = NewMembership(MembershipConfig{
			Host: hosts[i], Fleet: fleet, Doc: docs[i], Name: fmt.Sprintf("agent-%02d", i),
			Roles: []string{"build"}, Interval: interval, LastSeenEvery: lastSeenEvery, Now: clock,
		})
	}
	for i := range nodes {
		key, _, err := crypto.GenerateEd25519Key(rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		h, err := NewHost(HostConfig{Key: key, Gate: NewGate(), Listen: []ma.Multiaddr{
			ma.StringCast("/ip4/127.0.0.1/tcp/0"), ma.StringCast("/ip4/127.0.0.1/udp/0/quic-v1")}})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { h.Close() })
		hosts[i] = h
		if docs[i], err = crdt.Open(crdt.Config{Dir: b.TempDir(), Key: key}); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { docs[i].Close() })
		start(i)
		if err := members[i].EnsureRecord(true); err != nil {
			b.Fatal(err)
		}
	}
	g := growth{start: mergedSize(b, docs)}
	steps := int(span / interval)
	for s := 1; s <= steps; s++ {
		now = now.Add(interval)
		for i, m := range members {
			if restarts {
				switch s {
				case (steps/3 + i*97) % steps: // a clean restart: Goodbye first
					if err := m.EnsureRecord(false); err != nil {
						b.Fatal(err)
					}
					start(i)
				case (2*steps/3 + i*89) % steps: // a crash: no Goodbye
					start(i)
				}
			}
			if err := members[i].EnsureRecord(true); err != nil {
				b.Fatal(err)
			}
			g.heartbeats++
		}
	}
	for _, d := range docs {
		g.changes += int(d.Stats().LocalCommits)
	}
	g.end = mergedSize(b, docs)
	return g
}

func mergedSize(b *testing.B, docs []*crdt.Doc) int {
	fleetDoc, err := crdt.Open(crdt.Config{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer fleetDoc.Close()
	for _, d := range docs {
		if err := fleetDoc.MergeSnapshot(d.Snapshot()); err != nil {
			b.Fatal(err)
		}
	}
	return fleetDoc.SavedSize()
}

// BenchmarkReconcilePass10k measures one mesh reconcile pass over a fleet
// document of 10,000 node records right after a change. Each round
// changes one record, as the change that triggers a pass would; that
// write (sign, commit, log fsync) is the baseline. It then times reading
// the node list (Doc.Nodes, from the document's view), the Manager's
// input building (peer IDs, connection state) and the pure Reconcile
// decision; "pass" is their sum. Medians of the rounds are reported. Run
// with -benchtime=1x.
func BenchmarkReconcilePass10k(b *testing.B) {
	for range b.N {
		benchReconcilePass(b, 10_000, 30)
	}
}

func benchReconcilePass(b *testing.B, nodes, rounds int) {
	key, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	d, err := crdt.Open(crdt.Config{Dir: b.TempDir(), Key: key})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for start := 0; start < nodes; start += 500 {
		if _, err := d.Update("bench", func(tx *crdt.Tx) error {
			for i := start; i < min(start+500, nodes); i++ {
				nk, pub, err := crypto.GenerateEd25519Key(rand.Reader)
				if err != nil {
					return err
				}
				id, err := peer.IDFromPublicKey(pub)
				if err != nil {
					return err
				}
				tx.As(nk).SetNode(id.String(), crdt.NodeRecord{
					Name:    fmt.Sprintf("agent-%05d", i),
					Addrs:   []string{fmt.Sprintf("/ip4/10.0.%d.%d/udp/4700/quic-v1", i/250, i%250), fmt.Sprintf("/ip4/10.0.%d.%d/tcp/4700", i/250, i%250)},
					Version: ProtocolVersion, Roles: []string{"build"}, StartedMs: now.Add(-time.Hour).UnixMilli(),
					LastSeenMs: now.Add(-time.Duration(i%20) * time.Minute).UnixMilli(), Alive: i%10 != 0,
				})
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	h, err := NewHost(HostConfig{Key: key, Gate: NewGate(), Listen: []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/0")}})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	m := NewManager(ManagerConfig{Host: h, Doc: d, Max: 4, Now: func() time.Time { return now }})
	var write, read, input, decide []time.Duration
	var eligible int
	b.ResetTimer()
	for r := range rounds {
		tw := time.Now()
		if _, err := d.Update("bench", func(tx *crdt.Tx) error {
			tx.SetNode(m.cfg.Host.ID().String(), crdt.NodeRecord{Name: "self", Alive: true, LastSeenMs: int64(r)})
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		write = append(write, time.Since(tw))
		t0 := time.Now()
		if _, err := d.Nodes(); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		in := m.input()
		t2 := time.Now()
		plan := Reconcile(in)
		t3 := time.Now()
		read, input, decide = append(read, t1.Sub(t0)), append(input, t2.Sub(t1)), append(decide, t3.Sub(t2))
		eligible = len(plan.Eligible)
	}
	med := func(ds []time.Duration) float64 {
		slices.Sort(ds)
		return float64(ds[len(ds)/2]) / float64(time.Millisecond)
	}
	pass := med(read) + med(input) + med(decide)
	b.ReportMetric(float64(eligible), "eligible")
	b.ReportMetric(med(write), "write-ms")
	b.ReportMetric(med(read), "docread-ms")
	b.ReportMetric(med(input), "input-ms")
	b.ReportMetric(med(decide), "reconcile-ms")
	b.ReportMetric(pass, "pass-ms")
	b.ReportMetric(pass/med(write), "pass/write")
}
