package crdt

import (
	"bytes"
	"crypto/sha256"
	"fmt"
)

// Document chunks (automerge Save output): the actor table, the heads,
// the change-metadata columns (each change's actor, seq, max op, time,
// message, dependencies and extra bytes) and the op columns, decoded with
// the op decoder of ops.go, whose ops here carry IDs and successors.

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
	body, err := documentBody(b)
	if err != nil {
		return nil, err
	}
	d := &DocOps{}
	p := parser{b: body, what: "document"}
	if d.Actors, d.Heads, err = parseDocHeader(&p); err != nil {
		return nil, err
	}
	chCols, opCols, rest, err := docColumns(p.b[p.off:])
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
	if err := checkHeadIndexes(rest, len(d.Heads), d.Changes); err != nil {
		return nil, err
	}
	return d, nil
}

// documentBody checks a document chunk's framing (magic, type, a length
// that covers exactly the rest of b, checksum) and returns its body.
func documentBody(b []byte) ([]byte, error) {
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
	return b[start:], nil
}

// parseDocHeader reads a document body's actor table (unique, ascending)
// and its heads, leaving p at the column metadata.
func parseDocHeader(p *parser) (actors [][]byte, heads []Hash, err error) {
	nact := p.count("actor count", 2)
	for i := uint64(0); i < nact && p.err == nil; i++ {
		actors = append(actors, p.actor())
	}
	if p.err == nil {
		if err := uniqueActors(actors, true); err != nil {
			return nil, nil, fmt.Errorf("document: %w", err)
		}
	}
	nheads := p.count("head count", 32)
	if p.err == nil {
		heads = make([]Hash, nheads)
		for i := range heads {
			copy(heads[i][:], p.take(32, "head"))
		}
	}
	if p.err != nil {
		return nil, nil, p.err
	}
	return actors, heads, nil
}

// docColumns reads a document's two column metadata blocks (changes, then
// ops) from the front of b and the columns they describe, and returns the
// bytes after them: the optional head indexes.
func docColumns(b []byte) (ch, ops []column, rest []byte, err error) {
	chMeta, k, err := parseColumnMeta(b, "document changes", docChangeColumns, true)
	if err != nil {
		return nil, nil, nil, err
	}
	b = b[k:]
	opMeta, k, err := parseColumnMeta(b, "document ops", docOpColumns, true)
	if err != nil {
		return nil, nil, nil, err
	}
	rest = b[k:]
	if chMeta.total > uint64(len(rest)) || opMeta.total > uint64(len(rest))-chMeta.total {
		return nil, nil, nil, formatErr("document: columns claim %d+%d bytes, %d remain", chMeta.total, opMeta.total, len(rest))
	}
	chData, rest := rest[:chMeta.total], rest[chMeta.total:]
	opData, rest := rest[:opMeta.total], rest[opMeta.total:]
	if ch, err = chMeta.columns(chData, "document changes", docChangeColumns); err != nil {
		return nil, nil, nil, err
	}
	if ops, err = opMeta.columns(opData, "document ops", docOpColumns); err != nil {
		return nil, nil, nil, err
	}
	return ch, ops, rest, nil
}

// checkHeadIndexes checks the optional head indexes after a document's
// columns: one uLEB per head, each a change index, and nothing after.
func checkHeadIndexes(b []byte, heads, changes int) error {
	if len(b) == 0 {
		return nil
	}
	q := parser{b: b, what: "document head indexes"}
	for range heads {
		if i := q.uleb("head index"); q.err == nil && i >= uint64(changes) {
			q.fail("head index %d of %d changes", i, changes)
		}
	}
	if q.err == nil && q.off != len(b) {
		q.fail("%d trailing bytes", len(b)-q.off)
	}
	return q.err
}

// decodeDocChanges checks a document's change-metadata columns and returns
// the changes they describe.
func decodeDocChanges(cols []column, nactors int, bound uint64) ([]DocChange, error) {
	meta, err := docChangeActors(findColumn(cols, specChActor), nactors, bound)
	if err != nil {
		return nil, err
	}
	c := newChangeMetaColumns(cols, uint64(len(meta)), bound)
	for i := range meta {
		if err := c.read(&meta[i], i); err != nil {
			return nil, err
		}
	}
	if err := c.readDepIndexes(); err != nil {
		return nil, err
	}
	if err := c.done(); err != nil {
		return nil, err
	}
	return meta, nil
}

// docChangeActors is decodeDocChanges' first pass: the actor column, which
// every change has, gives the changes (nil if none) and their actors.
func docChangeActors(col []byte, nactors int, bound uint64) ([]DocChange, error) {
	var meta []DocChange
	act := newRLE("actor", col, rleUint, bound)
	for act.off < len(act.b) || act.left > 0 {
		a, _, ok, err := act.next()
		if err != nil {
			return nil, err
		}
		if !ok || a >= uint64(nactors) {
			return nil, act.errf("change %d: actor %d of %d (or null)", len(meta), a, nactors)
		}
		meta = append(meta, DocChange{Actor: int(a)})
	}
	if err := act.done(); err != nil {
		return nil, err
	}
	return meta, nil
}

// changeMetaColumns reads a document's changes from their columns, one
// change at a time, after the actor column.
type changeMetaColumns struct {
	n, bound uint64 // the changes, and the bound on their deps
	deps     uint64 // the deps read so far
	seq      deltaReader
	maxOp    deltaReader
	tm       deltaReader
	msg, grp rleReader
	extra    valueReader
	idxCol   []byte      // the deps index column, read once deps is known
	idx      deltaReader // its reader, from readDepIndexes on
}

func newChangeMetaColumns(cols []column, n, bound uint64) changeMetaColumns {
	get := func(s colSpec) []byte { return findColumn(cols, s) }
	return changeMetaColumns{
		n:      n,
		bound:  bound,
		seq:    *newDelta("seq", get(specChSeq), n),
		maxOp:  *newDelta("max op", get(specChMaxOp), n),
		tm:     *newDelta("time", get(specChTime), n),
		msg:    *newRLE("message", get(specChMessage), rleStr, n),
		grp:    *newRLE("deps", get(specChDepsGroup), rleUint, n),
		extra:  *newValues("extra", get(specChExtraMeta), get(specChExtraRaw), n),
		idxCol: get(specChDepsIdx),
	}
}

// read reads change i's seq, max op, time, message, dep count and extra
// bytes into m (whose Actor is already set).
func (c *changeMetaColumns) read(m *DocChange, i int) error {
	var err error
	if m.Seq, err = changeValue(&c.seq, i, false); err != nil {
		return err
	}
	if m.MaxOp, err = changeValue(&c.maxOp, i, false); err != nil {
		return err
	}
	if _, err = changeValue(&c.tm, i, true); err != nil {
		return err
	}
	_, msg, _, err := c.msg.next()
	if err != nil {
		return err
	}
	m.Message = string(msg)
	if err := c.readDeps(i); err != nil {
		return err
	}
	return c.readExtra(i)
}

// changeValue reads change i's value from a delta column: present and,
// unless signed, not negative.
func changeValue(d *deltaReader, i int, signed bool) (uint64, error) {
	v, ok, err := d.next()
	if err != nil {
		return 0, err
	}
	if !ok || (!signed && v < 0) {
		return 0, d.rle.errf("change %d: %d (or null)", i, v)
	}
	return uint64(v), nil
}

// readDeps reads change i's dep count, keeping the total within bound.
func (c *changeMetaColumns) readDeps(i int) error {
	v, _, ok, err := c.grp.next()
	if err != nil {
		return err
	}
	if !ok || v > c.bound-c.deps {
		return c.grp.errf("change %d: %d deps", i, v)
	}
	c.deps += v
	return nil
}

// readExtra checks change i's extra value, if the column is present: it
// must be bytes.
func (c *changeMetaColumns) readExtra(i int) error {
	if len(c.extra.meta.b) == 0 {
		return nil
	}
	t, _, err := c.extra.next()
	if err != nil {
		return err
	}
	if t != ValBytes {
		return formatErr("extra column: change %d: type %d, not bytes", i, t)
	}
	return nil
}

// readDepIndexes checks, once every change's dep count is read, that each
// dep is the index of a change. It comes before done, which checks its
// reader too.
func (c *changeMetaColumns) readDepIndexes() error {
	c.idx = *newDelta("deps index", c.idxCol, c.deps)
	for i := uint64(0); i < c.deps; i++ {
		v, ok, err := c.idx.next()
		if err != nil {
			return err
		}
		if !ok || v < 0 || uint64(v) >= c.n {
			return c.idx.rle.errf("dep %d: change index %d of %d (or null)", i, v, c.n)
		}
	}
	return nil
}

// done refuses columns with values left after the last change (or dep).
func (c *changeMetaColumns) done() error {
	for _, d := range []interface{ done() error }{c.seq.rle, c.maxOp.rle, c.tm.rle, &c.msg, &c.grp, &c.extra, c.idx.rle} {
		if err := d.done(); err != nil {
			return err
		}
	}
	return nil
}
