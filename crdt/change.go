package crdt

import (
	"bytes"
	"compress/flate"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
)

// Automerge chunk framing (the automerge binary format, "chunk container"):
//
//	magic 85 6f 4a 83 | checksum [4] | type u8 | length uLEB128 | body
//
// type 0 is a document, 1 a change, 2 a DEFLATE-compressed change. A
// change's hash is SHA-256 over type 1, the uLEB length and the
// uncompressed body; the checksum is that hash's first 4 bytes. A change
// body starts with its dependencies: uLEB count, then count 32-byte hashes.
//
// rawChange reads only this framing and the dependencies: enough to know a
// change's identity and what it waits for without automerge, which refuses
// to even parse a change whose dependencies a document lacks.
//
// # Ops
//
// decodeChange, decodeDocument and decodeSyncMessage (ops.go, columns.go,
// syncmsg.go) read further, so that every op can be checked before
// automerge sees it. After the dependencies a change body holds the author
// (uLEB length, bytes), seq, start op (uLEB), time (sLEB, ms), message
// (uLEB length, UTF-8), the other actors, a column metadata block (uLEB
// count, then per column a uLEB spec id<<4|deflate<<3|type and a uLEB
// length), the column data, and optional extra bytes (kept, unread). A
// document body holds its actors (sorted), heads, change- and
// op-column metadata, their data (columns over 256 bytes deflated), then
// optionally one head index per head. Op columns (automerge 0.5): obj
// (0: actor, uLEB counter), key (1: actor, delta counter, string), id (2,
// documents), insert (3, boolean), action (4), value (5: metadata
// len<<4|type, raw bytes), pred (7, changes) or succ (8, documents) as a
// group count plus actor and delta counter columns, expand (9, boolean)
// and mark name (10, string) for marks. The decoder refuses what automerge
// never writes: columns out of order, duplicated, unknown with data,
// deflated in a change, overrunning their data or describing different op
// counts; non-minimal LEBs and RLE runs; values whose bytes do not match
// their type; invalid UTF-8; actor indexes outside the table. Every
// allocation is bounded by the input's size (at most 1<<24 ops).
type rawChange struct {
	hash Hash
	deps []Hash
	raw  []byte // the chunk as received
}

const (
	chunkDocument   = 0
	chunkChange     = 1
	chunkCompressed = 2

	// maxChangeBody bounds a decompressed change body.
	maxChangeBody = 64 << 20
)

var errChunk = errors.New("crdt: not an automerge change")

// splitChanges splits concatenated change chunks (automerge's SaveChanges
// output, or one Change.Save). A document chunk is refused: it carries no
// single identity.
func splitChanges(b []byte) ([]rawChange, error) {
	var out []rawChange
	for len(b) > 0 {
		c, n, err := parseChange(b)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
		b = b[n:]
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: empty", errChunk)
	}
	return out, nil
}

// parseChange reads one change chunk from the front of b and returns it
// with its byte length.
func parseChange(b []byte) (rawChange, int, error) {
	body, h, end, err := changeChunk(b, false)
	if err != nil {
		return rawChange{}, 0, err
	}
	deps, err := changeDeps(body)
	if err != nil {
		return rawChange{}, 0, err
	}
	return rawChange{hash: Hash(h), deps: deps, raw: b[:end]}, end, nil
}

// changeChunk reads the framing of one change chunk (type 1 or 2) from the
// front of b, checks its checksum and returns its uncompressed body, its
// hash and its byte length in b. strict refuses bytes after the end of a
// compressed chunk's DEFLATE stream.
func changeChunk(b []byte, strict bool) (body []byte, h [32]byte, end int, err error) {
	if len(b) < 9 || string(b[:4]) != amMagic {
		return nil, h, 0, fmt.Errorf("%w: missing chunk magic", errChunk)
	}
	typ := b[8]
	n, ln, err := uleb(b[9:])
	if err != nil {
		return nil, h, 0, fmt.Errorf("%w: chunk length: %v", errChunk, err)
	}
	start := 9 + ln
	if n > uint64(len(b)-start) {
		return nil, h, 0, fmt.Errorf("%w: chunk claims %d bytes, %d remain", errChunk, n, len(b)-start)
	}
	end = start + int(n)
	body = b[start:end]
	switch typ {
	case chunkChange:
		h = sha256.Sum256(b[8:end])
	case chunkCompressed:
		if strict {
			body, err = inflateLimit(body, maxChangeBody)
		} else {
			body, err = inflate(body)
		}
		if err != nil {
			return nil, h, 0, fmt.Errorf("%w: compressed change: %v", errChunk, err)
		}
		hdr := appendUleb([]byte{chunkChange}, uint64(len(body)))
		d := sha256.New()
		d.Write(hdr)
		d.Write(body)
		d.Sum(h[:0])
	case chunkDocument:
		return nil, h, 0, fmt.Errorf("%w: a whole document, not a change", errChunk)
	default:
		return nil, h, 0, fmt.Errorf("%w: unknown chunk type %d", errChunk, typ)
	}
	if !bytes.Equal(h[:4], b[4:8]) {
		return nil, h, 0, fmt.Errorf("%w: chunk checksum mismatch", errChunk)
	}
	return body, h, end, nil
}

func changeDeps(body []byte) ([]Hash, error) {
	cnt, ln, err := uleb(body)
	if err != nil {
		return nil, fmt.Errorf("%w: dependency count: %v", errChunk, err)
	}
	body = body[ln:]
	if cnt > uint64(len(body)/32) {
		return nil, fmt.Errorf("%w: %d dependencies do not fit in %d bytes", errChunk, cnt, len(body))
	}
	deps := make([]Hash, cnt)
	for i := range deps {
		copy(deps[i][:], body[i*32:])
	}
	return deps, nil
}

func inflate(b []byte) ([]byte, error) {
	r := flate.NewReader(bytes.NewReader(b))
	defer r.Close()
	out, err := io.ReadAll(io.LimitReader(r, maxChangeBody+1))
	if err != nil {
		return nil, err
	}
	if len(out) > maxChangeBody {
		return nil, fmt.Errorf("decompresses to more than %d bytes", maxChangeBody)
	}
	return out, nil
}

// uleb decodes a minimally encoded unsigned LEB128 number (at most 64 bits)
// and returns it with its byte length.
func uleb(b []byte) (uint64, int, error) {
	var v uint64
	for i := 0; i < len(b) && i < 10; i++ {
		c := b[i]
		if i == 9 && c > 1 {
			return 0, 0, errors.New("uLEB128 overflows 64 bits")
		}
		v |= uint64(c&0x7f) << (7 * i)
		if c&0x80 == 0 {
			if c == 0 && i > 0 {
				return 0, 0, errors.New("uLEB128 not minimally encoded")
			}
			return v, i + 1, nil
		}
	}
	return 0, 0, errors.New("uLEB128 truncated")
}

func appendUleb(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}
