package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshnode/meshnode/node"
)

// runOnce runs `meshnode run` on dir as its own process and waits (at
// most 20 s) for it to exit.
func runOnce(t *testing.T, dir string) (out string, err error, took time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "run", "--data", dir, "--mdns=false", "--api", "127.0.0.1:0",
		"--listen", "/ip4/127.0.0.1/tcp/0", "--name", "second")
	cmd.Env = append(os.Environ(), "MN_TEST_AS_MAIN=1")
	start := time.Now()
	b, err := cmd.CombinedOutput()
	return string(b), err, time.Since(start)
}

// Two daemons on one data dir would run as one node and both acknowledge
// writes: the second exits at once naming the first one's pid. Once the
// first is killed with -9 (its lock file stays behind), a new one starts.
func TestSecondDaemonOnSameDataDirRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first := startDaemon(t, dir)
	out, err, took := runOnce(t, dir)
	want := fmt.Sprintf("meshnode run: data dir %s is in use by meshnode pid %d", dir, first.cmd.Process.Pid)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(out, want) {
		t.Fatalf("second daemon on the dir: %v, output:\n%s\nwant exit 1 and %q", err, out, want)
	}
	if took > 5*time.Second {
		t.Fatalf("second daemon took %v to give up, want at once", took)
	}
	var st node.Status
	if code := api(t, dir, "GET", "/v1/status", &st); code != 200 || st.Name != "cli-test" {
		t.Fatalf("the first daemon after the refused second: HTTP %d %+v", code, st)
	}

	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-first.exited
	first.exited <- nil
	lock := filepath.Join(dir, node.FileLock)
	if b, err := os.ReadFile(lock); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(first.cmd.Process.Pid) {
		t.Fatalf("the killed daemon's lock file: %q %v", b, err)
	}
	os.Remove(filepath.Join(dir, node.FileAPIAddr)) // left by the killed process
	third := startDaemon(t, dir)
	if b, _ := os.ReadFile(lock); strings.TrimSpace(string(b)) != strconv.Itoa(third.cmd.Process.Pid) {
		t.Fatalf("lock file after the restart holds %q, want pid %d", b, third.cmd.Process.Pid)
	}
	if code := api(t, dir, "GET", "/v1/status", &st); code != 200 {
		t.Fatalf("daemon started after kill -9: HTTP %d", code)
	}
}
