package transfer

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/crdt"
	"github.com/meshnode/meshnode/internal/disktest"
)

// testLibrary is a running Library on its own host and document, with
// its share folder and bookkeeping under dir.
type testLibrary struct {
	*Library
	host  host.Host
	doc   *crdt.Doc
	share string
	dir   string // the library's bookkeeping folder
	// stop ends Run and returns its error; the test's cleanup calls it
	// too.
	stop func() error
}

// newTestLibrary starts a Library that is stopped, and waited for, when
// the test ends, and waits for its first scan.
func newTestLibrary(t *testing.T, dir string, opts ...func(*LibraryConfig)) *testLibrary {
	t.Helper()
	tl := startTestLibrary(t, dir, opts...)
	waitUntil(t, "the library's first scan", func() bool { return tl.ScanStatus().Scans > 0 })
	return tl
}

// startTestLibrary is newTestLibrary without the wait.
func startTestLibrary(t *testing.T, dir string, opts ...func(*LibraryConfig)) *testLibrary {
	t.Helper()
	h := testHost(t, "tcp")
	doc, err := crdt.Open(crdt.Config{Dir: filepath.Join(dir, "doc"), Logger: zerolog.Nop(), Key: h.Peerstore().PrivKey(h.ID())})
	if err != nil {
		t.Fatal(err)
	}
	tl := &testLibrary{host: h, doc: doc, share: filepath.Join(dir, "share"), dir: filepath.Join(dir, "library")}
	cfg := LibraryConfig{Share: tl.share, Dir: tl.dir, Doc: doc, Host: h, Protocol: benchProto,
		Handle: h.SetStreamHandler, Logger: zerolog.New(zerolog.NewTestWriter(t))}
	for _, o := range opts {
		o(&cfg)
	}
	tl.Library = NewLibrary(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tl.Run(ctx) }()
	var once sync.Once
	var runErr error
	tl.stop = func() error {
		once.Do(func() {
			cancel()
			runErr = <-done
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := tl.stop(); err != nil {
			t.Error(err)
		}
		_ = doc.Close()
	})
	return tl
}

// holderOf writes into tl's document that src holds sv complete as item id
// (signed with src's key, as src would).
func (tl *testLibrary) holderOf(t *testing.T, id string, src host.Host, sv *Served) {
	t.Helper()
	h := crdt.Holder{Manifest: sv.Hash.String(), Size: sv.Manifest.Size(), Files: int64(len(sv.Manifest.Files)), State: crdt.HolderComplete, UpdatedMs: 1}
	if _, err := tl.doc.Update("test holder", func(tx *crdt.Tx) error {
		tx.SetItemName(id, id)
		tx.As(src.Peerstore().PrivKey(src.ID())).SetHolder(id, src.ID().String(), h)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// holds reports whether tl's document has a holder entry of tl for id.
func (tl *testLibrary) holds(id string) bool {
	it, _, _ := tl.doc.Item(id)
	_, ok := it.Holders[tl.host.ID().String()]
	return ok
}

// ended waits until transfer id has ended (its goroutine is done: a
// cancelled transfer shows cancelled before that) and returns it.
func (tl *testLibrary) ended(t *testing.T, id string) TransferStatus {
	t.Helper()
	var st TransferStatus
	waitUntil(t, "transfer "+id+" to end", func() bool {
		st, _ = tl.TransferByID(id)
		return st.State != TransferRunning && !st.ended.IsZero()
	})
	return st
}

// sharedItem returns a small item held by a host that serves it.
func sharedItem(t *testing.T, chunks int) (host.Host, *Served) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "item")
	writeBenchItem(t, root, 1, int64(chunks)*ChunkSize)
	sv := servedOf(t, root)
	src := testHost(t, "tcp")
	serve(src, sv)
	return src, sv
}

// A cancel that arrives before the download's goroutine has run is not
// lost: every download cancelled right after it started ends cancelled,
// with nothing under the item's name and no staging folder left.
func TestCancelRightAfterStart(t *testing.T) {
	src, sv := sharedItem(t, 3)
	dst := newTestLibrary(t, t.TempDir())
	connect(t, dst.host, src)
	dst.holderOf(t, "game", src, sv)
	for i := range 20 {
		st, err := dst.StartDownload("game", "")
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if err := dst.Cancel(st.ID); err != nil {
			t.Fatalf("round %d: cancel: %v", i, err)
		}
		if end := dst.ended(t, st.ID); end.State != TransferCancelled {
			t.Fatalf("round %d: cancelled download ended %s (%s)", i, end.State, end.Error)
		}
		if _, err := os.Stat(filepath.Join(dst.share, "game")); err == nil {
			t.Fatalf("round %d: a cancelled download appeared under the item's name", i)
		}
		waitUntil(t, "staging removed", func() bool {
			ents, _ := os.ReadDir(filepath.Join(dst.dir, dirStaging))
			return len(ents) == 0
		})
	}
}

// Wherever a cancel lands in a download's life, its answer holds: a
// cancel accepted ends the download cancelled with nothing under the
// item's name; one refused (too late: the item is being put in place)
// ends it done.
func TestCancelAnswerHolds(t *testing.T) {
	src, sv := sharedItem(t, 3)
	dst := newTestLibrary(t, t.TempDir())
	connect(t, dst.host, src)
	dst.holderOf(t, "game", src, sv)
	item := filepath.Join(dst.share, "game")
	// How long a whole download takes here: the cancels land from its
	// start to past its end.
	begin := time.Now()
	st, err := dst.StartDownload("game", "")
	if err != nil {
		t.Fatal(err)
	}
	if end := dst.ended(t, st.ID); end.State != TransferDone {
		t.Fatalf("download: %s (%s)", end.State, end.Error)
	}
	whole := time.Since(begin)
	if err := os.RemoveAll(item); err != nil {
		t.Fatal(err)
	}
	dst.ScanAll()
	const rounds = 24
	var accepted, refused int
	for i := range rounds {
		st, err := dst.StartDownload("game", "")
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		time.Sleep(whole * time.Duration(i) / (rounds - 8))
		cerr := dst.Cancel(st.ID)
		end := dst.ended(t, st.ID)
		_, serr := os.Stat(item)
		switch {
		case cerr == nil && (end.State != TransferCancelled || serr == nil):
			t.Fatalf("round %d: cancel accepted, yet the download ended %s (item present: %v)", i, end.State, serr == nil)
		case cerr == nil && dst.holds("game"):
			t.Fatalf("round %d: a cancelled download left this node's holder entry", i)
		case cerr != nil && end.State != TransferDone:
			t.Fatalf("round %d: cancel refused (%v), yet the download ended %s (%s)", i, cerr, end.State, end.Error)
		case cerr == nil:
			accepted++
		default:
			refused++
		}
		if err := os.RemoveAll(item); err != nil {
			t.Fatal(err)
		}
		dst.ScanAll()
	}
	t.Logf("a download takes %v; %d cancels accepted, %d refused", whole, accepted, refused)
}

// stagingOf is the staging folder of a download of sv as item id.
func (tl *testLibrary) stagingOf(id string, sv *Served) string {
	return filepath.Join(tl.dir, dirStaging, id+"-"+sv.Hash.String()[:16])
}

// A download whose staging folder or job.json cannot be written fails at
// once with an error naming the path, instead of running unrecorded (a
// crash would then not resume it); the item can be downloaded once the
// cause is gone.
func TestDownloadFailsWhenItsJobCannotBeRecorded(t *testing.T) {
	src, sv := sharedItem(t, 2)
	for _, tc := range []struct {
		name  string
		block func(staging string) // makes the job unrecordable
		path  func(staging string) string
	}{
		{"staging folder", func(staging string) {
			if err := os.WriteFile(staging, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, func(staging string) string { return staging }},
		{"job.json", func(staging string) {
			if err := os.MkdirAll(filepath.Join(staging, jobFile, "x"), 0o700); err != nil {
				t.Fatal(err)
			}
		}, func(staging string) string { return filepath.Join(staging, jobFile) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := newTestLibrary(t, t.TempDir())
			connect(t, dst.host, src)
			dst.holderOf(t, "game", src, sv)
			staging := dst.stagingOf("game", sv)
			tc.block(staging)
			st, err := dst.StartDownload("game", "")
			if err != nil {
				t.Fatal(err)
			}
			end := dst.ended(t, st.ID)
			if end.State != TransferFailed || !strings.Contains(end.Error, tc.path(staging)) {
				t.Fatalf("download ended %s (%q), want failed naming %s", end.State, end.Error, tc.path(staging))
			}
			if _, err := os.Stat(filepath.Join(dst.share, "game")); err == nil {
				t.Fatal("the item appeared although its download failed")
			}
			if err := os.RemoveAll(staging); err != nil {
				t.Fatal(err)
			}
			st, err = dst.StartDownload("game", "")
			if err != nil {
				t.Fatal(err)
			}
			if end := dst.ended(t, st.ID); end.State != TransferDone {
				t.Fatalf("download after the cause was removed: %s (%s)", end.State, end.Error)
			}
		})
	}
}

// On a full disk (a real one: a small tmpfs, which needs root) a download
// fails before it fetches anything, saying the disk is full and where;
// once space is freed it runs to the end.
func TestDownloadOnFullDisk(t *testing.T) {
	src, sv := sharedItem(t, 2)
	disk := disktest.Tmpfs(t, "4m")
	dst := newTestLibrary(t, disk)
	connect(t, dst.host, src)
	dst.holderOf(t, "game", src, sv)
	filler := disktest.Fill(t, disk)
	st, err := dst.StartDownload("game", "")
	if err != nil {
		t.Fatal(err)
	}
	end := dst.ended(t, st.ID)
	staging := dst.stagingOf("game", sv)
	if end.State != TransferFailed || !strings.Contains(end.Error, "not enough free space") || !strings.Contains(end.Error, staging) {
		t.Fatalf("download on a full disk ended %s (%q), want failed for free space naming %s", end.State, end.Error, staging)
	}
	if end.Fetched != 0 {
		t.Fatalf("fetched %d bytes before failing", end.Fetched)
	}
	if _, err := os.Lstat(staging); err == nil {
		t.Fatal("the failed download left its empty staging folder")
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	st, err = dst.StartDownload("game", "")
	if err != nil {
		t.Fatal(err)
	}
	if end := dst.ended(t, st.ID); end.State != TransferDone {
		t.Fatalf("download after space was freed: %s (%s)", end.State, end.Error)
	}
	waitUntil(t, "no staging left", func() bool {
		ents, _ := os.ReadDir(filepath.Join(dst.dir, dirStaging))
		return len(ents) == 0
	})
}
