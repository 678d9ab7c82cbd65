package node

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/meshnode/meshnode/crdt"
)

// BenchmarkRoomStateOverwrites: three nodes take 30,000 overwrites
// (OVERWRITES) of 200 room state keys with random 48-character values,
// spread over the three, with the default cut rule; after the writes
// stop it measures how long until every node's saved document is at most
// 256 KiB, and then what a node joining downloads. Baseline, in the same
// run: the same writes on a fleet whose documents never cut.
func BenchmarkRoomStateOverwrites(b *testing.B) {
	total := 30_000
	if s := os.Getenv("OVERWRITES"); s != "" {
		total, _ = strconv.Atoi(s)
	}
	const keys, goal = 200, 256 << 10
	for range b.N {
		for _, cuts := range []bool{false, true} {
			mod := func(_ int, c *Config) {
				benchConfig()(0, c)
				if !cuts {
					c.cutCheck = -1
				}
			}
			c := newCluster(b, 3, mod)
			c.waitFormed(b, 2)
			start := time.Now()
			var wg sync.WaitGroup
			for i, n := range c.nodes {
				wg.Add(1)
				go func() {
					defer wg.Done()
					v := make([]byte, 24)
					for k := i; k < total; k += len(c.nodes) {
						rand.Read(v)
						if _, err := n.Doc.Update("overwrite", func(tx *crdt.Tx) error {
							tx.SetRoomState("busy", fmt.Sprintf("k%03d", k%keys), hex.EncodeToString(v))
							return nil
						}); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			wrote := time.Since(start)
			stopped := time.Now()
			waitFor(b, 120*time.Second, "the fleet converged", func() bool { return c.converged() })
			largest := func() int {
				m := 0
				for _, n := range c.nodes {
					m = max(m, n.Doc.SavedSize())
				}
				return m
			}
			name := "without-cuts"
			if cuts {
				name = "with-cuts"
				waitFor(b, 5*time.Minute, "every saved document within 256 KiB", func() bool { return largest() <= goal && c.converged() })
				b.ReportMetric(time.Since(stopped).Seconds(), "s-to-256KiB")
			}
			saved := largest()
			j := c.add(mod)
			waitFor(b, 120*time.Second, "the joiner converged", func() bool { return c.converged() })
			in := j.Replicator.Stats().BytesIn
			b.ReportMetric(float64(saved), name+"-saved-bytes")
			b.ReportMetric(float64(in), name+"-join-bytes")
			b.Logf("%s: %d writes in %v; largest saved document %d bytes; a joiner downloaded %d bytes; epoch %v",
				name, total, wrote.Round(time.Millisecond), saved, in, c.nodes[0].Doc.Epoch())
			c.close()
		}
	}
}
