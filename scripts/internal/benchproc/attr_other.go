//go:build !linux

package benchproc

import "syscall"

// DaemonAttr is nil where the benchmarks' process attributes do not exist.
func DaemonAttr() *syscall.SysProcAttr { return nil }
