package crdt

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	am "github.com/automerge/automerge-go"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/rs/zerolog"
)

func openT(t *testing.T, dir string) *Doc {
	t.Helper()
	d, err := Open(Config{Dir: dir, Logger: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// crash stops d as a kill -9 would: no final compaction, no Close.
func crash(d *Doc) {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	close(d.stop)
	d.wg.Wait()
	d.syncMu.Lock()
	d.st.close()
	d.syncMu.Unlock()
}

func setName(t *testing.T, d *Doc, item, name string) {
	t.Helper()
	if _, err := d.Update("name", func(tx *Tx) error { tx.SetItemName(item, name); return nil }); err != nil {
		t.Fatal(err)
	}
}

func TestUpdateReadBack(t *testing.T) {
	d := openT(t, t.TempDir())
	rec := NodeRecord{Name: "a", Addrs: []string{"/ip4/127.0.0.1/tcp/1"}, Version: 1, StartedMs: 5, LastSeenMs: 6, Alive: true}
	if _, err := d.Update("node", func(tx *Tx) error {
		tx.SetNode(d.Self(), rec)
		tx.SetHolder("item1", d.Self(), Holder{Manifest: "m", Size: 3, State: HolderComplete})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	got, ok, err := d.Node(d.Self())
	if err != nil || !ok || got.Name != "a" || len(got.Addrs) != 1 || !got.Alive || got.LastSeenMs != 6 {
		t.Fatalf("node = %+v %v %v", got, ok, err)
	}
	it, ok, _ := d.Item("item1")
	if !ok || it.Holders[d.Self()].Manifest != "m" {
		t.Fatalf("item = %+v", it)
	}
	// Rewriting the same record is not a change.
	h, err := d.Update("same", func(tx *Tx) error { tx.SetNode(d.Self(), rec); return nil })
	if err != nil || h != (Hash{}) {
		t.Fatalf("unchanged record made a change: %v %v", h, err)
	}
}

func TestUpdateInvalidWritesNothing(t *testing.T) {
	d := openT(t, t.TempDir())
	heads := d.HeadStrings()
	_, err := d.Update("bad", func(tx *Tx) error {
		tx.SetItemName("good", "x")
		tx.SetHolder("a/b", "peer", Holder{State: HolderComplete})
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "item id") {
		t.Fatalf("want invalid key error, got %v", err)
	}
	if _, err := d.Update("bad", func(tx *Tx) error { tx.SetHolder("i", "p", Holder{State: "weird"}); return nil }); err == nil {
		t.Fatal("bad holder state accepted")
	}
	if fmt.Sprint(d.HeadStrings()) != fmt.Sprint(heads) {
		t.Fatal("a rejected update changed the document")
	}
	if _, ok, _ := d.Item("good"); ok {
		t.Fatal("partial write of a rejected update is visible")
	}
}

func TestPersistReopen(t *testing.T) {
	dir := t.TempDir()
	d := openT(t, dir)
	for i := range 50 {
		setName(t, d, fmt.Sprintf("item%d", i), "v")
	}
	heads := d.HeadStrings()
	// No Close: the log alone must carry every acknowledged change.
	crash(d)
	d2 := openT(t, dir)
	if fmt.Sprint(d2.HeadStrings()) != fmt.Sprint(heads) {
		t.Fatalf("heads after reopen %v, want %v", d2.HeadStrings(), heads)
	}
	lib, _ := d2.Library()
	if len(lib) != 50 {
		t.Fatalf("library has %d items, want 50", len(lib))
	}
}

func TestCompactionKeepsEverything(t *testing.T) {
	dir := t.TempDir()
	d, err := Open(Config{Dir: dir, CompactRecords: 7, Logger: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		setName(t, d, fmt.Sprintf("item%d", i), "v")
	}
	for deadline := time.Now().Add(10 * time.Second); d.Stats().Compactions < 3; {
		if time.Now().After(deadline) {
			t.Fatalf("compactions = %d, want >= 3", d.Stats().Compactions)
		}
		time.Sleep(5 * time.Millisecond)
	}
	heads := d.HeadStrings()
	crash(d)
	d2 := openT(t, dir)
	if fmt.Sprint(d2.HeadStrings()) != fmt.Sprint(heads) {
		t.Fatal("heads differ after compaction and reopen")
	}
}

func TestTruncatedLogRecoversValidPrefix(t *testing.T) {
	dir := t.TempDir()
	d := openT(t, dir)
	for i := range 10 {
		setName(t, d, fmt.Sprintf("item%d", i), "v")
	}
	crash(d)
	logPath := filepath.Join(dir, logFile)
	b, _ := os.ReadFile(logPath)
	if err := os.WriteFile(logPath, b[:len(b)-5], 0o600); err != nil { // torn last record
		t.Fatal(err)
	}
	d2 := openT(t, dir)
	lib, _ := d2.Library()
	if len(lib) != 9 {
		t.Fatalf("recovered %d items, want the 9 complete records", len(lib))
	}
	if len(d2.Damage()) != 1 || !strings.Contains(d2.Damage()[0].String(), "9 intact records kept") {
		t.Fatalf("damage report = %q", d2.Damage())
	}
	kept, _ := filepath.Glob(logPath + ".damaged-*")
	if len(kept) != 1 {
		t.Fatalf("damaged copy not kept: %v", kept)
	}
	if kb, _ := os.ReadFile(kept[0]); len(kb) != len(b)-5 {
		t.Fatalf("kept copy has %d bytes, want %d", len(kb), len(b)-5)
	}
	// Writing continues after the cut and survives another reopen.
	setName(t, d2, "after", "v")
	crash(d2)
	d3 := openT(t, dir)
	if _, ok, _ := d3.Item("after"); !ok || len(d3.Damage()) != 0 {
		t.Fatalf("write after recovery lost (ok=%v) or damage reported again %q", ok, d3.Damage())
	}
}

func TestCorruptSnapshotKeptAside(t *testing.T) {
	dir := t.TempDir()
	d := openT(t, dir)
	setName(t, d, "x", "v")
	d.Close()
	p := filepath.Join(dir, snapFile)
	b, _ := os.ReadFile(p)
	b[len(b)-1] ^= 0xff
	os.WriteFile(p, b, 0o600)
	d2 := openT(t, dir)
	if len(d2.Damage()) == 0 || !strings.Contains(d2.Damage()[0].String(), "checksum") {
		t.Fatalf("damage = %q", d2.Damage())
	}
	if kept, _ := filepath.Glob(p + ".damaged-*"); len(kept) != 1 {
		t.Fatal("damaged snapshot not kept")
	}
}

func syncPair(t *testing.T, a, b *Doc, pa, pb *PeerState) {
	t.Helper()
	c1, c2 := net.Pipe()
	defer c1.Close()
	errc := make(chan error, 1)
	go func() {
		_, err := b.Sync(c2, pb, false)
		c2.Close()
		errc <- err
	}()
	if _, err := a.Sync(halfCloser{c1}, pa, true); err != nil {
		t.Fatal(err)
	}
	c1.Close()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

type halfCloser struct{ net.Conn }

func TestSyncConverges(t *testing.T) {
	a, b := openT(t, t.TempDir()), openT(t, t.TempDir())
	for i := range 20 {
		setName(t, a, fmt.Sprintf("a%d", i), "v")
		setName(t, b, fmt.Sprintf("b%d", i), "v")
	}
	setName(t, a, "shared", "from-a")
	setName(t, b, "shared", "from-b")
	pa, pb := a.NewPeerState(), b.NewPeerState()
	syncPair(t, a, b, pa, pb)
	if fmt.Sprint(a.HeadStrings()) != fmt.Sprint(b.HeadStrings()) {
		t.Fatal("heads differ after sync")
	}
	ia, _, _ := a.Item("shared")
	ib, _, _ := b.Item("shared")
	if ia.Name != ib.Name {
		t.Fatalf("LWW winner differs: %q vs %q", ia.Name, ib.Name)
	}
	// Synced changes are durable on the receiver.
	crash(b)
	b2 := openT(t, b.cfg.Dir)
	if lib, _ := b2.Library(); len(lib) != 41 {
		t.Fatalf("receiver persisted %d items, want 41", len(lib))
	}
}

func TestSnapshotBootstrapAndApply(t *testing.T) {
	a, b := openT(t, t.TempDir()), openT(t, t.TempDir())
	for i := range 100 {
		setName(t, a, fmt.Sprintf("a%d", i), "v")
	}
	setName(t, b, "own", "v") // the newcomer already wrote its own record
	if err := b.MergeSnapshot(a.Snapshot()); err != nil {
		t.Fatal(err)
	}
	if lib, _ := b.Library(); len(lib) != 101 {
		t.Fatalf("after snapshot merge %d items", len(lib))
	}
	if err := b.MergeSnapshot([]byte("garbage")); err == nil {
		t.Fatal("garbage snapshot accepted")
	}
	var ev Event
	cancel := a.Watch(func(e Event) {
		if e.Local {
			ev = e
		}
	})
	defer cancel()
	setName(t, a, "gossiped", "v")
	if ok, err := b.ApplyChange(ev.Change, ev.Hash, ev.Deps); err != nil || !ok {
		t.Fatalf("apply: ok=%v err=%v", ok, err)
	}
	if ok, _ := b.ApplyChange(ev.Change, ev.Hash, ev.Deps); ok {
		t.Fatal("duplicate change counted as new")
	}
	if _, err := b.ApplyChange(ev.Change[:len(ev.Change)-2], Hash{1}, nil); err == nil {
		t.Fatal("truncated change accepted")
	}
	// A change whose parent b lacks is refused as such.
	setName(t, a, "p1", "v")
	setName(t, a, "p2", "v")
	if _, err := b.ApplyChange(ev.Change, ev.Hash, ev.Deps); !errors.Is(err, ErrMissingDeps) {
		t.Fatalf("missing dependency: err = %v", err)
	}
}

// Two replicas that concurrently add holders and names to the same item must
// both stay visible after merging (no hidden concurrent map objects).
func TestConcurrentEntriesBothVisible(t *testing.T) {
	a, b := openT(t, t.TempDir()), openT(t, t.TempDir())
	for _, x := range []struct {
		d    *Doc
		peer string
	}{{a, a.Self()}, {b, b.Self()}} {
		if _, err := x.d.Update("h", func(tx *Tx) error {
			tx.SetHolder("game", x.peer, Holder{Manifest: x.peer, State: HolderComplete})
			tx.SetNode(x.peer, NodeRecord{Name: x.peer, Alive: true})
			tx.SetPresence("room", x.peer, 1)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	syncPair(t, a, b, a.NewPeerState(), b.NewPeerState())
	for _, d := range []*Doc{a, b} {
		it, _, _ := d.Item("game")
		nodes, _ := d.Nodes()
		room, _, _ := d.Room("room")
		if len(it.Holders) != 2 || len(nodes) != 2 || len(room.Presence) != 2 {
			t.Fatalf("holders=%v nodes=%v presence=%v", it.Holders, nodes, room.Presence)
		}
	}
}

// A new node adopts a bigger peer snapshot as its document. Its own changes
// survive (in memory and across a restart), later commits keep working and
// persisting, and sync state made before the swap still converges.
func TestSnapshotAdoptionKeepsOwnChanges(t *testing.T) {
	a, b := openT(t, t.TempDir()), openT(t, t.TempDir())
	for i := range 200 {
		setName(t, a, fmt.Sprintf("a%d", i), "v")
	}
	setName(t, b, "own-before", "v")
	pa, pb := a.NewPeerState(), b.NewPeerState()
	b.mu.Lock()
	b.syncState(pb) // made for the document about to be replaced
	b.mu.Unlock()
	if err := b.MergeSnapshot(a.Snapshot()); err != nil {
		t.Fatal(err)
	}
	if b.st.snapSize == 0 {
		t.Fatal("the peer's snapshot was not adopted (new node should take the fast path)")
	}
	setName(t, b, "own-after", "v")
	setName(t, a, "a-after", "v")
	syncPair(t, a, b, pa, pb)
	if fmt.Sprint(a.HeadStrings()) != fmt.Sprint(b.HeadStrings()) {
		t.Fatal("heads differ after sync")
	}
	for _, k := range []string{"own-before", "own-after"} {
		if _, ok, _ := a.Item(k); !ok {
			t.Fatalf("a lacks %s after sync", k)
		}
	}
	crash(b) // as after a crash: no final compaction, the log replays
	b2 := openT(t, b.cfg.Dir)
	if lib, _ := b2.Library(); len(lib) != 203 {
		t.Fatalf("after restart the adopted node has %d items, want 203", len(lib))
	}
	// A node with its own snapshot merges instead of adopting, and the
	// merged state is what lands on disk.
	setName(t, a, "a-late", "v")
	_ = b2.SavedSize() // serving a snapshot to a peer fills the Save cache
	if err := b2.MergeSnapshot(a.Snapshot()); err != nil {
		t.Fatal(err)
	}
	crash(b2)
	b3 := openT(t, b.cfg.Dir)
	if lib, _ := b3.Library(); len(lib) != 204 {
		t.Fatalf("after a second merge and restart %d items, want 204", len(lib))
	}
}

// Nodes follows the document's view: a local write, a merged remote write and a
// caller that edits the returned map must all leave it correct.
func TestNodesCacheFollowsHeads(t *testing.T) {
	d := openT(t, t.TempDir())
	other := openT(t, t.TempDir())
	ids := map[string]string{}
	keys := map[string]crypto.PrivKey{}
	for _, n := range []string{"peerA", "peerB", "peerC"} {
		ids[n], keys[n] = testIdentity(t)
	}
	set := func(d *Doc, who, name string) {
		t.Helper()
		if _, err := d.Update("node", func(tx *Tx) error {
			tx.As(keys[who]).SetNode(ids[who], NodeRecord{Name: name, Alive: true})
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	set(d, "peerA", "a")
	if ns, _ := d.Nodes(); len(ns) != 1 {
		t.Fatalf("after one write: %d nodes", len(ns))
	}
	set(d, "peerB", "b")
	ns, _ := d.Nodes()
	if len(ns) != 2 {
		t.Fatalf("after a second write: %d nodes", len(ns))
	}
	delete(ns, ids["peerA"])
	if ns, _ := d.Nodes(); len(ns) != 2 {
		t.Fatalf("a caller's edit reached the cache: %d nodes", len(ns))
	}
	set(other, "peerC", "c")
	if err := d.MergeSnapshot(other.Snapshot()); err != nil {
		t.Fatal(err)
	}
	if ns, _ := d.Nodes(); len(ns) != 3 || ns[ids["peerC"]].Name != "c" {
		t.Fatalf("after a merge: %+v", ns)
	}
	set(d, "peerA", "renamed")
	if ns, _ := d.Nodes(); ns[ids["peerA"]].Name != "renamed" {
		t.Fatalf("after a rewrite: %+v", ns[ids["peerA"]])
	}
}

// A reader never sees an Update half applied: it waits for the commit.
func TestReadersNeverSeeHalfAnUpdate(t *testing.T) {
	t.Parallel()
	d := openT(t, t.TempDir())
	started, release := make(chan struct{}), make(chan struct{})
	go d.Update("batch", func(tx *Tx) error {
		for k := range 10 {
			tx.SetHolder(fmt.Sprintf("item-%d", k), d.Self(), Holder{Manifest: "m", State: HolderComplete})
			if k == 2 {
				tx.add(nil, func(*am.Doc) error { close(started); <-release; return nil })
			}
		}
		return nil
	})
	<-started
	got := make(chan int, 1)
	go func() {
		lib, _ := d.Library()
		got <- len(lib)
	}()
	time.Sleep(50 * time.Millisecond) // room for a reader that does not wait to read
	close(release)
	if n := <-got; n != 10 {
		t.Fatalf("a reader saw %d entries of a 10-entry Update", n)
	}
}

// A write rolled back after a reader saw it must leave the node list,
// although the heads return to what they were.
func TestNodesCacheForgetsRolledBackWrite(t *testing.T) {
	t.Parallel()
	d := openT(t, t.TempDir())
	idB, keyB := testIdentity(t)
	d.Update("node", func(tx *Tx) error { tx.SetNode(d.Self(), NodeRecord{Name: "a", Alive: true}); return nil })
	tx := d.newTx()
	tx.As(keyB).SetNode(idB, NodeRecord{Name: "b", Alive: true})
	d.mu.Lock() // commit() up to its Commit, before the append fails
	before := *d.heads.Load()
	if _, _, err := d.apply(tx, "node"); err != nil {
		t.Fatal(err)
	}
	_, _ = d.Nodes() // a concurrent reader
	d.rollbackLocked(before)
	d.mu.Unlock()
	if ns, _ := d.Nodes(); len(ns) != 1 {
		t.Fatalf("Nodes returns %d records after the rollback, want 1", len(ns))
	}
}

// An Update that writes nothing commits nothing and is not an error.
func TestEmptyUpdateCommitsNothing(t *testing.T) {
	t.Parallel()
	d := openT(t, t.TempDir())
	heads := d.HeadStrings()
	h, err := d.Update("nothing", func(*Tx) error { return nil })
	if err != nil || h != (Hash{}) || fmt.Sprint(d.HeadStrings()) != fmt.Sprint(heads) {
		t.Fatalf("empty update: hash %v, err %v, heads moved %v", h, err, fmt.Sprint(d.HeadStrings()) != fmt.Sprint(heads))
	}
}

// testIdentity makes a peer identity for writing another node's records.
func testIdentity(t testing.TB) (string, crypto.PrivKey) {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return id.String(), k
}
