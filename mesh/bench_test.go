package mesh

import (
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
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
		if docs[i], err = crdt.Open(crdt.Config{Dir: b.TempDir()}); err != nil {
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
