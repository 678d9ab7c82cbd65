package node

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/meshnode/meshnode/mesh"
)

// A second node on a data dir fails at once, naming the holder's pid, and
// touches nothing there; once the first closes, a third starts.
func TestDataDirLockOneNodePerDir(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t)
	first, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	lock := filepath.Join(cfg.DataDir, FileLock)
	if fi, err := os.Stat(lock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("lock file %s: %v; want mode 0600", lock, fileMode(fi, err))
	}
	if b, _ := os.ReadFile(lock); strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) {
		t.Fatalf("lock file holds %q, want this pid %d", b, os.Getpid())
	}

	// Joining another fleet would fail on the fleet token if the second
	// node read it: the lock must be checked before anything else.
	other, err := mesh.NewFleet()
	if err != nil {
		t.Fatal(err)
	}
	second := cfg
	second.Join = other.Token()
	_, err = New(second)
	want := fmt.Sprintf("data dir %s is in use by meshnode pid %d", cfg.DataDir, os.Getpid())
	var inUse *DataDirInUseError
	if err == nil || err.Error() != want || !errors.As(err, &inUse) {
		t.Fatalf("second New on the dir: %v; want %q", err, want)
	}

	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	third, err := New(cfg)
	if err != nil {
		t.Fatalf("New after the first closed: %v", err)
	}
	if err := third.Close(); err != nil {
		t.Fatal(err)
	}
}

// A lock file no process holds (its daemon was killed) blocks nothing,
// whatever pid it names; a holder whose pid cannot be read is still
// reported, without a pid.
func TestDataDirLockStaleAndUnreadable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, FileLock)
	if err := os.WriteFile(path, []byte("999999999\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := lockDataDir(dir)
	if err != nil {
		t.Fatalf("stale lock file blocked: %v", err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("lock file %s: %v; want mode 0600", path, fileMode(fi, err))
	}
	if err := os.WriteFile(path, []byte("not a pid"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = lockDataDir(dir)
	want := fmt.Sprintf("data dir %s is in use by another meshnode (its pid could not be read from %s)", dir, path)
	if err == nil || err.Error() != want {
		t.Fatalf("second lock with an unreadable pid: %v; want %q", err, want)
	}
	if err := l.release(); err != nil {
		t.Fatal(err)
	}
	if err := l.release(); err != nil {
		t.Fatalf("second release: %v", err)
	}
	l, err = lockDataDir(dir)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	_ = l.release()
}

func fileMode(fi os.FileInfo, err error) any {
	if err != nil {
		return err
	}
	return fi.Mode().Perm()
}
