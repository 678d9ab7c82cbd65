package mesh

import (
	"cmp"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// Gate is the host's connection gater. It refuses peers that failed fleet
// authentication (with exponential backoff), members banned for sending
// changes the document refuses (Ban), peers blocked by the
// operator or a partition test, and, once Auth runs, inbound peers that
// have not authenticated beyond Auth's budget for them. It is safe for
// concurrent use.
type Gate struct {
	mu      sync.Mutex
	now     func() time.Time
	backoff map[peer.ID]backoffEntry
	// maxBackoff bounds backoff: every stranger's peer ID that fails gets
	// an entry, and peer IDs cost nothing to make.
	maxBackoff int
	// bans are members struck out for refused changes; bounded by
	// maxBackoff too.
	bans    map[peer.ID]backoffEntry
	blocked map[peer.ID]bool
	// noDirect holds peers reachable only through a relay: what two sites
	// that cannot route to each other look like, for partition tests and
	// for operators who want a peer's traffic to go through the relay.
	noDirect map[peer.ID]bool
	// admit decides whether an inbound peer may finish connecting; Auth
	// sets it while it runs. Called without mu held.
	admit func(peer.ID) bool
}

type backoffEntry struct {
	until    time.Time
	failures int
}

const (
	backoffBase = 2 * time.Second
	backoffMax  = 5 * time.Minute
	// defaultMaxBackoff peers are remembered in backoff at most.
	defaultMaxBackoff = 4096
	// A ban lasts banBase, doubling per ban up to banMax; a peer banned
	// again within banMax of its last ban's end counts as a repeat.
	banBase = time.Minute
	banMax  = time.Hour
)

// NewGate returns an open gate.
func NewGate() *Gate {
	return &Gate{now: time.Now, backoff: map[peer.ID]backoffEntry{}, maxBackoff: defaultMaxBackoff,
		bans: map[peer.ID]backoffEntry{}, blocked: map[peer.ID]bool{}, noDirect: map[peer.ID]bool{}}
}

// Fail records an authentication failure and returns how long p is
// refused: 2 s, doubling per consecutive failure up to 5 min. Past
// maxBackoff peers, entries whose refusal has ended are forgotten first,
// then those with the fewest failures, ending soonest: a forgotten
// stranger may come back sooner, and meets Auth's budget for strangers.
func (g *Gate) Fail(p peer.ID) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	e, known := g.backoff[p]
	d := backoffBase << min(e.failures, 10)
	d = min(d, backoffMax)
	e.failures++
	e.until = now.Add(d)
	if !known && len(g.backoff) >= g.maxBackoff {
		for q, o := range g.backoff {
			if !now.Before(o.until) {
				delete(g.backoff, q)
			}
		}
		// Repeat offenders stay longest.
		prune(g.backoff, g.maxBackoff*3/4, func(a, b backoffEntry) int {
			return cmp.Or(cmp.Compare(a.failures, b.failures), a.until.Compare(b.until))
		})
	}
	g.backoff[p] = e
	return d
}

// Ban refuses p, a member struck out for sending changes the document
// refused, and returns for how long: 1 min, doubling per ban up to 1 h.
// Unlike Fail's backoff, authenticating again (Succeed) does not clear a
// ban's history: proving the secret says nothing of what a peer sends. It
// is forgotten once p has gone banMax past its last ban without another.
// Past maxBackoff banned peers, those whose history is over are forgotten
// first, then those banned fewest times, ending soonest.
func (g *Gate) Ban(p peer.ID) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	e, known := g.bans[p]
	if known && !now.Before(e.until.Add(banMax)) {
		e.failures = 0
	}
	d := min(banBase<<min(e.failures, 10), banMax)
	e.failures++
	e.until = now.Add(d)
	if !known && len(g.bans) >= g.maxBackoff {
		for q, o := range g.bans {
			if !now.Before(o.until.Add(banMax)) {
				delete(g.bans, q)
			}
		}
		prune(g.bans, g.maxBackoff*3/4, func(a, b backoffEntry) int {
			return cmp.Or(cmp.Compare(a.failures, b.failures), a.until.Compare(b.until))
		})
	}
	g.bans[p] = e
	return d
}

// Banned reports whether p is banned now (Ban), whatever else the Gate
// thinks of it.
func (g *Gate) Banned(p peer.ID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.bannedLocked(p)
}

func (g *Gate) bannedLocked(p peer.ID) bool {
	e, ok := g.bans[p]
	return ok && g.now().Before(e.until)
}

// setAdmit installs (or, with nil, removes) the decision on inbound peers.
func (g *Gate) setAdmit(fn func(peer.ID) bool) {
	g.mu.Lock()
	g.admit = fn
	g.mu.Unlock()
}

// Succeed clears p's failure history.
func (g *Gate) Succeed(p peer.ID) {
	g.mu.Lock()
	delete(g.backoff, p)
	g.mu.Unlock()
}

// Block refuses every connection to or from the peers until Unblock.
func (g *Gate) Block(ps ...peer.ID) { g.mark(g.blocked, true, ps) }

// Unblock lifts Block.
func (g *Gate) Unblock(ps ...peer.ID) { g.mark(g.blocked, false, ps) }

// BlockDirect refuses direct connections to or from the peers; relayed
// connections stay allowed. UnblockDirect lifts it.
func (g *Gate) BlockDirect(ps ...peer.ID) { g.mark(g.noDirect, true, ps) }

// UnblockDirect lifts BlockDirect.
func (g *Gate) UnblockDirect(ps ...peer.ID) { g.mark(g.noDirect, false, ps) }

func (g *Gate) mark(set map[peer.ID]bool, on bool, ps []peer.ID) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, p := range ps {
		if on {
			set[p] = true
		} else {
			delete(set, p)
		}
	}
}

func (g *Gate) pathAllowed(p peer.ID, a ma.Multiaddr) bool {
	if !g.Allowed(p) {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.noDirect[p] || isCircuit(a)
}

// Allowed reports whether p may connect now.
func (g *Gate) Allowed(p peer.ID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.blocked[p] || g.bannedLocked(p) {
		return false
	}
	e, ok := g.backoff[p]
	return !ok || !g.now().Before(e.until)
}

func (g *Gate) InterceptPeerDial(p peer.ID) bool                 { return g.Allowed(p) }
func (g *Gate) InterceptAddrDial(p peer.ID, a ma.Multiaddr) bool { return g.pathAllowed(p, a) }
func (g *Gate) InterceptAccept(network.ConnMultiaddrs) bool      { return true }
func (g *Gate) InterceptSecured(dir network.Direction, p peer.ID, c network.ConnMultiaddrs) bool {
	if !g.pathAllowed(p, c.RemoteMultiaddr()) {
		return false
	}
	if dir != network.DirInbound {
		return true // peers we dial are our choice
	}
	g.mu.Lock()
	admit := g.admit
	g.mu.Unlock()
	return admit == nil || admit(p)
}
func (g *Gate) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }
