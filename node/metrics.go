package node

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meshnode/meshnode/mesh"
	"github.com/meshnode/meshnode/room"
	"github.com/meshnode/meshnode/transfer"
)

type metrics struct {
	reg *prometheus.Registry
}

// newMetrics registers the node's Prometheus metrics. Values are read from
// the components' own counters at scrape time, so nothing is counted twice.
func newMetrics(n *Node) *metrics {
	reg := prometheus.NewRegistry()
	gauge := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshnode_" + name, Help: help}, f))
	}
	counter := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "meshnode_" + name, Help: help}, f))
	}
	rs := func() mesh.ReplicatorStats { return n.Replicator.Stats() }
	gauge("peers", "Connected libp2p peers.", func() float64 { return float64(len(n.Host.Network().Peers())) })
	gauge("peers_authenticated", "Peers that proved the fleet secret.", func() float64 { return float64(len(n.Auth.Authenticated())) })
	gauge("doc_bytes", "Document size in automerge's saved format.", func() float64 { return float64(n.Doc.SavedSize()) })
	gauge("doc_heads", "Number of document heads.", func() float64 { return float64(len(n.Doc.Heads())) })
	gauge("members_alive", "Peers whose heartbeats are fresh.", func() float64 {
		c := 0
		for _, m := range n.Membership.Members() {
			if m.State == mesh.StateAlive {
				c++
			}
		}
		return float64(c)
	})
	gauge("doc_damage_found", "Damage reports (damaged document files) found when the document was opened at this start.", func() float64 { return float64(len(n.damage)) })
	gauge("doc_waiting_records", "Change-log records kept until peers bring the changes they depend on.", func() float64 { return float64(n.Doc.WaitingRecords()) })
	counter("doc_local_commits_total", "Changes committed on this node.", func() float64 { return float64(n.Doc.Stats().LocalCommits) })
	counter("doc_remote_changes_total", "Changes received from peers (gossip and sync).", func() float64 { return float64(n.Doc.Stats().RemoteChanges) })
	counter("doc_compactions_total", "Change log folds into the snapshot.", func() float64 { return float64(n.Doc.Stats().Compactions) })
	counter("doc_log_syncs_total", "Fsyncs of the change log (concurrent local commits share one).", func() float64 { return float64(n.Doc.Stats().LogSyncs) })
	counter("doc_rollbacks_total", "Document writes rolled back, refused by the disk (full, I/O error) or by automerge.", func() float64 { return float64(n.Doc.Stats().RolledBack) })
	counter("changes_sent_total", "Changes published on gossip.", func() float64 { return float64(rs().ChangesSent) })
	counter("changes_received_total", "New changes received on gossip.", func() float64 { return float64(rs().ChangesReceived) })
	counter("gossip_rejected_total", "Gossip messages rejected (unauthenticated, unsealed or malformed).", func() float64 { return float64(rs().GossipRejected) })
	counter("gossip_dropped_total", "Gossip messages dropped (queue full or loss simulation).", func() float64 { return float64(rs().GossipDropped) })
	counter("sync_rounds_total", "Anti-entropy sessions initiated.", func() float64 { return float64(rs().SyncSessions) })
	counter("sync_failures_total", "Anti-entropy sessions that failed.", func() float64 { return float64(rs().SyncFailures) })
	counter("snapshots_fetched_total", "Snapshot bootstraps from peers.", func() float64 { return float64(rs().SnapshotsFetched) })
	counter("snapshots_served_total", "Snapshots served to peers.", func() float64 { return float64(rs().SnapshotsServed) })
	counter("sync_bytes_received_total", "Document bytes received by anti-entropy and snapshots.", func() float64 { return float64(rs().BytesIn) })
	counter("sync_bytes_sent_total", "Document bytes sent by anti-entropy and snapshots.", func() float64 { return float64(rs().BytesOut) })
	ms := func() mesh.MeshStats { return n.Mesh.Stats() }
	gauge("mesh_cap", "Cap on supplementary mesh connections (0: disabled).", func() float64 { return float64(ms().Cap) })
	gauge("mesh_slots", "Supplementary mesh connections held.", func() float64 { return float64(ms().Slots) })
	gauge("mesh_eligible", "Peers eligible for a supplementary connection at the last pass.", func() float64 { return float64(ms().Eligible) })
	counter("mesh_opened_total", "Supplementary connections opened.", func() float64 { return float64(ms().Opened) })
	counter("mesh_dropped_total", "Supplementary connections dropped or freed.", func() float64 { return float64(ms().Dropped) })
	counter("mesh_passes_total", "Mesh reconcile passes.", func() float64 { return float64(ms().Passes) })
	counter("relay_upgrades_total", "Relayed connections replaced by direct ones.", func() float64 { return float64(ms().Upgrades) })
	gauge("peers_relayed", "Peers connected only through a relay.", func() float64 {
		c := 0
		for _, p := range n.Host.Network().Peers() {
			if mesh.RelayedOnly(n.Host.Network(), p) {
				c++
			}
		}
		return float64(c)
	})
	gauge("relay_slots", "Relay slots this node holds (--relay).", func() float64 {
		c := 0
		if n.RelayClient != nil {
			for _, r := range n.RelayClient.Status() {
				if r.Reserved {
					c++
				}
			}
		}
		return float64(c)
	})
	ls := func() transfer.LibraryStats { return n.Library.Stats() }
	gauge("library_items", "Items this node holds complete.", func() float64 { return float64(ls().Items) })
	gauge("transfers_running", "Downloads in flight.", func() float64 { return float64(ls().Running) })
	counter("transfers_done_total", "Downloads completed.", func() float64 { return float64(ls().Done) })
	counter("transfers_failed_total", "Downloads that failed.", func() float64 { return float64(ls().Failed) })
	counter("transfer_fetched_bytes_total", "Bytes received from peers by downloads.", func() float64 { return float64(ls().Fetched) })
	counter("transfer_bad_chunks_total", "Chunks from peers that failed verification.", func() float64 { return float64(ls().BadChunks) })
	counter("chunks_served_total", "Chunks served to peers.", func() float64 { s, _, _ := n.Library.Server().Stats(); return float64(s) })
	counter("transfer_refused_total", "Transfer requests refused (paths outside an item, bad frames).", func() float64 { _, r, _ := n.Library.Server().Stats(); return float64(r) })
	counter("transfer_busy_total", "Transfer streams turned away at the per-peer or total limit.", func() float64 { _, _, b := n.Library.Server().Stats(); return float64(b) })
	rt := func() room.TopicStats { t, _, _ := n.Rooms.Totals(); return t }
	gauge("rooms_open", "Topics open here.", func() float64 { _, o, _ := n.Rooms.Totals(); return float64(o) })
	gauge("room_links", "Rooms this node is linked to (two per topic while migrating).", func() float64 { _, _, l := n.Rooms.Totals(); return float64(l) })
	counter("room_messages_sent_total", "Room messages sent.", func() float64 { return float64(rt().Sent) })
	counter("room_messages_received_total", "Room messages delivered from other participants.", func() float64 { return float64(rt().Received) })
	counter("room_duplicates_total", "Room messages dropped as duplicates or replays.", func() float64 { return float64(rt().Dups) })
	counter("room_gaps_total", "Gaps reported in room message streams.", func() float64 { return float64(rt().Gaps) })
	counter("room_rejected_total", "Room messages rejected (forged sender, not sealed for the room).", func() float64 { return float64(rt().Rejected) })
	counter("room_mints_total", "Room credentials minted here.", func() float64 { return float64(rt().Mints) })
	counter("events_dropped_total", "Events dropped for slow API subscribers.", func() float64 { return float64(n.Events.dropped.Load()) })
	return &metrics{reg: reg}
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
