package mesh

import (
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// Gate is the host's connection gater. It refuses peers that failed fleet
// authentication (with exponential backoff) and peers blocked by the
// operator or a partition test. It is safe for concurrent use.
type Gate struct {
	mu      sync.Mutex
	now     func() time.Time
	backoff map[peer.ID]backoffEntry
	blocked map[peer.ID]bool
	// noDirect holds peers reachable only through a relay: what two sites
	// that cannot route to each other look like, for partition tests and
	// for operators who want a peer's traffic to go through the relay.
	noDirect map[peer.ID]bool
}

type backoffEntry struct {
	until    time.Time
	failures int
}

const (
	backoffBase = 2 * time.Second
	backoffMax  = 5 * time.Minute
)

// NewGate returns an open gate.
func NewGate() *Gate {
	return &Gate{now: time.Now, backoff: map[peer.ID]backoffEntry{}, blocked: map[peer.ID]bool{}, noDirect: map[peer.ID]bool{}}
}

// Fail records an authentication failure and returns how long p is
// refused: 2 s, doubling per consecutive failure up to 5 min.
func (g *Gate) Fail(p peer.ID) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	e := g.backoff[p]
	d := backoffBase << min(e.failures, 10)
	d = min(d, backoffMax)
	e.failures++
	e.until = g.now().Add(d)
	g.backoff[p] = e
	return d
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
	if g.blocked[p] {
		return false
	}
	e, ok := g.backoff[p]
	return !ok || !g.now().Before(e.until)
}

func (g *Gate) InterceptPeerDial(p peer.ID) bool                 { return g.Allowed(p) }
func (g *Gate) InterceptAddrDial(p peer.ID, a ma.Multiaddr) bool { return g.pathAllowed(p, a) }
func (g *Gate) InterceptAccept(network.ConnMultiaddrs) bool      { return true }
func (g *Gate) InterceptSecured(_ network.Direction, p peer.ID, c network.ConnMultiaddrs) bool {
	return g.pathAllowed(p, c.RemoteMultiaddr())
}
func (g *Gate) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }
