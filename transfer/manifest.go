package transfer

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/zeebo/blake3"
)

// ChunkSize is the unit of hashing, transfer and verification: 1 MiB.
const ChunkSize = 1 << 20

// Limits a decoder enforces on a manifest from a peer or from disk.
const (
	MaxFiles    = 1 << 20
	MaxPathLen  = 4096
	MaxFileSize = 1 << 44 // 16 TiB
	manifestTag = "MNM1"
)

// Hash is a BLAKE3-256 digest.
type Hash [32]byte

func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// MarshalText writes the hash as hex (the index on disk stores hashes so).
func (h Hash) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText reads a hex hash.
func (h *Hash) UnmarshalText(b []byte) error {
	x, err := ParseHash(string(b))
	if err != nil {
		return err
	}
	*h = x
	return nil
}

// ParseHash parses a hex digest.
func ParseHash(s string) (Hash, error) {
	var h Hash
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(h) {
		return h, fmt.Errorf("transfer: %q is not a 64-digit hex hash", s)
	}
	copy(h[:], b)
	return h, nil
}

// ErrBadManifest is returned for a manifest that does not decode or
// breaks a rule.
var ErrBadManifest = errors.New("transfer: bad manifest")

// File is one regular file of an item.
type File struct {
	Path   string // slash-separated, relative to the item root
	Size   int64
	Mode   uint32 // permission bits (0o777 mask)
	Chunks []Hash // BLAKE3 of each ChunkSize piece; none for an empty file
}

// Manifest lists an item's files, sorted by path.
type Manifest struct {
	Files []File
}

// Size is the item's total size in bytes.
func (m *Manifest) Size() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.Size
	}
	return n
}

// Chunks is the item's total chunk count.
func (m *Manifest) Chunks() int {
	n := 0
	for _, f := range m.Files {
		n += len(f.Chunks)
	}
	return n
}

// File returns the file at p.
func (m *Manifest) File(p string) (File, bool) {
	if i, ok := m.fileIndex(p); ok {
		return m.Files[i], true
	}
	return File{}, false
}

// fileIndex finds the file at p by binary search (files are sorted).
func (m *Manifest) fileIndex(p string) (int, bool) {
	lo, hi := 0, len(m.Files)
	for lo < hi {
		mid := (lo + hi) / 2
		switch c := strings.Compare(m.Files[mid].Path, p); {
		case c == 0:
			return mid, true
		case c < 0:
			lo = mid + 1
		default:
			hi = mid
		}
	}
	return 0, false
}

// firstChunks returns, per file, the manifest-wide index of its first
// chunk: chunks are numbered through the files in path order.
func (m *Manifest) firstChunks() []int {
	out := make([]int, len(m.Files))
	n := 0
	for i, f := range m.Files {
		out[i] = n
		n += len(f.Chunks)
	}
	return out
}

func chunkCount(size int64) int { return int((size + ChunkSize - 1) / ChunkSize) }

// ChunkLen is the length of chunk i of a file of the given size.
func ChunkLen(size int64, i int) int {
	return int(min(ChunkSize, size-int64(i)*ChunkSize))
}

// Encode returns the canonical encoding:
//
//	"MNM1" | uvarint nfiles | per file, in path order:
//	  uvarint len(path) | path | uvarint size | uvarint mode | 32-byte chunk hashes
//
// The chunk count is not written: it follows from the size.
func (m *Manifest) Encode() []byte {
	var b bytes.Buffer
	b.WriteString(manifestTag)
	b.Write(binary.AppendUvarint(nil, uint64(len(m.Files))))
	for _, f := range m.Files {
		b.Write(binary.AppendUvarint(nil, uint64(len(f.Path))))
		b.WriteString(f.Path)
		b.Write(binary.AppendUvarint(nil, uint64(f.Size)))
		b.Write(binary.AppendUvarint(nil, uint64(f.Mode)))
		for _, h := range f.Chunks {
			b.Write(h[:])
		}
	}
	return b.Bytes()
}

// Hash is BLAKE3 of the canonical encoding: the manifest's identity.
func (m *Manifest) Hash() Hash { return blake3.Sum256(m.Encode()) }

// DecodeManifest parses and validates a canonical encoding: paths must be
// clean, relative, unique and sorted, and each file's chunk count must
// match its size. It never panics on hostile input.
func DecodeManifest(b []byte) (*Manifest, error) {
	if !bytes.HasPrefix(b, []byte(manifestTag)) {
		return nil, fmt.Errorf("%w: no %s header", ErrBadManifest, manifestTag)
	}
	r := bytes.NewReader(b[len(manifestTag):])
	n, err := readUvarint(r)
	if err != nil || n > MaxFiles {
		return nil, fmt.Errorf("%w: file count unreadable or over %d", ErrBadManifest, MaxFiles)
	}
	m := &Manifest{Files: make([]File, 0, min(n, 1024))}
	for i := range n {
		pl, err := readUvarint(r)
		if err != nil || pl == 0 || pl > MaxPathLen || pl > uint64(r.Len()) {
			return nil, fmt.Errorf("%w: file %d: bad path length", ErrBadManifest, i)
		}
		pb := make([]byte, pl)
		_, _ = r.Read(pb)
		f := File{Path: string(pb)}
		if err := CheckPath(f.Path); err != nil {
			return nil, fmt.Errorf("%w: file %d: %v", ErrBadManifest, i, err)
		}
		if i > 0 && m.Files[i-1].Path >= f.Path {
			return nil, fmt.Errorf("%w: %q is out of order or repeated", ErrBadManifest, f.Path)
		}
		size, err := readUvarint(r)
		if err != nil || size > MaxFileSize {
			return nil, fmt.Errorf("%w: %s: bad size", ErrBadManifest, f.Path)
		}
		mode, err := readUvarint(r)
		if err != nil || mode > 0o777 {
			return nil, fmt.Errorf("%w: %s: bad mode", ErrBadManifest, f.Path)
		}
		f.Size, f.Mode = int64(size), uint32(mode)
		cc := chunkCount(f.Size)
		if r.Len() < cc*32 {
			return nil, fmt.Errorf("%w: %s: %d chunk hashes missing", ErrBadManifest, f.Path, cc)
		}
		if cc > 0 {
			f.Chunks = make([]Hash, cc)
			for j := range f.Chunks {
				_, _ = r.Read(f.Chunks[j][:])
			}
		}
		m.Files = append(m.Files, f)
	}
	if r.Len() != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrBadManifest, r.Len())
	}
	return m, nil
}

// CheckPath accepts a clean, relative, slash-separated path that stays
// inside its root: no "..", no ".", no empty or absolute parts, no
// backslash or NUL.
func CheckPath(p string) error {
	switch {
	case p == "" || len(p) > MaxPathLen:
		return fmt.Errorf("path %q is empty or too long", p)
	case strings.ContainsAny(p, "\\\x00"):
		return fmt.Errorf("path %q contains a backslash or NUL", p)
	case path.IsAbs(p) || path.Clean(p) != p || p == "." || p == ".." || strings.HasPrefix(p, "../"):
		return fmt.Errorf("path %q is absolute or not clean", p)
	}
	return nil
}
