package transfer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// Request kinds.
const (
	ReqManifest = 1
	ReqChunk    = 2
	ReqHave     = 3 // which chunks the server holds
	ReqRun      = 4 // consecutive chunks, across files: small files travel together
)

// A run request names at most maxRunChunks chunks whose lengths add up to
// at most ChunkSize, so its answer fits the buffer of one chunk.
const maxRunChunks = 1024

// Response statuses.
const (
	StatusOK       = 0
	StatusNotFound = 1 // this node does not serve that manifest, path or chunk
	StatusRefused  = 2 // the request is not allowed (a path outside the item, ...)
	StatusError    = 3 // the server failed (I/O)
	StatusBusy     = 4 // too many streams from this peer
	StatusChanged  = 5 // the file changed on the holder since it was scanned: a new version is on its way
	// StatusElsewhere: the chunk went to enough peers lately; fetch it
	// from them (spread.go).
	StatusElsewhere = 6
)

// Frame limits.
const (
	maxRequest      = 1 + 32 + 10 + MaxPathLen + 10 // the longest: a chunk request
	maxManifestSize = 64 << 20
	maxResponse     = 1 + maxManifestSize
	// respHeader is room for a response's frame length and status in
	// front of a chunk, so a chunk goes out without being copied.
	respHeader = binary.MaxVarintLen64 + 1
)

// Answers to ReqHave: the first payload byte.
const (
	haveComplete = 1 // the whole item; nothing follows
	havePartial  = 0 // a bitmap follows: bit g (LSB first) = chunk g held
)

// encodeHave encodes an answer to ReqHave; a nil bitmap means complete.
func encodeHave(bits []byte) []byte {
	if bits == nil {
		return []byte{haveComplete}
	}
	return append([]byte{havePartial}, bits...)
}

// decodeHave parses an answer to ReqHave for a manifest of n chunks. It
// returns nil for a complete holder.
func decodeHave(b []byte, n int) ([]byte, error) {
	switch {
	case len(b) == 1 && b[0] == haveComplete:
		return nil, nil
	case len(b) == 1+(n+7)/8 && b[0] == havePartial:
		if n%8 != 0 && b[len(b)-1]>>(n%8) != 0 {
			return nil, fmt.Errorf("%w: bits set past the last chunk", ErrBadFrame)
		}
		return b[1:], nil
	}
	return nil, fmt.Errorf("%w: have answer of %d bytes for %d chunks", ErrBadFrame, len(b), n)
}

func bitSet(bits []byte, g int) bool { return bits[g/8]&(1<<(g%8)) != 0 }

// ErrBadFrame is returned for a request or response that does not decode.
var ErrBadFrame = errors.New("transfer: bad frame")

// readUvarint reads a minimally encoded uvarint: the canonical encodings
// have exactly one byte form for each message.
func readUvarint(r *bytes.Reader) (uint64, error) {
	before := r.Len()
	v, err := binary.ReadUvarint(r)
	if err != nil {
		return 0, err
	}
	if before-r.Len() != len(binary.AppendUvarint(nil, v)) {
		return 0, errors.New("non-minimal varint")
	}
	return v, nil
}

// Request asks for a manifest, for one chunk of one file of it, or for a
// run of consecutive chunks.
type Request struct {
	Kind     byte
	Manifest Hash
	Path     string // ReqChunk only
	Chunk    uint64 // ReqChunk: index in the file; ReqRun: manifest-wide index of the first
	Count    uint64 // ReqRun only: chunks in the run
}

// Encode: kind | manifest hash (32) | for a chunk: uvarint len(path) |
// path | uvarint chunk index; for a run: uvarint first | uvarint count.
func (r Request) Encode() []byte {
	b := append([]byte{r.Kind}, r.Manifest[:]...)
	switch r.Kind {
	case ReqChunk:
		b = binary.AppendUvarint(b, uint64(len(r.Path)))
		b = append(b, r.Path...)
		b = binary.AppendUvarint(b, r.Chunk)
	case ReqRun:
		b = binary.AppendUvarint(b, r.Chunk)
		b = binary.AppendUvarint(b, r.Count)
	}
	return b
}

// DecodeRequest parses a request frame. The path is returned as sent: the
// server judges it.
func DecodeRequest(b []byte) (Request, error) {
	var r Request
	if len(b) < 33 {
		return r, fmt.Errorf("%w: request of %d bytes", ErrBadFrame, len(b))
	}
	r.Kind = b[0]
	copy(r.Manifest[:], b[1:33])
	rd := bytes.NewReader(b[33:])
	switch r.Kind {
	case ReqManifest, ReqHave:
	case ReqChunk:
		n, err := readUvarint(rd)
		if err != nil || n > MaxPathLen || n > uint64(rd.Len()) {
			return r, fmt.Errorf("%w: bad path length", ErrBadFrame)
		}
		p := make([]byte, n)
		_, _ = rd.Read(p)
		r.Path = string(p)
		if r.Chunk, err = readUvarint(rd); err != nil {
			return r, fmt.Errorf("%w: bad chunk index", ErrBadFrame)
		}
	case ReqRun:
		var err error
		if r.Chunk, err = readUvarint(rd); err != nil {
			return r, fmt.Errorf("%w: bad first chunk", ErrBadFrame)
		}
		if r.Count, err = readUvarint(rd); err != nil || r.Count == 0 || r.Count > maxRunChunks {
			return r, fmt.Errorf("%w: a run of 1 to %d chunks", ErrBadFrame, maxRunChunks)
		}
	default:
		return r, fmt.Errorf("%w: unknown request kind %d", ErrBadFrame, r.Kind)
	}
	if rd.Len() != 0 {
		return r, fmt.Errorf("%w: %d trailing bytes", ErrBadFrame, rd.Len())
	}
	return r, nil
}

// Response is a status and, for StatusOK, the payload (manifest encoding
// or chunk bytes); otherwise a message saying why.
type Response struct {
	Status  byte
	Payload []byte
}

// Encode: status | payload.
func (r Response) Encode() []byte { return append([]byte{r.Status}, r.Payload...) }

// DecodeResponse parses a response frame.
func DecodeResponse(b []byte) (Response, error) {
	if len(b) == 0 {
		return Response{}, fmt.Errorf("%w: empty response", ErrBadFrame)
	}
	if b[0] > StatusElsewhere {
		return Response{}, fmt.Errorf("%w: unknown status %d", ErrBadFrame, b[0])
	}
	return Response{Status: b[0], Payload: b[1:]}, nil
}

// ServerError is a refusal or failure reported by the serving peer.
type ServerError struct {
	Status byte
	Msg    string
}

func (e *ServerError) Error() string {
	what := map[byte]string{StatusNotFound: "not found", StatusRefused: "refused", StatusError: "server error", StatusBusy: "busy", StatusChanged: "changed", StatusElsewhere: "elsewhere"}[e.Status]
	return fmt.Sprintf("peer answered %s: %s", what, e.Msg)
}
