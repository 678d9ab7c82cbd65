package node

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshnode/meshnode/crdt"
)

// Damage found when the document opens is visible after the start: in
// /v1/status, in /metrics, and as a doc.damaged event to every event
// client, however late it connects.
func TestDocDamageVisible(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	update(t, n, func(tx *crdt.Tx) { tx.SetItemName("tools", "x") })
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(cfg.DataDir, DirDoc, "doc.snapshot")
	b, err := os.ReadFile(snap)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(snap, b, 0o600); err != nil {
		t.Fatal(err)
	}

	n, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("node did not stop within 5s")
		}
	}()

	resp, body := apiGet(t, n, "/v1/status", n.APIToken())
	var st Status
	if resp.StatusCode != 200 || json.Unmarshal(body, &st) != nil || !strings.Contains(string(body), `"waiting_records"`) {
		t.Fatalf("status: %d %s", resp.StatusCode, body)
	}
	var found *crdt.Damage
	for i, d := range st.Document.Damage {
		if d.File == snap {
			found = &st.Document.Damage[i]
		}
	}
	if found == nil || found.KeptAs == "" || found.Problem == "" || found.Lost == "" {
		t.Fatalf("status shows no damage of %s: %s", snap, body)
	}
	if _, err := os.Stat(found.KeptAs); err != nil {
		t.Fatalf("the damaged snapshot is not where status says it is kept: %v", err)
	}
	if v := metricValue(t, n, "meshnode_doc_damage_found"); v < 1 {
		t.Fatalf("meshnode_doc_damage_found = %v, want >= 1", v)
	}
	metricValue(t, n, "meshnode_doc_waiting_records")

	time.Sleep(200 * time.Millisecond) // well after the start
	for client := range 2 {
		ev := firstEvent(t, n, EventDocDamaged)
		if ev.Data["file"] != snap || ev.Data["kept_as"] != found.KeptAs || ev.Data["problem"] != found.Problem || ev.Data["lost"] != found.Lost {
			t.Fatalf("client %d: doc.damaged data %v; want the damage %+v", client, ev.Data, *found)
		}
	}
}

// A node whose files are intact reports an empty damage list, not null.
func TestDocDamageNoneIsEmptyList(t *testing.T) {
	t.Parallel()
	n, err := New(testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	b, err := json.Marshal(n.Status().Document)
	var got map[string]any
	if err == nil {
		err = json.Unmarshal(b, &got)
	}
	if err != nil || string(must(json.Marshal(got["damage"]))) != "[]" || got["waiting_records"] != 0.0 ||
		got["epoch"] != 0.0 || got["history_share"] != 0.0 {
		t.Fatalf("document status of an intact new node: %s %v; want damage [], no waiting records, epoch 0, no history", b, err)
	}
}

// firstEvent connects a new client to /v1/events and returns the first
// event of type typ it receives.
func firstEvent(t *testing.T, n *Node, typ string) Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+n.APIAddr()+"/v1/events", nil)
	req.Header.Set("Authorization", "Bearer "+n.APIToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			var ev Event
			if json.Unmarshal([]byte(data), &ev) == nil && ev.Type == typ {
				return ev
			}
		}
	}
	t.Fatalf("no %s event within 10s (%v)", typ, sc.Err())
	return Event{}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
