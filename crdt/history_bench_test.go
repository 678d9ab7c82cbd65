package crdt

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	am "github.com/automerge/automerge-go"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/rs/zerolog"
)

// The fleet of the bounded-history goal, on the document every node of a
// converged fleet holds: 50 nodes, each holding 40 items and present in 5
// of 10 rooms, each day refreshing its node record every 10 minutes (as
// LastSeenEvery does), updating 20 of its items and renewing its 5 room
// leases. Every write is a change of its own, signed by its node, as on
// a real node. Time is simulated; the cut rule runs on it with its
// defaults (a check every simulated 10 minutes).
const (
	simNodes        = 50
	simItems        = 40
	simRooms        = 10
	simRoomsPerNode = 5
	simSlotsPerDay  = 144 // 10-minute slots
)

type simFleet struct {
	d    *Doc
	keys []crypto.PrivKey
	ids  []string
	now  time.Time
	cs   cutState
	// cuts and cutCPU are the switches made and the CPU time they took
	// (ProposeCut, SwitchEpoch and their carry).
	cuts   int
	cutCPU time.Duration
	writes int
	// maxDisk is the most the document took on disk at any check after
	// the first day (the first day starts with every node's library
	// written at once, before any cut).
	maxDisk int64
	today   int
}

func newSimFleet(tb testing.TB, compact bool) *simFleet {
	tb.Helper()
	f := &simFleet{now: time.Unix(1_700_000_000, 0)}
	cfg := Config{Dir: tb.TempDir(), CutCheck: -1, Now: func() time.Time { return f.now }, Logger: zerolog.Nop()}
	d, err := Open(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	d.fsync = func(*os.File) error { return nil } // simulated: the disk is not what is measured
	f.d = d
	for range simNodes {
		id, k := testIdentity(tb)
		f.keys, f.ids = append(f.keys, k), append(f.ids, id)
	}
	if !compact {
		f.d.cfg.CutBytes = 1 << 62
	}
	for i := range simNodes {
		f.write(tb, func(tx *Tx) {
			tx.As(f.keys[i]).SetNode(f.ids[i], f.nodeRecord(i))
			for j := range simItems {
				item := fmt.Sprintf("item-%02d-%02d", i, j)
				tx.SetItemName(item, "Item "+item)
				tx.As(f.keys[i]).SetHolder(item, f.ids[i], f.holder(j, 0))
			}
		})
	}
	return f
}

func (f *simFleet) nodeRecord(i int) NodeRecord {
	return NodeRecord{Name: fmt.Sprintf("agent-%02d", i), Addrs: []string{"/ip4/10.0.0." + strconv.Itoa(i) + "/udp/4700/quic-v1", "/ip4/10.0.0." + strconv.Itoa(i) + "/tcp/4700"},
		Version: 1, Roles: []string{"build"}, StartedMs: 1_700_000_000_000, LastSeenMs: f.now.UnixMilli(), Alive: true}
}

func (f *simFleet) holder(j, version int) Holder {
	return Holder{Manifest: fmt.Sprintf("%064x", j*1_000_003+version), Version: fmt.Sprintf("v%d", version),
		Size: int64(1<<20 + j), Files: 12, State: "complete", UpdatedMs: f.now.UnixMilli()}
}

func (f *simFleet) write(tb testing.TB, fn func(tx *Tx)) {
	if _, err := f.d.Update("sim", func(tx *Tx) error { fn(tx); return nil }); err != nil {
		tb.Fatal(err)
	}
	f.writes++
}

// day runs one simulated day.
func (f *simFleet) day(tb testing.TB, day int) {
	f.today = day
	for s := range simSlotsPerDay {
		f.now = f.now.Add(10 * time.Minute)
		for i := range simNodes {
			k, id := f.keys[i], f.ids[i]
			f.write(tb, func(tx *Tx) { tx.As(k).SetNode(id, f.nodeRecord(i)) })
			if (s+i)%7 == 0 && (s+i)/7 < 20 { // 20 item updates a day
				j := (day*20 + (s+i)/7) % simItems
				f.write(tb, func(tx *Tx) {
					tx.As(k).SetHolder(fmt.Sprintf("item-%02d-%02d", i, j), id, f.holder(j, day+1))
				})
			}
			if (s+i)%29 == 0 { // 5 lease renewals a day, one room each
				topic := fmt.Sprintf("room-%d", (i+(s+i)/29)%simRooms)
				f.write(tb, func(tx *Tx) { tx.As(k).SetPresence(topic, id, f.now.Add(10*time.Minute).UnixMilli()) })
			}
		}
		f.tick(tb)
	}
}

// tick runs the cut rule once, as every node does every CutCheck.
func (f *simFleet) tick(tb testing.TB) {
	before := f.d.Epoch()
	start := cpuTime()
	if err := f.d.cutTick(&f.cs, f.now); err != nil {
		tb.Fatal(err)
	}
	if f.d.Epoch() != before {
		f.cuts++
		f.cutCPU += cpuTime() - start
	}
	if f.today > 0 {
		f.maxDisk = max(f.maxDisk, f.d.DiskBytes())
	}
}

// cpuTime is this process's user and system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// freshSize saves a document with the same keys and values as d and no
// history: the baseline a compacted document is held against.
func freshSize(tb testing.TB, d *Doc) (int, time.Duration) {
	f, err := d.forkAt(d.Heads())
	if err != nil {
		tb.Fatal(err)
	}
	st, err := stateAt(f, d.Epoch(), d.Epoch().Num+1, d.Heads())
	if err != nil {
		tb.Fatal(err)
	}
	g := am.New()
	for k, v := range st.records {
		if err := g.Path(k).Set(v); err != nil {
			tb.Fatal(err)
		}
	}
	for k, v := range st.shared {
		if err := g.Path(k).Set(v); err != nil {
			tb.Fatal(err)
		}
	}
	if _, err := g.Commit("fresh"); err != nil {
		tb.Fatal(err)
	}
	start := time.Now()
	n := len(g.Save())
	return n, time.Since(start)
}

// BenchmarkThirtyDays runs the simulated fleet for SIM_DAYS days (default
// 30) with the cut rule and without it, and reports the saved document,
// what a joiner downloads, and what a cut costs a node.
func BenchmarkThirtyDays(b *testing.B) {
	days := 30
	if s := os.Getenv("SIM_DAYS"); s != "" {
		days, _ = strconv.Atoi(s)
	}
	for range b.N {
		for _, compact := range []bool{true, false} {
			start := time.Now()
			f := newSimFleet(b, compact)
			for day := range days {
				f.day(b, day)
			}
			saved := f.d.SavedSize()
			fresh, freshSave := freshSize(b, f.d)
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			name := "without_cuts"
			if compact {
				name = "with_cuts"
				b.ReportMetric(float64(f.cuts), "cuts")
				if f.cuts > 0 {
					b.ReportMetric(float64(f.cutCPU.Milliseconds())/float64(f.cuts), "cut-cpu-ms")
				}
				b.ReportMetric(float64(len(f.d.Snapshot())), "join-bytes")
				b.ReportMetric(float64(freshSave.Microseconds())/1000, "fresh-save-ms")
			}
			b.ReportMetric(float64(saved), name+"-saved-bytes")
			b.ReportMetric(float64(f.maxDisk), name+"-max-disk-bytes")
			b.ReportMetric(float64(fresh), "fresh-bytes")
			b.Logf("%s: %d days, %d writes, %d cuts (%v CPU), saved %d bytes, fresh %d bytes (%.2fx), at most %d bytes on disk, epoch %v, took %v",
				name, days, f.writes, f.cuts, f.cutCPU, saved, fresh, float64(saved)/float64(fresh), f.maxDisk, f.d.Epoch(), time.Since(start).Round(time.Second))
		}
	}
}
