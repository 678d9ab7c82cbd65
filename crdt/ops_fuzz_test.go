package crdt

import (
	"bytes"
	"fmt"
	"reflect"
	"testing"

	am "github.com/automerge/automerge-go"
)

// fuzzSeeds builds changes, documents and sync messages with automerge-go.
func fuzzSeeds(t testing.TB) (changes, docs, msgs [][]byte) {
	a := opsDoc(t, actorA)
	opsMust(t, a.RootMap().Set("s", "str"))
	opsMust(t, a.RootMap().Set("i", int64(-3)))
	opsMust(t, a.RootMap().Set("u", uint64(1<<40)))
	opsMust(t, a.RootMap().Set("f", 2.5))
	opsMust(t, a.RootMap().Set("b", []byte{0, 1}))
	opsMust(t, a.RootMap().Set("n", nil))
	opsMust(t, a.RootMap().Set("c", am.NewCounter(3)))
	_, c1 := commitChange(t, a, "scalars")
	opsMust(t, a.Path("m", "x").Set(true))
	opsMust(t, a.RootMap().Set("t", am.NewText("hello")))
	opsMust(t, a.RootMap().Set("l", am.NewList()))
	opsMust(t, a.Path("l").List().Append("x", int64(2)))
	_, c2 := commitChange(t, a, "")
	b, err := a.Fork()
	opsMust(t, err)
	opsMust(t, b.SetActorID(actorB))
	opsMust(t, b.Path("t").Text().Splice(1, 2, "EY"))
	opsMust(t, b.Path("c").Counter().Inc(4))
	opsMust(t, b.RootMap().Delete("s"))
	lv, err := b.RootMap().Get("l")
	opsMust(t, err)
	opsMust(t, lv.List().Delete(0))
	_, c3 := commitChange(t, b, "")
	_, err = a.Merge(b)
	opsMust(t, err)
	opsMust(t, a.RootMap().Set("i", int64(9)))
	_, c4 := commitChange(t, a, "merged")
	for i := 0; i < 300; i++ {
		opsMust(t, a.RootMap().Set(fmt.Sprintf("k%d", i), int64(i)))
	}
	_, c5 := commitChange(t, a, "")
	changes = [][]byte{c1, c2, c3, c4, compressChange(t, c5)}
	docs = [][]byte{b.Save(), a.Save(), am.New().Save()}

	x, y := opsDoc(t, actorA), opsDoc(t, actorB)
	opsMust(t, x.RootMap().Set("x", "1"))
	_, _ = commitChange(t, x, "")
	opsMust(t, y.RootMap().Set("y", "2"))
	_, _ = commitChange(t, y, "")
	amSyncPair(t, x, y, am.NewSyncState(x), am.NewSyncState(y), func(m []byte, _ *am.Doc) []byte {
		msgs = append(msgs, m)
		return m
	})
	return changes, docs, msgs
}

func FuzzDecodeChange(f *testing.F) {
	changes, _, _ := fuzzSeeds(f)
	var chain []byte // automerge-go loads a change only after its deps
	for _, c := range changes {
		chain = append(chain, c...)
		if _, err := am.LoadChanges(chain); err != nil {
			f.Fatalf("automerge refuses a seed: %v", err)
		}
		if _, _, err := decodeChange(c); err != nil {
			f.Fatalf("a seed automerge reads: %v", err)
		}
		f.Add(c)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		// Most mutations would only break the checksum: fix it so they
		// reach the columns.
		b = append([]byte(nil), b...)
		fixChecksum(b)
		c, n, err := decodeChange(b)
		if err != nil {
			if c != nil {
				t.Fatal("a change with an error")
			}
			return
		}
		if n <= 0 || n > len(b) || c.Size != n {
			t.Fatalf("length %d of %d", n, len(b))
		}
		c2, n2, err := decodeChange(b)
		if err != nil || n2 != n || !reflect.DeepEqual(c, c2) {
			t.Fatalf("not deterministic: %v", err)
		}
		// What we accept, automerge reads too (unless its semantics, left
		// to the validator, refuse it: unknown actions and value types,
		// an increment by a non-number). am.LoadChanges reads only
		// changes without dependencies.
		if len(c.Deps) > 0 {
			return
		}
		for _, op := range c.Ops {
			if op.Action > ActMark || op.Type > ValTimestamp || (op.Action == ActInc && op.Type != ValInt && op.Type != ValUint) {
				return
			}
		}
		if _, err := am.LoadChanges(b[:n]); err != nil {
			t.Fatalf("we decode %d ops, automerge refuses: %v", len(c.Ops), err)
		}
	})
}

func FuzzDecodeDocument(f *testing.F) {
	_, docs, _ := fuzzSeeds(f)
	for _, d := range docs {
		if _, err := am.Load(d); err != nil {
			f.Fatalf("automerge refuses a seed: %v", err)
		}
		if _, err := decodeDocument(d); err != nil {
			f.Fatalf("a seed automerge reads: %v", err)
		}
		f.Add(d)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		b = append([]byte(nil), b...)
		fixChecksum(b)
		d, err := decodeDocument(b)
		if err != nil {
			return
		}
		d2, err := decodeDocument(b)
		if err != nil || !reflect.DeepEqual(d, d2) {
			t.Fatalf("not deterministic: %v", err)
		}
	})
}

func FuzzDecodeSyncMessage(f *testing.F) {
	_, _, msgs := fuzzSeeds(f)
	for _, m := range msgs {
		if _, err := decodeSyncMessage(m); err != nil {
			f.Fatalf("a seed automerge wrote: %v", err)
		}
		f.Add(m)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeSyncMessage(b)
		if err != nil {
			return
		}
		for _, c := range m.Changes {
			if !bytes.Contains(b, c) {
				t.Fatal("a change not from the input")
			}
		}
		s, err := syncMessageWithoutChanges(b)
		if err != nil {
			t.Fatalf("stripping a message we decode: %v", err)
		}
		m2, err := decodeSyncMessage(s)
		if err != nil || len(m2.Changes) != 0 || !reflect.DeepEqual(m.Heads, m2.Heads) || !reflect.DeepEqual(m.Need, m2.Need) {
			t.Fatalf("stripped message: %+v, %v", m2, err)
		}
		s2, err := syncMessageWithoutChanges(s)
		if err != nil || !bytes.Equal(s, s2) {
			t.Fatal("stripping is not idempotent")
		}
		if len(m.Changes) == 0 && !bytes.Equal(s, b) {
			t.Fatal("stripping a message without changes changed it")
		}
	})
}
