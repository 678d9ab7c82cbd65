package mesh

import (
	"cmp"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Strikes: every change the document refuses (crdt.RefusedError: it broke
// one of the document's rules) is a strike against the peer it came from.
// A peer with StrikeLimit strikes inside StrikeWindow is struck out: the
// replicator bans it at the Gate (a growing ban that authenticating again
// does not lift, see Gate.Ban), closes every connection to it, and the
// mesh manager's and discovery's dials to it are refused until the ban
// ends. After one refusal the replicator also pauses anti-entropy with
// the peer for RefusedPause, both ways, so that a peer whose document
// holds a bad change (every session offers it again) is not asked, and
// cannot ask, for a session on every heartbeat.
//
// Bans are by peer ID. They cut off a buggy member and slow a hostile one
// down; a member that means harm holds the fleet secret and can come back
// under a fresh identity, which only rotating the secret stops.

// strikes is the pure bookkeeping behind that: per peer, the times of its
// recent refusals. It is not safe for concurrent use; the replicator
// guards it with a mutex.
type strikes struct {
	limit  int           // strikes inside window that strike a peer out
	window time.Duration // how long a strike counts
	pause  time.Duration // no sync with a peer this long after a strike
	max    int           // peers remembered at most
	peers  map[peer.ID]*strikeRecord
}

type strikeRecord struct {
	// times are the strikes still inside the window, oldest first; at
	// most limit-1 are kept between calls (the limit-th strikes out).
	times []time.Time
	// last is the latest strike, struck out or not: the pause runs from it.
	last time.Time
}

// defaultMaxStrikes bounds the peers remembered: any member can sign
// gossip as any number of fresh peer IDs, each of which gets a record.
const defaultMaxStrikes = 1024

func newStrikes(limit int, window, pause time.Duration, maxPeers int) *strikes {
	return &strikes{limit: max(limit, 1), window: window, pause: pause, max: max(maxPeers, 1), peers: map[peer.ID]*strikeRecord{}}
}

// strike records a refusal of p's change at now. It returns how many
// strikes p has inside the window, this one included, and whether p is
// struck out; a peer struck out starts again from no strikes (its ban is
// the Gate's business from then on).
func (s *strikes) strike(p peer.ID, now time.Time) (count int, out bool) {
	r, ok := s.peers[p]
	if !ok {
		s.makeRoom(now)
		r = &strikeRecord{}
		s.peers[p] = r
	}
	r.times = append(r.expire(now, s.window), now)
	r.last = now
	count = len(r.times)
	if count >= s.limit {
		r.times = nil
		return count, true
	}
	return count, false
}

// expire returns r's strikes still inside the window at now.
func (r *strikeRecord) expire(now time.Time, window time.Duration) []time.Time {
	i := 0
	for i < len(r.times) && now.Sub(r.times[i]) >= window {
		i++
	}
	return r.times[i:]
}

// paused reports whether sync with p is paused at now: it had a strike
// less than pause ago.
func (s *strikes) paused(p peer.ID, now time.Time) bool {
	r, ok := s.peers[p]
	return ok && now.Sub(r.last) < s.pause
}

// count returns p's strikes inside the window at now.
func (s *strikes) count(p peer.ID, now time.Time) int {
	r, ok := s.peers[p]
	if !ok {
		return 0
	}
	return len(r.expire(now, s.window))
}

// makeRoom is called before a new peer is added: past max peers it
// forgets those with nothing left to remember (no strike inside the
// window, pause over), then, if still full, those with the fewest strikes,
// struck longest ago, down to three quarters of max.
func (s *strikes) makeRoom(now time.Time) {
	if len(s.peers) < s.max {
		return
	}
	for p, r := range s.peers {
		if r.times = r.expire(now, s.window); len(r.times) == 0 && now.Sub(r.last) >= s.pause {
			delete(s.peers, p)
		}
	}
	if len(s.peers) < s.max {
		return
	}
	prune(s.peers, s.max*3/4, func(a, b *strikeRecord) int {
		return cmp.Or(cmp.Compare(len(a.times), len(b.times)), a.last.Compare(b.last))
	})
}
