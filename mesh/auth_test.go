package mesh

import (
	"bufio"
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/meshnode/meshnode/internal/frame"
)

// TestAuthRejectionVerdictArrives: a peer whose proof is wrong reads the
// responder's 0x00 verdict before the connection closes, instead of a
// reset that looks like a network failure.
func TestAuthRejectionVerdictArrives(t *testing.T) {
	f, _ := NewFleet()
	other, _ := NewFleet()
	n := newTestPeer(t, f)
	// The impostor knows the fleet ID, which is public (mDNS, protocol
	// IDs), but proves with another secret.
	wrong := &Fleet{ID: f.ID, authKey: other.authKey}
	imp := newTestPeer(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := imp.h.Connect(ctx, n.info()); err != nil {
		t.Fatal(err)
	}
	s, err := imp.h.NewStream(ctx, n.h.ID(), f.Protocol("auth/1"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(5 * time.Second))
	nI := make([]byte, nonceLen)
	_, _ = rand.Read(nI)
	if err := frame.Write(s, nI); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(s)
	b, err := frame.Read(br, 1024)
	if err != nil {
		t.Fatal(err)
	}
	nR, _, err := decodeChallengeReply(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := frame.Write(s, wrong.mac([]byte("I"), nI, nR, []byte(imp.h.ID()), []byte(n.h.ID()))); err != nil {
		t.Fatal(err)
	}
	v, err := frame.Read(br, 16)
	if err != nil {
		t.Fatalf("reading the verdict: %v; want the rejection verdict 0x00", err)
	}
	if len(v) != 1 || v[0] != authNo {
		t.Fatalf("verdict %x, want 00", v)
	}
	// The responder then ends the stream and the connection.
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("bytes after the verdict")
	}
	waitFor(t, 5*time.Second, "the node to disconnect the impostor", func() bool {
		return n.h.Network().Connectedness(imp.h.ID()) != network.Connected
	})
	if n.gate.Allowed(imp.h.ID()) {
		t.Fatal("the impostor is not refused after failing")
	}
}
