package crdt

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"math"
	"unicode/utf8"
)

// Action is an operation's action code.
type Action uint8

// The action codes of automerge 0.5. Other codes decode as their number.
const (
	ActMakeMap   Action = 0
	ActSet       Action = 1
	ActMakeList  Action = 2
	ActDel       Action = 3
	ActMakeText  Action = 4
	ActInc       Action = 5
	ActMakeTable Action = 6
	ActMark      Action = 7 // mark begin (MarkNamed) or end
)

// ValueType is the type nibble of a value's metadata.
type ValueType uint8

// The value types of automerge 0.5; 10 and above are unknown (their bytes
// are kept as they are).
const (
	ValNull      ValueType = 0
	ValFalse     ValueType = 1
	ValTrue      ValueType = 2
	ValUint      ValueType = 3 // uLEB128
	ValInt       ValueType = 4 // sLEB128
	ValFloat     ValueType = 5 // float64, little-endian
	ValStr       ValueType = 6 // UTF-8
	ValBytes     ValueType = 7
	ValCounter   ValueType = 8 // sLEB128
	ValTimestamp ValueType = 9 // sLEB128, ms
)

// OpID is an operation ID: a counter and an index into the actor table of
// the change or document it came from.
type OpID struct {
	Counter uint64
	Actor   int
}

// Op is one decoded operation.
type Op struct {
	ID       OpID   // for change ops: Counter = StartOp + index, Actor = 0 (the author)
	Root     bool   // the object is the root map (obj actor and counter both null)
	Obj      OpID   // the object when !Root
	Key      string // map key when KeyIsStr
	KeyIsStr bool
	Elem     OpID // list element key when !KeyIsStr (Counter 0 = HEAD)
	Insert   bool
	Action   Action
	Type     ValueType
	Value    []byte // raw value bytes as stored; len(Value) is the value's size
	Pred     []OpID // change ops
	Succ     []OpID // document ops

	// Marks (automerge 0.5's rich text): a mark begin (ActMark) has a
	// name; Expand says whether the mark grows at its ends.
	MarkName  string
	MarkNamed bool
	Expand    bool
}

// ChangeOps is one decoded change chunk.
type ChangeOps struct {
	Hash     Hash
	Deps     []Hash
	Actors   [][]byte // [0] is the author, then the other actors in the change's table
	Seq      uint64
	StartOp  uint64
	Time     int64 // ms
	Message  string
	Ops      []Op
	Size     int    // the chunk's byte length as received (compressed or not)
	BodySize int    // the change body's length, decompressed
	Extra    []byte // bytes after the columns (kept by automerge for future use; normally empty)
}

// The op columns automerge 0.5 writes (storage/change/change_op_columns.rs,
// storage/document/doc_op_columns.rs).
var (
	specObjActor  = spec(0, colActor)
	specObjCtr    = spec(0, colInt)
	specKeyActor  = spec(1, colActor)
	specKeyCtr    = spec(1, colDelta)
	specKeyStr    = spec(1, colString)
	specIDActor   = spec(2, colActor)
	specIDCtr     = spec(2, colDelta)
	specInsert    = spec(3, colBool)
	specAction    = spec(4, colInt)
	specValMeta   = spec(5, colValMeta)
	specValRaw    = spec(5, colValRaw)
	specPredGroup = spec(7, colGroup)
	specPredActor = spec(7, colActor)
	specPredCtr   = spec(7, colDelta)
	specSuccGroup = spec(8, colGroup)
	specSuccActor = spec(8, colActor)
	specSuccCtr   = spec(8, colDelta)
	specExpand    = spec(9, colBool)
	specMarkName  = spec(10, colString)

	changeOpColumns = map[colSpec]string{
		specObjActor: "obj actor", specObjCtr: "obj counter",
		specKeyActor: "key actor", specKeyCtr: "key counter", specKeyStr: "key string",
		specInsert: "insert", specAction: "action", specValMeta: "value", specValRaw: "value raw",
		specPredGroup: "pred", specPredActor: "pred actor", specPredCtr: "pred counter",
		specExpand: "expand", specMarkName: "mark name",
	}
	docOpColumns = map[colSpec]string{
		specObjActor: "obj actor", specObjCtr: "obj counter",
		specKeyActor: "key actor", specKeyCtr: "key counter", specKeyStr: "key string",
		specIDActor: "id actor", specIDCtr: "id counter",
		specInsert: "insert", specAction: "action", specValMeta: "value", specValRaw: "value raw",
		specSuccGroup: "succ", specSuccActor: "succ actor", specSuccCtr: "succ counter",
		specExpand: "expand", specMarkName: "mark name",
	}
)

// decodeChange decodes one change chunk (type 1 or 2) from the front of b,
// returning it and its byte length.
func decodeChange(b []byte) (*ChangeOps, int, error) { return decodeChangeOnly(b, nil) }

// ActionError is returned by decoders given an action filter for the
// first op whose action the filter refuses, before any op is
// materialised: a change of 200,000 text inserts is refused without
// allocating 200,000 ops.
type ActionError struct {
	Action Action
}

func (e *ActionError) Error() string { return fmt.Sprintf("an op with action %d", e.Action) }

// decodeChangeOnly is decodeChange that refuses, early, ops whose action
// allowed refuses (nil allows all).
func decodeChangeOnly(b []byte, allowed func(Action) bool) (*ChangeOps, int, error) {
	body, h, end, err := changeChunk(b, true)
	if err != nil {
		return nil, 0, err
	}
	c := &ChangeOps{Hash: Hash(h), Size: end, BodySize: len(body)}
	p := parser{b: body, what: "change"}
	ndeps := p.count("dependency count", 32)
	if p.err == nil {
		c.Deps = make([]Hash, ndeps)
		for i := range c.Deps {
			copy(c.Deps[i][:], p.take(32, "dependency"))
			if i > 0 && bytes.Compare(c.Deps[i-1][:], c.Deps[i][:]) >= 0 {
				p.fail("dependencies not in ascending order")
			}
		}
	}
	author := p.actor()
	c.Seq = p.uleb("seq")
	c.StartOp = p.uleb("start op")
	if p.err == nil && (c.StartOp == 0 || c.StartOp > math.MaxUint32) {
		p.fail("start op %d out of range", c.StartOp)
	}
	c.Time = p.sleb("time")
	msg := p.bytes("message")
	if p.err == nil && !utf8.Valid(msg) {
		p.fail("message is not UTF-8")
	}
	c.Message = string(msg)
	nact := p.count("actor count", 2)
	if p.err == nil {
		c.Actors = make([][]byte, 0, nact+1)
		c.Actors = append(c.Actors, author)
		for i := uint64(0); i < nact && p.err == nil; i++ {
			c.Actors = append(c.Actors, p.actor())
		}
		if p.err == nil {
			if err := uniqueActors(c.Actors, false); err != nil {
				return nil, 0, fmt.Errorf("change: %w", err)
			}
		}
	}
	if p.err != nil {
		return nil, 0, p.err
	}
	meta, n, err := parseColumnMeta(p.b[p.off:], "change ops", changeOpColumns, false)
	if err != nil {
		return nil, 0, err
	}
	p.off += n
	if meta.total > uint64(len(p.b)-p.off) {
		return nil, 0, formatErr("change: columns claim %d bytes, %d remain", meta.total, len(p.b)-p.off)
	}
	data := p.b[p.off : p.off+int(meta.total)]
	if rest := p.b[p.off+int(meta.total):]; len(rest) > 0 {
		c.Extra = rest
	}
	cols, err := meta.columns(data, "change ops", changeOpColumns)
	if err != nil {
		return nil, 0, err
	}
	c.Ops, err = decodeOps(cols, len(c.Actors), false, c.StartOp, opBound(end), allowed)
	if err != nil {
		return nil, 0, fmt.Errorf("change: %w", err)
	}
	return c, end, nil
}

// uniqueActors refuses an actor table with an empty or repeated actor (or,
// if sorted, one out of ascending order).
func uniqueActors(actors [][]byte, sorted bool) error {
	seen := make(map[string]bool, len(actors))
	for i, a := range actors {
		if len(a) == 0 {
			return formatErr("actor %d is empty", i)
		}
		if seen[string(a)] {
			return formatErr("actor %x appears twice", a)
		}
		seen[string(a)] = true
		if sorted && i > 0 && bytes.Compare(actors[i-1], a) > 0 {
			return formatErr("actors not in ascending order at %d", i)
		}
	}
	return nil
}

// decodeOps decodes the op columns of a change (doc false: pred lists, IDs
// from startOp) or a document (doc true: id columns, succ lists).
func decodeOps(cols []column, nactors int, doc bool, startOp uint64, bound uint64, allowed func(Action) bool) ([]Op, error) {
	get := func(s colSpec) []byte { return findColumn(cols, s) }
	// The action column is required for every op: it gives the op count.
	n := uint64(0)
	act := newRLE("action", get(specAction), rleUint, bound)
	for act.off < len(act.b) || act.left > 0 {
		if a, _, ok, err := act.next(); err != nil {
			return nil, err
		} else if !ok {
			return nil, act.errf("null action")
		} else if allowed != nil && (a > 255 || !allowed(Action(a))) {
			return nil, &ActionError{Action(min(a, 255))}
		}
		n++
	}
	if err := act.done(); err != nil {
		return nil, err
	}
	listName, gs, as, cs := "pred", specPredGroup, specPredActor, specPredCtr
	if doc {
		listName, gs, as, cs = "succ", specSuccGroup, specSuccActor, specSuccCtr
	}
	// The op lists' total length, to allocate them at once.
	total := uint64(0)
	grp := newRLE(listName, get(gs), rleUint, n)
	for i := uint64(0); i < n; i++ {
		v, _, ok, err := grp.next()
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, formatErr("%s column: null count for op %d", listName, i)
		}
		if v > bound-total {
			return nil, formatErr("%s column: op %d's list of %d takes the total past %d", listName, i, v, bound)
		}
		total += v
	}
	if err := grp.done(); err != nil {
		return nil, err
	}
	if n == 0 {
		for _, c := range cols {
			if len(c.data) > 0 {
				return nil, formatErr("%v has data but there are no ops", c.spec)
			}
		}
		return nil, nil
	}
	if len(get(specInsert)) == 0 {
		return nil, formatErr("insert column missing")
	}
	if len(get(specValMeta)) == 0 {
		return nil, formatErr("value column missing")
	}
	oa, oc := get(specObjActor), get(specObjCtr)
	if (len(oa) == 0) != (len(oc) == 0) {
		return nil, formatErr("obj actor and counter columns: one is empty, the other not")
	}
	ops := make([]Op, n)
	lists := make([]OpID, total)
	var (
		objA    = newRLE("obj actor", oa, rleUint, n)
		objC    = newRLE("obj counter", oc, rleUint, n)
		keyA    = newRLE("key actor", get(specKeyActor), rleUint, n)
		keyC    = newDelta("key counter", get(specKeyCtr), n)
		keyS    = newRLE("key string", get(specKeyStr), rleStr, n)
		idA     = newRLE("id actor", get(specIDActor), rleUint, n)
		idC     = newDelta("id counter", get(specIDCtr), n)
		ins     = newBool("insert", get(specInsert), n)
		vals    = newValues("value", get(specValMeta), get(specValRaw), n)
		exp     = newBool("expand", get(specExpand), n)
		mark    = newRLE("mark name", get(specMarkName), rleStr, n)
		lgrp    = newRLE(listName, get(gs), rleUint, n)
		lact    = newRLE(listName+" actor", get(as), rleUint, total)
		lctr    = newDelta(listName+" counter", get(cs), total)
		actions = newRLE("action", get(specAction), rleUint, n)
	)
	actor := func(v uint64, what string, i int) (int, error) {
		if v >= uint64(nactors) {
			return 0, formatErr("op %d: %s actor index %d, the table has %d", i, what, v, nactors)
		}
		return int(v), nil
	}
	li := 0
	for i := range ops {
		op := &ops[i]
		a, _, _, err := actions.next()
		if err != nil {
			return nil, err
		}
		if a > math.MaxUint8 {
			return nil, formatErr("op %d: action %d", i, a)
		}
		op.Action = Action(a)
		// ID
		if doc {
			a, _, aok, err := idA.next()
			if err != nil {
				return nil, err
			}
			c, cok, err := idC.next()
			if err != nil {
				return nil, err
			}
			if !aok || !cok || c <= 0 {
				return nil, formatErr("op %d: missing or zero id", i)
			}
			if op.ID.Actor, err = actor(a, "id", i); err != nil {
				return nil, err
			}
			op.ID.Counter = uint64(c)
		} else {
			op.ID = OpID{Counter: startOp + uint64(i)}
		}
		// Obj
		a, _, aok, err := objA.next()
		if err != nil {
			return nil, err
		}
		c, _, cok, err := objC.next()
		if err != nil {
			return nil, err
		}
		switch {
		case !aok && !cok:
			op.Root = true
		case aok && cok && c > 0:
			if op.Obj.Actor, err = actor(a, "obj", i); err != nil {
				return nil, err
			}
			op.Obj.Counter = c
		default:
			return nil, formatErr("op %d: bad object (actor %v counter %v %d)", i, aok, cok, c)
		}
		// Key
		a, _, aok, err = keyA.next()
		if err != nil {
			return nil, err
		}
		kc, kcok, err := keyC.next()
		if err != nil {
			return nil, err
		}
		_, ks, ksok, err := keyS.next()
		if err != nil {
			return nil, err
		}
		switch {
		case ksok && !aok && !kcok:
			op.Key, op.KeyIsStr = string(ks), true
		case !ksok && !aok && kcok && kc == 0:
			// HEAD
		case !ksok && aok && kcok && kc > 0:
			if op.Elem.Actor, err = actor(a, "key", i); err != nil {
				return nil, err
			}
			op.Elem.Counter = uint64(kc)
		default:
			return nil, formatErr("op %d: bad key (actor %v counter %v %d string %v)", i, aok, kcok, kc, ksok)
		}
		if op.Insert, err = ins.next(); err != nil {
			return nil, err
		}
		if op.Type, op.Value, err = vals.next(); err != nil {
			return nil, err
		}
		// Pred or succ
		cnt, _, _, err := lgrp.next()
		if err != nil {
			return nil, err
		}
		l := lists[li : li+int(cnt) : li+int(cnt)]
		li += int(cnt)
		for j := range l {
			a, _, aok, err := lact.next()
			if err != nil {
				return nil, err
			}
			c, cok, err := lctr.next()
			if err != nil {
				return nil, err
			}
			if !aok || !cok || c <= 0 {
				return nil, formatErr("op %d: %s %d missing or zero", i, listName, j)
			}
			if l[j].Actor, err = actor(a, listName, i); err != nil {
				return nil, err
			}
			l[j].Counter = uint64(c)
		}
		if len(l) > 0 {
			if doc {
				op.Succ = l
			} else {
				op.Pred = l
			}
		}
		if op.Expand, err = exp.next(); err != nil {
			return nil, err
		}
		_, mn, mok, err := mark.next()
		if err != nil {
			return nil, err
		}
		op.MarkName, op.MarkNamed = string(mn), mok
	}
	for _, d := range []interface{ done() error }{objA, objC, keyA, keyC.rle, keyS, idA, idC.rle, ins, vals, exp, mark, lgrp, lact, lctr.rle} {
		if err := d.done(); err != nil {
			return nil, err
		}
	}
	if len(get(specExpand)) > 0 && !exp.trues {
		return nil, formatErr("expand column with no true value (automerge omits it)")
	}
	return ops, nil
}

// DocOps is one decoded document chunk (automerge Save output).
type DocOps struct {
	Actors  [][]byte
	Heads   []Hash
	Changes int  // number of changes in the change-metadata columns
	Ops     []Op // in stored order; ID decoded from the id columns; Succ filled
	// Meta describes each change: its actor (an index into Actors), seq,
	// max op and message. An op (counter c, actor a) belongs to the
	// change of actor a with the smallest MaxOp >= c.
	Meta []DocChange
}

// DocChange is one change's metadata in a document chunk.
type DocChange struct {
	Actor   int
	Seq     uint64
	MaxOp   uint64
	Message string
}

// The change-metadata columns of a document
// (storage/document/doc_change_columns.rs).
var (
	specChActor     = spec(0, colActor)
	specChSeq       = spec(0, colDelta)
	specChMaxOp     = spec(1, colDelta)
	specChTime      = spec(2, colDelta)
	specChMessage   = spec(3, colString)
	specChDepsGroup = spec(4, colGroup)
	specChDepsIdx   = spec(4, colDelta)
	specChExtraMeta = spec(5, colValMeta)
	specChExtraRaw  = spec(5, colValRaw)

	docChangeColumns = map[colSpec]string{
		specChActor: "actor", specChSeq: "seq", specChMaxOp: "max op", specChTime: "time",
		specChMessage: "message", specChDepsGroup: "deps", specChDepsIdx: "deps index",
		specChExtraMeta: "extra", specChExtraRaw: "extra raw",
	}
)

// decodeDocument decodes exactly one document chunk: the whole of b.
func decodeDocument(b []byte) (*DocOps, error) { return decodeDocumentOnly(b, nil) }

// decodeDocumentOnly is decodeDocument that refuses, early, ops whose
// action allowed refuses (nil allows all).
func decodeDocumentOnly(b []byte, allowed func(Action) bool) (*DocOps, error) {
	if len(b) < 9 || string(b[:4]) != amMagic {
		return nil, fmt.Errorf("%w: missing chunk magic", errChunk)
	}
	if b[8] != chunkDocument {
		return nil, fmt.Errorf("%w: chunk type %d, not a document", errChunk, b[8])
	}
	n, ln, err := uleb(b[9:])
	if err != nil {
		return nil, fmt.Errorf("%w: chunk length: %v", errChunk, err)
	}
	start := 9 + ln
	if n != uint64(len(b)-start) {
		return nil, fmt.Errorf("%w: document claims %d bytes, %d present", errChunk, n, len(b)-start)
	}
	if h := sha256.Sum256(b[8:]); !bytes.Equal(h[:4], b[4:8]) {
		return nil, fmt.Errorf("%w: chunk checksum mismatch", errChunk)
	}
	d := &DocOps{}
	p := parser{b: b[start:], what: "document"}
	nact := p.count("actor count", 2)
	for i := uint64(0); i < nact && p.err == nil; i++ {
		d.Actors = append(d.Actors, p.actor())
	}
	if p.err == nil {
		if err := uniqueActors(d.Actors, true); err != nil {
			return nil, fmt.Errorf("document: %w", err)
		}
	}
	nheads := p.count("head count", 32)
	if p.err == nil {
		d.Heads = make([]Hash, nheads)
		for i := range d.Heads {
			copy(d.Heads[i][:], p.take(32, "head"))
		}
	}
	if p.err != nil {
		return nil, p.err
	}
	chMeta, k, err := parseColumnMeta(p.b[p.off:], "document changes", docChangeColumns, true)
	if err != nil {
		return nil, err
	}
	p.off += k
	opMeta, k, err := parseColumnMeta(p.b[p.off:], "document ops", docOpColumns, true)
	if err != nil {
		return nil, err
	}
	p.off += k
	rest := p.b[p.off:]
	if chMeta.total > uint64(len(rest)) || opMeta.total > uint64(len(rest))-chMeta.total {
		return nil, formatErr("document: columns claim %d+%d bytes, %d remain", chMeta.total, opMeta.total, len(rest))
	}
	chData, rest := rest[:chMeta.total], rest[chMeta.total:]
	opData, rest := rest[:opMeta.total], rest[opMeta.total:]
	chCols, err := chMeta.columns(chData, "document changes", docChangeColumns)
	if err != nil {
		return nil, err
	}
	opCols, err := opMeta.columns(opData, "document ops", docOpColumns)
	if err != nil {
		return nil, err
	}
	bound := opBound(len(b))
	if d.Meta, err = decodeDocChanges(chCols, len(d.Actors), bound); err != nil {
		return nil, fmt.Errorf("document changes: %w", err)
	}
	d.Changes = len(d.Meta)
	if d.Ops, err = decodeOps(opCols, len(d.Actors), true, 0, bound, allowed); err != nil {
		return nil, fmt.Errorf("document ops: %w", err)
	}
	// Optional head indexes: one uLEB per head, each a change index.
	if len(rest) > 0 {
		q := parser{b: rest, what: "document head indexes"}
		for range d.Heads {
			if i := q.uleb("head index"); q.err == nil && i >= uint64(d.Changes) {
				q.fail("head index %d of %d changes", i, d.Changes)
			}
		}
		if q.err == nil && q.off != len(rest) {
			q.fail("%d trailing bytes", len(rest)-q.off)
		}
		if q.err != nil {
			return nil, q.err
		}
	}
	return d, nil
}

// decodeDocChanges checks a document's change-metadata columns and returns
// the changes they describe.
func decodeDocChanges(cols []column, nactors int, bound uint64) ([]DocChange, error) {
	get := func(s colSpec) []byte { return findColumn(cols, s) }
	n := uint64(0)
	var meta []DocChange
	act := newRLE("actor", get(specChActor), rleUint, bound)
	for act.off < len(act.b) || act.left > 0 {
		a, _, ok, err := act.next()
		if err != nil {
			return nil, err
		}
		if !ok || a >= uint64(nactors) {
			return nil, act.errf("change %d: actor %d of %d (or null)", n, a, nactors)
		}
		meta = append(meta, DocChange{Actor: int(a)})
		n++
	}
	if err := act.done(); err != nil {
		return nil, err
	}
	var (
		seq   = newDelta("seq", get(specChSeq), n)
		maxOp = newDelta("max op", get(specChMaxOp), n)
		tm    = newDelta("time", get(specChTime), n)
		msg   = newRLE("message", get(specChMessage), rleStr, n)
		grp   = newRLE("deps", get(specChDepsGroup), rleUint, n)
		extra = newValues("extra", get(specChExtraMeta), get(specChExtraRaw), n)
	)
	total := uint64(0)
	for i := uint64(0); i < n; i++ {
		for _, d := range []*deltaReader{seq, maxOp, tm} {
			v, ok, err := d.next()
			if err != nil {
				return nil, err
			}
			if !ok || (d != tm && v < 0) {
				return nil, d.rle.errf("change %d: %d (or null)", i, v)
			}
			switch d {
			case seq:
				meta[i].Seq = uint64(v)
			case maxOp:
				meta[i].MaxOp = uint64(v)
			}
		}
		_, m, _, err := msg.next()
		if err != nil {
			return nil, err
		}
		meta[i].Message = string(m)
		c, _, ok, err := grp.next()
		if err != nil {
			return nil, err
		}
		if !ok || c > bound-total {
			return nil, grp.errf("change %d: %d deps", i, c)
		}
		total += c
		if len(extra.meta.b) > 0 {
			t, _, err := extra.next()
			if err != nil {
				return nil, err
			}
			if t != ValBytes {
				return nil, formatErr("extra column: change %d: type %d, not bytes", i, t)
			}
		}
	}
	idx := newDelta("deps index", get(specChDepsIdx), total)
	for i := uint64(0); i < total; i++ {
		v, ok, err := idx.next()
		if err != nil {
			return nil, err
		}
		if !ok || v < 0 || uint64(v) >= n {
			return nil, idx.rle.errf("dep %d: change index %d of %d (or null)", i, v, n)
		}
	}
	for _, d := range []interface{ done() error }{seq.rle, maxOp.rle, tm.rle, msg, grp, extra, idx.rle} {
		if err := d.done(); err != nil {
			return nil, err
		}
	}
	return meta, nil
}

// parser reads a chunk's header fields; the first error sticks.
type parser struct {
	b    []byte
	off  int
	what string
	err  error
}

func (p *parser) fail(format string, args ...any) {
	if p.err == nil {
		p.err = formatErr("%s at offset %d: %s", p.what, p.off, fmt.Sprintf(format, args...))
	}
}

func (p *parser) uleb(what string) uint64 {
	if p.err != nil {
		return 0
	}
	v, n, err := uleb(p.b[p.off:])
	if err != nil {
		p.fail("%s: %v", what, err)
		return 0
	}
	p.off += n
	return v
}

func (p *parser) sleb(what string) int64 {
	if p.err != nil {
		return 0
	}
	v, n, err := sleb(p.b[p.off:])
	if err != nil {
		p.fail("%s: %v", what, err)
		return 0
	}
	p.off += n
	return v
}

// count reads a count of items of at least size bytes each.
func (p *parser) count(what string, size int) uint64 {
	v := p.uleb(what)
	if p.err == nil && v > uint64((len(p.b)-p.off)/size) {
		p.fail("%s %d does not fit in %d bytes", what, v, len(p.b)-p.off)
		return 0
	}
	return v
}

func (p *parser) take(n int, what string) []byte {
	if p.err != nil {
		return nil
	}
	if n > len(p.b)-p.off {
		p.fail("%s: %d bytes, %d remain", what, n, len(p.b)-p.off)
		return nil
	}
	b := p.b[p.off : p.off+n : p.off+n]
	p.off += n
	return b
}

// actor reads an actor ID: a uLEB length and that many bytes, not empty.
func (p *parser) actor() []byte {
	a := p.bytes("actor")
	if p.err == nil && len(a) == 0 {
		p.fail("empty actor ID")
	}
	return a
}

// bytes reads a uLEB length and that many bytes.
func (p *parser) bytes(what string) []byte {
	n := p.uleb(what + " length")
	if p.err == nil && n > uint64(len(p.b)-p.off) {
		p.fail("%s of %d bytes, %d remain", what, n, len(p.b)-p.off)
	}
	return p.take(int(n), what)
}
