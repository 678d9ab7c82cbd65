//go:build !linux

package transfer

import (
	"errors"
	"os"
)

// preallocate sets f's size (no block reservation on this system).
func preallocate(f *os.File, size int64) error { return f.Truncate(size) }

// startWriteback does nothing here: the final sync writes everything.
func startWriteback(*os.File, int64, int64) {}

// openFSSync returns nil here: finish syncs file by file.
func openFSSync(string) *os.File { return nil }

// syncFS is not available here.
func syncFS(*os.File) error { return errors.ErrUnsupported }

// oDirect is 0 here: writes go through the page cache.
const oDirect = 0

// directAligned is false here: no write bypasses the page cache.
func directAligned([]byte) bool { return false }
