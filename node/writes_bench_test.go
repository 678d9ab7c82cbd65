package node

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkAckedWrites measures acknowledged writes per second through the
// API (PUT /v1/rooms/{topic}/state/{key}, answered only once the change is
// on disk) with 1, 8 and 64 concurrent writers, against a baseline of raw
// 100-byte appends each followed by fsync, by one writer, in a file of the
// same data dir. Then it measures whether the rate decays as keys
// accumulate: WRITES_DECAY (default 50,000) writes by 8 writers, the rate
// of the last 1,000 against the first 1,000.
func BenchmarkAckedWrites(b *testing.B) {
	for range b.N {
		benchAckedWrites(b)
	}
}

func benchAckedWrites(b *testing.B) {
	c := newCluster(b, 1, benchConfig())
	n := c.nodes[0]
	cl := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 128}}
	put := func(key string) error {
		req, _ := http.NewRequest("PUT", "http://"+n.APIAddr()+"/v1/rooms/bench/state/"+key, strings.NewReader(`{"value":"0123456789abcdef0123456789abcdef0123456789abcdef"}`))
		req.Header.Set("Authorization", "Bearer "+n.APIToken())
		resp, err := cl.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("PUT %s: %s", key, resp.Status)
		}
		return nil
	}
	// run writes keys prefix-0 .. prefix-(count-1) with w writers and
	// returns the time at which each write was acknowledged, in order.
	run := func(prefix string, count, w int) []time.Time {
		acks := make([]time.Time, count)
		var next atomic.Int64
		var wg sync.WaitGroup
		for range w {
			wg.Go(func() {
				for {
					i := int(next.Add(1)) - 1
					if i >= count {
						return
					}
					if err := put(fmt.Sprintf("%s-%d", prefix, i)); err != nil {
						b.Error(err)
						return
					}
					acks[i] = time.Now()
				}
			})
		}
		wg.Wait()
		return acks
	}
	raw := rawAppendRate(b, n.cfg.DataDir, 2000)
	b.ReportMetric(raw, "raw-append-fsync/s")
	for _, w := range []int{1, 8, 64} {
		const count = 2000
		start := time.Now()
		syncs := n.Doc.Stats().LogSyncs
		run(fmt.Sprintf("w%d", w), count, w)
		rate := count / time.Since(start).Seconds()
		b.ReportMetric(float64(n.Doc.Stats().LogSyncs-syncs)/count, fmt.Sprintf("fsyncs/write-%dw", w))
		b.ReportMetric(rate, fmt.Sprintf("writes/s-%dw", w))
		b.ReportMetric(rate/raw, fmt.Sprintf("x-raw-%dw", w))
	}
	total := 50_000
	if s := os.Getenv("WRITES_DECAY"); s != "" {
		fmt.Sscan(s, &total)
	}
	start := time.Now()
	acks := run("decay", total, 8)
	first := 1000 / acks[999].Sub(start).Seconds()
	last := 1000 / acks[total-1].Sub(acks[total-1001]).Seconds()
	b.ReportMetric(first, "first-1000-writes/s")
	b.ReportMetric(last, "last-1000-writes/s")
	b.ReportMetric(first/last, "first/last")
}

// rawAppendRate appends count 100-byte records to a file in dir, each
// followed by fsync, and returns the rate per second.
func rawAppendRate(b *testing.B, dir string, count int) float64 {
	f, err := os.Create(filepath.Join(dir, "raw-append"))
	if err != nil {
		b.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	rec := make([]byte, 100)
	start := time.Now()
	for range count {
		if _, err := f.Write(rec); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
	}
	return float64(count) / time.Since(start).Seconds()
}
