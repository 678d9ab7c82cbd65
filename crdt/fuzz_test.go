package crdt

import (
	"testing"

	am "github.com/automerge/automerge-go"
	"github.com/rs/zerolog"
)

func FuzzDecodeLog(f *testing.F) {
	f.Add([]byte(nil))
	f.Add([]byte(logMagic))
	f.Add(appendRecord([]byte(logMagic), []byte("hello")))
	f.Add(appendRecord(appendRecord([]byte(logMagic), []byte("a")), []byte("bb"))[:20])
	f.Add([]byte("MNLOG01\n\xff\xff\xff\xff\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, valid, err := decodeLog(b)
		if valid > len(b) {
			t.Fatalf("valid %d > len %d", valid, len(b))
		}
		if err == nil && valid != len(b) {
			t.Fatal("clean decode must consume everything")
		}
		// The valid prefix re-decodes cleanly to the same records.
		if valid > 0 {
			recs2, v2, err2 := decodeLog(b[:valid])
			if err2 != nil || v2 != valid || len(recs2) != len(recs) {
				t.Fatalf("prefix did not re-decode: %v", err2)
			}
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
