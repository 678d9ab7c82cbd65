package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshnode/meshnode/internal/testutil"
	"github.com/meshnode/meshnode/mesh"
	"github.com/meshnode/meshnode/node"
)

// TestMain lets the test binary act as the real meshnode binary, so the
// daemon runs as its own process (signals, exit codes) without a build.
// As tests, unless -test.parallel is given, four run at once: they mostly
// wait on daemon processes.
func TestMain(m *testing.M) {
	if os.Getenv("MN_TEST_AS_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		_ = flag.Set("test.parallel", "4")
	}
	os.Exit(m.Run())
}

func cli(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return o.String(), e.String(), code
}

type daemon struct {
	cmd    *exec.Cmd
	out    *testutil.SyncBuffer
	exited chan error
}

// startDaemon runs `meshnode run` as a child process on loopback ports.
func startDaemon(t *testing.T, dir string, extra ...string) *daemon {
	t.Helper()
	args := append([]string{"run", "--data", dir, "--mdns=false", "--api", "127.0.0.1:0",
		"--listen", "/ip4/127.0.0.1/tcp/0,/ip4/127.0.0.1/udp/0/quic-v1", "--name", "cli-test"}, extra...)
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "MN_TEST_AS_MAIN=1")
	d := &daemon{cmd: cmd, out: &testutil.SyncBuffer{}, exited: make(chan error, 1)}
	cmd.Stdout = d.out
	cmd.Stderr = d.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		select {
		case <-d.exited:
		case <-time.After(10 * time.Second):
			t.Error("daemon did not exit after kill")
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, _, err := node.ReadClientInfo(dir); err == nil {
			return d
		}
		select {
		case err := <-d.exited:
			d.exited <- err
			t.Fatalf("daemon exited early (%v); output:\n%s", err, d.out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon did not write its API address; output:\n%s", d.out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestCLIWithoutDaemon(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, errOut, code := cli(t, "status", "--data", dir)
	if code != 1 || !strings.Contains(errOut, "meshnode status:") {
		t.Fatalf("status without daemon: code %d, stderr %q", code, errOut)
	}
	if !strings.Contains(errOut, "meshnode run") {
		t.Fatalf("the error should say how to start a daemon: %q", errOut)
	}
	_, errOut, code = cli(t, "fleet", "token", "--data", dir)
	if code != 1 || !strings.Contains(errOut, "no fleet in") {
		t.Fatalf("fleet token without fleet: code %d, stderr %q", code, errOut)
	}
}

func TestCLIUsageErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "Usage:"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"status", "extra"}, 1, `unexpected argument "extra"`},
		{[]string{"run", "--data", "", "--heartbeat-interval", "1ms"}, 1, "heartbeat-interval"},
		{[]string{"run", "--no-such-flag"}, 1, "no-such-flag"},
		{[]string{"fleet"}, 1, "usage: meshnode fleet token"},
	} {
		_, errOut, code := cli(t, tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("meshnode %q: code %d, stderr %q; want code %d and %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}
}

func TestCLIAgainstRunningDaemon(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := startDaemon(t, dir)
	out := d.out

	tok, _, code := cli(t, "fleet", "token", "--data", dir)
	if code != 0 || !strings.HasPrefix(tok, "mn2-") {
		t.Fatalf("fleet token: %q (code %d)", tok, code)
	}
	// The child's output reaches out through a copying goroutine: wait.
	waitUntil(t, 10*time.Second, "the join command in the first run's output", func() bool {
		return strings.Contains(out.String(), "meshnode run --join "+strings.TrimSpace(tok))
	})
	if fi, err := os.Stat(filepath.Join(dir, node.FileToken)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}

	status, errOut, code := cli(t, "status", "--data", dir)
	if code != 0 || !strings.Contains(status, "cli-test") || !strings.Contains(status, "Fleet") {
		t.Fatalf("status: code %d, %q %q", code, status, errOut)
	}
	js, _, code := cli(t, "status", "--data", dir, "--json")
	var st node.Status
	if code != 0 || json.Unmarshal([]byte(js), &st) != nil || st.Name != "cli-test" || len(st.Addrs) == 0 {
		t.Fatalf("status --json: code %d, %q", code, js)
	}
	// The node's own record appears once it is written on start-up.
	deadline := time.Now().Add(10 * time.Second)
	for {
		nodes, _, code := cli(t, "nodes", "--data", dir)
		if code == 0 && strings.Contains(nodes, "cli-test (this node)") && strings.Contains(nodes, "alive") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nodes never listed this node alive: %q", nodes)
		}
		time.Sleep(100 * time.Millisecond)
	}
	peers, _, code := cli(t, "peers", "--data", dir, "--json")
	if code != 0 || strings.TrimSpace(peers) != "[]" {
		t.Fatalf("peers --json of a lone node: code %d, %q", code, peers)
	}

	// The node's own record reaches the mesh manager at its next pass,
	// a second after the record is written.
	deadline = time.Now().Add(10 * time.Second)
	for {
		mj, _, code := cli(t, "mesh", "--data", dir, "--json")
		var ms mesh.MeshStatus
		if code != 0 || json.Unmarshal([]byte(mj), &ms) != nil || ms.Cap != 4 {
			t.Fatalf("mesh --json: code %d, %q", code, mj)
		}
		if ms.Skipped[st.ID] == mesh.SkipSelf {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("mesh --json never listed this node as skipped (self): %q", mj)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if table, _, code := cli(t, "mesh", "--data", dir); code != 0 || !strings.Contains(table, "SUPPLEMENTARY") {
		t.Fatalf("mesh: code %d, %q", code, table)
	}

	// meshnode events follows the stream in its own process.
	ev := exec.Command(os.Args[0], "events", "--data", dir)
	ev.Env = append(os.Environ(), "MN_TEST_AS_MAIN=1")
	evOut := &testutil.SyncBuffer{}
	ev.Stdout, ev.Stderr = evOut, evOut
	if err := ev.Start(); err != nil {
		t.Fatal(err)
	}
	evDone := make(chan error, 1)
	go func() { evDone <- ev.Wait() }()
	defer ev.Process.Kill()
	// It follows once a change made now shows in its output.
	ping := 0
	waitUntil(t, 15*time.Second, "meshnode events to follow the stream", func() bool {
		ping++
		cli(t, "room", "state", "lobby", "ping", strconv.Itoa(ping), "--data", dir)
		return strings.Contains(evOut.String(), "doc.changed")
	})

	// Room state: set, read back, list, refuse bad input.
	if got, errOut, code := cli(t, "room", "state", "lobby", "greeting", "hello world", "--data", dir); code != 0 || strings.TrimSpace(got) != "hello world" {
		t.Fatalf("room state set: code %d, %q %q", code, got, errOut)
	}
	if got, _, code := cli(t, "room", "state", "--data", dir, "lobby", "greeting"); code != 0 || strings.TrimSpace(got) != "hello world" {
		t.Fatalf("room state get: code %d, %q", code, got)
	}
	var all map[string]string
	if got, _, code := cli(t, "room", "state", "lobby", "--json", "--data", dir); code != 0 || json.Unmarshal([]byte(got), &all) != nil || all["greeting"] != "hello world" {
		t.Fatalf("room state list: code %d, %q", code, got)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"room", "state", "lobby", "missing"}, `room "lobby" has no state key "missing"`},
		{[]string{"room", "state", "a/b", "k", "v"}, "contains '/'"},
		{[]string{"room", "state", "lobby", "big", strings.Repeat("x", 17<<10)}, "room state value is over 16384 bytes"},
		{[]string{"room", "state", "lobby", "k", "v", "extra"}, `unexpected argument "extra"`},
		{[]string{"room"}, "usage: meshnode room COMMAND"},
		{[]string{"room", "dance"}, `unknown room command "dance"`},
		{[]string{"room", "send", "nowhere", "hi"}, "topic not joined here"},
		{[]string{"room", "join", "a/b"}, "contains '/'"},
	} {
		if _, errOut, code := cli(t, append(tc.args, "--data", dir)...); code != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("meshnode %q: code %d, stderr %q; want %q", tc.args[:min(len(tc.args), 4)], code, errOut, tc.want)
		}
	}

	// Live room: offer, follow it in its own process, send, list, leave.
	if got, errOut, code := cli(t, "room", "offer", "lobby", "--data", dir); code != 0 || !strings.Contains(got, "offered lobby") {
		t.Fatalf("room offer: code %d, %q %q", code, got, errOut)
	}
	tail := exec.Command(os.Args[0], "room", "tail", "lobby", "--data", dir)
	tail.Env = append(os.Environ(), "MN_TEST_AS_MAIN=1")
	tailOut := &testutil.SyncBuffer{}
	tail.Stdout, tail.Stderr = tailOut, tailOut
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	tailDone := make(chan error, 1)
	go func() { tailDone <- tail.Wait() }()
	defer tail.Process.Kill()
	deadline = time.Now().Add(10 * time.Second)
	for !strings.Contains(tailOut.String(), "following lobby") {
		if time.Now().After(deadline) {
			t.Fatalf("room tail did not start; output:\n%s", tailOut)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got, errOut, code := cli(t, "room", "send", "lobby", "hi there", "--type", "chat", "--data", dir); code != 0 || !strings.Contains(got, "sent #1") {
		t.Fatalf("room send (right after the offer: it waits for the room): code %d, %q %q", code, got, errOut)
	}
	for !strings.Contains(tailOut.String(), "#1 chat hi there") {
		if time.Now().After(deadline) {
			t.Fatalf("room tail never showed the message; output:\n%s", tailOut)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got, _, code := cli(t, "room", "list", "--data", dir); code != 0 || !strings.Contains(got, "lobby") || !strings.Contains(got, "offered") || !strings.Contains(got, "connected") {
		t.Fatalf("room list: code %d, %q", code, got)
	}
	if got, errOut, code := cli(t, "room", "leave", "lobby", "--data", dir); code != 0 || !strings.Contains(got, "left lobby") {
		t.Fatalf("room leave: code %d, %q %q", code, got, errOut)
	}

	deadline = time.Now().Add(10 * time.Second)
	for !strings.Contains(evOut.String(), " doc.changed heads=") || !strings.Contains(evOut.String(), "local=true") {
		if time.Now().After(deadline) {
			t.Fatalf("meshnode events never showed the local change; output:\n%s", evOut)
		}
		time.Sleep(50 * time.Millisecond)
	}

	start := time.Now()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-d.exited:
		d.exited <- err
		if err != nil {
			t.Fatalf("daemon exit after SIGTERM: %v; output:\n%s", err, out)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("daemon still running 10s after SIGTERM")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("daemon took %v to stop, want under 5s", d)
	}
	if _, _, err := node.ReadClientInfo(dir); err == nil {
		t.Fatal("API address file left behind after a clean exit")
	}
	select {
	case err := <-evDone:
		if err != nil {
			t.Fatalf("meshnode events after the daemon stopped: %v; output:\n%s", err, evOut)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("meshnode events still running 10s after the daemon stopped")
	}
	select {
	case err := <-tailDone:
		if err != nil {
			t.Fatalf("meshnode room tail after the daemon stopped: %v; output:\n%s", err, tailOut)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("meshnode room tail still running 10s after the daemon stopped")
	}
	_, errOut, code = cli(t, "status", "--data", dir)
	if code != 1 || !strings.Contains(errOut, "meshnode run") {
		t.Fatalf("status after exit: code %d, %q", code, errOut)
	}
}

func TestCLISecondDaemonOnSamePortFailsClearly(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	startDaemon(t, dir)
	addr, _, _ := node.ReadClientInfo(dir)
	_, errOut, code := cli(t, "run", "--data", t.TempDir(), "--mdns=false", "--listen", "/ip4/127.0.0.1/tcp/0", "--api", addr)
	if code != 1 || !strings.Contains(errOut, "API: cannot listen on "+addr) {
		t.Fatalf("second daemon on a taken API port: code %d, %q", code, errOut)
	}
}
