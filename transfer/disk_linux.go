package transfer

import (
	"errors"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// preallocate gives f its full size with its blocks reserved, so a disk
// that fills up fails here, before any chunk is fetched, and chunk writes
// do not allocate. Where the file system cannot, it only sets the size.
func preallocate(f *os.File, size int64) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() == size {
		return nil
	}
	if fi.Size() > size {
		return f.Truncate(size)
	}
	if size > 0 {
		err := syscall.Fallocate(int(f.Fd()), 0, 0, size)
		if err == nil {
			return nil
		}
		if errors.Is(err, syscall.ENOSPC) {
			return err
		}
	}
	return f.Truncate(size)
}

// startWriteback asks the kernel to start writing a just-written range
// to disk without waiting, so the sync at the end of a download finds
// little left to do.
func startWriteback(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}

// openFSSync opens dir for syncFS when its file system is a local one
// whose syncfs(2) reaches the disk (ext4, xfs, btrfs, f2fs; tmpfs has
// nothing to sync); elsewhere (FUSE, network file systems, whose syncfs
// may not reach their backend) it returns nil and files are synced one by
// one. Opened before the first write, its descriptor is told of every
// write-back error after that (kernels since 5.8).
func openFSSync(dir string) *os.File {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) != nil {
		return nil
	}
	switch uint32(st.Type) {
	case unix.EXT4_SUPER_MAGIC, unix.XFS_SUPER_MAGIC, unix.BTRFS_SUPER_MAGIC, unix.F2FS_SUPER_MAGIC, unix.TMPFS_MAGIC:
	default:
		return nil
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil
	}
	return f
}

// syncFS makes everything written to the file system of f durable, in
// one call: a download of 20,000 small files otherwise pays one fsync,
// and so one journal commit, per file.
func syncFS(f *os.File) error { return unix.Syncfs(int(f.Fd())) }

// oDirect opens a file for writes that bypass the page cache.
const oDirect = syscall.O_DIRECT

// directAligned reports whether b can be written with O_DIRECT: its
// address aligned to 4096 bytes (its length, a whole chunk, and the
// offset, a multiple of it, are). Go places buffers of a chunk on page
// boundaries, but that is checked rather than assumed.
func directAligned(b []byte) bool {
	return len(b) > 0 && uintptr(unsafe.Pointer(&b[0]))%4096 == 0
}
