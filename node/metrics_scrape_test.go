package node

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meshnode/meshnode/crdt"
	"github.com/meshnode/meshnode/mesh"
	"github.com/meshnode/meshnode/room"
	"github.com/meshnode/meshnode/transfer"
)

// A scrape reads each component once, and every metric comes from that
// read: each figure is fed a distinct value and must come out under its
// own metric.
func TestMetricsReadEachComponentOncePerScrape(t *testing.T) {
	t.Parallel()
	calls := map[string]int{}
	count := func(name string) { calls[name]++ }
	src := statsSources{
		host: func() hostFigures { count("host"); return hostFigures{peers: 1, relayedOnly: 2} },
		auth: func() int { count("auth"); return 3 },
		doc: func() docFigures {
			count("doc")
			return docFigures{stats: crdt.Stats{LocalCommits: 4, RemoteChanges: 5, Compactions: 6, LogSyncs: 7, RolledBack: 8}, bytes: 9, heads: 10, waiting: 11,
				ep: crdt.EpochStatus{Epoch: crdt.Epoch{Num: 56}, StateBytes: 57, HistoryShare: 0.58, Switches: 59}}
		},
		damage:     func() int { count("damage"); return 12 },
		membership: func() int { count("membership"); return 13 },
		replicator: func() mesh.ReplicatorStats {
			count("replicator")
			return mesh.ReplicatorStats{ChangesSent: 14, ChangesReceived: 15, GossipRejected: 16, GossipDropped: 17,
				SyncSessions: 18, SyncFailures: 19, SnapshotsFetched: 20, SnapshotsServed: 21, BytesIn: 22, BytesOut: 23,
				BadChanges:           map[mesh.BadChangeKind]uint64{{Rule: crdt.RuleSchema, Via: mesh.ViaGossip}: 51, {Rule: "novel", Via: mesh.ViaSync}: 52},
				BadPeersDisconnected: 53, SyncsPaused: 54, BadReportsDropped: 55, EpochCatchUps: 60}
		},
		mesh: func() mesh.MeshStats {
			count("mesh")
			return mesh.MeshStats{Cap: 24, Slots: 25, Eligible: 26, Passes: 27, Opened: 28, Dropped: 29, Upgrades: 30}
		},
		relays: func() int { count("relays"); return 31 },
		library: func() transfer.LibraryStats {
			count("library")
			return transfer.LibraryStats{Items: 32, Running: 33, Done: 34, Failed: 35, Fetched: 36, BadChunks: 37}
		},
		server: func() serverFigures { count("server"); return serverFigures{served: 38, refused: 39, busy: 40} },
		rooms: func() roomFigures {
			count("rooms")
			return roomFigures{totals: room.TopicStats{Sent: 41, Received: 42, Dups: 43, Gaps: 44, Rejected: 45, Mints: 46, Refills: 50}, open: 47, links: 48}
		},
		events: func() uint64 { count("events"); return 49 },
	}
	want := map[string]float64{
		"peers": 1, "peers_relayed": 2, "peers_authenticated": 3,
		"doc_local_commits_total": 4, "doc_remote_changes_total": 5, "doc_compactions_total": 6, "doc_log_syncs_total": 7, "doc_rollbacks_total": 8,
		"doc_bytes": 9, "doc_heads": 10, "doc_waiting_records": 11, "doc_damage_found": 12, "members_alive": 13,
		"changes_sent_total": 14, "changes_received_total": 15, "gossip_rejected_total": 16, "gossip_dropped_total": 17,
		"sync_rounds_total": 18, "sync_failures_total": 19, "snapshots_fetched_total": 20, "snapshots_served_total": 21,
		"sync_bytes_received_total": 22, "sync_bytes_sent_total": 23,
		"mesh_cap": 24, "mesh_slots": 25, "mesh_eligible": 26, "mesh_passes_total": 27, "mesh_opened_total": 28, "mesh_dropped_total": 29, "relay_upgrades_total": 30,
		"relay_slots": 31, "library_items": 32, "transfers_running": 33, "transfers_done_total": 34, "transfers_failed_total": 35,
		"transfer_fetched_bytes_total": 36, "transfer_bad_chunks_total": 37, "chunks_served_total": 38, "transfer_refused_total": 39, "transfer_busy_total": 40,
		"room_messages_sent_total": 41, "room_messages_received_total": 42, "room_duplicates_total": 43, "room_gaps_total": 44,
		"room_rejected_total": 45, "room_mints_total": 46, "rooms_open": 47, "room_links": 48, "events_dropped_total": 49,
		"room_refills_total": 50, "bad_peers_disconnected_total": 53, "syncs_paused_total": 54, "bad_change_reports_dropped_total": 55,
		"doc_epoch": 56, "doc_state_bytes": 57, "doc_history_share": 0.58, "doc_epoch_switches_total": 59, "epoch_catchups_total": 60,
	}
	// Every known kind of refusal is reported, at 0 until counted, and a
	// kind not known to the node once counted.
	for _, k := range badChangeKinds {
		want[`bad_changes_total{rule="`+k.Rule+`",via="`+k.Via+`"}`] = 0
	}
	want[`bad_changes_total{rule="schema",via="gossip"}`] = 51
	want[`bad_changes_total{rule="novel",via="sync"}`] = 52
	reg := prometheus.NewRegistry()
	reg.MustRegister(newCollector(src))
	for scrape := 1; scrape <= 2; scrape++ {
		got, _ := scrapeText(t, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		for c, n := range calls {
			if n != scrape {
				t.Errorf("scrape %d: %s read %d times in all, want %d (once per scrape)", scrape, c, n, scrape)
			}
		}
		if len(calls) != 12 {
			t.Errorf("scrape %d read %d components, want 12: %v", scrape, len(calls), calls)
		}
		for name, v := range want {
			if got["meshnode_"+name] != v {
				t.Errorf("scrape %d: meshnode_%s = %v, want %v", scrape, name, got["meshnode_"+name], v)
			}
		}
		if len(got) != len(want) {
			t.Errorf("scrape %d: %d metrics, want %d", scrape, len(got), len(want))
		}
	}
}

// scrapeText scrapes h and returns each metric's value, and its type and
// help as "TYPE help".
func scrapeText(t *testing.T, h http.Handler) (values map[string]float64, meta map[string]string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("scrape: %d %s", rec.Code, rec.Body)
	}
	values, meta = map[string]float64{}, map[string]string{}
	help := map[string]string{}
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, "# HELP "); ok {
			name, text, _ := strings.Cut(rest, " ")
			help[name] = text
		} else if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, typ, _ := strings.Cut(rest, " ")
			meta[name] = typ + " " + help[name]
		} else if name, v, ok := strings.Cut(line, " "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("scrape line %q: %v", line, err)
			}
			values[name] = f
		}
	}
	return values, meta
}

// A real node's /metrics keeps every metric with its name, type and help
// text as they were before the single collector, and reads live values.
func TestMetricsNamesAndHelpUnchanged(t *testing.T) {
	t.Parallel()
	n := newCluster(t, 1).nodes[0]
	golden := []struct{ name, kind, help string }{
		{"peers", "gauge", "Connected libp2p peers."},
		{"peers_authenticated", "gauge", "Peers that proved the fleet secret."},
		{"doc_bytes", "gauge", "Document size on disk: snapshot and change log."},
		{"doc_heads", "gauge", "Number of document heads."},
		{"members_alive", "gauge", "Peers whose heartbeats are fresh."},
		{"doc_damage_found", "gauge", "Damage reports (damaged document files) found when the document was opened at this start."},
		{"doc_waiting_records", "gauge", "Change-log records kept until peers bring the changes they depend on."},
		{"doc_local_commits_total", "counter", "Changes committed on this node."},
		{"doc_remote_changes_total", "counter", "Changes received from peers (gossip and sync)."},
		{"doc_compactions_total", "counter", "Change log folds into the snapshot."},
		{"doc_log_syncs_total", "counter", "Fsyncs of the change log (concurrent local commits share one)."},
		{"doc_rollbacks_total", "counter", "Document writes rolled back, refused by the disk (full, I/O error) or by automerge."},
		{"doc_epoch", "gauge", "The document's epoch: how many times the fleet has cut its history."},
		{"doc_state_bytes", "gauge", "Bytes of the keys and values in force: about the size of a document with no history."},
		{"doc_history_share", "gauge", "Share of the document on disk that is history: 1 - (bytes right after the last cut) / doc_bytes."},
		{"doc_epoch_switches_total", "counter", "Moves of this node's document to a new epoch (its own cut or a peer's snapshot)."},
		{"epoch_catchups_total", "counter", "Moves to a peer's later epoch by its snapshot."},
		{"changes_sent_total", "counter", "Changes published on gossip."},
		{"changes_received_total", "counter", "New changes received on gossip."},
		{"gossip_rejected_total", "counter", "Gossip messages rejected (unauthenticated, unsealed or malformed)."},
		{"gossip_dropped_total", "counter", "Gossip messages dropped (queue full or loss simulation)."},
		{"sync_rounds_total", "counter", "Anti-entropy sessions initiated."},
		{"sync_failures_total", "counter", "Anti-entropy sessions that failed."},
		{"snapshots_fetched_total", "counter", "Snapshot bootstraps from peers."},
		{"snapshots_served_total", "counter", "Snapshots served to peers."},
		{"sync_bytes_received_total", "counter", "Document bytes received by anti-entropy and snapshots."},
		{"sync_bytes_sent_total", "counter", "Document bytes sent by anti-entropy and snapshots."},
		{"mesh_cap", "gauge", "Cap on supplementary mesh connections (0: disabled)."},
		{"mesh_slots", "gauge", "Supplementary mesh connections held."},
		{"mesh_eligible", "gauge", "Peers eligible for a supplementary connection at the last pass."},
		{"mesh_opened_total", "counter", "Supplementary connections opened."},
		{"mesh_dropped_total", "counter", "Supplementary connections dropped or freed."},
		{"mesh_passes_total", "counter", "Mesh reconcile passes."},
		{"relay_upgrades_total", "counter", "Relayed connections replaced by direct ones."},
		{"peers_relayed", "gauge", "Peers connected only through a relay."},
		{"relay_slots", "gauge", "Relay slots this node holds (--relay)."},
		{"library_items", "gauge", "Items this node holds complete."},
		{"transfers_running", "gauge", "Downloads in flight."},
		{"transfers_done_total", "counter", "Downloads completed."},
		{"transfers_failed_total", "counter", "Downloads that failed."},
		{"transfer_fetched_bytes_total", "counter", "Bytes received from peers by downloads."},
		{"transfer_bad_chunks_total", "counter", "Chunks from peers that failed verification."},
		{"chunks_served_total", "counter", "Chunks served to peers."},
		{"transfer_refused_total", "counter", "Transfer requests refused (paths outside an item, bad frames)."},
		{"transfer_busy_total", "counter", "Transfer streams turned away at the per-peer or total limit."},
		{"rooms_open", "gauge", "Topics open here."},
		{"room_links", "gauge", "Rooms this node is linked to (two per topic while migrating)."},
		{"room_messages_sent_total", "counter", "Room messages sent."},
		{"room_messages_received_total", "counter", "Room messages delivered from other participants."},
		{"room_duplicates_total", "counter", "Room messages dropped as duplicates or replays."},
		{"room_gaps_total", "counter", "Gaps reported in room message streams."},
		{"room_refills_total", "counter", "Room messages recovered from a participant's history after a gap."},
		{"room_rejected_total", "counter", "Room messages rejected (forged sender, not sealed for the room)."},
		{"room_mints_total", "counter", "Room credentials minted here."},
		{"events_dropped_total", "counter", "Events dropped for slow API subscribers."},
		{"bad_changes_total", "counter", "Changes from peers the document refused, by rule broken and path (gossip, sync, snapshot)."},
		{"bad_peers_disconnected_total", "counter", "Peers disconnected and banned because the document refused their changes repeatedly."},
		{"syncs_paused_total", "counter", "Anti-entropy sessions skipped because the peer sent a refused change in the last 30 s."},
		{"bad_change_reports_dropped_total", "counter", "Reports of refused changes dropped because the event queue was full."},
	}
	// The node's own record is written as it starts: scrape after it.
	waitFor(t, 10*time.Second, "the node's own record", func() bool { return len(n.Doc.Heads()) > 0 })
	// Over real HTTP, as Prometheus scrapes it.
	req, _ := http.NewRequest("GET", "http://"+n.APIAddr()+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+n.APIToken())
	v, got := scrapeText(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
	for _, g := range golden {
		want := g.kind + " " + g.help
		if got["meshnode_"+g.name] != want {
			t.Errorf("meshnode_%s: %q, want %q", g.name, got["meshnode_"+g.name], want)
		}
	}
	if len(got) != len(golden) {
		t.Errorf("%d metrics, want %d", len(got), len(golden))
	}
	if v["meshnode_mesh_cap"] != float64(n.cfg.MaxMeshPeers) || v["meshnode_doc_heads"] != float64(len(n.Doc.Heads())) || v["meshnode_doc_bytes"] == 0 {
		t.Errorf("live values: mesh_cap %v, doc_heads %v, doc_bytes %v", v["meshnode_mesh_cap"], v["meshnode_doc_heads"], v["meshnode_doc_bytes"])
	}
}
