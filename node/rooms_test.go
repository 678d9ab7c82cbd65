package node

import (
	"bytes"
	"context"
	"fmt"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshnode/meshnode/crdt"
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
	t.Parallel()
	c := newCluster(t, 3)
	c.waitFormed(t, 2)
	offerAtOnce(t, c.nodes, "match")
	waitFor(t, 30*time.Second, "one room for all three", func() bool { _, ok := inOneRoom(c.nodes, "match"); return ok })
	if m := mints(t, c.nodes, "match"); m < 2 {
		t.Fatalf("only %d node minted: the race this test is about did not happen", m)
	}
	checkRoomTraffic(t, c.nodes, "match", 20)
	n := c.nodes[0]
	if sent, got := metricValue(t, n, "meshnode_room_messages_sent_total"), metricValue(t, n, "meshnode_room_messages_received_total"); sent < 20 || got < 40 {
		t.Fatalf("metrics: %v sent, %v received; want at least 20 and 40", sent, got)
	}
	if open := metricValue(t, n, "meshnode_rooms_open"); open != 1 {
		t.Fatalf("metrics: %v rooms open, want 1", open)
	}
}

// Joining (not offering) at once: a room is minted once participants
// see each other, and all end in it.
func TestRoomJoinTogether(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3)
	c.waitFormed(t, 2)
	for _, n := range c.nodes {
		if err := n.Rooms.Join("lobby"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 30*time.Second, "one room for all three", func() bool { _, ok := inOneRoom(c.nodes, "lobby"); return ok })
	checkRoomTraffic(t, c.nodes, "lobby", 5)
}

func TestRoomConcurrentMintEight(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("8 nodes")
	}
	c := newCluster(t, 8)
	c.waitFormed(t, 1)
	offerAtOnce(t, c.nodes, "build-42")
	waitFor(t, 30*time.Second, "one room for all eight", func() bool { _, ok := inOneRoom(c.nodes, "build-42"); return ok })
	if m := mints(t, c.nodes, "build-42"); m < 2 {
		t.Fatalf("only %d node minted: the race this test is about did not happen", m)
	}
	checkRoomTraffic(t, c.nodes, "build-42", 10)
}

// roomEvents records every event of one node's topic, in order.
type roomEvents struct {
	mu  sync.Mutex
	evs []room.Event
}

func recordRoom(t *testing.T, n *Node, topic string) *roomEvents {
	t.Helper()
	ch, cancel, err := n.Rooms.Subscribe(topic, 8192)
	if err != nil {
		t.Fatal(err)
	}
	r := &roomEvents{}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case ev := <-ch:
				r.mu.Lock()
				r.evs = append(r.evs, ev)
				r.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { close(done); wg.Wait(); cancel() })
	return r
}

func (r *roomEvents) snapshot() []room.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]room.Event(nil), r.evs...)
}

// texts returns the payloads of p's messages, in delivery order, and how
// many came from history.
func (r *roomEvents) texts(p peer.ID) (out []string, fromHistory int) {
	for _, ev := range r.snapshot() {
		if ev.Type == "message" && ev.Message.Sender == p {
			out = append(out, string(ev.Message.Payload))
			if ev.History {
				fromHistory++
			}
		}
	}
	return out, fromHistory
}

// A late joiner gets the room's durable state from the document and the
// recent messages from a participant, then live ones, while the sender
// keeps sending: every message from the first one of its history to the
// last, once each, in order, with no gap at the seam.
func TestRoomLateJoiner(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 4)
	a, d := c.nodes[0], c.nodes[3]
	c.waitFormed(t, 3)
	early := c.nodes[:3]
	for _, n := range early {
		if err := n.Rooms.Join("session"); err != nil {
			t.Fatal(err)
		}
	}
	// One room, and documents that agree: a mint that raced with the
	// winner's and has not arrived everywhere yet would move them all to
	// another room, and the early messages would be that room's history.
	waitFor(t, 30*time.Second, "one room for the first three", func() bool {
		_, ok := inOneRoom(early, "session")
		return ok && c.converged(0, 1, 2)
	})
	if _, err := a.Doc.Update("room state", func(tx *crdt.Tx) error { tx.SetRoomState("session", "map", "dunes"); return nil }); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	earlyRecs := []*roomEvents{recordRoom(t, c.nodes[1], "session"), recordRoom(t, c.nodes[2], "session")}
	for i := range 30 {
		if _, err := a.Rooms.Send(ctx, "session", "chat", []byte(fmt.Sprintf("m%02d", i))); err != nil {
			t.Fatal(err)
		}
	}
	b := c.nodes[1]
	waitFor(t, 10*time.Second, "the early messages at B", func() bool {
		st, _ := b.Rooms.Rooms()
		for _, s := range st {
			if s.Topic == "session" {
				return s.Stats.Received >= 30
			}
		}
		return false
	})

	// A keeps sending while D joins.
	stop := make(chan struct{})
	sent := make(chan int, 1)
	go func() {
		i := 30
		defer func() { sent <- i }()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if _, err := a.Rooms.Send(ctx, "session", "chat", []byte(fmt.Sprintf("m%02d", i))); err == nil {
				i++
			}
		}
	}()
	dw := recordRoom(t, d, "session")
	if err := d.Rooms.Join("session"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "D in the room", func() bool { _, ok := inOneRoom(c.nodes, "session"); return ok })
	waitFor(t, 10*time.Second, "D live", func() bool {
		for _, ev := range dw.snapshot() {
			if ev.Type == "live" {
				return true
			}
		}
		return false
	})
	time.Sleep(500 * time.Millisecond) // live traffic after the seam
	close(stop)
	last := <-sent
	want := fmt.Sprintf("m%02d", last-1)
	waitFor(t, 10*time.Second, "D receiving the last message", func() bool {
		got, _ := dw.texts(a.ID())
		return len(got) > 0 && got[len(got)-1] == want
	})
	got, hist := dw.texts(a.ID())
	if hist == 0 {
		for _, ev := range dw.snapshot() {
			if ev.Type != "message" {
				t.Logf("D event %+v", ev)
			}
		}
		t.Fatal("D got no message from history")
	}
	if got[0] != "m00" {
		for i, r := range earlyRecs {
			g, _ := r.texts(a.ID())
			t.Logf("early node %d got from A: %v", i+1, g[:min(5, len(g))])
			for _, ev := range r.snapshot() {
				if ev.Type != "message" {
					t.Logf("  event %+v", ev)
				}
			}
		}
		t.Fatalf("D's first message from A is %s, want m00 (history holds all 30)", got[0])
	}
	for i, s := range got {
		if s != fmt.Sprintf("m%02d", i) {
			t.Fatalf("D's messages from A are not each once in order at %d: %v", i, got)
		}
	}
	for _, ev := range dw.snapshot() {
		if ev.Type == "gap" {
			t.Fatalf("D reported a gap: %+v", ev.Gap)
		}
	}
	r, _, _ := d.Doc.Room("session")
	if r.State["map"] != "dunes" {
		t.Fatalf("D's document has room state %v", r.State)
	}
	t.Logf("D: %d messages from A, %d from history, %d sent while D joined", len(got), hist, last-30)
}

// advertised returns the creds the document advertises for topic.
func advertised(t *testing.T, n *Node, topic string) room.Creds {
	t.Helper()
	r, _, err := n.Doc.Room(topic)
	if err != nil {
		t.Fatal(err)
	}
	c, err := room.ParseCreds(r.Creds, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func topicStats(t testing.TB, n *Node, topic string) room.TopicStats {
	t.Helper()
	st, err := n.Rooms.Rooms()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.Topic == topic {
			return s.Stats
		}
	}
	return room.TopicStats{}
}

// On the wire a room's messages are ciphertext: a subscriber of the
// room's topic without the creds sees no plaintext. A tampered copy is
// rejected; the same bytes republished by another node are dropped as a
// forged sender; republished by the sender itself, as a duplicate.
func TestRoomMessagesSealedTamperAndReplay(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3)
	a, b, x := c.nodes[0], c.nodes[1], c.nodes[2]
	c.waitFormed(t, 2)
	for _, n := range []*Node{a, b} {
		if err := n.Rooms.Join("secret"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 30*time.Second, "a and b in one room", func() bool { _, ok := inOneRoom([]*Node{a, b}, "secret"); return ok })
	creds := advertised(t, a, "secret")
	name := x.Fleet.Topic("room/" + creds.ID.String())
	// x listens on the room's topic with no creds (no validator either).
	xt, err := x.ps.Join(name)
	if err != nil {
		t.Fatal(err)
	}
	defer xt.Close()
	xs, err := xt.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	defer xs.Cancel()
	bw := recordRoom(t, b, "secret")
	ctx := context.Background()
	var wire []byte
	waitFor(t, 20*time.Second, "x seeing a's message on the wire", func() bool {
		if _, err := a.Rooms.Send(ctx, "secret", "chat", []byte("the plan is at noon")); err != nil {
			return false
		}
		rctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		for {
			msg, err := xs.Next(rctx)
			if err != nil {
				return false
			}
			if msg.GetFrom() == a.ID() {
				wire = msg.Data
				return true
			}
		}
	})
	if bytes.Contains(wire, []byte("the plan")) || bytes.Contains(wire, []byte("chat")) {
		t.Fatal("the room's topic carries plaintext")
	}
	sent := int(topicStats(t, a, "secret").Sent)
	waitFor(t, 10*time.Second, "b receiving each of a's messages", func() bool { g, _ := bw.texts(a.ID()); return len(g) == sent })
	before := sent

	// From x (a member of the fleet, but not of the room): the same bytes
	// as if x sent them.
	if err := xt.Publish(ctx, wire); err != nil {
		t.Fatal(err)
	}
	tampered := bytes.Clone(wire)
	tampered[len(tampered)-1] ^= 1
	if err := xt.Publish(ctx, tampered); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the forged copy rejected at b", func() bool { return topicStats(t, b, "secret").Rejected >= 1 })
	// A replay by the sender itself: a's own router republishes the bytes.
	if err := a.Rooms.PublishSealed(ctx, "secret", wire); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the replay dropped at b", func() bool { return topicStats(t, b, "secret").Dups >= 1 })
	time.Sleep(300 * time.Millisecond)
	if got, _ := bw.texts(a.ID()); len(got) != before {
		t.Fatalf("b delivered %d messages from a after the replays, had %d", len(got), before)
	}
}

// index of the first event matching, or -1.
func (r *roomEvents) index(match func(room.Event) bool) int {
	for i, ev := range r.snapshot() {
		if match(ev) {
			return i
		}
	}
	return -1
}

// Rotation while live: every participant joins the new room before it
// drops the old one, and messages keep flowing once each.
func TestRoomRotation(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3)
	c.waitFormed(t, 2)
	for _, n := range c.nodes {
		if err := n.Rooms.Join("ops"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 30*time.Second, "one room", func() bool { _, ok := inOneRoom(c.nodes, "ops"); return ok })
	old := advertised(t, c.nodes[0], "ops")
	recs := make([]*roomEvents, len(c.nodes))
	for i, n := range c.nodes {
		recs[i] = recordRoom(t, n, "ops")
	}
	nc, err := c.nodes[1].Rooms.Rotate("ops")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "everyone in the rotated room", func() bool {
		id, ok := inOneRoom(c.nodes, "ops")
		return ok && id == nc.ID.String()
	})
	for i, r := range recs {
		joined := r.index(func(ev room.Event) bool { return ev.Type == "joining" && ev.Room == nc.ID.String() })
		dropped := r.index(func(ev room.Event) bool { return ev.Type == "dropped" && ev.Room == old.ID.String() })
		if joined < 0 || dropped < 0 || joined > dropped {
			t.Fatalf("node %d: joining the new room at event %d, dropping the old at %d: want new first", i, joined, dropped)
		}
	}
	checkRoomTraffic(t, c.nodes, "ops", 5)
}

// A room stays up while another participant's lease is fresh, and is torn
// down once it lapses, not before. Re-joined with the creds expired, the
// participants mint new ones.
func TestRoomTeardownOnLeaseLapseAndRemint(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2)
	a, b := c.nodes[0], c.nodes[1]
	c.waitFormed(t, 1)
	// b is present only through a lease it wrote and does not renew.
	lapse := time.Now().Add(3 * time.Second)
	if _, err := b.Doc.Update("lease", func(tx *crdt.Tx) error {
		tx.SetPresence("duel", b.ID().String(), lapse.UnixMilli())
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	rec := recordRoom(t, a, "duel")
	if err := a.Rooms.Join("duel"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a in a room while b's lease is fresh", func() bool {
		st, _ := a.Rooms.Rooms()
		for _, s := range st {
			if s.Topic == "duel" && len(s.Links) == 1 {
				return true
			}
		}
		return false
	})
	waitFor(t, 10*time.Second, "a's room torn down", func() bool {
		return rec.index(func(ev room.Event) bool { return ev.Type == "dropped" }) >= 0
	})
	if now := time.Now(); now.Before(lapse) {
		t.Fatalf("torn down %v before b's lease lapsed", lapse.Sub(now))
	}
	for _, ev := range rec.snapshot() {
		if ev.Type == "dropped" && ev.Why != "no other participant present" {
			t.Fatalf("dropped for %q", ev.Why)
		}
	}

	// Creds that expire while both are in the room are replaced.
	short := room.NewCreds(time.Now(), 3*time.Second)
	if _, err := a.Doc.Update("creds", func(tx *crdt.Tx) error { tx.SetRoomCreds("duel", short.Encode()); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := b.Rooms.Join("duel"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "both in the short-lived room", func() bool {
		id, ok := inOneRoom(c.nodes, "duel")
		return ok && id == short.ID.String()
	})
	waitFor(t, 20*time.Second, "both in a re-minted room", func() bool {
		id, ok := inOneRoom(c.nodes, "duel")
		return ok && id != short.ID.String()
	})
}

// A link stuck connecting (a participant present by its lease, but not
// in the room) is swept after the timeout and retried on a later pass;
// once the participant really joins, the link connects.
func TestRoomStuckLinkSweptAndRetried(t *testing.T) {
	t.Parallel()
	c := &cluster{t: t}
	c.prepare = func(n *Node) {
		n.roomConfig.ConnectTimeout = time.Second
		n.Rooms = room.NewManager(n.roomConfig)
	}
	c.add()
	c.add()
	t.Cleanup(c.close)
	a, b := c.nodes[0], c.nodes[1]
	c.waitFormed(t, 1)
	if _, err := b.Doc.Update("lease", func(tx *crdt.Tx) error {
		tx.SetPresence("stuck", b.ID().String(), time.Now().Add(time.Minute).UnixMilli())
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	rec := recordRoom(t, a, "stuck")
	if err := a.Rooms.Join("stuck"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "a swept and joined again", func() bool {
		joins := 0
		for _, ev := range rec.snapshot() {
			if ev.Type == "joining" {
				joins++
			}
		}
		return joins >= 2 && topicStats(t, a, "stuck").Sweeps >= 1
	})
	for _, ev := range rec.snapshot() {
		if ev.Type == "connected" {
			t.Fatal("a link with nobody in the room counted as connected")
		}
		if ev.Type == "dropped" && ev.Why != "stuck connecting; swept, retried next pass" {
			t.Fatalf("dropped for %q", ev.Why)
		}
	}
	if err := b.Rooms.Join("stuck"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "both in one room", func() bool { _, ok := inOneRoom(c.nodes, "stuck"); return ok })
}

// metricValue scrapes n's /metrics handler for one sample.
func metricValue(t *testing.T, n *Node, name string) float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	n.metrics.handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
