package transfer

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/zeebo/blake3"

	"github.com/meshnode/meshnode/internal/atomicfile"
)

// Names with a meaning inside an item.
const (
	// LocalDir is the user-owned subtree of an item: never hashed, listed
	// or served, and kept across updates.
	LocalDir = "local"
	// IgnoreFile lists more user-owned patterns, one per line (path.Match
	// syntax against the slash path, or against any leading part of it;
	// '#' starts a comment).
	IgnoreFile = ".meshignore"
)

// Ignore decides which paths of an item are user-owned.
type Ignore struct {
	patterns []string
}

// LoadIgnore reads the item's .meshignore, if any. The local/ subtree is
// always ignored.
func LoadIgnore(root string) (*Ignore, error) {
	ig := &Ignore{patterns: []string{LocalDir}}
	b, err := os.ReadFile(filepath.Join(root, IgnoreFile))
	if errors.Is(err, fs.ErrNotExist) {
		return ig, nil
	}
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.Trim(line, "/")
		if _, err := path.Match(line, ""); err != nil {
			return nil, fmt.Errorf("%s: bad pattern %q: %w", IgnoreFile, line, err)
		}
		ig.patterns = append(ig.patterns, line)
	}
	return ig, nil
}

// Ignored reports whether p (slash-separated, relative) or any folder it
// is in matches a pattern.
func (ig *Ignore) Ignored(p string) bool {
	parts := strings.Split(p, "/")
	for i := range parts {
		prefix := strings.Join(parts[:i+1], "/")
		for _, pat := range ig.patterns {
			if ok, _ := path.Match(pat, prefix); ok {
				return true
			}
		}
	}
	return false
}

// fingerprint is the cheap stat data that says a file is unchanged.
type fingerprint struct {
	Size    int64  `json:"size"`
	MtimeNs int64  `json:"mtime_ns"`
	Mode    uint32 `json:"mode"`
	Ino     uint64 `json:"ino"`
	Ctime   int64  `json:"ctime_ns"`
}

func fingerprintOf(fi fs.FileInfo) fingerprint {
	f := fingerprint{Size: fi.Size(), MtimeNs: fi.ModTime().UnixNano(), Mode: uint32(fi.Mode().Perm())}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		f.Ino = st.Ino
		f.Ctime = st.Ctim.Sec*1e9 + st.Ctim.Nsec
	}
	return f
}

// indexEntry is one file as last scanned.
type indexEntry struct {
	FP     fingerprint `json:"fp"`
	Chunks []Hash      `json:"chunks"`
	// Racy: the file was modified less than racyWindow before it was
	// hashed, so a write just after the hash could have left the same
	// fingerprint (file times move in coarse steps). Such a file is
	// hashed again at the next scan whatever its fingerprint, and its
	// chunks are checked against the manifest before they are served.
	Racy bool `json:"racy,omitempty"`
}

// racyWindow: see indexEntry.Racy. Two seconds covers the coarsest file
// times in use (FAT), and Linux's coarse clock many times over.
const racyWindow = 2 * time.Second

// isRacy reports whether a file of fingerprint fp, read at or after
// when, could have been written again with the same fingerprint.
func isRacy(fp fingerprint, when time.Time) bool {
	// A time ahead of the clock (another machine's clock, a FAT volume
	// in local time) says nothing about the race: not racy.
	d := when.UnixNano() - fp.MtimeNs
	return d >= 0 && d < int64(racyWindow)
}

// Index is the persisted result of an item's last scan: per file, its
// fingerprint and chunk hashes. A rescan re-hashes only files whose
// fingerprint changed.
type Index struct {
	Files    map[string]indexEntry `json:"files"`
	Manifest Hash                  `json:"manifest"`
	dirty    bool                  // changed since loaded: Save writes it
}

// racy returns, in m's order, which files are racy (indexEntry.Racy); nil
// when none is.
func (ix *Index) racy(m *Manifest) []bool {
	var out []bool
	for i, f := range m.Files {
		if e := ix.Files[f.Path]; e.Racy {
			if out == nil {
				out = make([]bool, len(m.Files))
			}
			out[i] = true
		}
	}
	return out
}

// fingerprints returns the fingerprint of each of m's files as this
// index last saw it, in m's order; nil when one is missing (nothing is
// then checked before serving).
func (ix *Index) fingerprints(m *Manifest) []fingerprint {
	out := make([]fingerprint, len(m.Files))
	for i, f := range m.Files {
		e, ok := ix.Files[f.Path]
		if !ok {
			return nil
		}
		out[i] = e.FP
	}
	return out
}

// LoadIndex reads an index file; a missing or unreadable one is empty (the
// next scan rebuilds it).
func LoadIndex(file string) *Index {
	ix := &Index{Files: map[string]indexEntry{}}
	b, err := os.ReadFile(file)
	if err != nil || json.Unmarshal(b, ix) != nil || ix.Files == nil {
		return &Index{Files: map[string]indexEntry{}, dirty: true}
	}
	return ix
}

// Save writes the index atomically, unless nothing changed since it was
// loaded: a rescan of an unchanged item writes nothing.
func (ix *Index) Save(file string) error {
	if !ix.dirty {
		return nil
	}
	b, err := json.Marshal(ix)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(file, b, 0o600); err != nil {
		return err
	}
	ix.dirty = false
	return nil
}

// ScanStats counts what a scan did.
type ScanStats struct {
	Files, Hashed, Skipped int
	BytesHashed            int64
}

// Scan builds the manifest of the item at root, reusing ix for files whose
// fingerprint is unchanged, and updates ix. Symlinks, special files and
// ignored paths are skipped (counted in Skipped): they are never served.
// A nil ix scans without reusing anything.
func Scan(root string, ix *Index) (*Manifest, ScanStats, error) {
	return scan(root, ix, nil)
}

// errScanStopped ends a scan of a node that is stopping; the item's
// index is left as it was.
var errScanStopped = errors.New("transfer: scan stopped: the node is stopping")

// scan is Scan; it gives up with errScanStopped between files once stop
// (if set) reports true.
func scan(root string, ix *Index, stop func() bool) (*Manifest, ScanStats, error) {
	var st ScanStats
	if ix == nil {
		ix = &Index{dirty: true}
	}
	if ix.Files == nil {
		ix.Files = map[string]indexEntry{}
	}
	ig, err := LoadIgnore(root)
	if err != nil {
		return nil, st, err
	}
	m := &Manifest{}
	seen := map[string]bool{}
	err = filepath.WalkDir(root, func(full string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if stop != nil && stop() {
			return errScanStopped
		}
		if full == root {
			return nil
		}
		rel, _ := filepath.Rel(root, full)
		rel = filepath.ToSlash(rel)
		if ig.Ignored(rel) || CheckPath(rel) != nil {
			st.Skipped++
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() || !d.Type().IsRegular() {
			if !d.IsDir() {
				st.Skipped++
			}
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		fp := fingerprintOf(fi)
		e, ok := ix.Files[rel]
		if !ok || e.FP != fp || e.Racy {
			hashed := time.Now()
			if e.Chunks, err = hashFile(full, fi.Size()); err != nil {
				return err
			}
			e.FP, e.Racy = fp, isRacy(fp, hashed)
			ix.dirty = true
			st.Hashed++
			st.BytesHashed += fi.Size()
		}
		ix.Files[rel] = e
		seen[rel] = true
		st.Files++
		m.Files = append(m.Files, File{Path: rel, Size: fp.Size, Mode: fp.Mode, Chunks: e.Chunks})
		return nil
	})
	if err != nil {
		return nil, st, fmt.Errorf("transfer: scan %s: %w", root, err)
	}
	for p := range ix.Files {
		if !seen[p] {
			delete(ix.Files, p)
			ix.dirty = true
		}
	}
	slices.SortFunc(m.Files, func(a, b File) int { return strings.Compare(a.Path, b.Path) })
	if h := m.Hash(); h != ix.Manifest {
		ix.Manifest, ix.dirty = h, true
	}
	return m, st, nil
}

// hashFile returns the BLAKE3 hash of each chunk of the file.
// chunkBufs pools ChunkSize read buffers for hashing.
var chunkBufs = sync.Pool{New: func() any { b := make([]byte, ChunkSize); return &b }}

func hashFile(p string, size int64) ([]Hash, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := make([]Hash, 0, chunkCount(size))
	// A file smaller than a chunk is read into a buffer of its size (a
	// file that grew meanwhile then reads as more chunks than its size
	// says, and is refused below); larger ones share pooled chunk
	// buffers. A fresh 1 MiB buffer per file cost 20 GiB of allocation to
	// scan 20,000 files of 4 KiB.
	var buf []byte
	if size < ChunkSize {
		buf = make([]byte, max(size, 1))
	} else {
		bp := chunkBufs.Get().(*[]byte)
		defer chunkBufs.Put(bp)
		buf = *bp
	}
	for {
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			out = append(out, blake3.Sum256(buf[:n]))
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	if len(out) != chunkCount(size) {
		return nil, fmt.Errorf("%s changed while it was hashed", p)
	}
	return out, nil
}
