package room

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/meshnode/meshnode/internal/testutil"
)

var t0 = time.UnixMilli(1_800_000_000_000)

func TestCredsRoundTripAndRejects(t *testing.T) {
	c := NewCreds(t0, time.Hour)
	got, err := ParseCreds(c.Encode(), t0.Add(time.Minute))
	if err != nil || got != c {
		t.Fatalf("round trip: %v, %+v != %+v", err, got, c)
	}
	if _, err := ParseCreds(c.Encode(), t0.Add(time.Hour)); !errors.Is(err, ErrBadCreds) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired creds: %v", err)
	}
	raw := []byte(c.Encode())
	v2 := NewCreds(t0, time.Hour)
	b := mustDecode(t, v2.Encode())
	b[0] = 2
	for name, s := range map[string]string{
		"empty":         "",
		"not base64":    "!!!",
		"short":         string(raw[:20]),
		"long":          string(raw) + "AAAA",
		"version 2":     encodeRaw(b),
		"zero times":    encodeRaw(append(mustDecode(t, c.Encode())[:49], make([]byte, 16)...)),
		"expires first": (Creds{ID: c.ID, Created: 10, Expires: 5}).Encode(),
		"zero id":       (Creds{Created: 1, Expires: 5}).Encode(),
	} {
		_, err := DecodeCreds(s)
		if !errors.Is(err, ErrBadCreds) {
			t.Errorf("%s: got %v, want ErrBadCreds", name, err)
		}
		if name == "version 2" && !strings.Contains(err.Error(), "unknown version 2") {
			t.Errorf("version 2: %v does not name the version", err)
		}
	}
}

func FuzzDecodeCreds(f *testing.F) {
	f.Add(NewCreds(t0, time.Hour).Encode())
	f.Add("")
	f.Add("AQ")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := DecodeCreds(s)
		if err != nil {
			return
		}
		again, err := DecodeCreds(c.Encode())
		if err != nil || again != c {
			t.Fatalf("decoded creds do not round-trip: %v", err)
		}
	})
}

func TestSealOpen(t *testing.T) {
	c := NewCreds(t0, time.Hour)
	s := newSealer(c)
	m := Message{Sender: testutil.RandomPeer(t), Epoch: 7, Seq: 3, Type: "chat", Payload: []byte("hello room")}
	b, err := s.seal(m)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, m.Payload) || bytes.Contains(b, []byte("chat")) {
		t.Fatal("sealed message shows its plaintext")
	}
	got, err := s.open(b)
	if err != nil || got.Sender != m.Sender || got.Seq != 3 || got.Epoch != 7 || got.Type != "chat" || string(got.Payload) != "hello room" {
		t.Fatalf("open: %v %+v", err, got)
	}
	other := newSealer(NewCreds(t0, time.Hour))
	if _, err := other.open(b); !errors.Is(err, ErrBadMessage) {
		t.Fatalf("another room's key opened it: %v", err)
	}
	moved := newSealer(Creds{ID: NewCreds(t0, time.Hour).ID, Secret: c.Secret})
	if _, err := moved.open(b); !errors.Is(err, ErrBadMessage) {
		t.Fatalf("the same secret under another room ID opened it: %v", err)
	}
	for i := range b {
		tampered := bytes.Clone(b)
		tampered[i] ^= 1
		if _, err := s.open(tampered); err == nil {
			t.Fatalf("a message with byte %d flipped opened", i)
		}
	}
	if _, err := s.seal(Message{Sender: m.Sender, Seq: 1, Payload: make([]byte, MaxPayload+1)}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized payload: %v", err)
	}
	if _, err := s.seal(Message{Sender: m.Sender, Seq: 1, Type: strings.Repeat("t", MaxType+1)}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized type: %v", err)
	}
}

func FuzzOpenMessage(f *testing.F) {
	s := newSealer(Creds{ID: ID{1}, Secret: [32]byte{2}, Created: 1, Expires: 2})
	b, _ := s.seal(Message{Sender: peer.ID("\x00\x04abcd"), Epoch: 1, Seq: 1, Type: "t", Payload: []byte("p")})
	f.Add(b)
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = s.open(b)
	})
}

func FuzzDecodePlain(f *testing.F) {
	f.Add(encodePlain(Message{Sender: peer.ID("\x00\x04abcd"), Epoch: 1, Seq: 2, Type: "t", Payload: []byte("p")}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodePlain(b)
		if err != nil {
			return
		}
		again, err := decodePlain(encodePlain(m))
		if err != nil || again.Sender != m.Sender || again.Seq != m.Seq || again.Epoch != m.Epoch || again.Type != m.Type || !bytes.Equal(again.Payload, m.Payload) {
			t.Fatalf("decoded message does not round-trip: %v", err)
		}
	})
}

func seqs(ms []Message) []uint64 {
	var out []uint64
	for _, m := range ms {
		out = append(out, m.Seq)
	}
	return out
}

func TestInboxOrdersDropsAndReportsGaps(t *testing.T) {
	in := newInbox(time.Second)
	in.joined = 1 // this node joined at epoch 1: senders of epoch 1 and 2 joined with or after it
	p := testutil.RandomPeer(t)
	msg := func(epoch, seq uint64) Message { return Message{Sender: p, Epoch: epoch, Seq: seq} }
	var got []uint64
	add := func(m Message, now time.Time) (dup bool) {
		d, g, dup := in.add(m, now)
		if len(g) != 0 {
			t.Fatalf("unexpected gap %v", g)
		}
		got = append(got, seqs(d)...)
		return dup
	}
	in.start(p, 1, 4) // history: p's epoch-1 messages up to 4 were seen
	add(msg(1, 5), t0)
	add(msg(1, 7), t0)
	add(msg(1, 8), t0)
	if len(got) != 1 {
		t.Fatalf("delivered %v before 6 arrived", got)
	}
	add(msg(1, 6), t0)
	if !add(msg(1, 6), t0) || !add(msg(1, 4), t0) {
		t.Fatal("a duplicate or an old message was not dropped")
	}
	if want := []uint64{5, 6, 7, 8}; !equal(got, want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
	add(msg(1, 11), t0)
	if d, g := in.expire(t0.Add(500 * time.Millisecond)); len(d)+len(g) != 0 {
		t.Fatal("gave up on a gap before the wait")
	}
	d, g := in.expire(t0.Add(2 * time.Second))
	if len(g) != 1 || g[0].From != 9 || g[0].To != 10 || !equal(seqs(d), []uint64{11}) {
		t.Fatalf("gap report %v, delivered %v", g, seqs(d))
	}
	// A new epoch restarts the sequence; the old epoch is a replay.
	got = nil
	add(msg(2, 1), t0)
	if !add(msg(1, 12), t0) {
		t.Fatal("a message from an older epoch was not dropped")
	}
	if !equal(got, []uint64{1}) {
		t.Fatalf("new epoch delivered %v", got)
	}
	// A sender that joined before this node, met mid-stream, starts at
	// the lowest sequence number of its first settle period; one that
	// joined after starts at 1. Either way an early message overtaken by
	// a later one is not lost.
	old, late := testutil.RandomPeer(t), testutil.RandomPeer(t)
	in.joined = 10
	for _, q := range []uint64{41, 40} {
		if d, _, _ := in.add(Message{Sender: old, Epoch: 9, Seq: q}, t0); len(d) != 0 {
			t.Fatal("a sender met mid-stream was delivered before its settle period ended")
		}
	}
	if d, g := in.expire(t0.Add(settleFor)); !equal(seqs(d), []uint64{40, 41}) || len(g) != 0 {
		t.Fatalf("after settling: delivered %v, gaps %v", seqs(d), g)
	}
	if d, _, _ := in.add(Message{Sender: late, Epoch: 11, Seq: 2}, t0); len(d) != 0 {
		t.Fatal("seq 2 of a sender that joined after this node was delivered before seq 1")
	}
	if d, _, _ := in.add(Message{Sender: late, Epoch: 11, Seq: 1}, t0); !equal(seqs(d), []uint64{1, 2}) {
		t.Fatalf("after seq 1 arrived: delivered %v", seqs(d))
	}
	// A late joiner's history sets where a sender stands.
	q := testutil.RandomPeer(t)
	in.start(q, 3, 10)
	if _, _, dup := in.add(Message{Sender: q, Epoch: 3, Seq: 10}, t0); !dup {
		t.Fatal("a message the history covered was delivered again")
	}
	if d, _, _ := in.add(Message{Sender: q, Epoch: 3, Seq: 11}, t0); len(d) != 1 {
		t.Fatal("the message after the history was not delivered")
	}
}

func equal(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func kinds(acts []Action) string {
	var b strings.Builder
	for _, a := range acts {
		b.WriteString([]string{"M", "C", "D"}[a.Kind])
	}
	return b.String()
}

func TestReconcile(t *testing.T) {
	cur := NewCreds(t0, time.Hour)
	old := NewCreds(t0, time.Hour)
	minted := NewCreds(t0, time.Hour)
	mint := func() Creds { return minted }
	expired := NewCreds(t0.Add(-2*time.Hour), time.Hour)
	base := View{Now: t0, Open: true, PeerPresent: true, ConnectTimeout: 10 * time.Second}
	with := func(f func(*View)) View { v := base; f(&v); return v }
	for _, tc := range []struct {
		name string
		v    View
		want string
	}{
		{"closed: drop everything", with(func(v *View) { v.Open = false; v.Links = []Link{{Room: cur.ID}} }), "D"},
		{"no peer: tear down", with(func(v *View) {
			v.PeerPresent = false
			v.Creds = cur.Encode()
			v.Links = []Link{{Room: cur.ID, State: Connected}}
		}), "D"},
		{"no peer, nothing to do", with(func(v *View) { v.PeerPresent = false }), ""},
		{"no creds, peer present: mint and connect", base, "MC"},
		{"no creds, offered alone: mint and connect", with(func(v *View) { v.PeerPresent = false; v.Hold = true }), "MC"},
		{"expired creds: re-mint, connect, drop old", with(func(v *View) { v.Creds = expired.Encode(); v.Links = []Link{{Room: expired.ID, State: Connected}} }), "MCD"},
		{"garbage creds: mint", with(func(v *View) { v.Creds = "garbage" }), "MC"},
		{"connected to the advertised room: nothing", with(func(v *View) { v.Creds = cur.Encode(); v.Links = []Link{{Room: cur.ID, State: Connected}} }), ""},
		{"creds changed: connect new, then drop old", with(func(v *View) { v.Creds = cur.Encode(); v.Links = []Link{{Room: old.ID, State: Connected}} }), "CD"},
		{"migrating: new one linked, old dropped", with(func(v *View) {
			v.Creds = cur.Encode()
			v.Links = []Link{{Room: old.ID, State: Connected}, {Room: cur.ID, State: Connecting, Since: t0}}
		}), "D"},
		{"connecting within the timeout: wait", with(func(v *View) {
			v.Creds = cur.Encode()
			v.Links = []Link{{Room: cur.ID, Since: t0.Add(-5 * time.Second)}}
		}), ""},
		{"stuck connecting: sweep", with(func(v *View) {
			v.Creds = cur.Encode()
			v.Links = []Link{{Room: cur.ID, Since: t0.Add(-11 * time.Second)}}
		}), "D"},
	} {
		acts := Reconcile(tc.v, mint)
		if got := kinds(acts); got != tc.want {
			t.Errorf("%s: actions %q (%+v), want %q", tc.name, got, acts, tc.want)
		}
	}
	// The order and targets of a migration.
	acts := Reconcile(with(func(v *View) { v.Creds = cur.Encode(); v.Links = []Link{{Room: old.ID, State: Connected}} }), mint)
	if acts[0].Creds.ID != cur.ID || acts[1].Room != old.ID {
		t.Fatalf("migration: %+v", acts)
	}
	// After a sweep, the next pass (no link left) connects again.
	if got := kinds(Reconcile(with(func(v *View) { v.Creds = cur.Encode() }), mint)); got != "C" {
		t.Fatalf("after a sweep: %q, want a new connect", got)
	}
}

func mustDecode(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func encodeRaw(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// A sender that skips far ahead cannot make the inbox hold without bound:
// past maxHeld the gap is reported at once and the held messages go out.
func TestInboxBoundsHeldMessages(t *testing.T) {
	in := newInbox(time.Hour)
	p := testutil.RandomPeer(t)
	in.start(p, 1, 0)
	var delivered, gaps int
	for q := uint64(2); q <= maxHeld+2; q++ {
		d, g, _ := in.add(Message{Sender: p, Epoch: 1, Seq: q}, t0)
		delivered += len(d)
		gaps += len(g)
	}
	if gaps != 1 || delivered != maxHeld+1 {
		t.Fatalf("after %d held messages: %d delivered, %d gaps; want all delivered behind one gap", maxHeld+1, delivered, gaps)
	}
	if in.holding() {
		t.Fatal("the inbox still holds messages")
	}
}

// signedMsg builds the GossipSub message that key's peer would publish on
// topic with data, signed as the router signs.
func signedMsg(t testing.TB, key crypto.PrivKey, topic string, data []byte) []byte {
	t.Helper()
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pm := pb.Message{From: []byte(id), Data: data, Seqno: []byte{0, 0, 0, 0, 0, 0, 0, 1}, Topic: &topic}
	body, err := pm.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if pm.Signature, err = key.Sign(append([]byte(pubsub.SignPrefix), body...)); err != nil {
		t.Fatal(err)
	}
	b, err := pm.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// History passed on by a responder is checked message by message: the
// sender's signature, the topic and the sealed sender. A responder
// cannot make up or alter another participant's message.
func TestOpenSignedHistory(t *testing.T) {
	s := newSealer(NewCreds(t0, time.Hour))
	key, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	other, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	id, _ := peer.IDFromPrivateKey(key)
	sealed, err := s.seal(Message{Sender: id, Epoch: 1, Seq: 7, Type: "chat", Payload: []byte("true")})
	if err != nil {
		t.Fatal(err)
	}
	good := signedMsg(t, key, "room-topic", sealed)
	if m, err := openSigned(good, "room-topic", s); err != nil || m.Seq != 7 || m.Sender != id || !bytes.Equal(m.signed, good) {
		t.Fatalf("a genuine message: %v %+v", err, m)
	}
	if _, err := openSigned(good, "another-topic", s); !errors.Is(err, ErrBadMessage) {
		t.Fatalf("another topic: %v", err)
	}
	forged := bytes.Clone(good)
	i := bytes.Index(forged, sealed)
	forged[i+len(sealed)-1] ^= 1
	if _, err := openSigned(forged, "room-topic", s); err == nil {
		t.Fatal("altered data passed")
	}
	// A responder re-signing another participant's sealed message as
	// itself: the signature is valid, the sealed sender is not it.
	if _, err := openSigned(signedMsg(t, other, "room-topic", sealed), "room-topic", s); err == nil || !strings.Contains(err.Error(), "signed by") {
		t.Fatalf("re-signed by another peer: %v", err)
	}
	if _, err := openSigned([]byte("garbage"), "room-topic", s); err == nil {
		t.Fatal("garbage passed")
	}
}

func FuzzOpenSigned(f *testing.F) {
	s := newSealer(Creds{ID: ID{1}, Secret: [32]byte{2}, Created: 1, Expires: 2})
	key, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	id, _ := peer.IDFromPrivateKey(key)
	sealed, _ := s.seal(Message{Sender: id, Epoch: 1, Seq: 1, Type: "t", Payload: []byte("p")})
	f.Add(signedMsg(f, key, "t", sealed))
	f.Add([]byte{0x0a, 0x02, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = openSigned(b, "t", s)
	})
}
