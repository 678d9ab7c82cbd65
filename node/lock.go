package node

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// FileLock is held (flock, exclusive) by the one daemon running on a data
// dir and holds its pid. The kernel drops the lock when the process dies,
// however it dies, so a lock file left by a killed daemon blocks nothing.
const FileLock = "lock"

// DataDirInUseError is returned by New when another process holds the
// data dir's lock: two daemons on one dir would run as the same node and
// both acknowledge writes to the same document files.
type DataDirInUseError struct {
	Dir string
	// PID is the holder's pid as its lock file says, 0 if unreadable.
	PID int
}

func (e *DataDirInUseError) Error() string {
	if e.PID == 0 {
		return fmt.Sprintf("data dir %s is in use by another meshnode (its pid could not be read from %s)", e.Dir, filepath.Join(e.Dir, FileLock))
	}
	return fmt.Sprintf("data dir %s is in use by meshnode pid %d", e.Dir, e.PID)
}

// dirLock is the held lock of a data dir.
type dirLock struct {
	mu sync.Mutex
	f  *os.File
}

// lockDataDir takes the data dir's lock without waiting and writes this
// process's pid into the lock file.
func lockDataDir(dir string) (*dirLock, error) {
	path := filepath.Join(dir, FileLock)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	held, err := flock(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock data dir %s: %w", dir, err)
	}
	if !held {
		f.Close()
		return nil, &DataDirInUseError{Dir: dir, PID: readLockPID(path)}
	}
	if err := writePID(f); err != nil {
		f.Close() // releases the lock
		return nil, fmt.Errorf("write lock file %s: %w", path, err)
	}
	return &dirLock{f: f}, nil
}

func writePID(f *os.File) error {
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	if err := f.Truncate(0); err != nil {
		return err
	}
	_, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return err
}

// readLockPID reads the holder's pid. The holder writes it just after
// taking the lock, so an empty file is given a moment to fill.
func readLockPID(path string) int {
	for range 20 {
		b, err := os.ReadFile(path)
		if err != nil {
			return 0
		}
		if s := bytes.TrimSpace(b); len(s) > 0 {
			pid, err := strconv.Atoi(string(s))
			if err != nil || pid <= 0 {
				return 0
			}
			return pid
		}
		time.Sleep(10 * time.Millisecond)
	}
	return 0
}

// release drops the lock. The file stays: removing it would let a
// process that opened it before the removal lock an unlinked file while
// a third locks a new one. It is idempotent.
func (l *dirLock) release() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the last descriptor releases the flock
	l.f = nil
	return err
}
