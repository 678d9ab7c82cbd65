package transfer

import (
	"slices"
	"testing"
)

func takeAll(s *scheduler, has func(int) bool) []int {
	var out []int
	for {
		g, ok := s.take(has, has == nil)
		if !ok {
			return out
		}
		out = append(out, g)
	}
}

func TestSchedulerOrderAndRelease(t *testing.T) {
	s := newScheduler(6, []int{1, 2, 4, 5}, 2)
	if got := takeAll(s, nil); !slices.Equal(got, []int{4, 5, 1, 2}) {
		t.Fatalf("order %v, want the needed chunks from the start point on", got)
	}
	if _, ok := s.take(nil, true); ok {
		t.Fatal("a chunk was handed out twice")
	}
	wake := s.changed()
	s.release(5)
	select {
	case <-wake:
	default:
		t.Fatal("release did not wake waiters")
	}
	if g, ok := s.take(nil, true); !ok || g != 5 {
		t.Fatalf("took %d %v, want the released 5", g, ok)
	}
	for i, g := range []int{4, 5, 1} {
		if s.finish(g) {
			t.Fatalf("finish %d (#%d) reported the end early", g, i)
		}
	}
	if s.finish(1) {
		t.Fatal("a chunk finished twice counted twice")
	}
	if !s.finish(2) || s.left() != 0 {
		t.Fatalf("last finish: left %d", s.left())
	}
}

func TestSchedulerPartialSource(t *testing.T) {
	s := newScheduler(8, []int{0, 1, 2, 3, 4, 5, 6, 7}, 0)
	odd := func(g int) bool { return g%2 == 1 }
	if got := takeAll(s, odd); !slices.Equal(got, []int{1, 3, 5, 7}) {
		t.Fatalf("partial source took %v, want only the chunks it has", got)
	}
	s.release(3)
	if got := takeAll(s, nil); !slices.Equal(got, []int{3, 0, 2, 4, 6}) {
		t.Fatalf("complete source took %v, want the released chunk first", got)
	}
	if _, ok := s.take(odd, false); ok {
		t.Fatal("a taken chunk was handed out again")
	}
}

func TestSchedulerCompleteSourcePrefersChunksNoPeerOffers(t *testing.T) {
	s := newScheduler(4, []int{0, 1, 2, 3}, 0)
	peer := []byte{0b0101} // chunks 0 and 2
	s.offer(nil, peer)
	if got := takeAll(s, nil); !slices.Equal(got, []int{1, 3, 0, 2}) {
		t.Fatalf("complete source took %v, want 1 and 3 (no peer has them) first", got)
	}
	for _, g := range []int{0, 1, 2, 3} {
		s.release(g)
	}
	s.offer(peer, nil) // the peer left
	if got := takeAll(s, nil); !slices.Equal(got, []int{0, 1, 2, 3}) {
		t.Fatalf("after the peer left: took %v, want the released order", got)
	}
}

// A run takes the chunks that follow the first in manifest order while
// they are needed, the source has them, and they fit one chunk buffer; a
// chunk given back and then taken by a run is not handed out again.
func TestSchedulerRuns(t *testing.T) {
	small := func(int) int { return ChunkSize / 4 }
	s := newScheduler(10, []int{0, 1, 2, 3, 4, 5, 7, 8, 9}, 0)
	if g, n, ok := s.takeRun(nil, true, small); !ok || g != 0 || n != 4 {
		t.Fatalf("run %d+%d %v, want 0+4: four quarter chunks fill a buffer", g, n, ok)
	}
	if g, n, _ := s.takeRun(nil, true, small); g != 4 || n != 2 {
		t.Fatalf("run %d+%d, want 4+2: 6 is not needed", g, n)
	}
	if g, n, _ := s.takeRun(func(g int) bool { return g != 8 }, false, small); g != 7 || n != 1 {
		t.Fatalf("run %d+%d, want 7+1: the source lacks 8", g, n)
	}
	s.release(1)
	s.release(2)
	if g, n, _ := s.takeRun(nil, true, small); g != 1 || n != 2 {
		t.Fatalf("run %d+%d, want the given back 1+2", g, n)
	}
	if g, n, _ := s.takeRun(nil, true, func(g int) int { return ChunkSize }); g != 8 || n != 1 {
		t.Fatalf("run %d+%d, want 8+1: whole chunks go one by one", g, n)
	}
	if got := takeAll(s, nil); !slices.Equal(got, []int{9}) {
		t.Fatalf("left %v, want [9]: 2 went out in a run", got)
	}
}
