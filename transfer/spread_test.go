package transfer

import (
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

func TestSpreaderSendsEachChunkToTwoPeersPerWindow(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	s := newSpreader(2, 3*time.Second)
	s.now = func() time.Time { return now }
	var m Hash
	p1, p2, p3 := peer.ID("p1"), peer.ID("p2"), peer.ID("p3")
	for _, p := range []peer.ID{p1, p2, p1} {
		if err := s.admit(m, 5, 1, p); err != nil {
			t.Fatalf("%s refused: %v", p, err)
		}
	}
	if err := s.admit(m, 5, 1, p3); err == nil {
		t.Fatal("a third peer got chunk 5 within the window")
	}
	if err := s.admit(m, 6, 1, p3); err != nil {
		t.Fatalf("another chunk refused: %v", err)
	}
	// A run is judged by its first chunk and counts for all of them.
	if err := s.admit(m, 7, 3, p1); err != nil {
		t.Fatal(err)
	}
	if err := s.admit(m, 8, 1, p2); err != nil {
		t.Fatal(err)
	}
	if err := s.admit(m, 8, 2, p3); err == nil {
		t.Fatal("a run from a chunk sent twice went to a third peer")
	}
	var other Hash
	other[0] = 1
	if err := s.admit(other, 5, 1, p3); err != nil {
		t.Fatalf("chunk 5 of another manifest refused: %v", err)
	}
	// After the window, the origin serves again: a swarm that cannot
	// trade still finishes.
	now = now.Add(3 * time.Second)
	if err := s.admit(m, 5, 1, p3); err != nil {
		t.Fatalf("after the window: %v", err)
	}
	if len(s.sent) > 4 {
		t.Fatalf("%d entries kept after the window passed", len(s.sent))
	}
	var off *spreader
	if err := off.admit(m, 5, 1, p3); err != nil {
		t.Fatal(err)
	}
}
