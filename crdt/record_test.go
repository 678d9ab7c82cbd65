package crdt

import (
	"bytes"
	"testing"
)

// FuzzDecodeRecord: a signed record from a peer never panics the decoder,
// and whatever decodes re-encodes to the same bytes (canonical).
func FuzzDecodeRecord(f *testing.F) {
	_, k := testIdentity(f)
	for _, r := range []*record{
		{kind: recNode, counter: 1, node: NodeRecord{Name: "n", Addrs: []string{"/ip4/127.0.0.1/tcp/1"}, Version: 2, Roles: []string{"relay"}, StartedMs: 5, LastSeenMs: 6, Alive: true}},
		{kind: recHolder, counter: 1 << 40, holder: Holder{Manifest: "ab", Version: "v1", Size: 1 << 40, Files: 3, State: HolderPartial, UpdatedMs: 9}},
		{kind: recPresence, counter: 3, expiryMs: -1},
	} {
		b, err := signRecord(k, "nodes/x", r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{1, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRecord(b)
		if err != nil {
			return
		}
		if got := append(r.appendFields(nil), r.sig...); !bytes.Equal(got, b) {
			t.Fatalf("decoded record re-encodes to %x, not %x", got, b)
		}
	})
}

func TestRecordVerifiesOnlyAtItsKeyAndWriter(t *testing.T) {
	t.Parallel()
	id, k := testIdentity(t)
	other, _ := testIdentity(t)
	b, err := signRecord(k, nodeKey(id), &record{kind: recNode, counter: 7, node: NodeRecord{Name: "a"}})
	if err != nil {
		t.Fatal(err)
	}
	ks := newKeys()
	if r, err := ks.verify(nodeKey(id), id, recNode, b); err != nil || r.counter != 7 || r.node.Name != "a" {
		t.Fatalf("own record: %+v %v", r, err)
	}
	if _, err := ks.verify(nodeKey(other), other, recNode, b); err == nil {
		t.Fatal("a record verified at another node's key")
	}
	if _, err := ks.verify(presenceKey("t", id), id, recPresence, b); err == nil {
		t.Fatal("a node record verified as a presence lease")
	}
	if _, err := ks.verify(nodeKey("not-a-peer"), "not-a-peer", recNode, b); err == nil {
		t.Fatal("a writer that is not a peer ID verified")
	}
}
