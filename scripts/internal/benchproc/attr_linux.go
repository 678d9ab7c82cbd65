package benchproc

import "syscall"

// DaemonAttr puts a daemon in its own process group (a Ctrl-C reaches the
// benchmark, which stops the daemons itself) and has the kernel kill it
// should the benchmark die without stopping it.
func DaemonAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
