package node

import (
	"cmp"
	"net/http"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meshnode/meshnode/crdt"
	"github.com/meshnode/meshnode/mesh"
	"github.com/meshnode/meshnode/room"
	"github.com/meshnode/meshnode/transfer"
)

type metrics struct {
	reg *prometheus.Registry
}

// newMetrics registers the node's Prometheus metrics: one collector that
// reads each component's figures once per scrape (one lock each, instead
// of one per metric) and emits every metric from that snapshot, so the
// figures of one component are consistent with each other.
func newMetrics(n *Node) *metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newCollector(n.statsSources()))
	return &metrics{reg: reg}
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// statsSources read the figures of one component each. A scrape calls
// every one exactly once; each may take its component's lock.
type statsSources struct {
	host       func() hostFigures
	auth       func() (authenticated int)
	doc        func() docFigures
	damage     func() (reports int)
	membership func() (alive int)
	replicator func() mesh.ReplicatorStats
	mesh       func() mesh.MeshStats
	relays     func() (slots int)
	library    func() transfer.LibraryStats
	server     func() serverFigures
	rooms      func() roomFigures
	events     func() (dropped uint64)
}

type hostFigures struct{ peers, relayedOnly int }

type docFigures struct {
	stats                 crdt.Stats
	bytes, heads, waiting int
	ep                    crdt.EpochStatus
}

type serverFigures struct{ served, refused, busy uint64 }

type roomFigures struct {
	totals      room.TopicStats
	open, links int
}

// scrape is everything one scrape reports.
type scrape struct {
	host          hostFigures
	authenticated int
	doc           docFigures
	damage        int
	alive         int
	repl          mesh.ReplicatorStats
	mesh          mesh.MeshStats
	relaySlots    int
	lib           transfer.LibraryStats
	server        serverFigures
	rooms         roomFigures
	eventsDropped uint64
}

func (s statsSources) read() scrape {
	return scrape{
		host: s.host(), authenticated: s.auth(), doc: s.doc(), damage: s.damage(),
		alive: s.membership(), repl: s.replicator(), mesh: s.mesh(), relaySlots: s.relays(),
		lib: s.library(), server: s.server(), rooms: s.rooms(), eventsDropped: s.events(),
	}
}

// statsSources reads the node's components.
func (n *Node) statsSources() statsSources {
	return statsSources{
		host: func() hostFigures {
			net := n.Host.Network()
			peers := net.Peers()
			f := hostFigures{peers: len(peers)}
			for _, p := range peers {
				if mesh.RelayedOnly(net, p) {
					f.relayedOnly++
				}
			}
			return f
		},
		auth: func() int { return len(n.Auth.Authenticated()) },
		doc: func() docFigures {
			return docFigures{stats: n.Doc.Stats(), bytes: int(n.Doc.DiskBytes()), heads: len(n.Doc.Heads()), waiting: n.Doc.WaitingRecords(), ep: n.Doc.EpochStatus()}
		},
		damage: func() int { return len(n.Doc.Damage()) },
		membership: func() int {
			c := 0
			for _, m := range n.Membership.Members() {
				if m.State == mesh.StateAlive {
					c++
				}
			}
			return c
		},
		replicator: n.Replicator.Stats,
		mesh:       n.Mesh.Stats,
		relays: func() int {
			c := 0
			if n.RelayClient != nil {
				for _, r := range n.RelayClient.Status() {
					if r.Reserved {
						c++
					}
				}
			}
			return c
		},
		library: n.Library.Stats,
		server: func() serverFigures {
			var f serverFigures
			f.served, f.refused, f.busy = n.Library.Server().Stats()
			return f
		},
		rooms: func() roomFigures {
			var f roomFigures
			f.totals, f.open, f.links = n.Rooms.Totals()
			return f
		},
		events: n.Events.dropped.Load,
	}
}

// metricDef is one metric and where its value comes from in a scrape.
type metricDef struct {
	name, help string
	kind       prometheus.ValueType
	value      func(*scrape) float64
}

// number is any figure a component reports.
type number interface{ ~int | ~int64 | ~uint64 }

func gauge[T number](name, help string, f func(*scrape) T) metricDef {
	return metricDef{name, help, prometheus.GaugeValue, func(s *scrape) float64 { return float64(f(s)) }}
}

func counter[T number](name, help string, f func(*scrape) T) metricDef {
	return metricDef{name, help, prometheus.CounterValue, func(s *scrape) float64 { return float64(f(s)) }}
}

// metricDefs are every metric of /metrics, without the meshnode_ prefix.
var metricDefs = []metricDef{
	gauge("peers", "Connected libp2p peers.", func(s *scrape) int { return s.host.peers }),
	gauge("peers_authenticated", "Peers that proved the fleet secret.", func(s *scrape) int { return s.authenticated }),
	gauge("doc_bytes", "Document size on disk: snapshot and change log.", func(s *scrape) int { return s.doc.bytes }),
	gauge("doc_heads", "Number of document heads.", func(s *scrape) int { return s.doc.heads }),
	gauge("members_alive", "Peers whose heartbeats are fresh.", func(s *scrape) int { return s.alive }),
	gauge("doc_damage_found", "Damage reports (damaged document files) found when the document was opened at this start.", func(s *scrape) int { return s.damage }),
	gauge("doc_waiting_records", "Change-log records kept until peers bring the changes they depend on.", func(s *scrape) int { return s.doc.waiting }),
	counter("doc_local_commits_total", "Changes committed on this node.", func(s *scrape) uint64 { return s.doc.stats.LocalCommits }),
	counter("doc_remote_changes_total", "Changes received from peers (gossip and sync).", func(s *scrape) uint64 { return s.doc.stats.RemoteChanges }),
	counter("doc_compactions_total", "Change log folds into the snapshot.", func(s *scrape) uint64 { return s.doc.stats.Compactions }),
	counter("doc_log_syncs_total", "Fsyncs of the change log (concurrent local commits share one).", func(s *scrape) uint64 { return s.doc.stats.LogSyncs }),
	counter("doc_rollbacks_total", "Document writes rolled back, refused by the disk (full, I/O error) or by automerge.", func(s *scrape) uint64 { return s.doc.stats.RolledBack }),
	gauge("doc_epoch", "The document's epoch: how many times the fleet has cut its history.", func(s *scrape) uint64 { return s.doc.ep.Epoch.Num }),
	gauge("doc_state_bytes", "Bytes of the keys and values in force: about the size of a document with no history.", func(s *scrape) int64 { return s.doc.ep.StateBytes }),
	{"doc_history_share", "Share of the document on disk that is history: 1 - (bytes right after the last cut) / doc_bytes.", prometheus.GaugeValue, func(s *scrape) float64 { return s.doc.ep.HistoryShare }},
	counter("doc_epoch_switches_total", "Moves of this node's document to a new epoch (its own cut or a peer's snapshot).", func(s *scrape) uint64 { return s.doc.ep.Switches }),
	counter("epoch_catchups_total", "Moves to a peer's later epoch by its snapshot.", func(s *scrape) uint64 { return s.repl.EpochCatchUps }),
	counter("changes_sent_total", "Changes published on gossip.", func(s *scrape) uint64 { return s.repl.ChangesSent }),
	counter("changes_received_total", "New changes received on gossip.", func(s *scrape) uint64 { return s.repl.ChangesReceived }),
	counter("gossip_rejected_total", "Gossip messages rejected (unauthenticated, unsealed or malformed).", func(s *scrape) uint64 { return s.repl.GossipRejected }),
	counter("gossip_dropped_total", "Gossip messages dropped (queue full or loss simulation).", func(s *scrape) uint64 { return s.repl.GossipDropped }),
	counter("sync_rounds_total", "Anti-entropy sessions initiated.", func(s *scrape) uint64 { return s.repl.SyncSessions }),
	counter("sync_failures_total", "Anti-entropy sessions that failed.", func(s *scrape) uint64 { return s.repl.SyncFailures }),
	counter("snapshots_fetched_total", "Snapshot bootstraps from peers.", func(s *scrape) uint64 { return s.repl.SnapshotsFetched }),
	counter("snapshots_served_total", "Snapshots served to peers.", func(s *scrape) uint64 { return s.repl.SnapshotsServed }),
	counter("sync_bytes_received_total", "Document bytes received by anti-entropy and snapshots.", func(s *scrape) uint64 { return s.repl.BytesIn }),
	counter("sync_bytes_sent_total", "Document bytes sent by anti-entropy and snapshots.", func(s *scrape) uint64 { return s.repl.BytesOut }),
	gauge("mesh_cap", "Cap on supplementary mesh connections (0: disabled).", func(s *scrape) int { return s.mesh.Cap }),
	gauge("mesh_slots", "Supplementary mesh connections held.", func(s *scrape) int { return s.mesh.Slots }),
	gauge("mesh_eligible", "Peers eligible for a supplementary connection at the last pass.", func(s *scrape) int { return s.mesh.Eligible }),
	counter("mesh_opened_total", "Supplementary connections opened.", func(s *scrape) uint64 { return s.mesh.Opened }),
	counter("mesh_dropped_total", "Supplementary connections dropped or freed.", func(s *scrape) uint64 { return s.mesh.Dropped }),
	counter("mesh_passes_total", "Mesh reconcile passes.", func(s *scrape) uint64 { return s.mesh.Passes }),
	counter("relay_upgrades_total", "Relayed connections replaced by direct ones.", func(s *scrape) uint64 { return s.mesh.Upgrades }),
	gauge("peers_relayed", "Peers connected only through a relay.", func(s *scrape) int { return s.host.relayedOnly }),
	gauge("relay_slots", "Relay slots this node holds (--relay).", func(s *scrape) int { return s.relaySlots }),
	gauge("library_items", "Items this node holds complete.", func(s *scrape) int { return s.lib.Items }),
	gauge("transfers_running", "Downloads in flight.", func(s *scrape) int { return s.lib.Running }),
	counter("transfers_done_total", "Downloads completed.", func(s *scrape) int { return s.lib.Done }),
	counter("transfers_failed_total", "Downloads that failed.", func(s *scrape) int { return s.lib.Failed }),
	counter("transfer_fetched_bytes_total", "Bytes received from peers by downloads.", func(s *scrape) int64 { return s.lib.Fetched }),
	counter("transfer_bad_chunks_total", "Chunks from peers that failed verification.", func(s *scrape) int64 { return s.lib.BadChunks }),
	counter("chunks_served_total", "Chunks served to peers.", func(s *scrape) uint64 { return s.server.served }),
	counter("transfer_refused_total", "Transfer requests refused (paths outside an item, bad frames).", func(s *scrape) uint64 { return s.server.refused }),
	counter("transfer_busy_total", "Transfer streams turned away at the per-peer or total limit.", func(s *scrape) uint64 { return s.server.busy }),
	gauge("rooms_open", "Topics open here.", func(s *scrape) int { return s.rooms.open }),
	gauge("room_links", "Rooms this node is linked to (two per topic while migrating).", func(s *scrape) int { return s.rooms.links }),
	counter("room_messages_sent_total", "Room messages sent.", func(s *scrape) uint64 { return s.rooms.totals.Sent }),
	counter("room_messages_received_total", "Room messages delivered from other participants.", func(s *scrape) uint64 { return s.rooms.totals.Received }),
	counter("room_duplicates_total", "Room messages dropped as duplicates or replays.", func(s *scrape) uint64 { return s.rooms.totals.Dups }),
	counter("room_gaps_total", "Gaps reported in room message streams.", func(s *scrape) uint64 { return s.rooms.totals.Gaps }),
	counter("room_refills_total", "Room messages recovered from a participant's history after a gap.", func(s *scrape) uint64 { return s.rooms.totals.Refills }),
	counter("room_rejected_total", "Room messages rejected (forged sender, not sealed for the room).", func(s *scrape) uint64 { return s.rooms.totals.Rejected }),
	counter("room_mints_total", "Room credentials minted here.", func(s *scrape) uint64 { return s.rooms.totals.Mints }),
	counter("events_dropped_total", "Events dropped for slow API subscribers.", func(s *scrape) uint64 { return s.eventsDropped }),
	counter("bad_peers_disconnected_total", "Peers disconnected and banned because the document refused their changes repeatedly.", func(s *scrape) uint64 { return s.repl.BadPeersDisconnected }),
	counter("syncs_paused_total", "Anti-entropy sessions skipped because the peer sent a refused change in the last 30 s.", func(s *scrape) uint64 { return s.repl.SyncsPaused }),
	counter("bad_change_reports_dropped_total", "Reports of refused changes dropped because the event queue was full.", func(s *scrape) uint64 { return s.repl.BadReportsDropped }),
}

// badChangesDesc is meshnode_bad_changes_total, the one metric with
// labels: changes from peers the document refused, by the rule they broke
// and the path they came by.
var badChangesDesc = prometheus.NewDesc("meshnode_bad_changes_total",
	"Changes from peers the document refused, by rule broken and path (gossip, sync, snapshot).", []string{"rule", "via"}, nil)

// badChangeKinds are reported at 0 before any is counted, so that a rate
// over them starts at the first refusal; a rule not listed here appears
// once counted.
var badChangeKinds = func() []mesh.BadChangeKind {
	var out []mesh.BadChangeKind
	for _, rule := range []string{crdt.RuleDecode, crdt.RuleSchema, crdt.RuleObject, crdt.RuleType,
		crdt.RuleSize, crdt.RuleSignature, crdt.RuleReplay, crdt.RuleCreds, crdt.RuleEpoch} {
		for _, via := range []string{mesh.ViaGossip, mesh.ViaSync, mesh.ViaSnapshot} {
			out = append(out, mesh.BadChangeKind{Rule: rule, Via: via})
		}
	}
	return out
}()

// badChangeFigures returns the figures for badChangesDesc: every kind of
// badChangeKinds, then any other counted, in a stable order.
func badChangeFigures(counted map[mesh.BadChangeKind]uint64) ([]mesh.BadChangeKind, []uint64) {
	kinds := slices.Clone(badChangeKinds)
	var extra []mesh.BadChangeKind
	for k := range counted {
		if !slices.Contains(badChangeKinds, k) {
			extra = append(extra, k)
		}
	}
	slices.SortFunc(extra, func(a, b mesh.BadChangeKind) int {
		return cmp.Or(cmp.Compare(a.Rule, b.Rule), cmp.Compare(a.Via, b.Via))
	})
	kinds = append(kinds, extra...)
	values := make([]uint64, len(kinds))
	for i, k := range kinds {
		values[i] = counted[k]
	}
	return kinds, values
}

// collector emits every metric of metricDefs from one read of src.
type collector struct {
	src   statsSources
	descs []*prometheus.Desc
}

func newCollector(src statsSources) *collector {
	c := &collector{src: src}
	for _, d := range metricDefs {
		c.descs = append(c.descs, prometheus.NewDesc("meshnode_"+d.name, d.help, nil, nil))
	}
	return c
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
	ch <- badChangesDesc
}

// Collect implements prometheus.Collector: one read of every component,
// then every metric. Concurrent scrapes each take their own read.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.read()
	for i, d := range metricDefs {
		ch <- prometheus.MustNewConstMetric(c.descs[i], d.kind, d.value(&s))
	}
	kinds, values := badChangeFigures(s.repl.BadChanges)
	for i, k := range kinds {
		ch <- prometheus.MustNewConstMetric(badChangesDesc, prometheus.CounterValue, float64(values[i]), k.Rule, k.Via)
	}
}
