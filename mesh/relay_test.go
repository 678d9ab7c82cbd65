package mesh

import (
	"context"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/rs/zerolog"
)

// testPeer is a real libp2p host on 127.0.0.1, running fleet
// authentication when it has a fleet.
type testPeer struct {
	h    host.Host
	gate *Gate
	auth *Auth
}

func newTestPeer(t *testing.T, f *Fleet) testPeer {
	t.Helper()
	return newTestPeerTimeout(t, f, time.Second)
}

// newTestPeerTimeout is newTestPeer with the given authentication timeout.
func newTestPeerTimeout(t *testing.T, f *Fleet, timeout time.Duration) testPeer {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	gate := NewGate()
	h, err := NewHost(HostConfig{Key: key, Listen: []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/0")}, Gate: gate})
	if err != nil {
		t.Fatal(err)
	}
	tp := testPeer{h: h, gate: gate}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	if f != nil {
		tp.auth = NewAuth(AuthConfig{Host: h, Fleet: f, Gate: gate, Logger: zerolog.Nop(), Timeout: timeout})
		go func() { defer close(done); _ = tp.auth.Run(ctx) }()
	} else {
		close(done)
	}
	t.Cleanup(func() { cancel(); <-done; h.Close() })
	return tp
}

func (tp testPeer) info() peer.AddrInfo { return peer.AddrInfo{ID: tp.h.ID(), Addrs: tp.h.Addrs()} }

func startRelay(t *testing.T, r testPeer, lim RelayLimits) {
	t.Helper()
	svc := NewRelayService(RelayServiceConfig{Host: r.h, Auth: r.auth, Logger: zerolog.Nop(), Limits: lim, AuthWait: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = svc.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	// Run registers the hop protocol; wait for it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		protos := r.h.Mux().Protocols()
		found := false
		for _, p := range protos {
			if p == "/libp2p/circuit/relay/0.2.0/hop" {
				found = true
			}
		}
		if found {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("relay service did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func reserve(t *testing.T, from, relay testPeer) (*client.Reservation, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := from.h.Connect(ctx, relay.info()); err != nil {
		t.Fatal(err)
	}
	return client.Reserve(ctx, from.h, relay.info())
}

func circuitAddr(relay testPeer) ma.Multiaddr {
	return ma.StringCast(relay.h.Addrs()[0].String() + "/p2p/" + relay.h.ID().String() + "/p2p-circuit")
}

func TestRelayServesFleetMembersOnly(t *testing.T) {
	f, _ := NewFleet()
	other, _ := NewFleet()
	r := newTestPeer(t, f)
	startRelay(t, r, DefaultRelayLimits())

	// A member gets a slot with no per-connection limits.
	m := newTestPeer(t, f)
	rsvp, err := reserve(t, m, r)
	if err != nil {
		t.Fatalf("member's reservation refused: %v", err)
	}
	if rsvp.LimitData != 0 || rsvp.LimitDuration != 0 {
		t.Fatalf("member's slot has limits %d bytes / %v; want none", rsvp.LimitData, rsvp.LimitDuration)
	}

	// A host that never authenticates, and a member of another fleet, get
	// none; the refusal comes once authentication has failed.
	stranger := newTestPeer(t, nil)
	start := time.Now()
	if _, err := reserve(t, stranger, r); err == nil {
		t.Fatal("a host without the fleet secret got a relay slot")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("refusal took %v", d)
	}
	foreign := newTestPeer(t, other)
	if _, err := reserve(t, foreign, r); err == nil {
		t.Fatal("a member of another fleet got a relay slot")
	}

	// A member reaches the reserved member through the relay, over an
	// unlimited relayed connection; the stranger cannot.
	n := newTestPeer(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	via := peer.AddrInfo{ID: m.h.ID(), Addrs: []ma.Multiaddr{circuitAddr(r)}}
	if err := n.h.Connect(ctx, via); err != nil {
		t.Fatalf("member could not reach a member through the relay: %v", err)
	}
	conns := n.h.Network().ConnsToPeer(m.h.ID())
	if len(conns) != 1 || !IsRelayed(conns[0]) || conns[0].Stat().Limited {
		t.Fatalf("want one unlimited relayed connection, got %d (relayed=%v)", len(conns), len(conns) > 0 && IsRelayed(conns[0]))
	}
	if !n.auth.WaitAuthenticated(ctx, m.h.ID(), 5*time.Second) {
		t.Fatal("fleet authentication did not complete over the relayed connection")
	}
	stranger.h.Peerstore().AddAddrs(r.h.ID(), r.h.Addrs(), time.Minute)
	if err := stranger.h.Connect(ctx, via); err == nil || stranger.h.Network().Connectedness(m.h.ID()) == network.Connected {
		t.Fatal("a host without the fleet secret was relayed to a member")
	}
}

func TestRelayLimitsAreConfigurable(t *testing.T) {
	f, _ := NewFleet()
	r := newTestPeer(t, f)
	startRelay(t, r, RelayLimits{Data: 1 << 20})
	m := newTestPeer(t, f)
	rsvp, err := reserve(t, m, r)
	if err != nil {
		t.Fatal(err)
	}
	if rsvp.LimitData != 1<<20 {
		t.Fatalf("slot's data limit is %d, want %d", rsvp.LimitData, 1<<20)
	}
	if rsvp.LimitDuration < 24*time.Hour {
		t.Fatalf("slot's duration limit is %v; an unset duration must not cut connections", rsvp.LimitDuration)
	}
}
