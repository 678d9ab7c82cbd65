package mesh

import (
	"bytes"
	"encoding/json"
	"sync/atomic"
	"testing"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/meshnode/meshnode/crdt"
)

func TestTokenRoundTrip(t *testing.T) {
	f, err := NewFleet()
	if err != nil {
		t.Fatal(err)
	}
	g, err := ParseToken(" " + f.Token() + "\n")
	if err != nil || g.ID != f.ID {
		t.Fatalf("parse own token: %v", err)
	}
	for _, bad := range []string{"", "mn1-", "xx1-abc", f.Token()[:20], f.Token() + "aa", "mn1-!!!!"} {
		if _, err := ParseToken(bad); err == nil {
			t.Fatalf("token %q accepted", bad)
		}
	}
	other, _ := NewFleet()
	if other.ID == f.ID {
		t.Fatal("two fleets share an ID")
	}
	sealed := f.Seal([]byte("hello"), "topic")
	if p, err := f.Open(sealed, "topic"); err != nil || string(p) != "hello" {
		t.Fatalf("open: %v", err)
	}
	if _, err := f.Open(sealed, "other-topic"); err == nil {
		t.Fatal("message opened under another topic")
	}
	if _, err := other.Open(sealed, "topic"); err == nil {
		t.Fatal("another fleet opened our message")
	}
}

func TestValidatorRejects(t *testing.T) {
	f, _ := NewFleet()
	other, _ := NewFleet()
	self, _ := peer.Decode("12D3KooWLJhrpmUAXZJ4qKrwRbXqeymFF1pBUvTzdMSHdtHyJVwv")
	stranger, _ := peer.Decode("12D3KooWRrQKnx2Q5iWEqzK7XEXqnrmUMs3xN52myVEjNmUTpjLy")
	authed := map[peer.ID]bool{}
	var rej atomic.Uint64
	msg := func(data []byte) *pubsub.Message { return &pubsub.Message{Message: &pb.Message{Data: data}} }
	check := func(name string, from peer.ID, data []byte, want pubsub.ValidationResult) {
		t.Helper()
		if got := validateFrom(func(p peer.ID) bool { return authed[p] }, f, self, from, msg(data), "t", &rej); got != want {
			t.Fatalf("%s: got %v want %v", name, got, want)
		}
	}
	check("unauthenticated relayer", stranger, f.Seal([]byte("x"), "t"), pubsub.ValidationReject)
	authed[stranger] = true
	check("unsealed", stranger, []byte("plain bytes"), pubsub.ValidationReject)
	check("other fleet's key", stranger, other.Seal([]byte("x"), "t"), pubsub.ValidationReject)
	check("sealed by a member", stranger, f.Seal([]byte("x"), "t"), pubsub.ValidationAccept)
	if rej.Load() != 3 {
		t.Fatalf("rejected counter %d, want 3", rej.Load())
	}
}

func FuzzDecodeDocMsg(f *testing.F) {
	var h crdt.Hash
	h[0] = 7
	f.Add(encodeDocChange(h, []crdt.Hash{h}, []byte("change")))
	f.Add(encodeDocHeads([]crdt.Hash{h, h}))
	f.Add([]byte{msgChange})
	f.Add([]byte{msgHeads, 3})
	f.Add([]byte{0x7f})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeDocMsg(b)
		if err != nil {
			return
		}
		var re []byte
		if m.kind == msgChange {
			re = encodeDocChange(m.hash, m.deps, m.change)
		} else {
			re = encodeDocHeads(m.deps)
		}
		if !bytes.Equal(re, b) {
			t.Fatalf("does not round-trip: %x vs %x", re, b)
		}
	})
}

func FuzzDecodeHeartbeat(f *testing.F) {
	good, _ := json.Marshal(Heartbeat{Peer: "12D3KooWLJhrpmUAXZJ4qKrwRbXqeymFF1pBUvTzdMSHdtHyJVwv", Name: "a",
		Addrs: []string{"/ip4/127.0.0.1/tcp/1"}, Heads: []string{"0102030405060708091011121314151617181920212223242526272829303132"}, Seq: 1})
	f.Add(good)
	f.Add([]byte(`{"peer":"x"}`))
	f.Add([]byte(`{"peer":"12D3KooWLJhrpmUAXZJ4qKrwRbXqeymFF1pBUvTzdMSHdtHyJVwv","heads":["zz"]}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, b []byte) {
		hb, heads, err := decodeHeartbeat(b)
		if err != nil {
			return
		}
		if len(heads) != len(hb.Heads) || len(hb.Addrs) > maxHBAddrs || len(hb.Name) > maxHBName {
			t.Fatal("accepted heartbeat breaks its bounds")
		}
	})
}

func FuzzDecodeChallengeReply(f *testing.F) {
	f.Add(make([]byte, nonceLen+macLen))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		n, m, err := decodeChallengeReply(b)
		if err == nil && (len(n) != nonceLen || len(m) != macLen) {
			t.Fatal("bad split")
		}
	})
}
