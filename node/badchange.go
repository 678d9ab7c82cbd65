package node

import (
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshnode/meshnode/crdt"
	"github.com/meshnode/meshnode/mesh"
)

// badChangeHook returns the replicator's OnBadChange: every change a peer
// sent that the document refused becomes a peer.bad_change event, and a
// warn line at most once per peer per minute (plus one whenever the peer
// is disconnected for it), counting the refusals since the last line.
// The counters behind the metrics are the replicator's.
func (n *Node) badChangeHook() func(mesh.BadChange) {
	lines := newBadChangeLines(time.Minute, time.Now)
	return func(bc mesh.BadChange) {
		r := bc.Refused
		change := ""
		if r.Change != (crdt.Hash{}) {
			change = r.Change.String()
		}
		n.Events.Publish(EventPeerBadChange, map[string]any{
			"peer": bc.Peer.String(), "rule": r.Rule, "key": r.Key, "change": change,
			"via": bc.Via, "detail": r.Detail, "disconnected": bc.Disconnected,
		})
		count, ok := lines.take(bc.Peer, bc.Disconnected)
		if !ok {
			return
		}
		ev := n.lg.Warn().Str("component", "replicator").Str("peer", bc.Peer.String()).
			Str("rule", r.Rule).Str("key", r.Key).Str("change", change).Str("via", bc.Via).
			Str("detail", r.Detail).Int("refused", count).Int("strikes", bc.Strikes)
		if bc.Disconnected {
			ev.Dur("ban", bc.Ban).Msg("peer disconnected and banned: the document refused its changes repeatedly")
			return
		}
		ev.Msg("document refused changes from peer")
	}
}

// badChangeLines decides which refusals get a log line: a peer's first,
// then the first one every interval, and every one that disconnected the
// peer. Peers are forgotten once their last line is an interval old and
// more than maxBadChangePeers are remembered.
type badChangeLines struct {
	mu    sync.Mutex
	every time.Duration
	now   func() time.Time
	peers map[peer.ID]*badChangeLine
}

type badChangeLine struct {
	at      time.Time // the peer's last line
	pending int       // refusals since, not in a line yet
}

// maxBadChangePeers bounds the peers remembered between lines: gossip can
// name any number of identities a member mints.
const maxBadChangePeers = 1024

func newBadChangeLines(every time.Duration, now func() time.Time) *badChangeLines {
	return &badChangeLines{every: every, now: now, peers: map[peer.ID]*badChangeLine{}}
}

// take records one refusal from p and reports whether to write a line
// now, and how many refusals it covers (this one included).
func (l *badChangeLines) take(p peer.ID, force bool) (count int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	e, known := l.peers[p]
	if !known {
		l.makeRoom(now)
		e = &badChangeLine{}
		l.peers[p] = e
	}
	e.pending++
	if known && !force && now.Sub(e.at) < l.every {
		return 0, false
	}
	count, e.pending, e.at = e.pending, 0, now
	return count, true
}

// makeRoom forgets, once maxBadChangePeers are remembered, the peers whose
// last line is an interval old (their pending refusals go unlogged; the
// metrics count them), then, if none is, the one with the oldest line.
func (l *badChangeLines) makeRoom(now time.Time) {
	if len(l.peers) < maxBadChangePeers {
		return
	}
	var oldest peer.ID
	for p, e := range l.peers {
		if now.Sub(e.at) >= l.every {
			delete(l.peers, p)
		} else if oldest == "" || e.at.Before(l.peers[oldest].at) {
			oldest = p
		}
	}
	if len(l.peers) >= maxBadChangePeers {
		delete(l.peers, oldest)
	}
}
