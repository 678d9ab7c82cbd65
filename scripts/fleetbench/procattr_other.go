//go:build !linux

package main

import "syscall"

// daemonAttr: the benchmark runs on Linux only (it reads /proc); this
// keeps `go vet ./...` building elsewhere.
func daemonAttr() *syscall.SysProcAttr { return nil }
