package main

import "syscall"

// daemonAttr puts a daemon in its own process group (a Ctrl-C reaches the
// benchmark, which stops the daemons in order) and has the kernel kill it
// should the benchmark itself die without stopping it.
func daemonAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
