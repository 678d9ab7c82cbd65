package node

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/meshnode/meshnode/internal/disktest"
	"github.com/meshnode/meshnode/internal/frame"
	"github.com/meshnode/meshnode/transfer"
)

// shareDir is n's share folder (the default, inside its data dir).
func shareDir(n *Node) string { return filepath.Join(n.cfg.DataDir, DirShare) }

type testFile struct {
	data []byte
	mode os.FileMode
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// writeItem creates item id in n's share folder.
func writeItem(t testing.TB, n *Node, id string, files map[string]testFile) {
	t.Helper()
	for p, f := range files {
		full := filepath.Join(shareDir(n), id, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, f.data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(full, f.mode); err != nil {
			t.Fatal(err)
		}
	}
}

// treeOf reads an item's shared files: path -> content and mode.
func treeOf(t testing.TB, root string) map[string]testFile {
	t.Helper()
	ig, err := transfer.LoadIgnore(root)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]testFile{}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if ig.Ignored(rel) || !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		fi, _ := d.Info()
		out[rel] = testFile{data: b, mode: fi.Mode().Perm()}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameTree(t testing.TB, want, got map[string]testFile) {
	t.Helper()
	if len(want) != len(got) {
		t.Fatalf("%d files, want %d", len(got), len(want))
	}
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			t.Fatalf("%s missing", p)
		}
		if !bytes.Equal(w.data, g.data) || w.mode != g.mode {
			t.Fatalf("%s differs: %d bytes mode %v, want %d bytes mode %v", p, len(g.data), g.mode, len(w.data), w.mode)
		}
	}
}

// holds waits until every node sees holder h of item id at h's manifest.
func waitHolder(t testing.TB, c *cluster, h *Node, id string) string {
	t.Helper()
	var manifest string
	waitFor(t, 20*time.Second, "holder entry of "+id+" everywhere", func() bool {
		it, ok, _ := h.Doc.Item(id)
		if !ok {
			return false
		}
		manifest = it.Holders[h.ID().String()].Manifest
		for _, n := range c.nodes {
			it, ok, _ := n.Doc.Item(id)
			if !ok || it.Holders[h.ID().String()].Manifest != manifest || manifest == "" {
				return false
			}
		}
		return true
	})
	return manifest
}

// shareItem writes item id on holder h, scans it and waits until every
// node sees h's entry; it returns the manifest.
func shareItem(t testing.TB, c *cluster, h *Node, id string, files map[string]testFile) string {
	t.Helper()
	writeItem(t, h, id, files)
	h.Library.ScanAll()
	return waitHolder(t, c, h, id)
}

func download(t *testing.T, n *Node, id string) transfer.TransferStatus {
	t.Helper()
	st, err := n.Library.StartDownload(id, "")
	if err != nil {
		t.Fatal(err)
	}
	// The API's long poll answers once the download has ended.
	var got transfer.TransferStatus
	call := contractDo(t, n, "GET", "/v1/transfers/"+st.ID+"?wait=8s", nil)
	if err := json.Unmarshal(call.body, &got); call.status != http.StatusOK || err != nil {
		t.Fatalf("GET ?wait=8s: %d %s", call.status, call.body)
	}
	if got.State == transfer.TransferRunning && got.ElapsedSec < 7.9 {
		t.Fatalf("GET ?wait=8s answered while the download ran, after %.1fs", got.ElapsedSec)
	}
	var last transfer.TransferStatus
	waitFor(t, 60*time.Second, "download of "+id, func() bool {
		last, _ = n.Library.TransferByID(st.ID)
		if last.State == transfer.TransferFailed {
			t.Fatalf("download failed: %s", last.Error)
		}
		return last.State == transfer.TransferDone
	})
	return last
}

func gameItem() map[string]testFile {
	return map[string]testFile{
		"bin/run.sh":           {[]byte("#!/bin/sh\necho run\n"), 0o755},
		"data/levels/big.dat":  {randBytes(24<<20 + 12345), 0o644},
		"data/levels/tiny.dat": {randBytes(100), 0o600},
		"empty":                {nil, 0o644},
		"README":               {[]byte("a game\n"), 0o444},
		".meshignore":          {[]byte("# user files\n*.log\nsaves\n"), 0o644},
		"local/settings.ini":   {[]byte("user-owned"), 0o644},
		"debug.log":            {[]byte("user-owned too"), 0o644},
		"saves/slot1":          {[]byte("and this"), 0o644},
	}
}

// A shares an item; B downloads it; C downloads it from A and B at once.
// Bytes and modes match, user-owned files stay home, both holders serve.
func TestDownloadFromOneThenTwoHolders(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3)
	a, b, cc := c.nodes[0], c.nodes[1], c.nodes[2]
	c.waitFormed(t, 2)
	manifest := shareItem(t, c, a, "game", gameItem())
	want := treeOf(t, filepath.Join(shareDir(a), "game"))
	for _, p := range []string{"local/settings.ini", "debug.log", "saves/slot1"} {
		if _, ok := want[p]; ok {
			t.Fatalf("user-owned %s is shared", p)
		}
	}

	st := download(t, b, "game")
	sameTree(t, want, treeOf(t, filepath.Join(shareDir(b), "game")))
	if done, served := metricValue(t, b, "meshnode_transfers_done_total"), metricValue(t, a, "meshnode_chunks_served_total"); done != 1 || served < 25 {
		t.Fatalf("metrics: B %v downloads done, A %v chunks served; want 1 and at least 25", done, served)
	}
	if st.Fetched != st.Total || st.Manifest != manifest {
		t.Fatalf("B fetched %d of %d bytes at %s", st.Fetched, st.Total, st.Manifest)
	}
	if _, err := os.Stat(filepath.Join(shareDir(b), "game", "local")); err == nil {
		t.Fatal("A's local/ reached B")
	}
	waitHolder(t, c, b, "game")

	st = download(t, cc, "game")
	sameTree(t, want, treeOf(t, filepath.Join(shareDir(cc), "game")))
	if st.BySource[a.ID().String()] == 0 || st.BySource[b.ID().String()] == 0 {
		t.Fatalf("C's sources: %v; want both A and B used", st.BySource)
	}
	view, err := cc.Library.View()
	if err != nil || len(view) != 1 || view[0].Local != transfer.LocalComplete || len(view[0].Versions) != 1 || len(view[0].Versions[0].Holders) != 3 {
		t.Fatalf("C's library view: %+v %v", view, err)
	}
}

// A holder that serves wrong bytes for some chunks: every bad chunk is
// detected, fetched from the honest holder, and the liar is reported.
func TestBadHolderIsDetectedAndAvoided(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3)
	a, liar, dl := c.nodes[0], c.nodes[1], c.nodes[2]
	c.waitFormed(t, 2)
	item := map[string]testFile{"blob": {randBytes(20 << 20), 0o644}, "small": {randBytes(10), 0o644}}
	shareItem(t, c, a, "tool", item)
	shareItem(t, c, liar, "tool", item)

	// The liar answers every chunk request with flipped bytes.
	liarRoot := filepath.Join(shareDir(liar), "tool")
	manifestBytes := func(h transfer.Hash) []byte {
		b, _ := os.ReadFile(filepath.Join(liar.cfg.DataDir, DirLibrary, "manifests", h.String()))
		return b
	}
	replaceXferHandler(t, liar, func(s network.Stream) {
		defer s.Close()
		br := bufio.NewReader(s)
		for {
			b, err := frame.Read(br, 1<<16)
			if err != nil {
				return
			}
			req, err := transfer.DecodeRequest(b)
			if err != nil {
				return
			}
			var payload []byte
			switch req.Kind {
			case transfer.ReqManifest:
				payload = manifestBytes(req.Manifest)
			case transfer.ReqHave:
				payload = []byte{1} // "I hold the whole item"
			default:
				data, _ := os.ReadFile(filepath.Join(liarRoot, req.Path))
				start := int(req.Chunk) * transfer.ChunkSize
				payload = append([]byte{}, data[start:min(start+transfer.ChunkSize, len(data))]...)
				payload[0] ^= 0xff
			}
			if err := frame.Write(s, transfer.Response{Status: transfer.StatusOK, Payload: payload}.Encode()); err != nil {
				return
			}
		}
	})
	events, stop := dl.Events.Subscribe(1024)
	defer stop()

	st := download(t, dl, "tool")
	sameTree(t, treeOf(t, filepath.Join(shareDir(a), "tool")), treeOf(t, filepath.Join(shareDir(dl), "tool")))
	if st.BadChunks == 0 || st.BadSources[liar.ID().String()] == "" {
		t.Fatalf("bad data went unnoticed: %d bad chunks, bad sources %v", st.BadChunks, st.BadSources)
	}
	if st.BySource[liar.ID().String()] != 0 {
		t.Fatalf("bytes from the liar were kept: %v", st.BySource)
	}
	reported := false
	for len(events) > 0 {
		ev := <-events
		reported = reported || (ev.Type == "peer.bad_data" && ev.Data["peer"] == liar.ID().String())
	}
	if !reported {
		t.Fatal("no peer.bad_data event for the liar")
	}
}

// Requests for paths outside what is shared are refused with a reason.
func TestHostileTransferRequestsRefused(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2)
	a, b := c.nodes[0], c.nodes[1]
	c.waitFormed(t, 1)
	writeItem(t, a, "game", gameItem())
	outside := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(outside, []byte("outside"), 0o644)
	if err := os.Symlink(outside, filepath.Join(shareDir(a), "game", "link")); err != nil {
		t.Fatal(err)
	}
	a.Library.ScanAll()
	mh, err := transfer.ParseHash(waitHolder(t, c, a, "game"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := b.Host.NewStream(t.Context(), a.ID(), a.Fleet.Protocol("xfer/1"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	br := bufio.NewReader(s)
	ask := func(path string) transfer.Response {
		if err := frame.Write(s, transfer.Request{Kind: transfer.ReqChunk, Manifest: mh, Path: path}.Encode()); err != nil {
			t.Fatal(err)
		}
		b, err := frame.Read(br, 2<<20)
		if err != nil {
			t.Fatal(err)
		}
		r, err := transfer.DecodeResponse(b)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	for _, tc := range []struct{ path, why string }{
		{"../x", "not clean"},
		{"bin/../../x", "not clean"},
		{"/etc/passwd", "absolute"},
		{"local/settings.ini", "user-owned"},
		{"debug.log", "user-owned"},
		{"saves/slot1", "user-owned"},
		{"link", "not in the manifest"},
		{"nope", "not in the manifest"},
	} {
		r := ask(tc.path)
		if r.Status == transfer.StatusOK || !strings.Contains(string(r.Payload), tc.why) {
			t.Errorf("%q: status %d %q; want a refusal saying %q", tc.path, r.Status, r.Payload, tc.why)
		}
	}
	if r := ask("README"); r.Status != transfer.StatusOK || string(r.Payload) != "a game\n" {
		t.Fatalf("an honest request failed: %d %q", r.Status, r.Payload)
	}
	if _, refused, _ := a.Library.Server().Stats(); refused < 6 {
		t.Fatalf("server counted %d refusals, want at least 6", refused)
	}
}

// An update of one file of ten fetches only that file's chunks; the rest
// comes from the old version, and the downloader's local/ survives.
func TestUpdateFetchesOnlyChangedChunks(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2)
	a, b := c.nodes[0], c.nodes[1]
	c.waitFormed(t, 1)
	files := map[string]testFile{}
	for i := range 10 {
		files[filepath.Join("part", string(rune('a'+i)))] = testFile{randBytes(2<<20 + i), 0o644}
	}
	v1 := shareItem(t, c, a, "build", files)
	download(t, b, "build")
	os.MkdirAll(filepath.Join(shareDir(b), "build", "local"), 0o755)
	os.WriteFile(filepath.Join(shareDir(b), "build", "local", "mine"), []byte("keep me"), 0o644)

	changed := randBytes(3<<20 + 7)
	if err := os.WriteFile(filepath.Join(shareDir(a), "build", "part", "c"), changed, 0o644); err != nil {
		t.Fatal(err)
	}
	a.Library.ScanAll()
	waitFor(t, 20*time.Second, "A's new version on B", func() bool {
		it, _, _ := b.Doc.Item("build")
		h := it.Holders[a.ID().String()]
		return h.Manifest != "" && h.Manifest != v1
	})
	st := download(t, b, "build")
	if st.Fetched != int64(len(changed)) {
		t.Fatalf("update fetched %d bytes, want %d (only the changed file)", st.Fetched, len(changed))
	}
	if st.Reused+st.Fetched != st.Total {
		t.Fatalf("reused %d + fetched %d != total %d", st.Reused, st.Fetched, st.Total)
	}
	sameTree(t, treeOf(t, filepath.Join(shareDir(a), "build")), treeOf(t, filepath.Join(shareDir(b), "build")))
	if got, err := os.ReadFile(filepath.Join(shareDir(b), "build", "local", "mine")); err != nil || string(got) != "keep me" {
		t.Fatalf("B's local/ did not survive the update: %q %v", got, err)
	}
}

// The watcher follows the share folder: a new item, a changed file, a
// removed file and a removed item each update the holder entry.
func TestWatchedShareFolderUpdatesHolder(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 1)
	a := c.nodes[0]
	self := a.ID().String()
	holder := func() (string, int64) {
		it, _, _ := a.Doc.Item("kit")
		h := it.Holders[self]
		return h.Manifest, h.Files
	}
	waitFor(t, 10*time.Second, "library running", func() bool { return a.Library.ScanStatus().Scans > 0 })
	writeItem(t, a, "kit", map[string]testFile{"one": {[]byte("1"), 0o644}, "dir/two": {[]byte("2"), 0o644}})
	waitFor(t, 10*time.Second, "new item published", func() bool { m, n := holder(); return m != "" && n == 2 })
	m1, _ := holder()
	os.WriteFile(filepath.Join(shareDir(a), "kit", "one"), []byte("changed"), 0o644)
	waitFor(t, 10*time.Second, "changed file published", func() bool { m, _ := holder(); return m != m1 })
	os.Remove(filepath.Join(shareDir(a), "kit", "dir", "two"))
	waitFor(t, 10*time.Second, "removed file published", func() bool { _, n := holder(); return n == 1 })
	os.RemoveAll(filepath.Join(shareDir(a), "kit"))
	waitFor(t, 10*time.Second, "removed item unpublished", func() bool { m, _ := holder(); return m == "" })
}

// Scan requests for an item with a download in flight are dropped; while
// a scan runs, any number of requests make exactly one more pass.
func TestScanRequestsWhileBusyOrScanning(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2)
	a, b := c.nodes[0], c.nodes[1]
	c.waitFormed(t, 1)
	shareItem(t, c, a, "huge", map[string]testFile{"blob": {randBytes(64 << 20), 0o644}})
	st, err := b.Library.StartDownload("huge", "")
	if err != nil {
		t.Fatal(err)
	}
	before := b.Library.ScanStatus()
	b.Library.RequestScan("huge")
	if got := b.Library.ScanStatus(); got.DroppedEvents != before.DroppedEvents+1 {
		t.Fatalf("a scan request during the download was not dropped: %+v", got)
	}
	if _, err := b.Library.StartDownload("huge", ""); err == nil {
		t.Fatal("a second download of an item in flight was accepted")
	}
	waitFor(t, 60*time.Second, "download done", func() bool {
		t, _ := b.Library.TransferByID(st.ID)
		return t.State == transfer.TransferDone
	})

	files := map[string]testFile{}
	for i := range 2000 {
		files[filepath.Join("many", strings.Repeat("x", i%7)+string(rune('a'+i%26))+time.Duration(i).String())] = testFile{[]byte{byte(i)}, 0o644}
	}
	writeItem(t, a, "many", files)
	waitFor(t, 60*time.Second, "watch-triggered scans settle", func() bool {
		s := a.Library.ScanStatus()
		return len(s.Scanning) == 0 && holderFiles(a, "many") == len(files)
	})
	time.Sleep(1500 * time.Millisecond) // let any debounced event fire
	waitFor(t, 20*time.Second, "idle", func() bool { return len(a.Library.ScanStatus().Scanning) == 0 })
	base := a.Library.ScanStatus().Scans
	for range 3 {
		a.Library.RequestScan("many")
	}
	waitFor(t, 20*time.Second, "requested scans done", func() bool { return len(a.Library.ScanStatus().Scanning) == 0 })
	if got := a.Library.ScanStatus().Scans - base; got != 2 {
		t.Fatalf("3 requests during a scan made %d passes, want 2 (one, then one more)", got)
	}
}

func holderFiles(n *Node, id string) int {
	it, _, _ := n.Doc.Item(id)
	return int(it.Holders[n.ID().String()].Files)
}

// Cancelling stops a download between chunks and discards its staging;
// nothing appears under the item's name.
func TestCancelDownload(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2)
	a, b := c.nodes[0], c.nodes[1]
	c.waitFormed(t, 1)
	shareItem(t, c, a, "big", map[string]testFile{"blob": {randBytes(96 << 20), 0o644}})
	st, err := b.Library.StartDownload("big", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Library.Cancel(st.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "cancelled", func() bool {
		t, _ := b.Library.TransferByID(st.ID)
		return t.State == transfer.TransferCancelled && len(b.Library.ScanStatus().Scanning) == 0
	})
	if _, err := os.Stat(filepath.Join(shareDir(b), "big")); err == nil {
		t.Fatal("a cancelled download appeared under the item's name")
	}
	waitFor(t, 10*time.Second, "staging removed", func() bool {
		ents, _ := os.ReadDir(filepath.Join(b.cfg.DataDir, DirLibrary, "staging"))
		return len(ents) == 0
	})
	if err := b.Library.Cancel(st.ID); err == nil {
		t.Fatal("cancelling a finished transfer succeeded")
	}
}

// A download that does not fit fails before writing, with a clear error,
// and leaves what the node holds untouched. Needs root to mount a small
// tmpfs as the downloader's data dir.
func TestDownloadRefusedWhenDiskTooSmall(t *testing.T) {
	t.Parallel()
	small := disktest.Tmpfs(t, "16m")
	c := newCluster(t, 1)
	a := c.nodes[0]
	b := c.add(func(_ int, cfg *Config) { cfg.DataDir = filepath.Join(small, "b") })
	c.waitFormed(t, 1)
	shareItem(t, c, b, "mine", map[string]testFile{"keep": {[]byte("precious"), 0o644}})
	shareItem(t, c, a, "big", map[string]testFile{"blob": {randBytes(24 << 20), 0o644}})
	st, err := b.Library.StartDownload("big", "")
	if err != nil {
		t.Fatal(err)
	}
	var last transfer.TransferStatus
	waitFor(t, 20*time.Second, "download to fail", func() bool {
		last, _ = b.Library.TransferByID(st.ID)
		return last.State == transfer.TransferFailed
	})
	if !strings.Contains(last.Error, "not enough free space") || !strings.Contains(last.Error, "needs") {
		t.Fatalf("error does not say what is wrong: %q", last.Error)
	}
	if got, err := os.ReadFile(filepath.Join(shareDir(b), "mine", "keep")); err != nil || string(got) != "precious" {
		t.Fatalf("existing item damaged: %q %v", got, err)
	}
	if _, err := os.Stat(filepath.Join(shareDir(b), "big")); err == nil {
		t.Fatal("a failed download appeared under the item's name")
	}
}

// slowStream delays every chunk-sized write, to make a holder slow.
type slowStream struct {
	network.Stream
	delay time.Duration
}

func (s slowStream) Write(b []byte) (int, error) {
	if len(b) > 1<<16 {
		time.Sleep(s.delay)
	}
	return s.Stream.Write(b)
}

// replaceXferHandler puts h in place of n's chunk server. The library
// registers its own handler once its first scan is done, which may be
// after an item's holder entry appeared: h replaces it only after that,
// or the library's would replace h.
func replaceXferHandler(t *testing.T, n *Node, h network.StreamHandler) {
	t.Helper()
	proto := n.Fleet.Protocol("xfer/1")
	waitFor(t, 20*time.Second, "the library serving", func() bool { return slices.Contains(n.Host.Mux().Protocols(), proto) })
	n.Host.SetStreamHandler(proto, h)
}

// A, the only holder, is slow. B starts downloading; C starts once B holds
// 16 chunks. B shows in the library as a partial holder while it
// downloads, C fetches from B as well as from A, and both end with A's
// bytes and a complete holder entry.
func TestDownloadersSwarm(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 3)
	a, b, cc := c.nodes[0], c.nodes[1], c.nodes[2]
	c.waitFormed(t, 2)
	item := map[string]testFile{"blob": {randBytes(40 << 20), 0o644}, "note": {[]byte("hi"), 0o600}}
	manifest := shareItem(t, c, a, "movie", item)
	replaceXferHandler(t, a, func(s network.Stream) {
		a.Library.Server().Handle(slowStream{Stream: s, delay: 40 * time.Millisecond})
	})

	stB, err := b.Library.StartDownload("movie", "")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "B listed as a partial holder on C", func() bool {
		it, _, _ := cc.Doc.Item("movie")
		h := it.Holders[b.ID().String()]
		return h.State == "partial" && h.Manifest == manifest
	})
	// More than twice the fetcher's window (8 chunks): before B's first
	// answer reaches C, C's session with A may take a window of the
	// chunks B holds, and B must still hold others.
	waitFor(t, 20*time.Second, "B holding 16 MiB", func() bool {
		st, _ := b.Library.TransferByID(stB.ID)
		return st.Done >= 16<<20
	})
	stC := download(t, cc, "movie")
	waitFor(t, 60*time.Second, "B's download", func() bool {
		st, _ := b.Library.TransferByID(stB.ID)
		if st.State == transfer.TransferFailed {
			t.Fatalf("B failed: %s", st.Error)
		}
		return st.State == transfer.TransferDone
	})
	want := treeOf(t, filepath.Join(shareDir(a), "movie"))
	sameTree(t, want, treeOf(t, filepath.Join(shareDir(b), "movie")))
	sameTree(t, want, treeOf(t, filepath.Join(shareDir(cc), "movie")))
	if stC.BySource[b.ID().String()] == 0 {
		final, _ := cc.Library.TransferByID(stC.ID)
		t.Fatalf("C took nothing from B, which was downloading the same item: by source %v, sources %v, bad sources %v", final.BySource, final.Sources, final.BadSources)
	}
	for _, n := range []*Node{b, cc} {
		waitFor(t, 20*time.Second, "complete holder entry", func() bool {
			it, _, _ := a.Doc.Item("movie")
			h := it.Holders[n.ID().String()]
			return h.State == "complete" && h.Manifest == manifest
		})
	}
}

// changeMidDownload: A holds an item of three files of 8 MiB; B starts
// downloading it from A, slowly (pinned to its version if pin); when B is
// halfway, the middle of one of A's files changes in place. It returns
// B's transfer once ended, the first version and the changed file's
// size.
func changeMidDownload(t *testing.T, c *cluster, pin bool) (transfer.TransferStatus, string) {
	a, b := c.nodes[0], c.nodes[1]
	c.waitFormed(t, 1)
	files := map[string]testFile{"a.bin": {randBytes(8 << 20), 0o644}, "b.bin": {randBytes(8 << 20), 0o644}, "c.bin": {randBytes(8 << 20), 0o644}}
	v1 := shareItem(t, c, a, "game", files)
	replaceXferHandler(t, a, func(s network.Stream) {
		a.Library.Server().Handle(slowStream{Stream: s, delay: 200 * time.Millisecond})
	})
	version := ""
	if pin {
		version = v1
	}
	st, err := b.Library.StartDownload("game", version)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "B halfway", func() bool {
		s, _ := b.Library.TransferByID(st.ID)
		return s.Done >= 8<<20
	})
	patched := slices.Clone(files["c.bin"].data)
	patched[len(patched)/2] ^= 0xff
	if err := os.WriteFile(filepath.Join(shareDir(a), "game", "c.bin"), patched, 0o644); err != nil {
		t.Fatal(err)
	}
	var first transfer.TransferStatus
	waitFor(t, 90*time.Second, "B's download to end", func() bool {
		first, _ = b.Library.TransferByID(st.ID)
		return first.State != transfer.TransferRunning
	})
	if len(first.BadSources) != 0 {
		t.Fatalf("A was reported for bad data: %v", first.BadSources)
	}
	replaceXferHandler(t, a, a.Library.Server().Handle)
	return first, v1
}

// checkCleanedUp: B's staging is empty and both nodes keep only the
// manifest of the version they hold.
func checkCleanedUp(t *testing.T, c *cluster, held string) {
	t.Helper()
	b := c.nodes[1]
	if left, _ := os.ReadDir(filepath.Join(b.cfg.DataDir, DirLibrary, "staging")); len(left) != 0 {
		t.Fatalf("staging folders left after the new version arrived: %v", left)
	}
	for _, n := range c.nodes[:2] {
		dir := filepath.Join(n.cfg.DataDir, DirLibrary, "manifests")
		waitFor(t, 10*time.Second, "only the held version's manifest on "+n.cfg.Name, func() bool {
			ms, _ := os.ReadDir(dir)
			return len(ms) == 1 && ms[0].Name() == held
		})
	}
}

// The sequence with real nodes. B asked for the item, so its one
// download moves to the new version when A publishes it: it ends with
// the new version, byte-identical, having fetched at most one chunk more
// than the item (the changed region, fetched once in each version); A is
// never reported for bad data.
func TestChangeMidDownloadMovesToTheNewVersion(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2)
	a, b := c.nodes[0], c.nodes[1]
	st, v1 := changeMidDownload(t, c, false)
	t.Logf("moved from %v: fetched %d, reused %d of %d, elsewhere %d", st.MovedFrom, st.Fetched, st.Reused, st.Total, st.Elsewhere)
	if st.State != transfer.TransferDone {
		t.Fatalf("the download ended %s: %s", st.State, st.Error)
	}
	if v2 := itemViewOf(t, a, "game").Latest; st.Manifest != v2 || len(st.MovedFrom) != 1 || st.MovedFrom[0] != v1 {
		t.Fatalf("the download ended at %s having moved from %v; A's version is %s, the first %s", st.Manifest, st.MovedFrom, v2, v1)
	}
	if st.Fetched > st.Total+transfer.ChunkSize {
		t.Fatalf("fetched %d bytes for an item of %d: more than one chunk was fetched twice", st.Fetched, st.Total)
	}
	sameTree(t, treeOf(t, filepath.Join(shareDir(a), "game")), treeOf(t, filepath.Join(shareDir(b), "game")))
	checkCleanedUp(t, c, st.Manifest)
}

// A download pinned to a version stays on it: when that version goes, it
// stops for want of a source, and B's next download of the item brings
// the new version, reusing the chunks the first one verified.
func TestChangeMidPinnedDownloadReusesVerifiedChunks(t *testing.T) {
	t.Parallel()
	c := newCluster(t, 2)
	a, b := c.nodes[0], c.nodes[1]
	first, v1 := changeMidDownload(t, c, true)
	if first.State == transfer.TransferDone {
		t.Skip("the first download finished before the file changed")
	}
	if len(first.MovedFrom) != 0 {
		t.Fatalf("a pinned download moved from %v", first.MovedFrom)
	}
	waitFor(t, 30*time.Second, "A's new version on B", func() bool {
		it, _, _ := b.Doc.Item("game")
		h := it.Holders[a.ID().String()]
		return h.Manifest != "" && h.Manifest != v1
	})
	second := download(t, b, "game")
	t.Logf("first download: %d bytes verified; second: reused %d, fetched %d of %d", first.Done, second.Reused, second.Fetched, second.Total)
	if second.Reused < first.Done-(1<<20) {
		t.Fatalf("the second download reused %d bytes of the %d the first verified", second.Reused, first.Done)
	}
	sameTree(t, treeOf(t, filepath.Join(shareDir(a), "game")), treeOf(t, filepath.Join(shareDir(b), "game")))
	checkCleanedUp(t, c, second.Manifest)
}
