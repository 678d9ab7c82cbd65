package transfer

import "sync"

// rareScan bounds how far a complete source looks for a chunk that no
// partial source offers before it takes any.
const rareScan = 4096

// chunk states in a scheduler.
const (
	chunkNeeded = iota
	chunkTaken
	chunkDone
)

// scheduler hands a download's needed chunks to its sources. Chunks go
// out in one order (the needed chunks rotated to a start point, so that
// several nodes downloading the same item start in different places and
// have chunks to trade); a chunk given back goes out first. A source that
// holds only part of the item takes the first needed chunk it has; a
// complete source prefers chunks that no partial source offers, so that
// the origin of a swarm sends what the others cannot. All methods are
// safe for concurrent use and never block.
type scheduler struct {
	mu        sync.Mutex
	state     []uint8
	avail     []uint16 // partial sources offering each chunk
	queue     []int    // pick order; entries no longer needed are skipped
	head      int
	returned  []int
	remaining int
	wake      chan struct{}
}

// newScheduler covers chunks 0..n-1 of which need are still needed,
// handed out starting at need[start % len(need)].
func newScheduler(n int, need []int, start int) *scheduler {
	s := &scheduler{state: make([]uint8, n), avail: make([]uint16, n), wake: make(chan struct{}), remaining: len(need)}
	for g := range s.state {
		s.state[g] = chunkDone
	}
	for _, g := range need {
		s.state[g] = chunkNeeded
	}
	if len(need) > 0 {
		start %= len(need)
		s.queue = append(append(make([]int, 0, len(need)), need[start:]...), need[:start]...)
	}
	return s
}

// take marks the next needed chunk that has accepts (nil: any) as taken
// and returns it; false when there is none. A complete source (complete)
// takes first a chunk that no partial source offers; its has, if any,
// leaves out chunks it cannot send now (StatusElsewhere).
func (s *scheduler) take(has func(g int) bool, complete bool) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.takeLocked(has, complete)
}

// takeRun takes a chunk as take does, then the chunks that follow it in
// manifest order while they are needed, has accepts them, there are at
// most maxRunChunks, and their lengths (size(g)) add up to at most
// ChunkSize: a run of small files goes out as one request.
func (s *scheduler) takeRun(has func(g int) bool, complete bool, size func(g int) int) (first, count int, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	first, ok = s.takeLocked(has, complete)
	if !ok {
		return 0, 0, false
	}
	count, n := 1, size(first)
	for g := first + 1; g < len(s.state) && count < maxRunChunks; g++ {
		if s.state[g] != chunkNeeded || (has != nil && !has(g)) || n+size(g) > ChunkSize {
			break
		}
		s.state[g] = chunkTaken
		n += size(g)
		count++
	}
	return first, count, true
}

func (s *scheduler) takeLocked(has func(g int) bool, complete bool) (int, bool) {
	// Chunks given back go out first; entries a run took meanwhile are
	// dropped on the way.
	kept := s.returned[:0]
	took := -1
	for _, g := range s.returned {
		switch {
		case s.state[g] != chunkNeeded:
		case took < 0 && (has == nil || has(g)):
			took = g
		default:
			kept = append(kept, g)
		}
	}
	s.returned = kept
	if took >= 0 {
		s.state[took] = chunkTaken
		return took, true
	}
	for s.head < len(s.queue) && s.state[s.queue[s.head]] != chunkNeeded {
		s.head++
	}
	if complete {
		for i := s.head; i < len(s.queue) && i < s.head+rareScan; i++ {
			if g := s.queue[i]; s.state[g] == chunkNeeded && s.avail[g] == 0 && (has == nil || has(g)) {
				s.state[g] = chunkTaken
				return g, true
			}
		}
	}
	for i := s.head; i < len(s.queue); i++ {
		if g := s.queue[i]; s.state[g] == chunkNeeded && (has == nil || has(g)) {
			s.state[g] = chunkTaken
			return g, true
		}
	}
	return 0, false
}

// offer records that a partial source's bitmap went from old to cur
// (either may be nil: no bits).
func (s *scheduler) offer(old, cur []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for g := range s.avail {
		was := old != nil && bitSet(old, g)
		is := cur != nil && bitSet(cur, g)
		switch {
		case is && !was:
			s.avail[g]++
		case was && !is:
			s.avail[g]--
		}
	}
}

// release gives a taken chunk back, to go out before the others.
func (s *scheduler) release(g int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state[g] != chunkTaken {
		return
	}
	s.state[g] = chunkNeeded
	s.returned = append(s.returned, g)
	s.notify()
}

// finish marks a taken chunk done and reports whether it was the last.
func (s *scheduler) finish(g int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state[g] == chunkDone {
		return false
	}
	s.state[g] = chunkDone
	s.remaining--
	if s.remaining == 0 {
		s.notify()
	}
	return s.remaining == 0
}

// left is the number of chunks not done.
func (s *scheduler) left() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.remaining
}

// changed returns a channel closed at the next release or completion.
func (s *scheduler) changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.wake
}

func (s *scheduler) notify() {
	close(s.wake)
	s.wake = make(chan struct{})
}
