package node

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshnode/meshnode/room"
)

// roomWatch collects one node's room events for a topic.
type roomWatch struct {
	mu   sync.Mutex
	msgs map[string]int // "sender/epoch/seq" -> times delivered
	from map[peer.ID][]string
	gaps int
	stop func()
	wg   sync.WaitGroup
}

func watchRoom(t *testing.T, n *Node, topic string) *roomWatch {
	t.Helper()
	ch, cancel, err := n.Rooms.Subscribe(topic, 4096)
	if err != nil {
		t.Fatal(err)
	}
	w := &roomWatch{msgs: map[string]int{}, from: map[peer.ID][]string{}}
	done := make(chan struct{})
	w.stop = func() { close(done); w.wg.Wait(); cancel() }
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		for {
			select {
			case <-done:
				return
			case ev := <-ch:
				w.mu.Lock()
				switch ev.Type {
				case "message":
					m := ev.Message
					w.msgs[fmt.Sprintf("%s/%d/%d", m.Sender, m.Epoch, m.Seq)]++
					w.from[m.Sender] = append(w.from[m.Sender], string(m.Payload))
				case "gap":
					w.gaps++
				}
				w.mu.Unlock()
			}
		}
	}()
	t.Cleanup(w.stop)
	return w
}

func (w *roomWatch) heard(p peer.ID, text string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, s := range w.from[p] {
		if s == text {
			return true
		}
	}
	return false
}

// inOneRoom reports whether every node has the topic's advertised room
// connected, the same room everywhere, reaching each fleet peer it is
// connected to.
func inOneRoom(nodes []*Node, topic string) (string, bool) {
	var want string
	for _, n := range nodes {
		st, err := n.Rooms.Rooms()
		if err != nil {
			return "", false
		}
		var s *room.Status
		for i := range st {
			if st[i].Topic == topic {
				s = &st[i]
			}
		}
		if s == nil || s.Room == "" || len(s.Links) != 1 || s.Links[0].Room != s.Room || s.Links[0].State != "connected" {
			return "", false
		}
		if want == "" {
			want = s.Room
		}
		if s.Room != want {
			return "", false
		}
		direct := 0
		for _, o := range nodes {
			if o != n && n.Host.Network().Connectedness(o.ID()) == 1 {
				direct++
			}
		}
		if s.Links[0].Peers < direct {
			return "", false
		}
	}
	return want, true
}

// offerAtOnce has every node offer topic at the same instant: each mints
// at once, seeing no creds, and writes its own.
func offerAtOnce(t *testing.T, nodes []*Node, topic string) {
	t.Helper()
	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if err := n.Rooms.Offer(topic); err != nil {
				t.Error(err)
			}
		}()
	}
	close(start)
	wg.Wait()
}

// checkRoomTraffic: after a warm-up that proves every path, each node
// sends count messages; every other node receives each exactly once.
func checkRoomTraffic(t *testing.T, nodes []*Node, topic string, count int) {
	t.Helper()
	watches := make([]*roomWatch, len(nodes))
	for i, n := range nodes {
		watches[i] = watchRoom(t, n, topic)
	}
	ctx := context.Background()
	// Warm-up: hellos until everyone heard one from everyone.
	waitFor(t, 30*time.Second, "hellos from every participant everywhere", func() bool {
		for _, n := range nodes {
			if _, err := n.Rooms.Send(ctx, topic, "hello", []byte("hello")); err != nil {
				return false
			}
		}
		time.Sleep(100 * time.Millisecond)
		for i := range nodes {
			for j, o := range nodes {
				if i != j && !watches[i].heard(o.ID(), "hello") {
					return false
				}
			}
		}
		return true
	})
	before := make([]int, len(nodes))
	for i, w := range watches {
		w.mu.Lock()
		before[i] = len(w.msgs)
		w.mu.Unlock()
	}
	for k := range count {
		for _, n := range nodes {
			if _, err := n.Rooms.Send(ctx, topic, "chat", []byte(fmt.Sprintf("m%d", k))); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, 30*time.Second, "every message everywhere", func() bool {
		for i := range nodes {
			for j, o := range nodes {
				if i != j && !watches[i].heard(o.ID(), fmt.Sprintf("m%d", count-1)) {
					return false
				}
			}
		}
		return true
	})
	for i, w := range watches {
		w.mu.Lock()
		for j, o := range nodes {
			var got []string
			for _, s := range w.from[o.ID()] {
				if s != "hello" {
					got = append(got, s)
				}
			}
			if i == j {
				continue
			}
			want := count
			if len(got) != want {
				sort.Strings(got)
				t.Errorf("node %d got %d messages from node %d, want %d exactly once: %v", i, len(got), j, want, got)
			}
		}
		for k, times := range w.msgs {
			if times != 1 {
				t.Errorf("node %d got %s %d times", i, k, times)
			}
		}
		if w.gaps != 0 {
			t.Errorf("node %d reported %d gaps", i, w.gaps)
		}
		w.mu.Unlock()
	}
}

// mints counts the credentials the nodes minted for topic.
func mints(t *testing.T, nodes []*Node, topic string) uint64 {
	var n uint64
	for _, nd := range nodes {
		st, err := nd.Rooms.Rooms()
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range st {
			if s.Topic == topic {
				n += s.Stats.Mints
			}
		}
	}
	return n
}

// Three nodes open the same topic at the same instant and all mint: they
// end in one room, and every message reaches the others exactly once.
func TestRoomConcurrentMintThree(t *testing.T) {
	c := newCluster(t, 3)
	waitFor(t, 20*time.Second, "fleet formed", func() bool { return c.allAuthenticated(2) })
	offerAtOnce(t, c.nodes, "match")
	waitFor(t, 30*time.Second, "one room for all three", func() bool { _, ok := inOneRoom(c.nodes, "match"); return ok })
	if m := mints(t, c.nodes, "match"); m < 2 {
		t.Fatalf("only %d node minted: the race this test is about did not happen", m)
	}
	checkRoomTraffic(t, c.nodes, "match", 20)
}

// Joining (not offering) at once: a room is minted once participants
// see each other, and all end in it.
func TestRoomJoinTogether(t *testing.T) {
	c := newCluster(t, 3)
	waitFor(t, 20*time.Second, "fleet formed", func() bool { return c.allAuthenticated(2) })
	for _, n := range c.nodes {
		if err := n.Rooms.Join("lobby"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 30*time.Second, "one room for all three", func() bool { _, ok := inOneRoom(c.nodes, "lobby"); return ok })
	checkRoomTraffic(t, c.nodes, "lobby", 5)
}

func TestRoomConcurrentMintEight(t *testing.T) {
	if testing.Short() {
		t.Skip("8 nodes")
	}
	c := newCluster(t, 8)
	waitFor(t, 30*time.Second, "fleet formed", func() bool { return c.allAuthenticated(1) })
	offerAtOnce(t, c.nodes, "build-42")
	waitFor(t, 30*time.Second, "one room for all eight", func() bool { _, ok := inOneRoom(c.nodes, "build-42"); return ok })
	if m := mints(t, c.nodes, "build-42"); m < 2 {
		t.Fatalf("only %d node minted: the race this test is about did not happen", m)
	}
	checkRoomTraffic(t, c.nodes, "build-42", 10)
}
