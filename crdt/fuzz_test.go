package crdt

import (
	"slices"
	"testing"

	am "github.com/automerge/automerge-go"
	"github.com/rs/zerolog"
)

func FuzzDecodeLog(f *testing.F) {
	f.Add([]byte(nil))
	f.Add([]byte(logMagic))
	f.Add(appendRecord([]byte(logMagic), []byte(amMagic+"hello")))
	f.Add(appendRecord(appendRecord([]byte(logMagic), []byte(amMagic+"a")), []byte(amMagic+"bb"))[:20])
	two := appendRecord(appendRecord([]byte(logMagic), []byte(amMagic+"first")), []byte(amMagic+"second"))
	flipped := slices.Clone(two)
	flipped[len(logMagic)+recHeaderLen+2] ^= 1
	f.Add(flipped)
	f.Add([]byte("MNLOG01\n\xff\xff\xff\xff\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, gaps := decodeLog(b)
		// Records and gaps tile the file after the header, in order.
		type span struct{ off, n int }
		var spans []span
		for _, r := range recs {
			spans = append(spans, span{r.off, recHeaderLen + len(r.payload)})
		}
		for _, g := range gaps {
			if g.n <= 0 || g.why == "" {
				t.Fatalf("empty or unexplained gap %+v", g)
			}
			spans = append(spans, span{g.off, g.n})
		}
		slices.SortFunc(spans, func(a, b span) int { return a.off - b.off })
		at := len(logMagic)
		if len(recs) == 0 && len(gaps) == 1 && gaps[0].off == 0 {
			at = 0 // not a change log at all
		}
		if len(b) == 0 {
			at = 0
		}
		for _, sp := range spans {
			if sp.off != at {
				t.Fatalf("span at %d, want %d", sp.off, at)
			}
			at += sp.n
		}
		if at != len(b) {
			t.Fatalf("spans end at %d of %d", at, len(b))
		}
		// Re-encoding the intact records decodes to the same records.
		clean := []byte(logMagic)
		for _, r := range recs {
			clean = appendRecord(clean, r.payload)
		}
		if recs2, gaps2 := decodeLog(clean); len(gaps2) != 0 || len(recs2) != len(recs) {
			t.Fatalf("intact records do not re-decode cleanly: %d gaps", len(gaps2))
		}
	})
}

func FuzzDecodeSnapshot(f *testing.F) {
	f.Add(encodeSnapshot(am.New().Save()))
	f.Add(encodeSnapshot([]byte("x")))
	f.Add([]byte(snapMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		data, err := decodeSnapshot(b)
		if err != nil {
			return
		}
		if string(encodeSnapshot(data)) != string(b) {
			t.Fatal("snapshot does not round-trip")
		}
		_, _ = am.Load(data) // must not panic
	})
}

// FuzzApplyChange feeds arbitrary bytes where a peer's gossiped change goes.
func FuzzApplyChange(f *testing.F) {
	d := am.New()
	d.Path("library/x/name").Set("y")
	h, _ := d.Commit("c")
	ch, _ := d.Change(h)
	f.Add(ch.Save(), h[:])
	f.Add([]byte{0x85, 0x6f, 0x4a, 0x83}, h[:])
	f.Add([]byte{}, []byte{})
	f.Fuzz(func(t *testing.T, b, hash []byte) {
		doc, err := Open(Config{Dir: t.TempDir(), Logger: zerolog.Nop()})
		if err != nil {
			t.Fatal(err)
		}
		defer doc.Close()
		var hh Hash
		copy(hh[:], hash)
		ok, err := doc.ApplyChange(b, hh, nil)
		if ok != doc.HasAll([]Hash{hh}) && err == nil {
			t.Fatal("ApplyChange reported new but the change is absent")
		}
	})
}

// FuzzSyncMessage feeds arbitrary bytes where a peer's sync message goes.
func FuzzSyncMessage(f *testing.F) {
	src := am.New()
	src.Path("nodes", "p", "name").Set("n")
	src.Commit("c")
	m, _ := am.NewSyncState(src).GenerateMessage()
	f.Add(m.Bytes())
	f.Add([]byte{0x42, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		doc, err := Open(Config{Dir: t.TempDir(), Logger: zerolog.Nop()})
		if err != nil {
			t.Fatal(err)
		}
		defer doc.Close()
		_, _ = doc.receiveSync(doc.NewPeerState(), b)
	})
}

// FuzzParseChange feeds arbitrary bytes to the change framing decoder that
// reads gossiped changes and log records.
func FuzzParseChange(f *testing.F) {
	d := am.New()
	d.Path("library/x/name").Set("y")
	h, _ := d.Commit("c")
	ch, _ := d.Change(h)
	f.Add(ch.Save())
	f.Add(append(ch.Save(), ch.Save()...))
	f.Add(d.Save())
	f.Add([]byte(amMagic + "\x00\x00\x00\x00\x01\x80\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, n, err := parseChange(b)
		if err != nil {
			return
		}
		if n > len(b) || string(c.raw) != string(b[:n]) {
			t.Fatal("accepted change is not the front of the input")
		}
		c2, n2, err := parseChange(c.raw)
		if err != nil || n2 != n || c2.hash != c.hash || len(c2.deps) != len(c.deps) {
			t.Fatalf("accepted change does not re-parse the same: %v", err)
		}
	})
}
