package transfer

import (
	"errors"
	"os"
	"syscall"
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
