package node

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/crdt"
	"github.com/meshnode/meshnode/internal/testutil"
	"github.com/meshnode/meshnode/mesh"
)

// TestBadChangeLines: a peer's first refusal gets a line, then one a
// minute at most, counting the refusals since; a disconnect always gets
// one; peers are counted apart and the record of them is bounded.
func TestBadChangeLines(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_000_000, 0)
	l := newBadChangeLines(time.Minute, func() time.Time { return now })
	a, b := testutil.RandomPeer(t), testutil.RandomPeer(t)
	step := func(p peer.ID, after time.Duration, force bool, wantCount int, wantOK bool) {
		t.Helper()
		now = now.Add(after)
		if n, ok := l.take(p, force); n != wantCount || ok != wantOK {
			t.Fatalf("take: %d, %v; want %d, %v", n, ok, wantCount, wantOK)
		}
	}
	step(a, 0, false, 1, true)
	step(a, time.Second, false, 0, false)
	step(b, 0, false, 1, true)
	step(a, 30*time.Second, false, 0, false)
	step(a, 29*time.Second, false, 3, true) // a minute after its last line
	step(a, time.Second, true, 1, true)     // disconnected
	step(a, time.Second, false, 0, false)

	for range 3 * maxBadChangePeers {
		now = now.Add(time.Millisecond)
		l.take(testutil.RandomPeer(t), false)
		if len(l.peers) > maxBadChangePeers {
			t.Fatalf("%d peers remembered, want at most %d", len(l.peers), maxBadChangePeers)
		}
	}
}

// TestBadChangeEvent: the hook publishes peer.bad_change with what the
// API documents, and logs a warn line naming the rule, key and detail.
func TestBadChangeEvent(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	n := &Node{Events: newBus(), lg: zerolog.New(&logs)}
	ch, cancel := n.Events.Subscribe(8)
	defer cancel()
	hook := n.badChangeHook()
	p := testutil.RandomPeer(t)
	hash := crdt.Hash{1, 2, 3}
	hook(mesh.BadChange{Peer: p, Via: mesh.ViaGossip, Strikes: 1,
		Refused: &crdt.RefusedError{Change: hash, Rule: crdt.RuleSchema, Key: "evil/key", Detail: "a key outside the schema"}})
	hook(mesh.BadChange{Peer: p, Via: mesh.ViaSnapshot, Strikes: 2,
		Refused: &crdt.RefusedError{Rule: crdt.RuleDecode, Detail: "not a document"}})
	hook(mesh.BadChange{Peer: p, Via: mesh.ViaSync, Strikes: 3, Disconnected: true, Ban: time.Minute,
		Refused: &crdt.RefusedError{Change: hash, Rule: crdt.RuleSchema, Key: "evil/key", Detail: "a key outside the schema"}})
	want := []map[string]any{
		{"peer": p.String(), "rule": "schema", "key": "evil/key", "change": hash.String(), "via": "gossip", "detail": "a key outside the schema", "disconnected": false},
		{"peer": p.String(), "rule": "decode", "key": "", "change": "", "via": "snapshot", "detail": "not a document", "disconnected": false},
		{"peer": p.String(), "rule": "schema", "key": "evil/key", "change": hash.String(), "via": "sync", "detail": "a key outside the schema", "disconnected": true},
	}
	for i, w := range want {
		ev := <-ch
		if ev.Type != EventPeerBadChange || len(ev.Data) != len(w) {
			t.Fatalf("event %d: %s %v; want %s %v", i, ev.Type, ev.Data, EventPeerBadChange, w)
		}
		for k, v := range w {
			if ev.Data[k] != v {
				t.Fatalf("event %d: %s = %v, want %v", i, k, ev.Data[k], v)
			}
		}
	}
	// The second refusal came within the minute: two lines, the second
	// for the disconnect, counting both refusals since the first.
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d log lines, want 2:\n%s", len(lines), logs.String())
	}
	var first, last map[string]any
	if json.Unmarshal([]byte(lines[0]), &first) != nil || json.Unmarshal([]byte(lines[1]), &last) != nil {
		t.Fatalf("log lines are not JSON:\n%s", logs.String())
	}
	if first["level"] != "warn" || first["rule"] != "schema" || first["key"] != "evil/key" || first["detail"] != "a key outside the schema" || first["refused"] != 1.0 || first["peer"] != p.String() {
		t.Fatalf("first line: %v", first)
	}
	if last["refused"] != 2.0 || last["via"] != "sync" || last["ban"] == nil {
		t.Fatalf("disconnect line: %v", last)
	}
}
