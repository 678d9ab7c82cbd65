package transfer

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// isDirect reports whether f was opened with O_DIRECT.
func isDirect(t *testing.T, f *os.File) bool {
	fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	if err != nil {
		t.Error(err)
	}
	return fl&syscall.O_DIRECT != 0
}

// Whole chunks go to the disk with O_DIRECT, the tail of a file through
// the page cache; where the file system refuses O_DIRECT (EINVAL), every
// chunk goes through the page cache. Either way the staged item is the
// holder's, byte for byte.
func TestDirectWrites(t *testing.T) {
	t.Parallel()
	root := filepath.Join(t.TempDir(), "item")
	writeBenchItem(t, root, 3, 3*(3*ChunkSize+100)) // 3 whole chunks and a tail each
	sv := servedOf(t, root)
	src, dst := testHost(t, "tcp"), testHost(t, "tcp")
	serve(src, sv)
	connect(t, dst, src)
	staging := t.TempDir()
	if probe, err := os.OpenFile(filepath.Join(staging, "probe"), os.O_CREATE|os.O_WRONLY|syscall.O_DIRECT, 0o600); err != nil {
		t.Fatalf("the test's folder refuses O_DIRECT (%v): run the test on a disk file system", err)
	} else {
		probe.Close()
	}
	for _, refuse := range []bool{false, true} {
		var direct, buffered atomic.Int32
		writeAt := func(f *os.File, b []byte, off int64) (int, error) {
			if isDirect(t, f) {
				if refuse {
					return 0, &os.PathError{Op: "write", Path: f.Name(), Err: syscall.EINVAL}
				}
				direct.Add(1)
			} else {
				buffered.Add(1)
			}
			return f.WriteAt(b, off)
		}
		dir := t.TempDir()
		if _, err := Download(context.Background(), DownloadConfig{Host: dst, Protocol: benchProto, Manifest: sv.Hash,
			Sources: []peer.ID{src.ID()}, Staging: dir, Logger: zerolog.Nop(), writeAt: writeAt}); err != nil {
			t.Fatalf("refuse=%v: %v", refuse, err)
		}
		sameStaged(t, sv, dir)
		switch {
		case !refuse && (direct.Load() != 9 || buffered.Load() != 3):
			t.Errorf("%d direct and %d buffered writes, want 9 whole chunks direct and 3 tails buffered", direct.Load(), buffered.Load())
		case refuse && (direct.Load() != 0 || buffered.Load() != 12):
			t.Errorf("O_DIRECT refused: %d direct and %d buffered writes, want all 12 buffered", direct.Load(), buffered.Load())
		}
	}
}
