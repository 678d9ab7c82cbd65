package mesh

import (
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// defaultStrangers is how many inbound peers may be connected at once
// without having authenticated (AuthConfig.Strangers).
const defaultStrangers = 32

// strangers is Auth's budget for inbound peers that have not proven the
// fleet secret: peer IDs cost nothing to make, so without one, anyone
// could fill the node's connection limits before a member gets in. Peers
// known to be members (they authenticated before, or their heartbeats
// reached us) are not counted. Not safe for concurrent use; Auth guards it.
type strangers struct {
	limit int
	// ttl forgets a peer admitted whose connection never came up (the
	// rest of the handshake failed).
	ttl time.Duration
	m   map[peer.ID]*stranger
}

type stranger struct {
	since     time.Time
	connected bool // its connection is up
	started   bool // it opened the authentication exchange
}

func newStrangers(limit int, ttl time.Duration) *strangers {
	return &strangers{limit: limit, ttl: ttl, m: map[peer.ID]*stranger{}}
}

// admit decides on an inbound connection from p, a peer neither
// authenticated nor known. With the budget full, the longest-waiting
// stranger that is connected but has not even opened the exchange (a
// scanner, a host of another network) makes room: evict names it, for
// the caller to disconnect. If every stranger is busy authenticating, p
// is refused.
func (s *strangers) admit(p peer.ID, now time.Time) (ok bool, evict peer.ID) {
	if _, in := s.m[p]; in {
		return true, ""
	}
	if len(s.m) >= s.limit {
		for q, e := range s.m {
			if !e.connected && now.Sub(e.since) > s.ttl {
				delete(s.m, q)
			}
		}
	}
	if len(s.m) >= s.limit {
		var oldest *stranger
		for q, e := range s.m {
			if e.connected && !e.started && (oldest == nil || e.since.Before(oldest.since)) {
				oldest, evict = e, q
			}
		}
		if oldest == nil {
			return false, ""
		}
		delete(s.m, evict)
	}
	s.m[p] = &stranger{since: now}
	return true, evict
}

// connected notes that p's connection is up.
func (s *strangers) connected(p peer.ID) {
	if e := s.m[p]; e != nil {
		e.connected = true
	}
}

// started notes that p opened the authentication exchange.
func (s *strangers) started(p peer.ID) {
	if e := s.m[p]; e != nil {
		e.started = true
	}
}

// remove forgets p: it authenticated, or it is gone.
func (s *strangers) remove(p peer.ID) { delete(s.m, p) }

func (s *strangers) len() int { return len(s.m) }
