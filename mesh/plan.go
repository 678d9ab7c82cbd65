package mesh

import (
	"cmp"
	"encoding/binary"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/zeebo/blake3"
)

// Why a node is not eligible for a supplementary connection, or why one
// was dropped. Shown by GET /v1/mesh and `meshnode mesh`.
const (
	SkipSelf       = "self"
	SkipRendezvous = "rendezvous peer"
	SkipDead       = "said goodbye (alive=false)"
	SkipStale      = "not seen within the freshness window"
	SkipNoAddr     = "no address"
	SkipSilent     = "heartbeats stopped"
	SkipDialFailed = "dial failed recently"
	DropEnded      = "connection ended"
	DropIneligible = "no longer eligible: "
	DropOverCap    = "over the cap"
)

// PlanNode is what the reconcile pass knows of one node: its document
// record and, if we have heard it, its heartbeat state.
type PlanNode struct {
	ID         peer.ID
	Addrs      []string
	Alive      bool  // the record's alive flag (false after a Goodbye)
	LastSeenMs int64 // the record's coarse last_seen_ms
	// Silent is true when membership has heard this peer and its
	// heartbeats are no longer fresh (stale or left). A node never heard
	// is not silent: the document alone decides.
	Silent bool
}

// PlanSlot is one supplementary connection this node opened.
type PlanSlot struct {
	Opened    time.Time
	Connected bool // false once the connection ended
}

// PlanInput is everything one reconcile pass decides on.
type PlanInput struct {
	Self       peer.ID
	Nodes      []PlanNode
	Rendezvous map[peer.ID]bool
	Slots      map[peer.ID]PlanSlot
	// DialFailed holds when a dial to a peer last failed.
	DialFailed map[peer.ID]time.Time
	Now        time.Time
	// Max is the cap on supplementary connections; 0 disables them.
	Max int
	// Fresh is how recent last_seen_ms must be.
	Fresh time.Duration
	// DialBackoff: a peer whose dial failed is skipped this long.
	DialBackoff time.Duration
}

// PlanAction is one step the shell carries out.
type PlanAction struct {
	Peer   peer.ID
	Open   bool   // open a connection; otherwise drop the slot
	Reason string // for drops
}

// Plan is the outcome of a reconcile pass.
type Plan struct {
	Actions  []PlanAction
	Eligible []peer.ID          // ranked, best first
	Skipped  map[peer.ID]string // ineligible nodes and why
}

// Reconcile decides which supplementary connections to open and drop. It
// is a pure function of its input. Rules:
//   - eligible: in the document, alive, seen within Fresh, with an
//     address, not self, not a rendezvous peer, heartbeats not stopped,
//     no dial failure within DialBackoff;
//   - a slot whose connection ended is freed; a slot to a peer no longer
//     eligible is dropped;
//   - connected eligible slots are kept (no churn when a better-ranked
//     peer appears), except above the cap, where the lowest-ranked go;
//   - free slots are filled from the eligible peers in rank order, where
//     rank is a hash of (self, peer): stable between passes, different
//     from node to node, so the fleet's links form a random k-out graph,
//     which is connected with high probability.
//
// It never plans more than Max open slots.
func Reconcile(in PlanInput) Plan {
	p := Plan{Skipped: map[peer.ID]string{}}
	eligible := map[peer.ID]bool{}
	for _, n := range in.Nodes {
		if why := skipReason(in, n); why != "" {
			p.Skipped[n.ID] = why
			continue
		}
		eligible[n.ID] = true
		p.Eligible = append(p.Eligible, n.ID)
	}
	rankPeers(in.Self, p.Eligible)

	var kept []peer.ID
	for id, s := range in.Slots {
		switch {
		case !s.Connected:
			p.Actions = append(p.Actions, PlanAction{Peer: id, Reason: DropEnded})
		case !eligible[id]:
			why := p.Skipped[id]
			if why == "" {
				why = "not in the document"
			}
			p.Actions = append(p.Actions, PlanAction{Peer: id, Reason: DropIneligible + why})
		default:
			kept = append(kept, id)
		}
	}
	rankPeers(in.Self, kept)
	if len(kept) > in.Max {
		for _, id := range kept[max(in.Max, 0):] {
			p.Actions = append(p.Actions, PlanAction{Peer: id, Reason: DropOverCap})
		}
		kept = kept[:max(in.Max, 0)]
	}
	free := in.Max - len(kept)
	for _, id := range p.Eligible {
		if free <= 0 {
			break
		}
		if _, held := in.Slots[id]; held {
			continue // kept, or being freed this pass: reopen next pass
		}
		p.Actions = append(p.Actions, PlanAction{Peer: id, Open: true})
		free--
	}
	slices.SortStableFunc(p.Actions, func(a, b PlanAction) int { // drops first, deterministic
		if a.Open != b.Open {
			if a.Open {
				return 1
			}
			return -1
		}
		return 0
	})
	return p
}

func skipReason(in PlanInput, n PlanNode) string {
	switch {
	case n.ID == in.Self:
		return SkipSelf
	case in.Rendezvous[n.ID]:
		return SkipRendezvous
	case !n.Alive:
		return SkipDead
	case in.Now.Sub(time.UnixMilli(n.LastSeenMs)) > in.Fresh:
		return SkipStale
	case len(n.Addrs) == 0:
		return SkipNoAddr
	case n.Silent:
		return SkipSilent
	}
	if t, ok := in.DialFailed[n.ID]; ok && in.Now.Sub(t) < in.DialBackoff {
		return SkipDialFailed
	}
	return ""
}

// rankPeers sorts ids by this node's rendezvous-hash score, best first.
// Each score is hashed once and sorted with its peer: looking scores up
// inside the comparator cost most of a 10,000-node pass (n log n map
// lookups, against n hashes). Equal scores, which need a 64-bit
// collision, fall back to the peer ID so that the order is total.
func rankPeers(self peer.ID, ids []peer.ID) {
	type scored struct {
		score uint64
		id    peer.ID
	}
	prefix := append([]byte(self), 0)
	buf := make([]byte, 0, len(prefix)+64)
	ss := make([]scored, len(ids))
	for i, id := range ids {
		buf = append(append(buf[:0], prefix...), id...)
		sum := blake3.Sum256(buf)
		ss[i] = scored{binary.BigEndian.Uint64(sum[:]), id}
	}
	slices.SortFunc(ss, func(a, b scored) int {
		if c := cmp.Compare(b.score, a.score); c != 0 {
			return c
		}
		return strings.Compare(string(a.id), string(b.id))
	})
	for i, s := range ss {
		ids[i] = s.id
	}
}
