package crdt

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshnode/meshnode/internal/disktest"
)

// A write refused by a full disk leaves no trace: not in memory, not to
// watchers (the publisher), not on disk; writes acknowledged after space
// frees survive a crash.
func TestDiskFullWriteLeavesNoTrace(t *testing.T) {
	t.Parallel()
	mnt := disktest.Tmpfs(t, "2m")
	dir := filepath.Join(mnt, "doc")
	d := openT(t, dir)
	writeKeys(t, d, "before", 5)
	var published atomic.Int32
	d.Watch(func(ev Event) {
		if ev.Local {
			published.Add(1)
		}
	})
	heads := d.HeadStrings()
	filler := disktest.Fill(t, mnt)

	// The log's last page may still hold a few records; write until the
	// disk refuses one (acknowledged ones must survive like any other).
	acked, err := 0, error(nil)
	for ; acked < 500; acked++ {
		if _, err = d.Update("w", func(tx *Tx) error { tx.SetItemName("lost", fmt.Sprint(acked)); return nil }); err != nil {
			break
		}
		heads = d.HeadStrings()
	}
	if !errors.Is(err, ErrDiskFull) {
		t.Fatalf("write %d on a full disk: %v, want ErrDiskFull", acked, err)
	}
	published.Store(0)
	if d.Stats().RolledBack != 1 {
		t.Fatalf("rolled back %d writes, want 1", d.Stats().RolledBack)
	}
	if it, _, _ := d.Item("lost"); acked > 0 && it.Name != fmt.Sprint(acked-1) {
		t.Fatalf("after the refused write the name is %q, want the last acknowledged %d", it.Name, acked-1)
	}
	if fmt.Sprint(d.HeadStrings()) != fmt.Sprint(heads) {
		t.Fatal("heads moved after a refused write")
	}
	// A change from a peer that cannot be logged is refused too, and
	// stays out of memory (anti-entropy brings it again).
	peer := openT(t, t.TempDir())
	writeKeys(t, peer, "peer", 1)
	ph := peer.Heads()[0]
	ch, _ := peer.doc().Change(ph)
	if _, err := d.ApplyChange(ch.Save(), ph, ch.Dependencies()); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("remote change on a full disk: %v", err)
	}
	if d.HasAll([]Hash{ph}) {
		t.Fatal("an unlogged remote change entered memory")
	}
	// So is a sync session.
	c1, c2 := net.Pipe()
	done := make(chan struct{})
	go func() { peer.Sync(c2, peer.NewPeerState(), false); c2.Close(); close(done) }()
	_, err = d.Sync(halfCloser{c1}, d.NewPeerState(), true)
	c1.Close()
	<-done
	if err == nil || d.HasAll([]Hash{ph}) {
		t.Fatalf("sync on a full disk: err=%v, change in memory=%v", err, d.HasAll([]Hash{ph}))
	}

	os.Remove(filler)
	setName(t, d, "after", "v")
	if published.Load() != 1 {
		t.Fatalf("watchers saw %d local changes, want only the one that was written", published.Load())
	}
	crash(d)
	d2 := openT(t, dir)
	if _, ok, _ := d2.Item("after"); !ok {
		t.Fatal("a write acknowledged after the disk freed was lost")
	}
	if it, ok, _ := d2.Item("lost"); acked > 0 && it.Name != fmt.Sprint(acked-1) || acked == 0 && ok {
		t.Fatalf("after restart the name is %q (present %v), want the last acknowledged %d", it.Name, ok, acked-1)
	}
	if n := countPrefix(t, d2, "before"); n != 5 || len(d2.Damage()) != 0 {
		t.Fatalf("before: %d of 5, damage %v", n, d2.Damage())
	}
}

// An fsync that fails takes back every record it was to cover: the two
// writers waiting on it both get the error, neither write is visible or
// published, and later writes are durable as usual.
func TestFailedFsyncRollsBackItsWaiters(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := openT(t, dir)
	writeKeys(t, d, "before", 3)
	heads := d.HeadStrings()
	var published atomic.Int32
	d.Watch(func(ev Event) {
		if ev.Local {
			published.Add(1)
		}
	})
	inSync, release := make(chan struct{}), make(chan struct{})
	var calls atomic.Int32
	d.fsync = func(f *os.File) error {
		if calls.Add(1) > 1 {
			return f.Sync()
		}
		close(inSync)
		<-release
		return syscall.EIO
	}
	errs := make(chan error, 2)
	write := func(item string) {
		_, err := d.Update("w", func(tx *Tx) error { tx.SetItemName(item, "v"); return nil })
		errs <- err
	}
	go write("first")
	<-inSync
	d.mu.Lock()
	end := d.st.end()
	d.mu.Unlock()
	go write("second") // appends behind the fsync in flight, then waits for it
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		d.mu.Lock()
		grown := d.st.end() > end
		d.mu.Unlock()
		if grown {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("second write never appended")
		}
	}
	close(release)
	for range 2 {
		if err := <-errs; !errors.Is(err, syscall.EIO) {
			t.Fatalf("a write covered by the failed fsync returned %v, want the EIO", err)
		}
	}
	for _, item := range []string{"first", "second"} {
		if _, ok, _ := d.Item(item); ok {
			t.Fatalf("%s is visible after its fsync failed", item)
		}
	}
	if fmt.Sprint(d.HeadStrings()) != fmt.Sprint(heads) || published.Load() != 0 {
		t.Fatalf("heads moved or %d failed writes were published", published.Load())
	}
	setName(t, d, "after", "v")
	crash(d)
	d2 := openT(t, dir)
	for item, want := range map[string]bool{"first": false, "second": false, "after": true} {
		if _, ok, _ := d2.Item(item); ok != want {
			t.Fatalf("after restart %s present=%v, want %v", item, ok, want)
		}
	}
	if countPrefix(t, d2, "before") != 3 || len(d2.Damage()) != 0 {
		t.Fatalf("earlier writes or a clean log lost: damage %v", d2.Damage())
	}
}
