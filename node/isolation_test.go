package node

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshnode/meshnode/crdt"
	"github.com/meshnode/meshnode/mesh"
)

func TestWrongTokenGetsNothing(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2)
	waitFor(t, 60*time.Second, "fleet formed", func() bool { return c.allAuthenticated(1) && c.converged() })
	update(t, c.nodes[0], func(tx *crdt.Tx) { tx.SetItemName("secret-item", "x") })

	// An intruder with another fleet's token dials node 0 directly.
	intruder := newCluster(t, 1).nodes[0]
	if intruder.Fleet.ID == c.nodes[0].Fleet.ID {
		t.Fatal("two fleets share an ID")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	_ = intruder.Host.Connect(ctx, peer.AddrInfo{ID: c.nodes[0].ID(), Addrs: c.nodes[0].Host.Addrs()})
	waitFor(t, 15*time.Second, "intruder disconnected and backing off", func() bool {
		return !intruder.Gate.Allowed(c.nodes[0].ID()) &&
			c.nodes[0].Host.Network().Connectedness(intruder.ID()) != network.Connected
	})
	// Its publishes on its own topics never reach us, and it got nothing.
	update(t, intruder, func(tx *crdt.Tx) { tx.SetItemName("intruder-item", "x") })
	time.Sleep(time.Second) // not a synchronisation: the window the intruder gets to leak
	if _, ok, _ := intruder.Doc.Item("secret-item"); ok {
		t.Fatal("intruder received fleet data")
	}
	if nodes, _ := intruder.Doc.Nodes(); len(nodes) != 1 {
		t.Fatalf("intruder sees %d nodes, want only itself", len(nodes))
	}
	for i, n := range c.nodes {
		if _, ok, _ := n.Doc.Item("intruder-item"); ok {
			t.Fatalf("node %d accepted intruder data", i)
		}
		if n.Auth.IsAuthenticated(intruder.ID()) {
			t.Fatalf("node %d authenticated the intruder", i)
		}
	}
}

func apiGet(t *testing.T, n *Node, path, token string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+n.APIAddr()+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func TestAPI(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2)
	n := c.nodes[0]
	waitFor(t, 20*time.Second, "fleet formed and heard", func() bool {
		return c.allAuthenticated(1) && c.converged() && n.Membership.Members()[c.nodes[1].ID()].State == mesh.StateAlive
	})

	for _, tok := range []string{"", "wrong"} {
		resp, body := apiGet(t, n, "/v1/status", tok)
		var e APIError
		if resp.StatusCode != 401 || json.Unmarshal(body, &e) != nil || e.Error.Code != "unauthorized" {
			t.Fatalf("token %q: %d %s", tok, resp.StatusCode, body)
		}
	}
	resp, body := apiGet(t, n, "/v1/nope", n.APIToken())
	var e APIError
	if resp.StatusCode != 404 || json.Unmarshal(body, &e) != nil || e.Error.Code != "not_found" {
		t.Fatalf("unknown path: %d %s", resp.StatusCode, body)
	}
	req, _ := http.NewRequest("POST", "http://"+n.APIAddr()+"/v1/status", nil)
	req.Header.Set("Authorization", "Bearer "+n.APIToken())
	r2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := io.ReadAll(r2.Body)
	r2.Body.Close()
	if r2.StatusCode != 405 || json.Unmarshal(b2, &e) != nil || e.Error.Code != "method_not_allowed" {
		t.Fatalf("wrong method: %d %s", r2.StatusCode, b2)
	}

	var st Status
	resp, body = apiGet(t, n, "/v1/status", n.APIToken())
	if resp.StatusCode != 200 || json.Unmarshal(body, &st) != nil || st.ID != n.ID().String() || st.Fleet != n.Fleet.ID || len(st.Heads) == 0 || st.DocBytes == 0 {
		t.Fatalf("status: %d %s", resp.StatusCode, body)
	}
	var nodes []NodeInfo
	_, body = apiGet(t, n, "/v1/nodes", n.APIToken())
	if json.Unmarshal(body, &nodes) != nil || len(nodes) != 2 {
		t.Fatalf("nodes: %s", body)
	}
	for _, ni := range nodes {
		if ni.State != mesh.StateAlive {
			t.Fatalf("node %s state %s, want alive", ni.Name, ni.State)
		}
	}
	var peers []PeerInfo
	_, body = apiGet(t, n, "/v1/peers", n.APIToken())
	if json.Unmarshal(body, &peers) != nil || len(peers) == 0 || !peers[0].Authenticated {
		t.Fatalf("peers: %s", body)
	}
	resp, body = apiGet(t, n, "/v1/doc", n.APIToken())
	if resp.StatusCode != 200 || len(body) != n.Doc.SavedSize() {
		t.Fatalf("doc: %d, %d bytes", resp.StatusCode, len(body))
	}
	resp, body = apiGet(t, n, "/metrics", n.APIToken())
	if resp.StatusCode != 200 || !strings.Contains(string(body), "meshnode_sync_rounds_total") || !strings.Contains(string(body), "meshnode_doc_bytes") {
		t.Fatalf("metrics: %d %.300s", resp.StatusCode, body)
	}

	// SSE: a document change written on the other node shows up.
	req, _ = http.NewRequestWithContext(t.Context(), "GET", "http://"+n.APIAddr()+"/v1/events", nil)
	req.Header.Set("Authorization", "Bearer "+n.APIToken())
	sse, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer sse.Body.Close()
	if ct := sse.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	got := make(chan Event, 1)
	go func() {
		sc := bufio.NewScanner(sse.Body)
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var ev Event
				if json.Unmarshal([]byte(data), &ev) == nil && ev.Type == EventDocChanged && ev.Data["local"] == false {
					got <- ev
					return
				}
			}
		}
	}()
	waitFor(t, 10*time.Second, "the event stream subscribed", func() bool {
		c.nodes[0].Events.mu.Lock()
		defer c.nodes[0].Events.mu.Unlock()
		return len(c.nodes[0].Events.subs) > 0
	})
	update(t, c.nodes[1], func(tx *crdt.Tx) { tx.SetItemName("sse", "x") })
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("no doc.changed event for a remote change")
	}
}
