package transfer

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/zeebo/blake3"
)

func sampleManifest() *Manifest {
	h := func(b byte) Hash { var x Hash; x[0] = b; return x }
	return &Manifest{Files: []File{
		{Path: "a/b", Size: ChunkSize + 1, Mode: 0o644, Chunks: []Hash{h(1), h(2)}},
		{Path: "a/c", Size: 0, Mode: 0o755},
		{Path: "z", Size: 3, Mode: 0o600, Chunks: []Hash{h(3)}},
	}}
}

func TestManifestRoundTripAndHash(t *testing.T) {
	m := sampleManifest()
	got, err := DecodeManifest(m.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Encode(), m.Encode()) || got.Hash() != m.Hash() {
		t.Fatal("round trip changed the manifest")
	}
	if m.Size() != ChunkSize+4 || m.Chunks() != 3 {
		t.Fatalf("size %d chunks %d", m.Size(), m.Chunks())
	}
	if f, ok := m.File("a/c"); !ok || f.Mode != 0o755 {
		t.Fatalf("File(a/c) = %+v %v", f, ok)
	}
	if _, ok := m.File("a"); ok {
		t.Fatal("File found a folder")
	}
}

func TestManifestDecodeRejects(t *testing.T) {
	enc := func(fs ...File) []byte { return (&Manifest{Files: fs}).Encode() }
	one := Hash{1}
	for name, b := range map[string][]byte{
		"empty":          nil,
		"no header":      []byte("XXXX\x00"),
		"trailing":       append(enc(), 0),
		"unsorted":       enc(File{Path: "b"}, File{Path: "a"}),
		"duplicate":      enc(File{Path: "a"}, File{Path: "a"}),
		"dotdot":         enc(File{Path: "../x"}),
		"absolute":       enc(File{Path: "/x"}),
		"unclean":        enc(File{Path: "a//b"}),
		"backslash":      enc(File{Path: `a\b`}),
		"missing chunks": enc(File{Path: "a", Size: 10}),
		"extra chunks":   enc(File{Path: "a", Size: 0, Chunks: []Hash{one}}),
		"bad mode":       enc(File{Path: "a", Mode: 0o1777}),
		"truncated":      enc(File{Path: "a", Size: 5, Chunks: []Hash{one}})[:20],
	} {
		if _, err := DecodeManifest(b); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

func TestCheckPath(t *testing.T) {
	for p, ok := range map[string]bool{
		"a": true, "a/b.txt": true, ".hidden": true, "a/..b": true,
		"": false, ".": false, "..": false, "../a": false, "a/../b": false, "/a": false,
		"a/": false, "a//b": false, "./a": false, "a\x00": false, `a\..\b`: false,
	} {
		if err := CheckPath(p); (err == nil) != ok {
			t.Errorf("CheckPath(%q) = %v", p, err)
		}
	}
}

func FuzzDecodeManifest(f *testing.F) {
	f.Add(sampleManifest().Encode())
	f.Add((&Manifest{}).Encode())
	f.Add([]byte("MNM1\x01\x01a\x05\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeManifest(b)
		if err != nil {
			return
		}
		// Canonical: what decodes re-encodes to the same bytes.
		if !bytes.Equal(m.Encode(), b) {
			t.Fatalf("decoded manifest re-encodes differently")
		}
	})
}

func FuzzDecodeRequest(f *testing.F) {
	f.Add(Request{Kind: ReqManifest}.Encode())
	f.Add(Request{Kind: ReqChunk, Path: "a/b", Chunk: 7}.Encode())
	f.Add(Request{Kind: ReqChunk, Path: "../../etc/passwd"}.Encode())
	f.Add(Request{Kind: ReqRun, Chunk: 3, Count: 200}.Encode())
	f.Add(Request{Kind: ReqRun, Chunk: 1 << 40, Count: maxRunChunks + 1}.Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRequest(b)
		if err != nil {
			return
		}
		if !bytes.Equal(r.Encode(), b) {
			t.Fatalf("request re-encodes differently")
		}
	})
}

func FuzzDecodeResponse(f *testing.F) {
	f.Add(Response{Status: StatusOK, Payload: []byte("x")}.Encode())
	f.Add([]byte{StatusRefused})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeResponse(b)
		if err == nil && !bytes.Equal(r.Encode(), b) {
			t.Fatalf("response re-encodes differently")
		}
	})
}

func TestIgnore(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, IgnoreFile), []byte("# c\n*.log\ncache/\nbuild/tmp\n"), 0o644)
	ig, err := LoadIgnore(dir)
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]bool{
		"local": true, "local/x": true, "a.log": true, "x/a.log": false, "cache/y": true,
		"build/tmp/z": true, "build/out": false, "src/local": false, "readme": false,
	} {
		if got := ig.Ignored(p); got != want {
			t.Errorf("Ignored(%q) = %v", p, got)
		}
	}
	os.WriteFile(filepath.Join(dir, IgnoreFile), []byte("[\n"), 0o644)
	if _, err := LoadIgnore(dir); err == nil || !strings.Contains(err.Error(), "bad pattern") {
		t.Fatalf("bad pattern: %v", err)
	}
}

// A rescan of an unchanged item hashes nothing; a changed file is the only
// one hashed again.
func TestScanReusesIndex(t *testing.T) {
	root := t.TempDir()
	for _, n := range []string{"a", "b", "sub/c"} {
		os.MkdirAll(filepath.Dir(filepath.Join(root, n)), 0o755)
		os.WriteFile(filepath.Join(root, n), bytes.Repeat([]byte(n), 1000), 0o644)
	}
	os.Symlink("/etc/passwd", filepath.Join(root, "link"))
	ageTree(t, root)
	ixFile := filepath.Join(t.TempDir(), "ix.json")
	ix := LoadIndex(ixFile)
	m1, st, err := Scan(root, ix)
	if err != nil || st.Hashed != 3 || st.Files != 3 || st.Skipped != 1 {
		t.Fatalf("first scan: %+v %v", st, err)
	}
	if err := ix.Save(ixFile); err != nil {
		t.Fatal(err)
	}
	ix = LoadIndex(ixFile)
	m2, st, err := Scan(root, ix)
	if err != nil || st.Hashed != 0 || m2.Hash() != m1.Hash() {
		t.Fatalf("unchanged rescan hashed %d files (%v)", st.Hashed, err)
	}
	os.WriteFile(filepath.Join(root, "b"), []byte("changed"), 0o644)
	m3, st, err := Scan(root, ix)
	if err != nil || st.Hashed != 1 || st.BytesHashed != 7 || m3.Hash() == m1.Hash() {
		t.Fatalf("after one change: %+v %v", st, err)
	}
	os.Remove(filepath.Join(root, "a"))
	m4, _, _ := Scan(root, ix)
	if len(m4.Files) != 2 || len(ix.Files) != 2 {
		t.Fatalf("removed file still listed: %d files, %d index entries", len(m4.Files), len(ix.Files))
	}
}

// A manifest entry that has become a symlink leading out of the item is
// refused by the server's resolution, not followed.
func TestReadChunkRefusesSymlinkOut(t *testing.T) {
	root := t.TempDir()
	outside := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(outside, []byte("secret"), 0o644)
	os.WriteFile(filepath.Join(root, "f"), []byte("secret"), 0o644)
	m, _, err := Scan(root, LoadIndex(""))
	if err != nil {
		t.Fatal(err)
	}
	sv := &Served{Root: root, Manifest: m, Hash: m.Hash(), Encoded: m.Encode()}
	if b, st, err := readChunk(sv, "f", 0, make([]byte, ChunkSize)); err != nil || st != StatusOK || string(b) != "secret" {
		t.Fatalf("honest read: %q %d %v", b, st, err)
	}
	os.Remove(filepath.Join(root, "f"))
	os.Symlink(outside, filepath.Join(root, "f"))
	if _, st, err := readChunk(sv, "f", 0, make([]byte, ChunkSize)); err == nil || st != StatusRefused {
		t.Fatalf("symlink out was followed: status %d, %v", st, err)
	}
	if _, st, err := readChunk(sv, "f", 5, make([]byte, ChunkSize)); err == nil || st != StatusNotFound {
		t.Fatalf("chunk past the end: status %d, %v", st, err)
	}
}

// hashFile hashes small files from a buffer of their size and large ones
// from pooled chunk buffers; either way the hashes are the chunks'. A file
// that grew since its size was taken is refused when that shows in its
// chunk count, and always when it was smaller than a chunk.
func TestHashFileSmallAndLarge(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, size := range []int{0, 1, 4096, ChunkSize - 1, ChunkSize, ChunkSize + 1, 2*ChunkSize + 7} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i * 7)
		}
		p := filepath.Join(dir, fmt.Sprintf("f%d", size))
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := hashFile(p, int64(size))
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		var want []Hash
		for off := 0; off < size; off += ChunkSize {
			want = append(want, blake3.Sum256(data[off:min(off+ChunkSize, size)]))
		}
		if size == 0 {
			want = []Hash{blake3.Sum256(nil)}[:chunkCount(0)]
		}
		if !slices.Equal(got, want) {
			t.Fatalf("size %d: %d hashes, want %d (or different)", size, len(got), len(want))
		}
		// Grown by a byte since its size was taken.
		if size >= ChunkSize && chunkCount(int64(size)+1) == chunkCount(int64(size)) {
			continue
		}
		if err := os.WriteFile(p, append(data, 1), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := hashFile(p, int64(size)); err == nil {
			t.Fatalf("size %d: a file that grew was hashed", size)
		}
	}
}
