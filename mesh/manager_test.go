package mesh

import (
	"bufio"
	"context"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/crdt"
)

// echoProto is not one of ours; busyProto looks like one of ours (a
// transfer, say), which keeps a connection the manager would close open.
const (
	echoProto = "/meshnode-test/echo/1"
	busyProto = "/meshnode/test/echo/1"
)

// newHostWithKey starts a host on 127.0.0.1 (TCP) with the given identity;
// listen false gives a host that only dials.
func newHostWithKey(t *testing.T, key crypto.PrivKey, listen bool) host.Host {
	t.Helper()
	var addrs []ma.Multiaddr
	if listen {
		addrs = []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/0")}
	}
	h, err := NewHost(HostConfig{Key: key, Listen: addrs, Gate: NewGate()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func echo(t *testing.T, rw *bufio.ReadWriter, msg string) error {
	t.Helper()
	if _, err := rw.WriteString(msg + "\n"); err != nil {
		return err
	}
	if err := rw.Flush(); err != nil {
		return err
	}
	got, err := rw.ReadString('\n')
	if err == nil && got != msg+"\n" {
		t.Fatalf("echo %q, want %q", got, msg)
	}
	return err
}

// TestManagerDropKeepsOtherConnections: when the manager drops a peer, it
// closes only the connection it opened itself, and that one only if none
// of our protocols has a stream on it; a connection the peer opened, and
// the stream on it, survive.
func TestManagerDropKeepsOtherConnections(t *testing.T) {
	for _, mode := range []string{"manager's own connection", "peer's connection adopted", "manager's connection in use"} {
		t.Run(mode, func(t *testing.T) { testManagerDrop(t, mode) })
	}
}

func testManagerDrop(t *testing.T, mode string) {
	managerFirst := mode != "peer's connection adopted"
	inUse := mode == "manager's connection in use"
	akey, _, _ := crypto.GenerateEd25519Key(nil)
	bkey, _, _ := crypto.GenerateEd25519Key(nil)
	a := newHostWithKey(t, akey, true)
	handler := func(s network.Stream) {
		defer s.Close()
		br := bufio.NewReader(s)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if _, err := s.Write([]byte(line)); err != nil {
				return
			}
		}
	}
	a.SetStreamHandler(echoProto, handler)
	a.SetStreamHandler(busyProto, handler)
	// b1 is the peer as the manager dials it (its listener); b2 is the
	// same peer (same key) opening its own connection to a.
	b1 := newHostWithKey(t, bkey, true)
	b2 := newHostWithKey(t, bkey, false)
	bid := b1.ID()

	doc, err := crdt.Open(crdt.Config{Dir: t.TempDir(), Logger: zerolog.Nop(), Key: akey})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { doc.Close() })
	setB := func(alive bool) {
		var addrs []string
		for _, x := range b1.Addrs() {
			addrs = append(addrs, x.String())
		}
		if _, err := doc.Update("test", func(tx *crdt.Tx) error {
			tx.As(bkey).SetNode(bid.String(), crdt.NodeRecord{Name: "b", Addrs: addrs, Version: ProtocolVersion, Alive: alive, LastSeenMs: time.Now().UnixMilli()})
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var s network.Stream
	peerConnects := func() {
		if err := b2.Connect(ctx, peer.AddrInfo{ID: a.ID(), Addrs: a.Addrs()}); err != nil {
			t.Fatal(err)
		}
		var err error
		if s, err = b2.NewStream(ctx, a.ID(), echoProto); err != nil {
			t.Fatal(err)
		}
	}
	if !managerFirst {
		peerConnects()
	}
	setB(true)
	m := NewManager(ManagerConfig{Host: a, Doc: doc, Logger: zerolog.Nop(), Max: 1, Interval: 100 * time.Millisecond, Debounce: 20 * time.Millisecond, Fresh: time.Hour})
	mctx, mcancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(mctx) }()
	t.Cleanup(func() { mcancel(); <-done })

	waitFor(t, 10*time.Second, "the supplementary connection", func() bool {
		return m.Stats().Opened == 1 && a.ConnManager().IsProtected(bid, protectTag)
	})
	if managerFirst {
		if n := len(a.Network().ConnsToPeer(bid)); n != 1 {
			t.Fatalf("%d connections to the peer before it dials; want the manager's one", n)
		}
	}
	// keep is the connection that must survive the drop.
	var keep network.Conn
	if inUse {
		// The peer's stream runs on the manager's connection, its only one.
		keep = a.Network().ConnsToPeer(bid)[0]
		var err error
		if s, err = b1.NewStream(ctx, a.ID(), busyProto); err != nil {
			t.Fatal(err)
		}
	} else {
		if managerFirst {
			peerConnects()
			waitFor(t, 5*time.Second, "the peer's own connection", func() bool { return len(a.Network().ConnsToPeer(bid)) == 2 })
		}
		for _, c := range a.Network().ConnsToPeer(bid) {
			if c.Stat().Direction == network.DirInbound {
				keep = c
			}
		}
		if keep == nil {
			t.Fatal("no inbound connection from the peer")
		}
	}
	rw := bufio.NewReadWriter(bufio.NewReader(s), bufio.NewWriter(s))
	if err := echo(t, rw, "before"); err != nil {
		t.Fatal(err)
	}

	setB(false) // the peer says goodbye: no longer eligible
	waitFor(t, 10*time.Second, "the drop", func() bool { return m.Stats().Dropped == 1 && len(m.Slots()) == 0 })
	waitFor(t, 5*time.Second, "the manager's connection to close", func() bool {
		for _, c := range a.Network().ConnsToPeer(bid) {
			if c != keep {
				return false
			}
		}
		return true
	})
	if a.ConnManager().IsProtected(bid, protectTag) {
		t.Fatal("the peer is still protected after the drop")
	}
	if keep.IsClosed() || a.Network().Connectedness(bid) != network.Connected {
		t.Fatal("the drop closed a connection it should have left")
	}
	if err := echo(t, rw, "after"); err != nil {
		t.Fatalf("the stream died with the drop: %v", err)
	}
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
