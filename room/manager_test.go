package room

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/crdt"
)

// testNode is one participant of a room test: a real libp2p host on
// 127.0.0.1, a pubsub router, a document of its own and a Manager.
type testNode struct {
	h   host.Host
	key crypto.PrivKey
	ps  *pubsub.PubSub
	doc *crdt.Doc
	m   *Manager
}

const testProto = protocol.ID("/meshnode/test/room/1")

// newTestRoom starts n connected nodes whose documents all advertise the
// same creds for topic and a fresh lease of every node (the documents are
// not synced: each is written the same). FloodSub, unlike GossipSub, never
// repairs a lost message by itself, so what a test loses stays lost
// unless the manager refills it.
func newTestRoom(t *testing.T, n int, topic string, mod func(*Config)) []*testNode {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	nodes := make([]*testNode, n)
	for i := range nodes {
		key, _, err := crypto.GenerateEd25519Key(nil)
		if err != nil {
			t.Fatal(err)
		}
		h, err := libp2p.New(libp2p.Identity(key), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.Transport(tcp.NewTCPTransport),
			libp2p.ResourceManager(&network.NullResourceManager{}), libp2p.DisableRelay())
		if err != nil {
			t.Fatal(err)
		}
		ps, err := pubsub.NewFloodSub(ctx, h)
		if err != nil {
			t.Fatal(err)
		}
		doc, err := crdt.Open(crdt.Config{Dir: t.TempDir(), Logger: zerolog.Nop(), Key: key})
		if err != nil {
			t.Fatal(err)
		}
		cfg := Config{Self: h.ID(), Doc: doc, PubSub: ps, TopicName: func(id ID) string { return "test/room/" + id.String() },
			Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel), Host: h, HistoryProtocol: testProto,
			Interval: 100 * time.Millisecond, GapWait: 500 * time.Millisecond}
		if mod != nil {
			mod(&cfg)
		}
		nd := &testNode{h: h, key: key, ps: ps, doc: doc, m: NewManager(cfg)}
		h.SetStreamHandler(testProto, nd.m.HandleHistory)
		nodes[i] = nd
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := nd.m.Run(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		for _, nd := range nodes {
			_ = nd.h.Close()
			_ = nd.doc.Close()
		}
	})
	for i, a := range nodes {
		for _, b := range nodes[i+1:] {
			if err := a.h.Connect(ctx, peer.AddrInfo{ID: b.h.ID(), Addrs: b.h.Addrs()}); err != nil {
				t.Fatal(err)
			}
		}
	}
	creds := NewCreds(time.Now(), time.Hour)
	for _, nd := range nodes {
		if _, err := nd.doc.Update("test room", func(tx *crdt.Tx) error {
			tx.SetRoomCreds(topic, creds.Encode())
			for _, o := range nodes {
				tx.As(o.key).SetPresence(topic, o.h.ID().String(), time.Now().Add(time.Hour).UnixMilli())
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	for _, nd := range nodes {
		if err := nd.m.Join(topic); err != nil {
			t.Fatal(err)
		}
	}
	return nodes
}

// roomName is the pubsub topic of the room nd is linked to for topic.
func (nd *testNode) roomName(t *testing.T, topic string) string {
	t.Helper()
	st, err := nd.m.Rooms()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.Topic == topic && s.Room != "" {
			return "test/room/" + s.Room
		}
	}
	t.Fatalf("no room for %s", topic)
	return ""
}

// eventLog records a node's events of a topic.
type eventLog struct {
	mu  sync.Mutex
	evs []Event
}

func logEvents(t *testing.T, m *Manager, topic string) *eventLog {
	t.Helper()
	ch, cancel, err := m.Subscribe(topic, 8192)
	if err != nil {
		t.Fatal(err)
	}
	r := &eventLog{}
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

// from returns the payloads of p's messages in delivery order, and the
// gaps reported.
func (r *eventLog) from(p peer.ID) (texts []string, gaps []Gap) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ev := range r.evs {
		switch {
		case ev.Type == "message" && ev.Message.Sender == p:
			texts = append(texts, string(ev.Message.Payload))
		case ev.Type == "gap":
			gaps = append(gaps, *ev.Gap)
		}
	}
	return texts, gaps
}

func (r *eventLog) heard(p peer.ID, text string) bool {
	texts, _ := r.from(p)
	for _, s := range texts {
		if s == text {
			return true
		}
	}
	return false
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// warmUp sends from a until b hears it: both are in the room.
func warmUp(t *testing.T, a *testNode, rec *eventLog, topic string) {
	t.Helper()
	waitUntil(t, 10*time.Second, "a message from a at b", func() bool {
		_, _ = a.m.Send(context.Background(), topic, "chat", []byte("hello"))
		time.Sleep(50 * time.Millisecond)
		return rec.heard(a.h.ID(), "hello")
	})
}

// cut closes the connection between a and b and waits until a's router
// no longer counts b in the room: what a publishes now does not reach b.
func cut(t *testing.T, a, b *testNode, name string) {
	t.Helper()
	_ = a.h.Network().ClosePeer(b.h.ID())
	waitUntil(t, 5*time.Second, "a and b apart", func() bool {
		for _, p := range a.ps.ListPeers(name) {
			if p == b.h.ID() {
				return false
			}
		}
		return a.h.Network().Connectedness(b.h.ID()) != network.Connected
	})
}

func rejoin(t *testing.T, a, b *testNode, name string) {
	t.Helper()
	if err := a.h.Connect(context.Background(), peer.AddrInfo{ID: b.h.ID(), Addrs: b.h.Addrs()}); err != nil {
		t.Fatal(err)
	}
	in := func(x, y *testNode) bool {
		for _, p := range x.ps.ListPeers(name) {
			if p == y.h.ID() {
				return true
			}
		}
		return false
	}
	waitUntil(t, 5*time.Second, "a and b in the room again", func() bool { return in(a, b) && in(b, a) })
}

func stats(t *testing.T, m *Manager, topic string) TopicStats {
	t.Helper()
	st, err := m.Rooms()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.Topic == topic {
			return s.Stats
		}
	}
	return TopicStats{}
}

// Messages b never received (published while a and b were apart) are
// refilled from a's history as soon as b sees the gap, long after b
// joined: b gets every message once, in order, and reports no gap.
func TestGapRefilledFromHistory(t *testing.T) {
	nodes := newTestRoom(t, 2, "t", nil)
	a, b := nodes[0], nodes[1]
	rec := logEvents(t, b.m, "t")
	warmUp(t, a, rec, "t")
	name := a.roomName(t, "t")
	time.Sleep(time.Second) // well past the join and its catch-up
	cut(t, a, b, name)
	ctx := context.Background()
	for _, s := range []string{"lost 1", "lost 2", "lost 3"} {
		if _, err := a.m.Send(ctx, "t", "chat", []byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	rejoin(t, a, b, name)
	if _, err := a.m.Send(ctx, "t", "chat", []byte("after")); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "b delivering the message after the cut", func() bool { return rec.heard(a.h.ID(), "after") })
	texts, gaps := rec.from(a.h.ID())
	if len(gaps) != 0 {
		t.Fatalf("b reported gaps %+v: a, who has the messages, was not asked", gaps)
	}
	got := strings.Join(texts, ",")
	if !strings.HasSuffix(got, "hello,lost 1,lost 2,lost 3,after") || strings.Count(got, "lost") != 3 {
		t.Fatalf("b delivered %s; want the lost messages once each, in order", got)
	}
	if st := stats(t, b.m, "t"); st.Refills != 3 || st.Gaps != 0 {
		t.Fatalf("b's stats %+v: want 3 refills and no gap", st)
	}
}

// A gap nobody can fill (a's history is shorter than what b lost) is
// asked about, then reported once, and the messages after it delivered.
func TestGapNobodyCanFillReported(t *testing.T) {
	nodes := newTestRoom(t, 2, "t", func(c *Config) { c.History = 2 })
	a, b := nodes[0], nodes[1]
	rec := logEvents(t, b.m, "t")
	warmUp(t, a, rec, "t")
	name := a.roomName(t, "t")
	cut(t, a, b, name)
	ctx := context.Background()
	var first, last Message
	for i := range 5 {
		m, err := a.m.Send(ctx, "t", "chat", []byte(fmt.Sprintf("lost %d", i)))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = m
		}
		last = m
	}
	rejoin(t, a, b, name)
	if _, err := a.m.Send(ctx, "t", "chat", []byte("after")); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "b delivering the message after the cut", func() bool { return rec.heard(a.h.ID(), "after") })
	texts, gaps := rec.from(a.h.ID())
	// a's history (2) holds the last lost message and "after": b gets
	// "lost 4" back and reports the three before it.
	if len(gaps) != 1 || gaps[0].From != first.Seq || gaps[0].To != last.Seq-1 {
		t.Fatalf("gaps %+v; want one, %d-%d", gaps, first.Seq, last.Seq-1)
	}
	if got := strings.Join(texts, ","); !strings.HasSuffix(got, "hello,lost 4,after") {
		t.Fatalf("b delivered %s", got)
	}
}

// A burst to a node whose API is kept busy (status polled without pause,
// as a dashboard might) arrives whole: the loop answers calls without
// pubsub round trips, receivers never wait for it, and whatever the
// routers drop is refilled.
func TestBurstToBusyNodeArrivesWhole(t *testing.T) {
	nodes := newTestRoom(t, 3, "t", nil)
	a, b := nodes[0], nodes[1]
	rec := logEvents(t, b.m, "t")
	warmUp(t, a, rec, "t")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = b.m.Rooms()
				_, _, _ = b.m.Totals()
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	const burst = 200
	ctx := context.Background()
	for i := range burst {
		if _, err := a.m.Send(ctx, "t", "chat", []byte(fmt.Sprintf("b%03d", i))); err != nil {
			t.Fatal(err)
		}
	}
	last := fmt.Sprintf("b%03d", burst-1)
	waitUntil(t, 20*time.Second, "the whole burst at b", func() bool { return rec.heard(a.h.ID(), last) })
	texts, gaps := rec.from(a.h.ID())
	if len(gaps) != 0 {
		t.Fatalf("b reported gaps %+v", gaps)
	}
	var got []string
	for _, s := range texts {
		if s != "hello" {
			got = append(got, s)
		}
	}
	for i, s := range got {
		if s != fmt.Sprintf("b%03d", i) {
			t.Fatalf("b's burst is not each message once in order at %d: %v", i, got)
		}
	}
	if len(got) != burst {
		t.Fatalf("b got %d of %d", len(got), burst)
	}
	t.Logf("b: %+v", stats(t, b.m, "t"))
}

// A last message lost (sent while a and b were apart, with nothing after
// it) shows b no gap; b asks for what came after its position once a is
// back in the room, and delivers it.
func TestLostTailRecovered(t *testing.T) {
	nodes := newTestRoom(t, 2, "t", nil)
	a, b := nodes[0], nodes[1]
	rec := logEvents(t, b.m, "t")
	warmUp(t, a, rec, "t")
	name := a.roomName(t, "t")
	cut(t, a, b, name)
	if _, err := a.m.Send(context.Background(), "t", "chat", []byte("the last word")); err != nil {
		t.Fatal(err)
	}
	rejoin(t, a, b, name)
	waitUntil(t, 10*time.Second, "b delivering a's last message", func() bool { return rec.heard(a.h.ID(), "the last word") })
	if _, gaps := rec.from(a.h.ID()); len(gaps) != 0 {
		t.Fatalf("b reported gaps %+v", gaps)
	}
}
