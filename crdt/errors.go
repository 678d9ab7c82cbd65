package crdt

import "errors"

// ErrDiskFull is wrapped by a write that failed because the disk holding
// the document is full (ENOSPC). Nothing acknowledged before it is lost;
// the write it interrupted was not acknowledged.
var ErrDiskFull = errors.New("crdt: disk full")
