package crdt

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	am "github.com/automerge/automerge-go"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Record layouts compared on the fleet document of 100 nodes x 1,000
// library entries (100 node records, 100,000 holder entries):
//
//   - maps: format 1, each record an automerge map of fields, unsigned;
//   - signed: format 2, each record one signed bytes value.
//
// Each sub-benchmark builds its document, saves it, and times what a
// joiner does with the snapshot: format 1 loaded it (am.Load); format 2
// checks every operation and signature, then loads it (MergeSnapshot into
// an empty document, which also writes it to disk). The C heap that the
// load leaves is the RSS growth across it. Run each layout in its own
// process for clean RSS figures:
//
//	go test ./crdt -run XXX -bench 'BenchmarkLayout/maps' -benchtime 3x
//	go test ./crdt -run XXX -bench 'BenchmarkLayout/signed' -benchtime 3x
//
// MN_BENCH_SMALL=1 shrinks the document to 10 x 100.
func BenchmarkLayout(b *testing.B) {
	nodes, entries := 100, 1000
	if os.Getenv("MN_BENCH_SMALL") != "" {
		nodes, entries = 10, 100
	}
	b.Run("maps", func(b *testing.B) {
		snap := buildMapsLayout(b, nodes, entries)
		benchJoin(b, snap, func() error {
			_, err := am.Load(snap)
			return err
		})
	})
	b.Run("signed", func(b *testing.B) {
		snap := buildSignedLayout(b, nodes, entries)
		benchJoin(b, snap, func() error {
			d, err := Open(Config{Dir: b.TempDir()})
			if err != nil {
				return err
			}
			defer d.Close()
			return d.MergeSnapshot(snap)
		})
	})
}

func benchJoin(b *testing.B, snap []byte, join func() error) {
	runtime.GC()
	before := rssBytes()
	start := time.Now()
	for range b.N {
		if err := join(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(snap)), "snapshot-bytes")
	b.ReportMetric(time.Since(start).Seconds()/float64(b.N), "join-s")
	b.ReportMetric(float64(rssBytes()-before)/(1<<20), "rss-growth-MiB")
}

func holderFields(k int) Holder {
	return Holder{Manifest: fmt.Sprintf("%064x", k), Version: "v1", Size: int64(k) << 20, Files: int64(k % 50), State: HolderComplete, UpdatedMs: int64(k)}
}

func nodeFields(p int) NodeRecord {
	return NodeRecord{Name: fmt.Sprintf("agent-%03d", p), Addrs: []string{fmt.Sprintf("/ip4/10.0.%d.%d/udp/4700/quic-v1", p/250, p%250)},
		Version: 1, StartedMs: 1, LastSeenMs: 1, Alive: true}
}

// buildMapsLayout writes the document as format 1 did: one change per
// node, each record a map.
func buildMapsLayout(b *testing.B, nodes, entries int) []byte {
	doc := am.New()
	for p := range nodes {
		id := fmt.Sprintf("12D3KooWbenchpeer%03d", p)
		n := nodeFields(p)
		if err := doc.Path("nodes/" + id).Set(map[string]any{"name": n.Name, "addrs": n.Addrs, "version": n.Version,
			"roles": []string{}, "started_ms": n.StartedMs, "last_seen_ms": n.LastSeenMs, "alive": n.Alive}); err != nil {
			b.Fatal(err)
		}
		for k := range entries {
			h := holderFields(k)
			if err := doc.Path(holderKey(fmt.Sprintf("item-%04d", k), id)).Set(map[string]any{"manifest": h.Manifest, "version": h.Version,
				"size": h.Size, "files": h.Files, "state": h.State, "updated_ms": h.UpdatedMs}); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := doc.Commit("node"); err != nil {
			b.Fatal(err)
		}
	}
	return doc.Save()
}

// buildSignedLayout writes the same content through Tx, one change per
// node signed by that node's key.
func buildSignedLayout(b *testing.B, nodes, entries int) []byte {
	d, err := Open(Config{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	for p := range nodes {
		k, _, _ := crypto.GenerateEd25519Key(nil)
		pid, _ := peer.IDFromPrivateKey(k)
		id := pid.String()
		if _, err := d.Update("node", func(tx *Tx) error {
			w := tx.As(k)
			w.SetNode(id, nodeFields(p))
			for k := range entries {
				w.SetHolder(fmt.Sprintf("item-%04d", k), id, holderFields(k))
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	return d.Snapshot()
}

// rssBytes reads this process's resident set size.
func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// BenchmarkValidateChange times the checks a change from a peer passes
// against applying it (the same bytes into a document that lacks it), for
// a one-key room state write, a node record (one signature) and a
// library scan of 1,000 holder entries (1,000 signatures).
func BenchmarkValidateChange(b *testing.B) {
	for _, c := range []struct {
		name string
		edit func(tx *Tx, self string)
	}{
		{"state", func(tx *Tx, _ string) { tx.SetRoomState("t", "k", strings.Repeat("v", 48)) }},
		{"record", func(tx *Tx, self string) { tx.SetNode(self, nodeFields(1)) }},
		{"holders-1000", func(tx *Tx, self string) {
			for k := range 1000 {
				tx.SetHolder(fmt.Sprintf("item-%04d", k), self, holderFields(k))
			}
		}},
	} {
		src, err := Open(Config{Dir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		base := src.Snapshot()
		h, err := src.Update("x", func(tx *Tx) error { c.edit(tx, src.Self()); return nil })
		if err != nil {
			b.Fatal(err)
		}
		ch, _ := src.doc().Change(h)
		raw := ch.Save()
		src.Close()
		co, _, err := decodeChange(raw)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(c.name+"/validate", func(b *testing.B) {
			d, _ := Open(Config{Dir: b.TempDir()})
			defer d.Close()
			b.ResetTimer()
			for range b.N {
				d.keys = newKeys() // every signature checked, as on first arrival
				co, _, err := decodeChange(raw)
				if err != nil {
					b.Fatal(err)
				}
				d.mu.Lock()
				ref := d.checkChangeLocked(co, map[string]uint64{}, func() error { return nil })
				d.mu.Unlock()
				if ref != nil {
					b.Fatal(ref)
				}
			}
		})
		b.Run(c.name+"/apply", func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				doc, err := am.Load(base)
				if len(base) == 0 {
					doc, err = am.New(), nil
				}
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if err := doc.LoadIncremental(raw); err != nil {
					b.Fatal(err)
				}
			}
		})
		_ = co
	}
}
