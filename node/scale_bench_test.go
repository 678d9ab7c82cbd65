package node

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/meshnode/meshnode/crdt"
)

// BenchmarkAPIScale times GET /v1/library and GET /v1/nodes over real
// HTTP on a node whose document holds a large fleet: 100 nodes x 1,000
// library entries (100,000 holder records), then 10,000 node records.
// Each figure is the median of 20 requests, each made right after a
// change to the document (a write of one holder entry), so no reader's
// cache helps. Baseline in the same run: building the endpoint's answer
// in process and encoding it with json.Marshal (no HTTP, no
// indentation), the least any JSON endpoint serving it must do. Run with
// -benchtime=1x.
func BenchmarkAPIScale(b *testing.B) {
	for range b.N {
		c := newCluster(b, 1, benchConfig())
		n := c.nodes[0]
		fillFleet(b, n, 100, 1000)
		benchEndpoint(b, n, "library", func() any { v, _ := n.Library.View(); return v })
		fillFleet(b, n, 9_900, 0)
		benchEndpoint(b, n, "nodes", func() any { v, _ := n.Nodes(); return v })
	}
}

// fillFleet writes records of nodes new fleet nodes, each holding
// entries library items, one change per node signed by its own key.
func fillFleet(b *testing.B, n *Node, nodes, entries int) {
	for p := range nodes {
		key, pid := testIdentity(b)
		if _, err := n.Doc.Update("bench", func(tx *crdt.Tx) error {
			w := tx.As(key)
			w.SetNode(pid, crdt.NodeRecord{Name: fmt.Sprintf("agent-%05d", p), Addrs: []string{fmt.Sprintf("/ip4/10.0.%d.%d/udp/4700/quic-v1", p/250, p%250)}, Version: 1, StartedMs: 1, LastSeenMs: 1, Alive: true})
			for k := range entries {
				w.SetHolder(fmt.Sprintf("item-%04d", k), pid, crdt.Holder{Manifest: fmt.Sprintf("%064x", k), Version: "v1", Size: int64(k) << 20, Files: int64(k % 50), State: crdt.HolderComplete, UpdatedMs: int64(k)})
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
}

func benchEndpoint(b *testing.B, n *Node, what string, read func() any) {
	var get, enc []time.Duration
	var size int
	for r := range 20 {
		if _, err := n.Doc.Update("bench", func(tx *crdt.Tx) error {
			tx.SetHolder("item-0000", n.ID().String(), crdt.Holder{Manifest: "ab", Version: "v", State: crdt.HolderComplete, UpdatedMs: int64(r)})
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		body := apiBody(b, n, "/v1/"+what)
		get = append(get, time.Since(t0))
		size = len(body)
		t1 := time.Now()
		if _, err := json.Marshal(read()); err != nil {
			b.Fatal(err)
		}
		enc = append(enc, time.Since(t1))
	}
	med := func(ds []time.Duration) float64 {
		slices.Sort(ds)
		return float64(ds[len(ds)/2]) / float64(time.Millisecond)
	}
	b.ReportMetric(med(get), what+"-get-ms")
	b.ReportMetric(med(enc), what+"-baseline-json-ms")
	b.ReportMetric(med(get)/med(enc), what+"-ratio")
	b.ReportMetric(float64(size), what+"-bytes")
}

func apiBody(b *testing.B, n *Node, path string) []byte {
	req, _ := http.NewRequest("GET", "http://"+n.APIAddr()+path, nil)
	req.Header.Set("Authorization", "Bearer "+n.APIToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("GET %s: %d %v", path, resp.StatusCode, err)
	}
	return body
}
