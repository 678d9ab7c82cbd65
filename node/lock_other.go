//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package node

import "os"

// flock is a no-op where flock(2) does not exist: the data dir is not
// guarded against a second daemon there.
func flock(*os.File) (bool, error) { return true, nil }
