package crdt

import (
	"bytes"
	"compress/flate"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// Automerge's columnar encodings (the storage format's "columns"): see the
// top comment of change.go for the layout they live in.

// errFormat is wrapped by every error about the content of a chunk whose
// framing was fine: columns, ops, sync messages.
var errFormat = errors.New("crdt: malformed automerge data")

func formatErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errFormat}, args...)...)
}

// maxOps bounds the ops (and the entries of op lists) of one chunk.
const maxOps = 1 << 24

// opBound is how many values the columns of a chunk of size n bytes may
// describe: runs make many ops cheap to encode, but not free, so the
// decoder's allocations stay proportional to what it was given (an Op is
// about 180 bytes).
func opBound(n int) uint64 {
	b := 1024 + 64*uint64(n)
	if b > maxOps {
		b = maxOps
	}
	return b
}

// maxColumns bounds the columns of one metadata block: automerge 0.5
// writes at most 16 (it omits empty ones).
const maxColumns = 64

// maxColumnData bounds the inflated size of one document's columns.
const maxColumnData = 64 << 20

// sleb decodes a minimally encoded signed LEB128 number (at most 64 bits)
// and returns it with its byte length.
func sleb(b []byte) (int64, int, error) {
	var v int64
	for i := 0; i < len(b) && i < 10; i++ {
		c := b[i]
		v |= int64(c&0x7f) << (7 * i)
		if c&0x80 != 0 {
			continue
		}
		if i == 9 && c != 0 && c != 0x7f {
			return 0, 0, errors.New("sLEB128 overflows 64 bits")
		}
		if i == 9 && (c == 0) != (v >= 0) {
			return 0, 0, errors.New("sLEB128 overflows 64 bits")
		}
		if i > 0 {
			prev := b[i-1] & 0x40
			if (c == 0 && prev == 0) || (c == 0x7f && prev != 0) {
				return 0, 0, errors.New("sLEB128 not minimally encoded")
			}
		}
		if i < 9 && c&0x40 != 0 {
			v |= -1 << (7 * (i + 1))
		}
		return v, i + 1, nil
	}
	return 0, 0, errors.New("sLEB128 truncated")
}

// Column specifications: id<<4 | deflate<<3 | type.
type colSpec uint32

const (
	colGroup    = 0
	colActor    = 1
	colInt      = 2
	colDelta    = 3
	colBool     = 4
	colString   = 5
	colValMeta  = 6
	colValRaw   = 7
	colDeflated = 8
)

func spec(id, typ uint32) colSpec { return colSpec(id<<4 | typ) }

func (s colSpec) String() string {
	names := [...]string{"group", "actor", "int", "delta", "bool", "string", "valmeta", "value"}
	d := ""
	if s&colDeflated != 0 {
		d = ",deflated"
	}
	return fmt.Sprintf("column %d(%s%s)", uint32(s)>>4, names[s&7], d)
}

// column is one column of a chunk: its spec (deflate bit cleared) and its
// data (inflated).
type column struct {
	spec colSpec
	data []byte
}

// columnMeta is a parsed column metadata block.
type columnMeta struct {
	specs []colSpec
	lens  []uint64
	total uint64
}

// parseColumnMeta reads a column metadata block (uLEB count, then spec and
// length per column) from the front of b. It checks the canonical order
// (ascending by spec with the deflate bit cleared, no duplicates), that
// deflated columns appear only if allowed, and that every spec is known
// unless its data is empty.
func parseColumnMeta(b []byte, what string, known map[colSpec]string, deflate bool) (columnMeta, int, error) {
	var m columnMeta
	cnt, off, err := uleb(b)
	if err != nil {
		return m, 0, formatErr("%s column count: %v", what, err)
	}
	if cnt > maxColumns {
		return m, 0, formatErr("%s: %d columns", what, cnt)
	}
	if cnt > uint64(len(b)-off)/2 {
		return m, 0, formatErr("%s: %d columns do not fit in %d bytes", what, cnt, len(b)-off)
	}
	m.specs = make([]colSpec, 0, cnt)
	m.lens = make([]uint64, 0, cnt)
	for i := uint64(0); i < cnt; i++ {
		s, n, err := uleb(b[off:])
		if err != nil {
			return m, 0, formatErr("%s column %d spec at offset %d: %v", what, i, off, err)
		}
		if s > 0xffffffff {
			return m, 0, formatErr("%s column %d spec %d overflows 32 bits", what, i, s)
		}
		off += n
		l, n, err := uleb(b[off:])
		if err != nil {
			return m, 0, formatErr("%s column %d length at offset %d: %v", what, i, off, err)
		}
		off += n
		cs := colSpec(s)
		if len(m.specs) > 0 {
			if prev := m.specs[len(m.specs)-1]; prev&^colDeflated >= cs&^colDeflated {
				return m, 0, formatErr("%s: %v follows %v (columns must be in ascending order, no duplicates)", what, cs, prev)
			}
		}
		if cs&colDeflated != 0 && !deflate {
			return m, 0, formatErr("%s: %v is deflated (not allowed here)", what, cs)
		}
		if _, ok := known[cs&^colDeflated]; !ok && l != 0 {
			return m, 0, formatErr("%s: unknown %v with %d bytes of data", what, cs, l)
		}
		if l > maxColumnData || m.total+l > maxColumnData {
			return m, 0, formatErr("%s: %v claims %d bytes", what, cs, l)
		}
		m.total += l
		m.specs = append(m.specs, cs)
		m.lens = append(m.lens, l)
	}
	return m, off, nil
}

// columns slices data (which must be exactly m.total bytes) into m's
// columns, inflating deflated ones (their inflated total bounded by
// maxColumnData). Unknown empty columns are dropped.
func (m columnMeta) columns(data []byte, what string, known map[colSpec]string) ([]column, error) {
	if uint64(len(data)) != m.total {
		return nil, formatErr("%s: columns claim %d bytes, %d present", what, m.total, len(data))
	}
	cols := make([]column, 0, len(m.specs))
	inflated := 0
	off := 0
	for i, s := range m.specs {
		d := data[off : off+int(m.lens[i])]
		off += int(m.lens[i])
		if s&colDeflated != 0 {
			var err error
			if d, err = inflateLimit(d, maxColumnData-inflated); err != nil {
				return nil, formatErr("%s: %v: %v", what, s, err)
			}
			inflated += len(d)
		}
		s &^= colDeflated
		if _, ok := known[s]; !ok {
			continue
		}
		cols = append(cols, column{spec: s, data: d})
	}
	return cols, nil
}

func findColumn(cols []column, s colSpec) []byte {
	for _, c := range cols {
		if c.spec == s {
			return c.data
		}
	}
	return nil
}

// rleKind is the value type of an RLE column.
type rleKind uint8

const (
	rleUint rleKind = iota
	rleInt
	rleStr
)

// rleReader reads an RLE column: runs of (count > 0, value), literal runs
// (count < 0, -count values) and null runs (0, count). It refuses what
// automerge's encoder never writes: a repeat run of one value, two adjacent
// literal or null runs, equal adjacent values that should have been a run,
// an empty null run, a column of only nulls (written as no column), a
// non-UTF-8 string. An empty column reads as nulls.
type rleReader struct {
	name  string
	b     []byte
	off   int
	kind  rleKind
	limit uint64 // values the column may still hold

	left    uint64 // values left in the current run
	run     int8   // the current (or last) run: 0 none, 1 repeat, 2 literal, 3 null
	val     uint64
	str     []byte
	haveVal bool // val/str hold the last value read (non-null)
	values  bool // a non-null value was read
}

func newRLE(name string, b []byte, kind rleKind, limit uint64) *rleReader {
	return &rleReader{name: name, b: b, kind: kind, limit: limit}
}

func (r *rleReader) errf(format string, args ...any) error {
	return formatErr("%s column at offset %d: %s", r.name, r.off, fmt.Sprintf(format, args...))
}

func (r *rleReader) readValue() (uint64, []byte, error) {
	switch r.kind {
	case rleUint:
		v, n, err := uleb(r.b[r.off:])
		if err != nil {
			return 0, nil, r.errf("%v", err)
		}
		r.off += n
		return v, nil, nil
	case rleInt:
		v, n, err := sleb(r.b[r.off:])
		if err != nil {
			return 0, nil, r.errf("%v", err)
		}
		r.off += n
		return uint64(v), nil, nil
	default:
		l, n, err := uleb(r.b[r.off:])
		if err != nil {
			return 0, nil, r.errf("string length: %v", err)
		}
		if l > uint64(len(r.b)-r.off-n) {
			return 0, nil, r.errf("string of %d bytes overruns the column", l)
		}
		s := r.b[r.off+n : r.off+n+int(l)]
		if !utf8.Valid(s) {
			return 0, nil, r.errf("string %q is not UTF-8", s)
		}
		r.off += n + int(l)
		return 0, s, nil
	}
}

func (r *rleReader) same(v uint64, s []byte) bool {
	if !r.haveVal {
		return false
	}
	if r.kind == rleStr {
		return bytes.Equal(r.str, s)
	}
	return r.val == v
}

// next returns the next value; ok is false for a null.
func (r *rleReader) next() (v uint64, s []byte, ok bool, err error) {
	if len(r.b) == 0 {
		return 0, nil, false, nil
	}
	if r.limit == 0 {
		return 0, nil, false, r.errf("more values than ops")
	}
	for r.left == 0 {
		if r.off >= len(r.b) {
			return 0, nil, false, r.errf("column ended before the ops did")
		}
		c, n, err := sleb(r.b[r.off:])
		if err != nil {
			return 0, nil, false, r.errf("run count: %v", err)
		}
		r.off += n
		switch {
		case c > 0:
			if uint64(c) > r.limit {
				return 0, nil, false, r.errf("run of %d values exceeds the %d ops left", c, r.limit)
			}
			if c == 1 {
				return 0, nil, false, r.errf("repeat run of one value")
			}
			v, s, err := r.readValue()
			if err != nil {
				return 0, nil, false, err
			}
			if (r.run == 1 || r.run == 2) && r.same(v, s) {
				return 0, nil, false, r.errf("run repeats the previous value")
			}
			r.run, r.left, r.val, r.str, r.haveVal = 1, uint64(c), v, s, true
		case c < 0:
			if c == -1<<63 || uint64(-c) > r.limit {
				return 0, nil, false, r.errf("literal run of %d values exceeds the %d ops left", -c, r.limit)
			}
			if r.run == 2 {
				return 0, nil, false, r.errf("two adjacent literal runs")
			}
			if r.run == 3 {
				r.haveVal = false
			}
			r.run, r.left = 2, uint64(-c)
		default:
			cnt, n, err := uleb(r.b[r.off:])
			if err != nil {
				return 0, nil, false, r.errf("null run count: %v", err)
			}
			r.off += n
			if cnt == 0 {
				return 0, nil, false, r.errf("empty null run")
			}
			if cnt > r.limit {
				return 0, nil, false, r.errf("null run of %d values exceeds the %d ops left", cnt, r.limit)
			}
			if r.run == 3 {
				return 0, nil, false, r.errf("two adjacent null runs")
			}
			r.run, r.left, r.haveVal = 3, cnt, false
		}
	}
	r.left--
	r.limit--
	switch r.run {
	case 1:
		r.values = true
		return r.val, r.str, true, nil
	case 2:
		v, s, err := r.readValue()
		if err != nil {
			return 0, nil, false, err
		}
		if r.same(v, s) {
			return 0, nil, false, r.errf("literal run repeats a value")
		}
		r.val, r.str, r.haveVal, r.values = v, s, true, true
		return v, s, true, nil
	}
	return 0, nil, false, nil
}

// done reports an error unless the column was read to its end.
func (r *rleReader) done() error {
	if r.left != 0 || r.off != len(r.b) {
		return r.errf("%d bytes and %d values left after the last op", len(r.b)-r.off, r.left)
	}
	if len(r.b) > 0 && !r.values {
		return r.errf("column of only nulls (automerge omits such a column)")
	}
	return nil
}

// deltaReader reads a delta column: an sLEB RLE column of differences.
type deltaReader struct {
	rle *rleReader
	abs int64
}

func newDelta(name string, b []byte, limit uint64) *deltaReader {
	return &deltaReader{rle: newRLE(name, b, rleInt, limit)}
}

func (d *deltaReader) next() (int64, bool, error) {
	v, _, ok, err := d.rle.next()
	if err != nil || !ok {
		return 0, false, err
	}
	s := d.abs + int64(v)
	if (int64(v) > 0 && s < d.abs) || (int64(v) < 0 && s > d.abs) {
		return 0, false, d.rle.errf("delta overflows 64 bits")
	}
	d.abs = s
	return s, true, nil
}

// boolReader reads a boolean column: alternating run lengths starting with
// false. Only the first run may be empty. An empty column reads as false.
type boolReader struct {
	name  string
	b     []byte
	off   int
	limit uint64
	val   bool
	left  uint64
	runs  int
	trues bool
}

func newBool(name string, b []byte, limit uint64) *boolReader {
	return &boolReader{name: name, b: b, limit: limit, val: true}
}

func (r *boolReader) next() (bool, error) {
	if len(r.b) == 0 {
		return false, nil
	}
	if r.limit == 0 {
		return false, formatErr("%s column at offset %d: more values than ops", r.name, r.off)
	}
	for r.left == 0 {
		if r.off >= len(r.b) {
			return false, formatErr("%s column at offset %d: column ended before the ops did", r.name, r.off)
		}
		c, n, err := uleb(r.b[r.off:])
		if err != nil {
			return false, formatErr("%s column at offset %d: %v", r.name, r.off, err)
		}
		if c == 0 && r.runs > 0 {
			return false, formatErr("%s column at offset %d: empty run after the first", r.name, r.off)
		}
		if c > r.limit {
			return false, formatErr("%s column at offset %d: run of %d exceeds the %d ops left", r.name, r.off, c, r.limit)
		}
		r.off += n
		r.runs++
		r.val = !r.val
		r.left = c
	}
	r.left--
	r.limit--
	if r.val {
		r.trues = true
	}
	return r.val, nil
}

func (r *boolReader) done() error {
	if r.left != 0 || r.off != len(r.b) {
		return formatErr("%s column at offset %d: %d bytes and %d values left after the last op", r.name, r.off, len(r.b)-r.off, r.left)
	}
	return nil
}

// valueReader reads a value metadata column (uLEB RLE of len<<4 | type) and
// the raw value column it describes.
type valueReader struct {
	meta *rleReader
	raw  []byte
	off  int
}

func newValues(name string, meta, raw []byte, limit uint64) *valueReader {
	return &valueReader{meta: newRLE(name+" metadata", meta, rleUint, limit), raw: raw}
}

func (r *valueReader) next() (ValueType, []byte, error) {
	m, _, ok, err := r.meta.next()
	if err != nil {
		return 0, nil, err
	}
	if !ok {
		return 0, nil, r.meta.errf("null value metadata")
	}
	t, l := ValueType(m&15), m>>4
	if l > uint64(len(r.raw)-r.off) {
		return 0, nil, formatErr("%s: value of %d bytes at offset %d overruns the %d-byte value column", r.meta.name, l, r.off, len(r.raw))
	}
	v := r.raw[r.off : r.off+int(l)]
	r.off += int(l)
	if err := checkValue(t, v); err != nil {
		return 0, nil, formatErr("%s: value at offset %d: %v", r.meta.name, r.off-int(l), err)
	}
	return t, v, nil
}

func (r *valueReader) done() error {
	if err := r.meta.done(); err != nil {
		return err
	}
	if r.off != len(r.raw) {
		return formatErr("%s: %d bytes of the value column left after the last op", r.meta.name, len(r.raw)-r.off)
	}
	return nil
}

// checkValue checks raw value bytes against their type.
func checkValue(t ValueType, v []byte) error {
	switch t {
	case ValNull, ValFalse, ValTrue:
		if len(v) != 0 {
			return fmt.Errorf("type %d with %d bytes", t, len(v))
		}
	case ValUint:
		if _, n, err := uleb(v); err != nil || n != len(v) {
			return fmt.Errorf("uint is not one uLEB128 (%x)", v)
		}
	case ValInt, ValCounter, ValTimestamp:
		if _, n, err := sleb(v); err != nil || n != len(v) {
			return fmt.Errorf("type %d is not one sLEB128 (%x)", t, v)
		}
	case ValFloat:
		if len(v) != 8 {
			return fmt.Errorf("float of %d bytes", len(v))
		}
	case ValStr:
		if !utf8.Valid(v) {
			return fmt.Errorf("string %q is not UTF-8", v)
		}
	}
	return nil
}

// inflateLimit inflates a raw DEFLATE stream of at most limit bytes that
// must end exactly at the end of b.
func inflateLimit(b []byte, limit int) ([]byte, error) {
	br := bytes.NewReader(b)
	r := flate.NewReader(br)
	defer r.Close()
	out, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return nil, err
	}
	if len(out) > limit {
		return nil, fmt.Errorf("inflates to more than %d bytes", limit)
	}
	if br.Len() != 0 {
		return nil, fmt.Errorf("%d bytes after the end of the DEFLATE stream", br.Len())
	}
	return out, nil
}
