package transfer

import (
	"fmt"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Spreading a complete item's chunks.
//
// When many nodes fetch the same version at once (followers of an item
// that just changed), the holder of the complete version would send each
// chunk to every one of them, and the partial holders would have nothing
// to trade yet. So a server sends a chunk of a complete item to at most
// Copies peers within Window of the last time it sent it; a third peer
// asking in that window is answered StatusElsewhere, fetches the chunk
// from one of the peers that have it (they serve it as partial holders)
// and asks the origin again only after the window, which keeps a download
// going when those peers cannot be reached. The same peer asking again
// (a retry) is always served. Partial items are not limited: their
// chunks are the swarm's.

// spreadKey names one chunk of one manifest.
type spreadKey struct {
	m Hash
	g int
}

type spreadEntry struct {
	to   []peer.ID // who got it in this window, at most copies
	last time.Time
}

// spreader tracks which peers each recently sent chunk went to. Safe for
// concurrent use.
type spreader struct {
	copies int
	window time.Duration
	now    func() time.Time

	mu    sync.Mutex
	sent  map[spreadKey]*spreadEntry
	swept time.Time
}

func newSpreader(copies int, window time.Duration) *spreader {
	return &spreader{copies: copies, window: window, now: time.Now, sent: map[spreadKey]*spreadEntry{}}
}

// admit reports whether chunks first..first+count-1 of manifest m may go
// to p now, and if so records that they did. A run is judged by its first
// chunk. The refusal names why.
func (s *spreader) admit(m Hash, first, count int, p peer.ID) error {
	if s == nil || s.copies <= 0 {
		return nil
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweepLocked(now)
	if e := s.sent[spreadKey{m, first}]; e != nil && now.Sub(e.last) < s.window && len(e.to) >= s.copies && !e.has(p) {
		return fmt.Errorf("chunk %d was sent to %d peers in the last %v: fetch it from them", first, len(e.to), s.window)
	}
	for g := first; g < first+count; g++ {
		k := spreadKey{m, g}
		e := s.sent[k]
		if e == nil || now.Sub(e.last) >= s.window {
			e = &spreadEntry{}
			s.sent[k] = e
		}
		if !e.has(p) && len(e.to) < s.copies {
			e.to = append(e.to, p)
		}
		e.last = now
	}
	return nil
}

// touch restarts the window of chunks first..first+count-1 of m, sent
// just now: the window runs from the send, not from the admission, which
// a send rate can put far apart.
func (s *spreader) touch(m Hash, first, count int) {
	if s == nil || s.copies <= 0 {
		return
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for g := first; g < first+count; g++ {
		if e := s.sent[spreadKey{m, g}]; e != nil {
			e.last = now
		}
	}
}

func (e *spreadEntry) has(p peer.ID) bool {
	for _, q := range e.to {
		if q == p {
			return true
		}
	}
	return false
}

// sweepLocked drops entries past their window, at most once a window.
func (s *spreader) sweepLocked(now time.Time) {
	if now.Sub(s.swept) < s.window {
		return
	}
	s.swept = now
	for k, e := range s.sent {
		if now.Sub(e.last) >= s.window {
			delete(s.sent, k)
		}
	}
}
