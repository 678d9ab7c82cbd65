package crdt

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// FuzzDecodeRecord: a record from a peer never panics the decoder, and
// whatever decodes re-encodes to the same bytes (canonical).
func FuzzDecodeRecord(f *testing.F) {
	for _, r := range []*record{
		{kind: recNode, counter: 1, node: &NodeRecord{Name: "n", Addrs: []string{"/ip4/127.0.0.1/tcp/1"}, Version: 2, Roles: []string{"relay"}, StartedMs: 5, LastSeenMs: 6, Alive: true}},
		{kind: recHolder, counter: 1 << 40, holder: &Holder{Manifest: "ab", Version: "v1", Size: 1 << 40, Files: 3, State: HolderPartial, UpdatedMs: 9}},
		{kind: recHolder, counter: 7, holder: &Holder{Manifest: hashA, Version: "", Size: 1, Files: 1, State: HolderComplete, UpdatedMs: 9, Gen: 3, Parent: hashB, Next: hashA}},
		{kind: recPresence, counter: 3, expiryMs: -1},
	} {
		b, err := encodeRecord("k", r)
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
		if got := r.appendFields(nil); !bytes.Equal(got, b) {
			t.Fatalf("decoded record re-encodes to %x, not %x", got, b)
		}
	})
}

var (
	hashA = strings.Repeat("a1", 32)
	hashB = strings.Repeat("0f", 32)
)

// TestHolderLineage: a holder's generation, parent and next version
// round-trip; a record without them is the same bytes as before they
// existed; bad values are refused on the way in and on the way out.
func TestHolderLineage(t *testing.T) {
	t.Parallel()
	plain := &record{kind: recHolder, counter: 5, holder: &Holder{Manifest: hashA, Size: 2, Files: 1, State: HolderComplete, UpdatedMs: 4}}
	b, err := encodeRecord("k", plain)
	if err != nil {
		t.Fatal(err)
	}
	// version 1, kind 2, counter 5, manifest, "", 2, 1, "complete", 4: nothing after.
	want := append([]byte{1, 2, 5, 64}, hashA...)
	want = append(want, 0, 4, 2, 8)
	want = append(want, "complete"...)
	want = append(want, 8)
	if !bytes.Equal(b, want) {
		t.Fatalf("a holder without lineage encodes as %x, want the earlier %x", b, want)
	}
	full := &record{kind: recHolder, counter: 5, holder: &Holder{Manifest: hashA, State: HolderComplete, Gen: 9, Parent: hashB, Next: hashA}}
	b, err = encodeRecord("k", full)
	if err != nil {
		t.Fatal(err)
	}
	r, err := decodeRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	if *r.holder != *full.holder {
		t.Fatalf("decoded %+v, want %+v", *r.holder, *full.holder)
	}
	// A tail of zero values is not canonical: the encoder leaves it out.
	zero := append(append([]byte{}, want...), 0, 0, 0)
	if _, err := decodeRecord(zero); err == nil {
		t.Fatal("a holder with an all-zero lineage tail decoded")
	}
	for _, h := range []Holder{
		{Manifest: hashA, State: HolderComplete, Gen: -1},
		{Manifest: hashA, State: HolderComplete, Gen: MaxGen + 1},
		{Manifest: hashA, State: HolderComplete, Gen: 1, Parent: "nothex"},
		{Manifest: hashA, State: HolderComplete, Gen: 1, Next: strings.ToUpper(hashA)},
	} {
		bad := (&record{kind: recHolder, counter: 1, holder: &h}).appendFields(nil)
		if _, err := decodeRecord(bad); err == nil {
			t.Errorf("a holder with gen %d, parent %q, next %q decoded", h.Gen, h.Parent, h.Next)
		}
		if err := lineageErr(&h); !errors.Is(err, ErrInvalidValue) {
			t.Errorf("SetHolder's check of gen %d, parent %q, next %q: %v", h.Gen, h.Parent, h.Next, err)
		}
	}
}

// FuzzParseSignatures: a change message from a peer never panics the
// signature line parser, and a parsed line encodes back to itself.
func FuzzParseSignatures(f *testing.F) {
	f.Add(withSignatures("scan", []writerSig{{"12D3KooWA", make([]byte, sigLen)}, {"12D3KooWB", bytes.Repeat([]byte{7}, sigLen)}}))
	f.Add("plain message")
	f.Add("x\nmnsig1:")
	f.Add("x\nmnsig1:AAAA")
	f.Fuzz(func(t *testing.T, msg string) {
		sigs, err := parseSignatures(msg)
		if err != nil || len(sigs) == 0 {
			return
		}
		var ws []writerSig
		for w, s := range sigs {
			if len(s) != sigLen {
				t.Fatalf("signature of %q is %d bytes", w, len(s))
			}
			ws = append(ws, writerSig{w, s})
		}
		again, err := parseSignatures(withSignatures("m", ws))
		if err != nil || len(again) != len(sigs) {
			t.Fatalf("re-encoded signature line: %v, %d of %d signatures", err, len(again), len(sigs))
		}
		for w, s := range sigs {
			if !bytes.Equal(again[w], s) {
				t.Fatalf("signature of %q changed in the round trip", w)
			}
		}
	})
}

// A change's signature covers exactly its writer's record writes, in
// order, and verifies only for that writer.
func TestRecordSignatureCoversWritesInOrder(t *testing.T) {
	t.Parallel()
	id, k := testIdentity(t)
	other, _ := testIdentity(t)
	ops := []sigOp{{nodeKey(id), []byte{1, 1, 7}}, {presenceKey("t", id), []byte{1, 3, 1, 2}}}
	sig, err := sign(k, id, ops)
	if err != nil {
		t.Fatal(err)
	}
	ks := newKeys()
	if err := ks.verify(id, ops, sig); err != nil {
		t.Fatalf("own writes: %v", err)
	}
	for name, c := range map[string]struct {
		writer string
		ops    []sigOp
	}{
		"another writer":  {other, ops},
		"reordered":       {id, []sigOp{ops[1], ops[0]}},
		"one dropped":     {id, ops[:1]},
		"value changed":   {id, []sigOp{ops[0], {ops[1].key, []byte{1, 3, 1, 3}}}},
		"key moved":       {id, []sigOp{{nodeKey(other), ops[0].value}, ops[1]}},
		"not a peer ID":   {"not-a-peer", ops},
		"empty writer id": {"", ops},
	} {
		if err := ks.verify(c.writer, c.ops, sig); err == nil {
			t.Errorf("%s: verified", name)
		}
	}
	sigs, err := parseSignatures(withSignatures("scan\nof two lines", []writerSig{{id, sig}}))
	if err != nil || !bytes.Equal(sigs[id], sig) {
		t.Fatalf("signature line round trip: %v %v", sigs, err)
	}
}
