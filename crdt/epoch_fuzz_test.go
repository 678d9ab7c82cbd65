package crdt

import (
	"bytes"
	"reflect"
	"testing"
)

// sampleHeader is a genesis header with every part filled.
func sampleHeader() *epochHeader {
	return &epochHeader{
		num: 3, parent: Hash{1, 2, 3}, cut: []Hash{{4}, {5}},
		included: []actorSeq{{"\x01\x02", 7}, {"\x09", 1}},
		groups: []sigGroup{{writer: "12D3KooWwriter", sig: bytes.Repeat([]byte{7}, sigLen),
			entries: []groupEntry{{key: "nodes/12D3KooWwriter"}, {key: "library/x/holders/12D3KooWwriter", inline: true, value: []byte{1, 2, 0xff}}}}},
	}
}

// FuzzEpochHeader: a genesis header from a peer's snapshot never panics,
// and one that decodes encodes back to the same bytes.
func FuzzEpochHeader(f *testing.F) {
	f.Add(sampleHeader().encode())
	f.Add((&epochHeader{num: 1}).encode())
	f.Add([]byte{})
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add(append([]byte{0x81, 0x00}, sampleHeader().encode()[1:]...)) // a number not minimally encoded
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeEpochHeader(b)
		if err != nil {
			return
		}
		if !bytes.Equal(h.encode(), b) {
			t.Fatalf("header %x decodes but encodes to %x", b, h.encode())
		}
		if _, ok, err := parseGenesisMessage(genesisMessage(h)); !ok || err != nil {
			t.Fatalf("its genesis message does not parse: %v", err)
		}
	})
}

func TestEpochHeaderRoundTrip(t *testing.T) {
	h := sampleHeader()
	got, err := decodeEpochHeader(h.encode())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, h) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, h)
	}
	if _, err := decodeEpochHeader(h.encode()[:20]); err == nil {
		t.Fatal("a truncated header decodes")
	}
}

// FuzzProposal: a cut proposal's value never panics the parser, and one
// that parses renders back the same.
func FuzzProposal(f *testing.F) {
	f.Add(proposal{num: 2, cut: []Hash{{1}, {2}}}.String())
	f.Add("1 ")
	f.Add("0 00")
	f.Add("x")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := parseProposal(s)
		if err != nil {
			return
		}
		if p.String() != s {
			t.Fatalf("%q parses but renders %q", s, p.String())
		}
	})
}

// FuzzSyncHello: the first frame of a sync session never panics, and a
// hello that decodes encodes back to the same bytes.
func FuzzSyncHello(f *testing.F) {
	f.Add(EncodeSyncHello(Epoch{}))
	f.Add(EncodeSyncHello(Epoch{Num: 9, ID: Hash{9}}))
	f.Add([]byte("MNH1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeSyncHello(b)
		if err != nil {
			return
		}
		if !bytes.Equal(EncodeSyncHello(e), b) {
			t.Fatalf("hello %x decodes to %v but encodes to %x", b, e, EncodeSyncHello(e))
		}
	})
}

// FuzzEpochMarker: the first record of a change log never panics the
// marker parser, and a marker that parses is the one its epoch makes.
func FuzzEpochMarker(f *testing.F) {
	f.Add(epochMarker(Epoch{Num: 4, ID: Hash{4}}))
	f.Add([]byte(markerMagic))
	f.Add([]byte(amMagic + "x"))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, ok := parseMarker(b)
		if ok && !bytes.Equal(epochMarker(e), b) {
			t.Fatalf("marker %x parses to %v, which makes %x", b, e, epochMarker(e))
		}
	})
}

// FuzzCarryLine: the carry line of a peer's change message never panics
// the parser, and one that parses renders back the same.
func FuzzCarryLine(f *testing.F) {
	f.Add(carryLine(Epoch{Num: 2, ID: Hash{2}}, map[string]srcOp{"rooms/t/state/k": {7, "\x01\x02"}}))
	f.Add(carryPrefix)
	f.Add("x\n" + carryPrefix + "AAAA")
	f.Fuzz(func(t *testing.T, msg string) {
		e, src, ok := parseCarryLine(msg)
		if !ok {
			return
		}
		if _, src2, ok2 := parseCarryLine(carryLine(e, src)); !ok2 || !reflect.DeepEqual(src, src2) {
			t.Fatalf("carry line of %q parses to %v %v but does not round-trip", msg, e, src)
		}
	})
}
