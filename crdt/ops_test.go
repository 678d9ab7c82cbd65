package crdt

import (
	"bytes"
	"compress/flate"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	am "github.com/automerge/automerge-go"
)

// testDoc is an automerge-go document with a fixed actor.
func opsDoc(t testing.TB, actor string) *am.Doc {
	t.Helper()
	d := am.New()
	if err := d.SetActorID(actor); err != nil {
		t.Fatal(err)
	}
	return d
}

const (
	actorA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	actorB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

func opsMust(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// commitChange commits d and returns the change's saved bytes.
func commitChange(t testing.TB, d *am.Doc, msg string) (am.ChangeHash, []byte) {
	t.Helper()
	h, err := d.Commit(msg)
	opsMust(t, err)
	c, err := d.Change(h)
	opsMust(t, err)
	return h, c.Save()
}

func decodeOK(t testing.TB, b []byte) *ChangeOps {
	t.Helper()
	c, n, err := decodeChange(b)
	if err != nil {
		t.Fatalf("decodeChange: %v", err)
	}
	if n != len(b) || c.Size != len(b) {
		t.Fatalf("decodeChange: length %d, size %d, want %d", n, c.Size, len(b))
	}
	raw, _, err := parseChange(b)
	opsMust(t, err)
	if c.Hash != raw.hash {
		t.Fatalf("hash %v, parseChange says %v", c.Hash, raw.hash)
	}
	return c
}

func sl(v int64) []byte {
	var b []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

func TestDecodeChangeScalars(t *testing.T) {
	d := opsDoc(t, actorA)
	ts := time.UnixMilli(1700000000123)
	f := math.Float64bits(1.5)
	var fb [8]byte
	binary.LittleEndian.PutUint64(fb[:], f)
	want := []struct {
		key string
		val any
		typ ValueType
		raw []byte
	}{
		{"str", "héllo", ValStr, []byte("héllo")},
		{"int", int64(-5), ValInt, []byte{0x7b}},
		{"bigint", int64(math.MinInt64), ValInt, sl(math.MinInt64)},
		{"uint", uint64(300), ValUint, []byte{0xac, 0x02}},
		{"float", 1.5, ValFloat, fb[:]},
		{"true", true, ValTrue, nil},
		{"false", false, ValFalse, nil},
		{"bytes", []byte{1, 2, 3}, ValBytes, []byte{1, 2, 3}},
		{"nil", nil, ValNull, nil},
		{"time", ts, ValTimestamp, sl(ts.UnixMilli())},
		{"counter", am.NewCounter(7), ValCounter, []byte{7}},
		{"emptystr", "", ValStr, nil},
	}
	for _, w := range want {
		opsMust(t, d.RootMap().Set(w.key, w.val))
	}
	h, b := commitChange(t, d, "scalars ✓")
	c := decodeOK(t, b)
	if c.Hash != h || c.Seq != 1 || c.StartOp != 1 || c.Message != "scalars ✓" || len(c.Deps) != 0 {
		t.Fatalf("header: %+v", c)
	}
	if hex.EncodeToString(c.Actors[0]) != actorA || len(c.Actors) != 1 {
		t.Fatalf("actors %x", c.Actors)
	}
	if len(c.Ops) != len(want) {
		t.Fatalf("%d ops, want %d", len(c.Ops), len(want))
	}
	for i, w := range want {
		op := c.Ops[i]
		if !op.Root || !op.KeyIsStr || op.Key != w.key || op.Action != ActSet || op.Insert ||
			op.Type != w.typ || !bytes.Equal(op.Value, w.raw) || len(op.Pred) != 0 ||
			op.ID != (OpID{Counter: uint64(i + 1)}) {
			t.Errorf("op %d: %+v, want %s=%v type %d %x", i, op, w.key, w.val, w.typ, w.raw)
		}
	}

	// A second change: overwrite, delete, increment; preds point at the
	// first change's ops.
	opsMust(t, d.RootMap().Set("str", "again"))
	opsMust(t, d.RootMap().Delete("int"))
	opsMust(t, d.Path("counter").Counter().Inc(-3))
	h2, b2 := commitChange(t, d, "")
	c2 := decodeOK(t, b2)
	if c2.Seq != 2 || c2.StartOp != uint64(len(want)+1) || len(c2.Deps) != 1 || c2.Deps[0] != h || c2.Hash != h2 || c2.Message != "" {
		t.Fatalf("second header: %+v", c2)
	}
	type exp struct {
		key  string
		act  Action
		typ  ValueType
		raw  []byte
		pred uint64
	}
	for i, w := range []exp{
		{"str", ActSet, ValStr, []byte("again"), 1},
		{"int", ActDel, ValNull, nil, 2},
		{"counter", ActInc, ValInt, sl(-3), 11},
	} {
		op := c2.Ops[i]
		if op.Key != w.key || op.Action != w.act || op.Type != w.typ || !bytes.Equal(op.Value, w.raw) ||
			len(op.Pred) != 1 || op.Pred[0] != (OpID{Counter: w.pred}) {
			t.Errorf("second change op %d: %+v, want %+v", i, op, w)
		}
	}
}

func TestDecodeChangeObjects(t *testing.T) {
	d := opsDoc(t, actorA)
	opsMust(t, d.Path("a", "b").Set("deep"))
	opsMust(t, d.RootMap().Set("l", am.NewList()))
	opsMust(t, d.Path("l").List().Append(int64(1), int64(2), int64(3)))
	opsMust(t, d.RootMap().Set("t", am.NewText("hi")))
	_, b := commitChange(t, d, "")
	c := decodeOK(t, b)
	ops := c.Ops
	// 1 make map a, 2 set b in a, 3 make list, 4-6 inserts, 7 make text,
	// 8-9 inserts.
	if len(ops) != 9 {
		t.Fatalf("%d ops: %+v", len(ops), ops)
	}
	chk := func(i int, ok bool) {
		t.Helper()
		if !ok {
			t.Errorf("op %d: %+v", i, ops[i])
		}
	}
	chk(0, ops[0].Root && ops[0].Key == "a" && ops[0].Action == ActMakeMap)
	chk(1, !ops[1].Root && ops[1].Obj == OpID{Counter: 1} && ops[1].Key == "b" && ops[1].Action == ActSet && string(ops[1].Value) == "deep")
	chk(2, ops[2].Root && ops[2].Key == "l" && ops[2].Action == ActMakeList)
	chk(3, ops[3].Obj == OpID{Counter: 3} && !ops[3].KeyIsStr && ops[3].Elem == OpID{} && ops[3].Insert && ops[3].Type == ValInt && bytes.Equal(ops[3].Value, []byte{1}))
	chk(4, ops[4].Obj == OpID{Counter: 3} && ops[4].Elem == OpID{Counter: 4} && ops[4].Insert)
	chk(5, ops[5].Elem == OpID{Counter: 5} && ops[5].Insert && bytes.Equal(ops[5].Value, []byte{3}))
	chk(6, ops[6].Root && ops[6].Key == "t" && ops[6].Action == ActMakeText)
	chk(7, ops[7].Obj == OpID{Counter: 7} && ops[7].Insert && ops[7].Elem == OpID{} && ops[7].Type == ValStr && string(ops[7].Value) == "h")
	chk(8, ops[8].Obj == OpID{Counter: 7} && ops[8].Insert && ops[8].Elem == OpID{Counter: 8} && string(ops[8].Value) == "i")

	// List set and delete, text splice.
	l := d.Path("l").List()
	opsMust(t, l.Set(1, "two"))
	opsMust(t, l.Delete(0))
	opsMust(t, d.Path("t").Text().Splice(1, 1, "o!"))
	_, b = commitChange(t, d, "")
	c = decodeOK(t, b)
	ops = c.Ops
	if len(ops) != 5 || c.StartOp != 10 {
		t.Fatalf("start %d, %d ops: %+v", c.StartOp, len(ops), ops)
	}
	chk(0, ops[0].Action == ActSet && !ops[0].Insert && ops[0].Obj == OpID{Counter: 3} && ops[0].Elem == OpID{Counter: 5} && ops[0].Pred[0] == OpID{Counter: 5} && string(ops[0].Value) == "two")
	chk(1, ops[1].Action == ActDel && ops[1].Elem == OpID{Counter: 4} && ops[1].Pred[0] == OpID{Counter: 4})
	chk(2, ops[2].Action == ActDel && ops[2].Obj == OpID{Counter: 7} && ops[2].Elem == OpID{Counter: 9} && ops[2].Pred[0] == OpID{Counter: 9})
	chk(3, ops[3].Insert && ops[3].Elem == OpID{Counter: 8} && string(ops[3].Value) == "o" && ops[3].ID == OpID{Counter: 13})
	chk(4, ops[4].Insert && ops[4].Elem == OpID{Counter: 13} && string(ops[4].Value) == "!")
}

func TestDecodeChangeActors(t *testing.T) {
	a := opsDoc(t, actorA)
	opsMust(t, a.RootMap().Set("k", "a"))
	_, _ = commitChange(t, a, "")
	b, err := a.Fork()
	opsMust(t, err)
	opsMust(t, b.SetActorID(actorB))
	opsMust(t, b.RootMap().Set("k", "b"))
	opsMust(t, b.RootMap().Set("only-b", "b"))
	_, _ = commitChange(t, b, "")
	_, err = a.Merge(b)
	opsMust(t, err)
	opsMust(t, a.RootMap().Set("only-b", "a wins"))
	_, raw := commitChange(t, a, "")
	c := decodeOK(t, raw)
	if len(c.Actors) != 2 || hex.EncodeToString(c.Actors[0]) != actorA || hex.EncodeToString(c.Actors[1]) != actorB {
		t.Fatalf("actors %x", c.Actors)
	}
	if len(c.Ops) != 1 || c.Ops[0].Key != "only-b" || len(c.Ops[0].Pred) != 1 || c.Ops[0].Pred[0] != (OpID{Counter: 3, Actor: 1}) {
		t.Fatalf("ops %+v", c.Ops)
	}
	if len(c.Deps) != 2 {
		t.Fatalf("deps %v", c.Deps)
	}
}

// TestDecodeChangeLarge: a change of many ops, also as a compressed chunk
// (type 2). automerge 0.5 reads compressed changes but automerge-go's Save
// and sync never write them, so the test deflates the body itself.
func TestDecodeChangeLarge(t *testing.T) {
	d := opsDoc(t, actorA)
	for i := 0; i < 500; i++ {
		opsMust(t, d.RootMap().Set(fmt.Sprintf("key-%04d", i), fmt.Sprintf("value %d", i*i)))
	}
	h, b := commitChange(t, d, "big")
	z := compressChange(t, b)
	if len(z) >= len(b) {
		t.Fatalf("compressed %d bytes to %d", len(b), len(z))
	}
	cs, err := am.LoadChanges(z)
	if err != nil || len(cs) != 1 || cs[0].Hash() != h {
		t.Fatalf("automerge reads the compressed change as %v, %v", cs, err)
	}
	for _, raw := range [][]byte{b, z} {
		c := decodeOK(t, raw)
		if c.Hash != h || len(c.Ops) != 500 || c.Message != "big" {
			t.Fatalf("hash %v, %d ops", c.Hash, len(c.Ops))
		}
		for i, op := range c.Ops {
			if op.Key != fmt.Sprintf("key-%04d", i) || string(op.Value) != fmt.Sprintf("value %d", i*i) {
				t.Fatalf("op %d: %+v", i, op)
			}
		}
	}
	// Bytes after the DEFLATE stream are refused.
	bad := compressChangeWith(t, b, []byte{0})
	if _, _, err := decodeChange(bad); err == nil {
		t.Error("compressed change with bytes after the stream decoded")
	}
}

// compressChange rewrites an uncompressed change chunk as a type 2 chunk.
func compressChange(t testing.TB, b []byte) []byte { return compressChangeWith(t, b, nil) }

func compressChangeWith(t testing.TB, b, trailer []byte) []byte {
	n, ln, err := uleb(b[9:])
	opsMust(t, err)
	var buf bytes.Buffer
	w, _ := flate.NewWriter(&buf, flate.BestCompression)
	_, _ = w.Write(b[9+ln : 9+ln+int(n)])
	opsMust(t, w.Close())
	body := append(buf.Bytes(), trailer...)
	out := append([]byte(nil), b[:8]...) // magic, checksum of the uncompressed change
	out = append(out, chunkCompressed)
	out = appendUleb(out, uint64(len(body)))
	return append(out, body...)
}

// testChunk frames body as a chunk of type typ with a correct checksum.
func testChunk(typ byte, body []byte) []byte {
	hdr := appendUleb([]byte{typ}, uint64(len(body)))
	h := sha256.Sum256(append(hdr, body...))
	out := append([]byte(amMagic), h[:4]...)
	return append(append(out, hdr...), body...)
}

type testCol struct {
	spec colSpec
	data []byte
}

// testChange encodes a change by hand: one author, no deps, seq 1, start
// op 1, and the given op columns.
func testChange(cols []testCol, extra []byte) []byte {
	var b []byte
	b = appendUleb(b, 0)
	b = appendUleb(b, 2)
	b = append(b, 0xab, 0xcd)
	b = appendUleb(b, 1)
	b = appendUleb(b, 1)
	b = append(b, sl(1700000000000)...)
	b = appendUleb(b, 0)
	b = appendUleb(b, 0)
	b = appendUleb(b, uint64(len(cols)))
	for _, c := range cols {
		b = appendUleb(b, uint64(c.spec))
		b = appendUleb(b, uint64(len(c.data)))
	}
	for _, c := range cols {
		b = append(b, c.data...)
	}
	return testChunk(chunkChange, append(b, extra...))
}

// oneSet is the columns of one root map set: key k, a string value v.
func oneSet(k, v string) []testCol {
	return []testCol{
		{specKeyStr, append(append([]byte{0x7f}, appendUleb(nil, uint64(len(k)))...), k...)},
		{specInsert, []byte{1}},
		{specAction, []byte{0x7f, 1}},
		{specValMeta, append([]byte{0x7f}, appendUleb(nil, uint64(len(v))<<4|6)...)},
		{specValRaw, []byte(v)},
		{specPredGroup, []byte{0x7f, 0}},
	}
}

func TestDecodeChangeHandmade(t *testing.T) {
	// The encoding of one root set matches what automerge writes.
	d := opsDoc(t, "abcd")
	opsMust(t, d.RootMap().Set("k", "v"))
	_, b := commitChange(t, d, "")
	c := decodeOK(t, b)
	if len(c.Ops) != 1 || c.Ops[0].Key != "k" {
		t.Fatalf("%+v", c.Ops)
	}

	// An empty-string key (automerge-go refuses to write one; automerge
	// itself reads it).
	b = testChange(oneSet("", "v"), nil)
	if _, err := am.LoadChanges(b); err != nil {
		t.Fatalf("automerge refuses the handmade change: %v", err)
	}
	c = decodeOK(t, b)
	if len(c.Ops) != 1 || !c.Ops[0].KeyIsStr || c.Ops[0].Key != "" || string(c.Ops[0].Value) != "v" {
		t.Fatalf("%+v", c.Ops)
	}

	// Extra bytes after the columns are kept (the spec reserves them).
	b = testChange(oneSet("k", "v"), []byte{1, 2, 3})
	c = decodeOK(t, b)
	if !bytes.Equal(c.Extra, []byte{1, 2, 3}) {
		t.Fatalf("extra %x", c.Extra)
	}

	// A run of 2^60 nulls in the obj columns, or 2^60 actions: refused
	// without allocating.
	huge := append([]byte{0}, appendUleb(nil, 1<<60)...)
	hugeRun := append(sl(1<<60), 1)
	for name, cols := range map[string][]testCol{
		"null run": append([]testCol{{specObjActor, huge}, {specObjCtr, huge}}, oneSet("k", "v")...),
		"action run": {
			{specKeyStr, []byte{0x7f, 1, 'k'}}, {specInsert, []byte{1}}, {specAction, hugeRun},
			{specValMeta, []byte{0x7f, 0}}, {specPredGroup, []byte{0x7f, 0}},
		},
		"pred run": {
			{specKeyStr, []byte{0x7f, 1, 'k'}}, {specInsert, []byte{1}}, {specAction, []byte{0x7f, 1}},
			{specValMeta, []byte{0x7f, 0}}, {specPredGroup, append(sl(1), appendUleb(nil, 1<<60)...)},
		},
	} {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		before := ms.TotalAlloc
		_, _, err := decodeChange(testChange(cols, nil))
		runtime.ReadMemStats(&ms)
		if !errors.Is(err, errFormat) {
			t.Errorf("%s: err %v", name, err)
		}
		if ms.TotalAlloc-before > 1<<20 {
			t.Errorf("%s: allocated %d bytes", name, ms.TotalAlloc-before)
		}
	}
}

// TestDecodeChangeNonCanonical: encodings automerge never writes are
// refused, each with errFormat.
func TestDecodeChangeNonCanonical(t *testing.T) {
	base := oneSet("k", "v")
	with := func(f func(cols []testCol) []testCol) []byte {
		cols := append([]testCol(nil), base...)
		return testChange(f(cols), nil)
	}
	if _, _, err := decodeChange(with(func(c []testCol) []testCol { return c })); err != nil {
		t.Fatalf("base: %v", err)
	}
	cases := map[string][]byte{
		"out of order": with(func(c []testCol) []testCol { c[1], c[2] = c[2], c[1]; return c }),
		"duplicate":    with(func(c []testCol) []testCol { return append(c[:2], c[1:]...) }),
		"unknown column": with(func(c []testCol) []testCol {
			return append(c, testCol{spec(20, colInt), []byte{0x7f, 1}})
		}),
		"deflated column": with(func(c []testCol) []testCol { c[1].spec |= colDeflated; return c }),
		"repeat run of one": with(func(c []testCol) []testCol {
			c[2].data = []byte{1, 1}
			return c
		}),
		"non-minimal uleb": with(func(c []testCol) []testCol {
			c[2].data = []byte{0x7f, 0x81, 0x00}
			return c
		}),
		"two ops in action, one elsewhere": with(func(c []testCol) []testCol {
			c[2].data = []byte{0x7e, 1, 3}
			return c
		}),
		"value overruns raw": with(func(c []testCol) []testCol {
			c[3].data = []byte{0x7f, 2<<4 | 6}
			return c
		}),
		"raw left over": with(func(c []testCol) []testCol {
			c[4].data = []byte("vv")
			return c
		}),
		"invalid utf-8 key": with(func(c []testCol) []testCol {
			c[0].data = []byte{0x7f, 1, 0xff}
			return c
		}),
		"invalid utf-8 value": with(func(c []testCol) []testCol {
			c[4].data = []byte{0xff}
			return c
		}),
		"null-only column": with(func(c []testCol) []testCol {
			return append([]testCol{{specObjActor, []byte{0, 1}}, {specObjCtr, []byte{0, 1}}}, c...)
		}),
		"actor index out of range": with(func(c []testCol) []testCol {
			c[5].data = []byte{0x7f, 1}
			return append(c, testCol{specPredActor, []byte{0x7f, 1}}, testCol{specPredCtr, []byte{0x7f, 1}})
		}),
		"boolean empty run": with(func(c []testCol) []testCol {
			c[1].data = []byte{1, 0}
			return c
		}),
		"insert missing": with(func(c []testCol) []testCol { return append(c[:1], c[2:]...) }),
		"null with bytes": with(func(c []testCol) []testCol {
			c[3].data = []byte{0x7f, 1 << 4}
			c[4].data = []byte{0}
			return c
		}),
		"uint value not one leb": with(func(c []testCol) []testCol {
			c[3].data = []byte{0x7f, 2<<4 | 3}
			c[4].data = []byte{1, 1}
			return c
		}),
	}
	for name, b := range cases {
		if _, _, err := decodeChange(b); !errors.Is(err, errFormat) {
			t.Errorf("%s: err %v", name, err)
		}
	}
}

// TestDecodeMalformed: every truncation and many byte flips of real
// changes and documents are refused or decoded without a panic.
func TestDecodeMalformed(t *testing.T) {
	d := opsDoc(t, actorA)
	opsMust(t, d.Path("a", "b").Set("deep"))
	opsMust(t, d.RootMap().Set("t", am.NewText("hello")))
	opsMust(t, d.RootMap().Set("n", int64(42)))
	_, ch := commitChange(t, d, "m")
	opsMust(t, d.RootMap().Set("n", int64(43)))
	_, _ = commitChange(t, d, "")
	doc := d.Save()
	for i := 0; i < len(ch); i++ {
		if _, _, err := decodeChange(ch[:i]); err == nil {
			t.Errorf("change truncated to %d bytes decoded", i)
		}
	}
	for i := 0; i < len(doc); i++ {
		if _, err := decodeDocument(doc[:i]); err == nil {
			t.Errorf("document truncated to %d bytes decoded", i)
		}
	}
	// Flips: the checksum catches most; flip with the checksum fixed too.
	for _, src := range [][]byte{ch, doc} {
		for i := 9; i < len(src); i++ {
			for _, x := range []byte{0x01, 0x80, 0xff} {
				b := append([]byte(nil), src...)
				b[i] ^= x
				_, _, _ = decodeChange(b)
				_, _ = decodeDocument(b)
				fixChecksum(b)
				_, _, _ = decodeChange(b)
				_, _ = decodeDocument(b)
			}
		}
	}
}

// fixChecksum rewrites an uncompressed chunk's checksum to match its body.
func fixChecksum(b []byte) {
	if len(b) < 9 {
		return
	}
	n, ln, err := uleb(b[9:])
	if err != nil || n > uint64(len(b)-9-ln) {
		return
	}
	h := sha256.Sum256(b[8 : 9+ln+int(n)])
	copy(b[4:8], h[:4])
}

func TestDecodeDocument(t *testing.T) {
	a := opsDoc(t, actorA)
	opsMust(t, a.RootMap().Set("over", "first"))
	opsMust(t, a.RootMap().Set("keep", int64(1)))
	opsMust(t, a.RootMap().Set("gone", true))
	opsMust(t, a.Path("m", "x").Set("in map"))
	opsMust(t, a.RootMap().Set("c", am.NewCounter(1)))
	_, _ = commitChange(t, a, "one")
	b, err := a.Fork()
	opsMust(t, err)
	opsMust(t, b.SetActorID(actorB))
	opsMust(t, b.RootMap().Set("over", "second"))
	opsMust(t, b.RootMap().Delete("gone"))
	opsMust(t, b.Path("c").Counter().Inc(2))
	_, _ = commitChange(t, b, "two")
	_, err = a.Merge(b)
	opsMust(t, err)
	raw := a.Save()
	doc, err := decodeDocument(raw)
	if err != nil {
		t.Fatal(err)
	}
	if doc.Changes != 2 || len(doc.Actors) != 2 || len(doc.Heads) != 1 {
		t.Fatalf("%d changes, actors %x, heads %v", doc.Changes, doc.Actors, doc.Heads)
	}
	if hex.EncodeToString(doc.Actors[0]) != actorA || hex.EncodeToString(doc.Actors[1]) != actorB {
		t.Fatalf("actors %x", doc.Actors)
	}
	if doc.Heads[0] != a.Heads()[0] {
		t.Fatalf("heads %v, want %v", doc.Heads, a.Heads())
	}
	// Ops: over(first, second), keep, gone, m, x, c, inc. Deletes are
	// stored only as successors.
	byKey := map[string][]Op{}
	for _, op := range doc.Ops {
		k := op.Key
		if !op.Root {
			k = "m/" + k
		}
		byKey[k] = append(byKey[k], op)
	}
	if len(doc.Ops) != 8 {
		t.Fatalf("%d ops: %+v", len(doc.Ops), doc.Ops)
	}
	over := byKey["over"]
	if len(over) != 2 || string(over[0].Value) != "first" || len(over[0].Succ) != 1 || over[0].Succ[0] != over[1].ID ||
		string(over[1].Value) != "second" || len(over[1].Succ) != 0 || over[1].ID.Actor != 1 {
		t.Errorf("over: %+v", over)
	}
	if g := byKey["gone"]; len(g) != 1 || len(g[0].Succ) != 1 || g[0].Succ[0].Actor != 1 {
		t.Errorf("gone: %+v", g)
	}
	if k := byKey["keep"]; len(k) != 1 || len(k[0].Succ) != 0 || k[0].ID != (OpID{Counter: 2}) {
		t.Errorf("keep: %+v", k)
	}
	if x := byKey["m/x"]; len(x) != 1 || x[0].Obj != byKey["m"][0].ID || string(x[0].Value) != "in map" {
		t.Errorf("m/x: %+v (m %+v)", x, byKey["m"])
	}
	c := byKey["c"]
	if len(c) != 2 || c[0].Type != ValCounter || len(c[0].Succ) != 1 || c[1].Action != ActInc || c[0].Succ[0] != c[1].ID {
		t.Errorf("c: %+v", c)
	}
	if _, err := decodeDocument(append(raw, 0)); err == nil {
		t.Error("document with a trailing byte decoded")
	}
	if _, _, err := decodeChange(raw); !errors.Is(err, errChunk) {
		t.Errorf("decodeChange of a document: %v", err)
	}
}

// TestDecodeDocumentDeflated: a document with a column over 256 bytes
// stores it deflated.
func TestDecodeDocumentDeflated(t *testing.T) {
	d := opsDoc(t, actorA)
	txt := ""
	for i := 0; i < 400; i++ {
		txt += string(rune('a' + i*7%26))
	}
	opsMust(t, d.RootMap().Set("t", am.NewText(txt)))
	for i := 0; i < 300; i++ {
		opsMust(t, d.RootMap().Set(fmt.Sprintf("k%d", i), int64(i*i)))
	}
	_, _ = commitChange(t, d, "")
	raw := d.Save()
	if !hasDeflatedColumn(t, raw) {
		t.Fatal("no deflated column in the document")
	}
	doc, err := decodeDocument(raw)
	opsMust(t, err)
	if len(doc.Ops) != 1+400+300 {
		t.Fatalf("%d ops", len(doc.Ops))
	}
	got := ""
	for _, op := range doc.Ops {
		if op.Insert {
			got += string(op.Value)
		}
	}
	if got != txt {
		t.Fatalf("text %q", got)
	}
}

func hasDeflatedColumn(t *testing.T, raw []byte) bool {
	_, ln, _ := uleb(raw[9:])
	p := parser{b: raw[9+ln:]}
	for i, n := uint64(0), p.count("", 1); i < n; i++ {
		p.bytes("")
	}
	p.take(int(p.count("", 32))*32, "")
	found := false
	for i := 0; i < 2; i++ { // change columns, op columns
		for j, n := uint64(0), p.uleb(""); j < n; j++ {
			found = found || p.uleb("")&colDeflated != 0
			p.uleb("")
		}
	}
	opsMust(t, p.err)
	return found
}

// syncPair drives two automerge-go sync states until neither has a
// message, passing every message through f first.
func amSyncPair(t testing.TB, a, b *am.Doc, sa, sb *am.SyncState, f func(msg []byte, to *am.Doc) []byte) int {
	t.Helper()
	n := 0
	for round := 0; round < 20; round++ {
		progress := false
		for _, dir := range []struct {
			from, to *am.SyncState
			doc      *am.Doc
		}{{sa, sb, b}, {sb, sa, a}} {
			m, ok := dir.from.GenerateMessage()
			if !ok {
				continue
			}
			progress = true
			n++
			_, err := dir.to.ReceiveMessage(f(m.Bytes(), dir.doc))
			opsMust(t, err)
		}
		if !progress {
			return n
		}
	}
	t.Fatal("sync did not converge")
	return n
}

func TestSyncMessages(t *testing.T) {
	for _, strip := range []bool{false, true} {
		a := opsDoc(t, actorA)
		b := opsDoc(t, actorB)
		opsMust(t, a.RootMap().Set("from-a", "1"))
		_, _ = commitChange(t, a, "")
		opsMust(t, b.RootMap().Set("from-b", "2"))
		_, _ = commitChange(t, b, "")
		opsMust(t, b.Path("l").Set(am.NewText("text")))
		_, _ = commitChange(t, b, "")
		sa, sb := am.NewSyncState(a), am.NewSyncState(b)
		sawChanges := 0
		amSyncPair(t, a, b, sa, sb, func(msg []byte, to *am.Doc) []byte {
			m, err := decodeSyncMessage(msg)
			if err != nil {
				t.Fatalf("decodeSyncMessage: %v", err)
			}
			for _, c := range m.Changes {
				rc, n, err := parseChange(c)
				if err != nil || n != len(c) {
					t.Fatalf("change in message: %v", err)
				}
				if _, _, err := decodeChange(c); err != nil {
					t.Fatalf("decodeChange of a synced change: %v", err)
				}
				found := false
				for _, h := range allHashes(t, a, b) {
					found = found || h == rc.hash
				}
				if !found {
					t.Fatalf("message carries unknown change %v", rc.hash)
				}
				sawChanges++
			}
			if !strip {
				return msg
			}
			out, err := syncMessageWithoutChanges(msg)
			opsMust(t, err)
			s, err := decodeSyncMessage(out)
			opsMust(t, err)
			if len(s.Changes) != 0 || !equalHashes(s.Heads, m.Heads) || !equalHashes(s.Need, m.Need) {
				t.Fatalf("stripped message: %+v vs %+v", s, m)
			}
			for _, c := range m.Changes {
				opsMust(t, to.LoadIncremental(c))
			}
			return out
		})
		if sawChanges != 3 {
			t.Errorf("strip=%v: %d changes crossed, want 3", strip, sawChanges)
		}
		if !equalHashes(a.Heads(), b.Heads()) {
			t.Errorf("strip=%v: heads differ: %v %v", strip, a.Heads(), b.Heads())
		}
		va, _ := a.RootMap().Keys()
		vb, _ := b.RootMap().Keys()
		sort.Strings(va)
		sort.Strings(vb)
		if fmt.Sprint(va) != fmt.Sprint(vb) || len(va) != 3 {
			t.Errorf("strip=%v: keys %v %v", strip, va, vb)
		}
	}
}

func allHashes(t *testing.T, docs ...*am.Doc) []am.ChangeHash {
	var out []am.ChangeHash
	for _, d := range docs {
		cs, err := d.Changes()
		opsMust(t, err)
		for _, c := range cs {
			out = append(out, c.Hash())
		}
	}
	return out
}

func equalHashes(a, b []Hash) bool {
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

func TestSyncMessageMalformed(t *testing.T) {
	a := opsDoc(t, actorA)
	opsMust(t, a.RootMap().Set("k", "v"))
	_, ch := commitChange(t, a, "")
	msg := []byte{syncMsgV1}
	msg = appendUleb(msg, 1)
	msg = append(msg, make([]byte, 32)...)
	msg = appendUleb(msg, 0)
	msg = appendUleb(msg, 1)
	msg = appendUleb(msg, 0)
	msg = appendUleb(msg, 0) // empty bloom
	msg = appendUleb(msg, 1)
	msg = appendUleb(msg, uint64(len(ch)))
	msg = append(msg, ch...)
	m, err := decodeSyncMessage(msg)
	if err != nil || len(m.Changes) != 1 || !bytes.Equal(m.Changes[0], ch) || len(m.Heads) != 1 {
		t.Fatalf("%+v %v", m, err)
	}
	// Newer automerge's trailing flags are kept by the stripped copy.
	flagged := append(append([]byte(nil), msg...), 2, 2, 0x84)
	if _, err := decodeSyncMessage(flagged); err != nil {
		t.Fatalf("flags: %v", err)
	}
	out, err := syncMessageWithoutChanges(flagged)
	opsMust(t, err)
	if !bytes.HasSuffix(out, []byte{0, 2, 2, 0x84}) {
		t.Fatalf("stripped %x", out)
	}
	for i := 0; i < len(msg); i++ {
		if _, err := decodeSyncMessage(msg[:i]); err == nil {
			t.Errorf("truncated to %d decoded", i)
		}
	}
	for name, b := range map[string][]byte{
		"trailing byte":  append(append([]byte(nil), msg...), 7),
		"wrong type":     append([]byte{0x41}, msg[1:]...),
		"two chunks":     twoChunkMsg(ch),
		"huge head list": append([]byte{syncMsgV1}, appendUleb(nil, 1<<40)...),
	} {
		if _, err := decodeSyncMessage(b); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

func twoChunkMsg(ch []byte) []byte {
	msg := []byte{syncMsgV1, 0, 0, 0, 1}
	msg = appendUleb(msg, uint64(2*len(ch)))
	return append(append(msg, ch...), ch...)
}

func BenchmarkDecodeChange(b *testing.B) {
	d := opsDoc(b, actorA)
	opsMust(b, d.RootMap().Set("key", "value"))
	_, small := commitChange(b, d, "")
	d = opsDoc(b, actorB) // am.LoadChanges reads only changes without deps
	for i := 0; i < 1000; i++ {
		opsMust(b, d.RootMap().Set(fmt.Sprintf("k%d", i), int64(i)))
	}
	_, large := commitChange(b, d, "")
	for _, c := range []struct {
		name string
		raw  []byte
	}{{"1op", small}, {"1000ops", large}} {
		b.Run(c.name+"/ours", func(b *testing.B) {
			b.SetBytes(int64(len(c.raw)))
			for i := 0; i < b.N; i++ {
				if _, _, err := decodeChange(c.raw); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(c.name+"/automerge", func(b *testing.B) {
			b.SetBytes(int64(len(c.raw)))
			for i := 0; i < b.N; i++ {
				if _, err := am.LoadChanges(c.raw); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestDecodeRandomHistories: every change and document automerge-go
// writes over random edits by two actors decodes (the canonical checks
// refuse nothing automerge writes), and the ops agree with the document.
func TestDecodeRandomHistories(t *testing.T) {
	r := rand.New(rand.NewSource(7))
	for round := 0; round < 5; round++ {
		a, b := opsDoc(t, actorA), opsDoc(t, actorB)
		opsMust(t, a.RootMap().Set("t", am.NewText("")))
		opsMust(t, a.RootMap().Set("l", am.NewList()))
		_, _ = commitChange(t, a, "")
		_, err := b.Merge(a)
		opsMust(t, err)
		for step := 0; step < 60; step++ {
			d := a
			if r.Intn(2) == 0 {
				d = b
			}
			for k := r.Intn(5); k >= 0; k-- {
				key := fmt.Sprintf("k%d", r.Intn(6))
				tv, err := d.RootMap().Get("t")
				opsMust(t, err)
				lv, err := d.RootMap().Get("l")
				opsMust(t, err)
				txt, lst := tv.Text(), lv.List()
				switch r.Intn(8) {
				case 0:
					opsMust(t, d.RootMap().Set(key, int64(r.Intn(1000)-500)))
				case 1:
					opsMust(t, d.RootMap().Set(key, strings.Repeat("x", r.Intn(40))))
				case 2:
					if v, _ := d.RootMap().Get(key); v != nil && v.Kind() != am.KindVoid {
						opsMust(t, d.RootMap().Delete(key))
					}
				case 3, 4:
					pos := r.Intn(txt.Len() + 1)
					del := 0
					if pos < txt.Len() {
						del = r.Intn(txt.Len() - pos + 1)
					}
					opsMust(t, txt.Splice(pos, del, strings.Repeat(string(rune('a'+r.Intn(26))), r.Intn(30))))
				case 5:
					opsMust(t, lst.Insert(r.Intn(lst.Len()+1), float64(r.Intn(9))))
				case 6:
					if lst.Len() > 0 {
						opsMust(t, lst.Delete(r.Intn(lst.Len())))
					}
				case 7:
					opsMust(t, d.Path("c"+key).Counter().Inc(int64(r.Intn(5)+1)))
				}
			}
			_, _ = d.Commit("")
			if r.Intn(4) == 0 {
				_, err := a.Merge(b)
				opsMust(t, err)
				_, err = b.Merge(a)
				opsMust(t, err)
			}
		}
		_, err = a.Merge(b)
		opsMust(t, err)
		cs, err := a.Changes()
		opsMust(t, err)
		total := 0
		for _, c := range cs {
			co := decodeOK(t, c.Save())
			total += len(co.Ops)
		}
		raw := a.Save()
		doc, err := decodeDocument(raw)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if doc.Changes != len(cs) {
			t.Fatalf("round %d: %d changes, automerge has %d", round, doc.Changes, len(cs))
		}
		// The document holds every change op except deletes (kept only
		// as successors).
		txt := ""
		for _, op := range doc.Ops {
			if op.Action == ActDel {
				t.Fatalf("a delete op stored in the document: %+v", op)
			}
			if op.Insert && op.Type == ValStr && len(op.Succ) == 0 && !op.Root && op.Obj == (OpID{Counter: 1}) {
				txt += string(op.Value)
			}
		}
		tv, _ := a.RootMap().Get("t")
		want, _ := tv.Text().Get()
		// Document ops are stored in list order: the visible inserts spell
		// the text.
		if txt != want {
			t.Fatalf("round %d: visible text %q, automerge has %q", round, txt, want)
		}
		t.Logf("round %d: %d changes, %d change ops, %d document ops, %d bytes of text", round, len(cs), total, len(doc.Ops), len(txt))
		if len(doc.Ops) > total {
			t.Fatalf("round %d: %d document ops, %d change ops", round, len(doc.Ops), total)
		}
	}
}

// TestDecodeMarksAndV2: the mark columns automerge 0.5 writes for rich
// text (automerge-go has no API for marks, so by hand), and a 0x43 sync
// message as newer automerge writes it.
func TestDecodeMarksAndV2(t *testing.T) {
	cols := []testCol{
		{specKeyStr, []byte{2, 1, 'k'}},
		{specInsert, []byte{2}},
		{specAction, []byte{2, 7}},
		{specValMeta, []byte{0x7e, 2, 0}},
		{specPredGroup, []byte{2, 0}},
		{specExpand, []byte{0, 1, 1}},
		{specMarkName, []byte{0x7f, 4, 'b', 'o', 'l', 'd', 0, 1}},
	}
	c := decodeOK(t, testChange(cols, nil))
	if len(c.Ops) != 2 || !c.Ops[0].MarkNamed || c.Ops[0].MarkName != "bold" || !c.Ops[0].Expand || c.Ops[0].Type != ValTrue ||
		c.Ops[1].MarkNamed || c.Ops[1].Expand || c.Ops[1].Action != ActMark {
		t.Fatalf("%+v", c.Ops)
	}
	cols[5].data = []byte{2} // an all-false expand column: automerge omits it
	if _, _, err := decodeChange(testChange(cols, nil)); !errors.Is(err, errFormat) {
		t.Errorf("all-false expand column: %v", err)
	}

	d := opsDoc(t, actorA)
	opsMust(t, d.RootMap().Set("k", "v"))
	_, _ = commitChange(t, d, "")
	doc := d.Save()
	msg := []byte{syncMsgV2, 0, 0, 0, 1}
	msg = appendUleb(msg, uint64(len(doc)))
	msg = append(msg, doc...)
	msg = append(msg, 2, 2, 0x80)
	m, err := decodeSyncMessage(msg)
	if err != nil || !m.V2 || len(m.Changes) != 1 || !bytes.Equal(m.Changes[0], doc) {
		t.Fatalf("%+v %v", m, err)
	}
	out, err := syncMessageWithoutChanges(msg)
	if err != nil || !bytes.Equal(out, []byte{syncMsgV2, 0, 0, 0, 0, 2, 2, 0x80}) {
		t.Fatalf("%x %v", out, err)
	}
}

// jsScript writes changes (with marks), a document and sync messages with
// the official JavaScript Automerge (3.x, a newer core than automerge-go's:
// its documents come from a different encoder).
const jsScript = `
import * as A from %q;
import fs from "fs";
const out = process.argv[2];
let d = A.from({ s: "hi", n: 1, t: "hello world" }, { actor: "aaaa" });
d = A.change(d, (x) => { x.n = 2; x.l = [1, 2, 3]; x.c = new A.Counter(5); x.m = { a: { b: true } };
  x.f = 1.5; x.b = new Uint8Array([1, 2]); x.z = null; x.d = new Date(1700000000000); });
d = A.change(d, (x) => { A.splice(x, ["t"], 2, 3, "YYY"); x.l.splice(1, 1); x.c.increment(3); delete x.s;
  A.mark(x, ["t"], { start: 0, end: 4, expand: "both" }, "bold", true);
  A.unmark(x, ["t"], { start: 1, end: 2, expand: "none" }, "bold"); });
let e = A.clone(d, { actor: "bbbb" });
e = A.change(e, (x) => { x.n = 3; A.splice(x, ["t"], 0, 0, "start "); });
d = A.change(d, (x) => { x.n = 4; });
d = A.merge(d, e);
d = A.change(d, (x) => { for (let i = 0; i < 300; i++) x["k" + i] = "v" + i; });
const hex = (b) => Buffer.from(b).toString("hex");
let p = A.init({ actor: "cccc" }), s1 = A.initSyncState(), s2 = A.initSyncState(), msgs = [], m;
for (let i = 0; i < 10; i++) {
  [s1, m] = A.generateSyncMessage(d, s1);
  if (m) { msgs.push(hex(m)); [p, s2] = A.receiveSyncMessage(p, s2, m); }
  [s2, m] = A.generateSyncMessage(p, s2);
  if (m) { msgs.push(hex(m)); [d, s1] = A.receiveSyncMessage(d, s1, m); }
}
fs.writeFileSync(out, JSON.stringify({ changes: A.getAllChanges(d).map(hex), doc: hex(A.save(d)), msgs }));
`

// TestDecodeJSAutomerge: what the official JavaScript Automerge writes
// decodes (skipped without node and scripts/js/node_modules).
func TestDecodeJSAutomerge(t *testing.T) {
	mod, err := filepath.Abs("../scripts/js/node_modules/@automerge/automerge/dist/mjs/entrypoints/fullfat_node.js")
	opsMust(t, err)
	node, err := exec.LookPath("node")
	if _, serr := os.Stat(mod); err != nil || serr != nil {
		t.Skip("needs node and scripts/js/node_modules (npm ci in scripts/js)")
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "gen.mjs")
	opsMust(t, os.WriteFile(script, []byte(fmt.Sprintf(jsScript, mod)), 0o600))
	out := filepath.Join(dir, "out.json")
	if b, err := exec.Command(node, script, out).CombinedOutput(); err != nil {
		t.Fatalf("node: %v\n%s", err, b)
	}
	var res struct {
		Changes []string
		Doc     string
		Msgs    []string
	}
	b, err := os.ReadFile(out)
	opsMust(t, err)
	opsMust(t, json.Unmarshal(b, &res))
	unhex := func(s string) []byte {
		b, err := hex.DecodeString(s)
		opsMust(t, err)
		return b
	}
	marks, total := 0, 0
	for i, c := range res.Changes {
		co := decodeOK(t, unhex(c))
		total += len(co.Ops)
		for _, op := range co.Ops {
			if op.Action == ActMark {
				marks++
				if op.MarkNamed && op.MarkName != "bold" {
					t.Errorf("change %d: mark %+v", i, op)
				}
			}
		}
	}
	if len(res.Changes) != 6 || marks != 4 {
		t.Errorf("%d changes, %d marks", len(res.Changes), marks)
	}
	doc, err := decodeDocument(unhex(res.Doc))
	if err != nil {
		t.Fatalf("document: %v", err)
	}
	if doc.Changes != 6 || len(doc.Ops) == 0 || len(doc.Ops) > total {
		t.Errorf("document: %d changes, %d ops (changes hold %d)", doc.Changes, len(doc.Ops), total)
	}
	v2 := false
	for i, m := range res.Msgs {
		sm, err := decodeSyncMessage(unhex(m))
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		v2 = v2 || sm.V2
		for _, c := range sm.Changes {
			if _, _, err := decodeChange(c); err != nil {
				if _, err := decodeDocument(c); err != nil {
					t.Errorf("message %d: an entry neither a change nor a document: %v", i, err)
				}
			}
		}
	}
	if !v2 {
		t.Log("no 0x43 message")
	}
}
