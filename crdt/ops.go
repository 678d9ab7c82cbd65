package crdt

import (
	"bytes"
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
	if err := parseChangeHeader(&p, c); err != nil {
		return nil, 0, err
	}
	cols, extra, err := changeColumns(p.b[p.off:])
	if err != nil {
		return nil, 0, err
	}
	c.Extra = extra
	c.Ops, err = decodeOps(cols, len(c.Actors), false, c.StartOp, opBound(end), allowed)
	if err != nil {
		return nil, 0, fmt.Errorf("change: %w", err)
	}
	return c, end, nil
}

// parseChangeHeader reads a change body's fields before its columns into
// c, leaving p at the column metadata.
func parseChangeHeader(p *parser, c *ChangeOps) error {
	c.Deps = parseDeps(p)
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
	var err error
	if c.Actors, err = parseChangeActors(p, author); err != nil {
		return err
	}
	return p.err
}

// parseDeps reads a change's dependencies, in ascending order.
func parseDeps(p *parser) []Hash {
	n := p.count("dependency count", 32)
	if p.err != nil {
		return nil
	}
	deps := make([]Hash, n)
	for i := range deps {
		copy(deps[i][:], p.take(32, "dependency"))
		if i > 0 && bytes.Compare(deps[i-1][:], deps[i][:]) >= 0 {
			p.fail("dependencies not in ascending order")
		}
	}
	return deps
}

// parseChangeActors reads a change's actor table after its author: the
// author first, then the other actors, none empty or repeated.
func parseChangeActors(p *parser, author []byte) ([][]byte, error) {
	nact := p.count("actor count", 2)
	if p.err != nil {
		return nil, nil
	}
	actors := make([][]byte, 0, nact+1)
	actors = append(actors, author)
	for i := uint64(0); i < nact && p.err == nil; i++ {
		actors = append(actors, p.actor())
	}
	if p.err != nil {
		return actors, nil
	}
	if err := uniqueActors(actors, false); err != nil {
		return nil, fmt.Errorf("change: %w", err)
	}
	return actors, nil
}

// changeColumns reads a change's column metadata from the front of b and
// the columns it describes, and returns the bytes after them (nil if
// none).
func changeColumns(b []byte) (cols []column, extra []byte, err error) {
	meta, n, err := parseColumnMeta(b, "change ops", changeOpColumns, false)
	if err != nil {
		return nil, nil, err
	}
	b = b[n:]
	if meta.total > uint64(len(b)) {
		return nil, nil, formatErr("change: columns claim %d bytes, %d remain", meta.total, len(b))
	}
	if cols, err = meta.columns(b[:meta.total], "change ops", changeOpColumns); err != nil {
		return nil, nil, err
	}
	if rest := b[meta.total:]; len(rest) > 0 {
		extra = rest
	}
	return cols, extra, nil
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
// from startOp) or a document (doc true: id columns, succ lists). A first
// pass counts the ops and their lists' entries, so that both are allocated
// once, within bound, and allowed refuses an action before either is.
func decodeOps(cols []column, nactors int, doc bool, startOp uint64, bound uint64, allowed func(Action) bool) ([]Op, error) {
	n, total, err := countOps(cols, opListOf(doc), bound, allowed)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, noOps(cols)
	}
	if err := requiredOpColumns(cols); err != nil {
		return nil, err
	}
	ops := make([]Op, n)
	c := newOpColumns(cols, n, total, nactors, doc, startOp)
	for i := range ops {
		if err := c.read(&ops[i], i); err != nil {
			return nil, err
		}
	}
	if err := c.done(); err != nil {
		return nil, err
	}
	return ops, nil
}

// opList names the columns of each op's list of op IDs: its predecessors
// in a change, its successors in a document.
type opList struct {
	name                  string
	group, actor, counter colSpec
}

func opListOf(doc bool) opList {
	if doc {
		return opList{"succ", specSuccGroup, specSuccActor, specSuccCtr}
	}
	return opList{"pred", specPredGroup, specPredActor, specPredCtr}
}

// countOps is decodeOps' first pass: the number of ops and the total
// length of their lists.
func countOps(cols []column, list opList, bound uint64, allowed func(Action) bool) (n, total uint64, err error) {
	if n, err = countActions(findColumn(cols, specAction), bound, allowed); err != nil {
		return 0, 0, err
	}
	if total, err = list.total(findColumn(cols, list.group), n, bound); err != nil {
		return 0, 0, err
	}
	return n, total, nil
}

// countActions counts the values of the action column, which every op
// has, refusing a null or an action allowed (if not nil) refuses.
func countActions(col []byte, bound uint64, allowed func(Action) bool) (uint64, error) {
	n := uint64(0)
	act := newRLE("action", col, rleUint, bound)
	for act.off < len(act.b) || act.left > 0 {
		a, _, ok, err := act.next()
		if err != nil {
			return 0, err
		}
		if !ok {
			return 0, act.errf("null action")
		}
		if allowed != nil && (a > 255 || !allowed(Action(a))) {
			return 0, &ActionError{Action(min(a, 255))}
		}
		n++
	}
	if err := act.done(); err != nil {
		return 0, err
	}
	return n, nil
}

// total sums the list lengths of n ops from the group column grp, each
// present and the sum within bound.
func (l opList) total(grp []byte, n, bound uint64) (uint64, error) {
	total := uint64(0)
	r := newRLE(l.name, grp, rleUint, n)
	for i := uint64(0); i < n; i++ {
		v, _, ok, err := r.next()
		if err != nil {
			return 0, err
		}
		if !ok {
			return 0, formatErr("%s column: null count for op %d", l.name, i)
		}
		if v > bound-total {
			return 0, formatErr("%s column: op %d's list of %d takes the total past %d", l.name, i, v, bound)
		}
		total += v
	}
	if err := r.done(); err != nil {
		return 0, err
	}
	return total, nil
}

// noOps refuses columns with data when the action column has no ops.
func noOps(cols []column) error {
	for _, c := range cols {
		if len(c.data) > 0 {
			return formatErr("%v has data but there are no ops", c.spec)
		}
	}
	return nil
}

// requiredOpColumns refuses, when there are ops, a missing insert or
// value column, or an object given by only one of its two columns.
func requiredOpColumns(cols []column) error {
	if len(findColumn(cols, specInsert)) == 0 {
		return formatErr("insert column missing")
	}
	if len(findColumn(cols, specValMeta)) == 0 {
		return formatErr("value column missing")
	}
	if (len(findColumn(cols, specObjActor)) == 0) != (len(findColumn(cols, specObjCtr)) == 0) {
		return formatErr("obj actor and counter columns: one is empty, the other not")
	}
	return nil
}

// opColumns reads the ops from their columns, one op at a time: every
// reader advances by one value (or one list) per op. The readers are held
// by value, so that they cost one allocation, not one each.
type opColumns struct {
	nactors int    // the actor table's length, which bounds actor indexes
	doc     bool   // a document's ops: IDs from the id columns, succ lists
	startOp uint64 // a change's first op counter
	list    string // "pred" or "succ"
	lists   []OpID // the lists' entries not yet given to an op

	actions, objA, objC, keyA, keyS, idA, mark rleReader
	keyC, idC                                  deltaReader
	ins, exp                                   boolReader
	vals                                       valueReader

	lgrp, lact rleReader // the list's group and actor columns
	lctr       deltaReader
}

// newOpColumns makes the readers of n ops whose lists hold total entries,
// and allocates those entries.
func newOpColumns(cols []column, n, total uint64, nactors int, doc bool, startOp uint64) opColumns {
	get := func(s colSpec) []byte { return findColumn(cols, s) }
	list := opListOf(doc)
	return opColumns{
		nactors: nactors,
		doc:     doc,
		startOp: startOp,
		list:    list.name,
		lists:   make([]OpID, total),
		objA:    *newRLE("obj actor", get(specObjActor), rleUint, n),
		objC:    *newRLE("obj counter", get(specObjCtr), rleUint, n),
		keyA:    *newRLE("key actor", get(specKeyActor), rleUint, n),
		keyC:    *newDelta("key counter", get(specKeyCtr), n),
		keyS:    *newRLE("key string", get(specKeyStr), rleStr, n),
		idA:     *newRLE("id actor", get(specIDActor), rleUint, n),
		idC:     *newDelta("id counter", get(specIDCtr), n),
		ins:     *newBool("insert", get(specInsert), n),
		vals:    *newValues("value", get(specValMeta), get(specValRaw), n),
		exp:     *newBool("expand", get(specExpand), n),
		mark:    *newRLE("mark name", get(specMarkName), rleStr, n),
		lgrp:    *newRLE(list.name, get(list.group), rleUint, n),
		lact:    *newRLE(list.name+" actor", get(list.actor), rleUint, total),
		lctr:    *newDelta(list.name+" counter", get(list.counter), total),
		actions: *newRLE("action", get(specAction), rleUint, n),
	}
}

// read reads op i.
func (c *opColumns) read(op *Op, i int) error {
	if err := c.readAction(op, i); err != nil {
		return err
	}
	if err := c.readID(op, i); err != nil {
		return err
	}
	if err := c.readObj(op, i); err != nil {
		return err
	}
	if err := c.readKey(op, i); err != nil {
		return err
	}
	if err := c.readValue(op); err != nil {
		return err
	}
	if err := c.readList(op, i); err != nil {
		return err
	}
	return c.readMark(op)
}

// actor checks actor index v (of op i's what) against the actor table.
func (c *opColumns) actor(v uint64, what string, i int) (int, error) {
	if v >= uint64(c.nactors) {
		return 0, formatErr("op %d: %s actor index %d, the table has %d", i, what, v, c.nactors)
	}
	return int(v), nil
}

// opID reads an op ID from an actor and a counter column; ok is false
// unless both are present and the counter positive.
func (c *opColumns) opID(ar *rleReader, cr *deltaReader, what string, i int) (id OpID, ok bool, err error) {
	a, _, aok, err := ar.next()
	if err != nil {
		return id, false, err
	}
	ctr, cok, err := cr.next()
	if err != nil {
		return id, false, err
	}
	if !aok || !cok || ctr <= 0 {
		return id, false, nil
	}
	if id.Actor, err = c.actor(a, what, i); err != nil {
		return id, false, err
	}
	id.Counter = uint64(ctr)
	return id, true, nil
}

func (c *opColumns) readAction(op *Op, i int) error {
	a, _, _, err := c.actions.next()
	if err != nil {
		return err
	}
	if a > math.MaxUint8 {
		return formatErr("op %d: action %d", i, a)
	}
	op.Action = Action(a)
	return nil
}

// readID reads a document op's ID from the id columns; a change op's is
// its place after startOp.
func (c *opColumns) readID(op *Op, i int) error {
	if !c.doc {
		op.ID = OpID{Counter: c.startOp + uint64(i)}
		return nil
	}
	id, ok, err := c.opID(&c.idA, &c.idC, "id", i)
	if err != nil {
		return err
	}
	if !ok {
		return formatErr("op %d: missing or zero id", i)
	}
	op.ID = id
	return nil
}

// readObj reads the op's object: the root (both columns null) or an op ID.
func (c *opColumns) readObj(op *Op, i int) error {
	a, _, aok, err := c.objA.next()
	if err != nil {
		return err
	}
	ctr, _, cok, err := c.objC.next()
	if err != nil {
		return err
	}
	switch {
	case !aok && !cok:
		op.Root = true
	case aok && cok && ctr > 0:
		if op.Obj.Actor, err = c.actor(a, "obj", i); err != nil {
			return err
		}
		op.Obj.Counter = ctr
	default:
		return formatErr("op %d: bad object (actor %v counter %v %d)", i, aok, cok, ctr)
	}
	return nil
}

// readKey reads the op's key: a map key string, HEAD (counter 0 and no
// actor) or a list element's op ID.
func (c *opColumns) readKey(op *Op, i int) error {
	a, _, aok, err := c.keyA.next()
	if err != nil {
		return err
	}
	kc, kcok, err := c.keyC.next()
	if err != nil {
		return err
	}
	_, ks, ksok, err := c.keyS.next()
	if err != nil {
		return err
	}
	switch {
	case ksok && !aok && !kcok:
		op.Key, op.KeyIsStr = string(ks), true
	case !ksok && !aok && kcok && kc == 0:
		// HEAD
	case !ksok && aok && kcok && kc > 0:
		if op.Elem.Actor, err = c.actor(a, "key", i); err != nil {
			return err
		}
		op.Elem.Counter = uint64(kc)
	default:
		return formatErr("op %d: bad key (actor %v counter %v %d string %v)", i, aok, kcok, kc, ksok)
	}
	return nil
}

// readValue reads the op's insert flag and its value.
func (c *opColumns) readValue(op *Op) error {
	var err error
	if op.Insert, err = c.ins.next(); err != nil {
		return err
	}
	op.Type, op.Value, err = c.vals.next()
	return err
}

// readList reads the op's pred (change) or succ (document) list into the
// next entries of c.lists; an empty list stays nil.
func (c *opColumns) readList(op *Op, i int) error {
	cnt, _, _, err := c.lgrp.next()
	if err != nil {
		return err
	}
	l := c.lists[:cnt:cnt]
	c.lists = c.lists[cnt:]
	for j := range l {
		id, ok, err := c.opID(&c.lact, &c.lctr, c.list, i)
		if err != nil {
			return err
		}
		if !ok {
			return formatErr("op %d: %s %d missing or zero", i, c.list, j)
		}
		l[j] = id
	}
	switch {
	case len(l) == 0:
	case c.doc:
		op.Succ = l
	default:
		op.Pred = l
	}
	return nil
}

// readMark reads the op's expand flag and mark name.
func (c *opColumns) readMark(op *Op) error {
	var err error
	if op.Expand, err = c.exp.next(); err != nil {
		return err
	}
	_, mn, mok, err := c.mark.next()
	if err != nil {
		return err
	}
	op.MarkName, op.MarkNamed = string(mn), mok
	return nil
}

// done refuses columns with values left after the last op, and an expand
// column that automerge would have omitted. (The action column was checked
// by countActions.)
func (c *opColumns) done() error {
	for _, d := range []interface{ done() error }{&c.objA, &c.objC, &c.keyA, c.keyC.rle, &c.keyS, &c.idA, c.idC.rle, &c.ins, &c.vals, &c.exp, &c.mark, &c.lgrp, &c.lact, c.lctr.rle} {
		if err := d.done(); err != nil {
			return err
		}
	}
	if len(c.exp.b) > 0 && !c.exp.trues {
		return formatErr("expand column with no true value (automerge omits it)")
	}
	return nil
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
