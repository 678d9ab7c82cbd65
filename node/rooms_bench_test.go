package node

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/meshnode/meshnode/crdt"
)

// BenchmarkRoomLatency measures room message latency: one node sends a
// 256-byte message; the time until every other participant's subscriber
// has it (sealed, validated, opened, ordered, delivered). Baseline: raw
// GossipSub, a 256-byte message on an extra topic joined by the same
// routers over the same connections, interleaved round by round.
func BenchmarkRoomLatency(b *testing.B) {
	for _, tc := range []struct{ nodes, rounds int }{{5, 300}, {20, 150}} {
		b.Run(fmt.Sprintf("participants=%d", tc.nodes), func(b *testing.B) {
			for range b.N {
				benchRoomLatency(b, tc.nodes, tc.rounds)
			}
		})
	}
}

func benchRoomLatency(b *testing.B, nodes, rounds int) {
	c := newCluster(b, nodes, benchConfig())
	waitFor(b, 60*time.Second, "every node authenticated", func() bool { return c.allAuthenticated(1) })
	for _, n := range c.nodes {
		if err := n.Rooms.Join("bench"); err != nil {
			b.Fatal(err)
		}
	}
	waitFor(b, 60*time.Second, "one room", func() bool { _, ok := inOneRoom(c.nodes, "bench"); return ok })

	a := &arrivals{raw: make([]map[uint64]time.Time, nodes)}
	rawRound, stopRaw := a.rawTopic(b, c)
	defer stopRaw()
	// Room arrivals, keyed by the round number in the payload.
	var mu sync.Mutex
	got := make([]map[uint64]time.Time, nodes)
	var wg sync.WaitGroup
	done := make(chan struct{})
	for i, n := range c.nodes {
		got[i] = map[uint64]time.Time{}
		ch, cancel, err := n.Rooms.Subscribe("bench", 4096)
		if err != nil {
			b.Fatal(err)
		}
		defer cancel()
		self := n.ID()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				case ev := <-ch:
					if ev.Type != "message" || ev.Message.Sender == self || len(ev.Message.Payload) < 8 {
						continue
					}
					now := time.Now()
					r := binary.BigEndian.Uint64(ev.Message.Payload)
					mu.Lock()
					if _, ok := got[i][r]; !ok {
						got[i][r] = now
					}
					mu.Unlock()
				}
			}
		}()
	}
	defer func() { close(done); wg.Wait() }()
	ctx := context.Background()
	roomRound := func(r uint64, from int, wait time.Duration) (time.Duration, bool) {
		msg := make([]byte, 256)
		binary.BigEndian.PutUint64(msg, r)
		start := time.Now()
		if _, err := c.nodes[from].Rooms.Send(ctx, "bench", "bench", msg); err != nil {
			b.Fatal(err)
		}
		t, ok := lastArrival(nodes, from, wait, func(i int) (time.Time, bool) {
			mu.Lock()
			defer mu.Unlock()
			t, ok := got[i][r]
			return t, ok
		})
		return t.Sub(start), ok
	}
	// Warm-up: both topics deliver a whole pass from every node.
	probe := uint64(1 << 40)
	waitFor(b, 60*time.Second, "raw and room meshes", func() bool {
		for from := range nodes {
			probe++
			if _, ok := rawRound(probe, from, 2*time.Second); !ok {
				return false
			}
			if _, ok := roomRound(probe, from, 2*time.Second); !ok {
				return false
			}
		}
		return true
	})
	var raw, rm []time.Duration
	lost := 0
	measure := func(f func(uint64, int, time.Duration) (time.Duration, bool), r uint64, from int, into *[]time.Duration) {
		if d, ok := f(r, from, 5*time.Second); ok {
			*into = append(*into, d)
		} else {
			lost++
		}
	}
	for r := range uint64(rounds) {
		from := int(r) % nodes
		if r%2 == 0 {
			measure(rawRound, r, from, &raw)
			measure(roomRound, r, from, &rm)
		} else {
			measure(roomRound, r, from, &rm)
			measure(rawRound, r, from, &raw)
		}
	}
	b.ReportMetric(float64(lost), "lost")
	reportAgainst(b, "room", rm, "raw", raw, "ratio")
}

// BenchmarkRoomFormation: three nodes open a fresh topic at the same
// instant (Join, with no room advertised); the time until all three are
// connected to one room. Baseline: one document change reaching the
// other two nodes, in the same cluster, measured round by round.
func BenchmarkRoomFormation(b *testing.B) {
	for range b.N {
		c := newCluster(b, 3, benchConfig())
		waitFor(b, 60*time.Second, "every node authenticated", func() bool { return c.allAuthenticated(2) })
		a := &arrivals{doc: make([]map[crdt.Hash]time.Time, 3)}
		stop := a.watchDocs(c)
		for r := range 3 {
			a.commitRound(b, c, r, r%3, nil) // warm-up
		}
		var form, doc []time.Duration
		for r := range 20 {
			topic := fmt.Sprintf("t%d", r)
			start := time.Now()
			var wg sync.WaitGroup
			for _, n := range c.nodes {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := n.Rooms.Join(topic); err != nil {
						b.Error(err)
					}
				}()
			}
			wg.Wait()
			deadline := time.Now().Add(30 * time.Second)
			for {
				if _, ok := inOneRoom(c.nodes, topic); ok {
					break
				}
				if time.Now().After(deadline) {
					b.Fatalf("round %d: no common room in 30s", r)
				}
				time.Sleep(time.Millisecond)
			}
			form = append(form, time.Since(start))
			doc = append(doc, a.commitRound(b, c, 100+r, r%3, nil))
			for _, n := range c.nodes {
				_ = n.Rooms.Leave(topic)
			}
		}
		stop()
		slices.Sort(form)
		slices.Sort(doc)
		b.ReportMetric(ms(percentile(form, 0.5)), "form-p50-ms")
		b.ReportMetric(ms(percentile(form, 0.99)), "form-max-ms")
		b.ReportMetric(ms(percentile(doc, 0.5)), "doc-p50-ms")
		b.ReportMetric(ms(percentile(form, 0.5))/ms(percentile(doc, 0.5)), "p50-ratio")
	}
}

// BenchmarkRoomDocGrowth: five participants in one room, with a 2 s
// lease (renewed every second) so that a minute holds many renewals; the
// document's saved size is taken before and after, and the growth per
// renewal is scaled to an hour at the default lease (10 min, renewed every
// 5 min: 12 renewals per participant per hour). Baseline: the same
// cluster's growth over the same time with no room open.
func BenchmarkRoomDocGrowth(b *testing.B) {
	for range b.N {
		const n, window = 5, 20 * time.Second
		c := newCluster(b, n, benchConfig(), func(_ int, cfg *Config) { cfg.RoomLease = 2 * time.Second })
		waitFor(b, 60*time.Second, "every node authenticated", func() bool { return c.allAuthenticated(1) })
		waitFor(b, 60*time.Second, "document converged", func() bool { return c.converged() })
		size := func() int { return c.nodes[0].Doc.SavedSize() }
		s0 := size()
		time.Sleep(window)
		idle := size() - s0
		for _, nd := range c.nodes {
			if err := nd.Rooms.Join("growth"); err != nil {
				b.Fatal(err)
			}
		}
		waitFor(b, 60*time.Second, "one room", func() bool { _, ok := inOneRoom(c.nodes, "growth"); return ok })
		waitFor(b, 60*time.Second, "document converged", func() bool { return c.converged() })
		writes := func() (w uint64) {
			for _, nd := range c.nodes {
				w += topicStats(b, nd, "growth").Renewals
			}
			return w
		}
		s1, w1 := size(), writes()
		time.Sleep(window)
		waitFor(b, 60*time.Second, "document converged", func() bool { return c.converged() })
		grown, renewals := size()-s1, float64(writes()-w1)
		perRenewal := float64(grown) / renewals
		b.ReportMetric(renewals, "renewals")
		b.ReportMetric(float64(idle), "idle-bytes-per-20s")
		b.ReportMetric(perRenewal, "bytes-per-renewal")
		b.ReportMetric(perRenewal*12*n/1024, "KiB-per-hour-default-lease")
		b.ReportMetric(float64(s1), "doc-bytes")
	}
}
