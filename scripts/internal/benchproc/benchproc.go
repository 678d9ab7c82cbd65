// Package benchproc is what the process benchmarks under scripts/
// (xferbench, fleetbench) share: reading a daemon's CPU time and memory
// from /proc, the environment and process attributes daemons start with,
// and small helpers for their reports. Linux only, like the benchmarks.
package benchproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// clkTck is the kernel's USER_HZ: /proc/<pid>/stat counts CPU time in it.
const clkTck = 100

// CPU returns the user and system CPU seconds of process pid (0: this
// process) from /proc/<pid>/stat.
func CPU(pid int) (user, sys float64, err error) {
	path := "/proc/self/stat"
	if pid != 0 {
		path = fmt.Sprintf("/proc/%d/stat", pid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, err
	}
	// Fields after the command name, which is in parentheses and may
	// hold spaces: utime is field 14, stime 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("%s: no command name", path)
	}
	fs := strings.Fields(string(b[i+1:]))
	if len(fs) < 13 {
		return 0, 0, fmt.Errorf("%s: %d fields", path, len(fs))
	}
	ut, err1 := strconv.ParseInt(fs[11], 10, 64)
	st, err2 := strconv.ParseInt(fs[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("%s: %w", path, err)
	}
	return float64(ut) / clkTck, float64(st) / clkTck, nil
}

// CPUSeconds is CPU's user and system time together.
func CPUSeconds(pid int) (float64, error) {
	u, s, err := CPU(pid)
	return u + s, err
}

// StatusMiB reads a memory field of /proc/<pid>/status ("VmRSS",
// "VmHWM") in MiB.
func StatusMiB(pid int, field string) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/status %s %q: %w", pid, field, v, err)
			}
			return float64(kb) / 1024, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, field)
}

// CleanEnv is the environment without MESHNODE_* settings, so that no
// stray variable changes a daemon.
func CleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MESHNODE_") {
			out = append(out, kv)
		}
	}
	return out
}

// Output runs a command and returns its standard output, "" on error.
func Output(name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		return ""
	}
	return string(out)
}

// Sleep waits d, or until ctx ends.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Tail returns the last n bytes of b, trimmed, marked "..." when cut.
func Tail(b []byte, n int) string {
	b = bytes.TrimSpace(b)
	if len(b) > n {
		b = append([]byte("..."), b[len(b)-n:]...)
	}
	return string(b)
}

// TailFile is Tail of a file's contents ("" when it cannot be read).
func TailFile(path string, n int) string {
	b, _ := os.ReadFile(path)
	return Tail(b, n)
}
