package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshnode/meshnode/internal/testutil"
	"github.com/meshnode/meshnode/mesh"
	"github.com/meshnode/meshnode/node"
)

// fakeDaemon serves h as the API of a data dir, for client tests that
// need answers a real daemon gives only rarely.
func fakeDaemon(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	addr := strings.TrimPrefix(srv.URL, "http://")
	for name, v := range map[string]string{node.FileAPIAddr: addr, node.FileAPIToken: "tok"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func answerError(w http.ResponseWriter, status int, code, msg string) {
	var e node.APIError
	e.Error.Code, e.Error.Message = code, msg
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(e)
}

// The CLI acts on the error code of the daemon's JSON error, not on its
// message: room send retries not_connected only, whatever a message says.
func TestClientActsOnErrorCodes(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	dir := fakeDaemon(t, func(w http.ResponseWriter, r *http.Request) {
		switch n := calls.Add(1); {
		case r.URL.Path == "/v1/rooms/retry/messages" && n < 3:
			answerError(w, http.StatusConflict, "not_connected", "setting up")
		case r.URL.Path == "/v1/rooms/retry/messages":
			_, _ = fmt.Fprint(w, `{"seq": 7}`)
		case r.URL.Path == "/v1/rooms/broken/messages":
			answerError(w, http.StatusInternalServerError, "room", "publish failed after a peer said (not_connected)")
		case r.URL.Path == "/v1/rooms/lobby/messages":
			answerError(w, http.StatusConflict, "not_joined", "room: topic not joined here: lobby")
		case r.URL.Path == "/v1/status":
			w.WriteHeader(http.StatusBadGateway)
			_, _ = fmt.Fprint(w, "<html>proxy error</html>")
		default:
			answerError(w, http.StatusUnauthorized, "unauthorized", "missing or wrong bearer token")
		}
	})

	out, errOut, code := cli(t, "room", "send", "retry", "hi", "--data", dir)
	if code != 0 || out != "sent #7\n" || calls.Load() != 3 {
		t.Fatalf("send retrying not_connected: code %d, %q %q after %d calls", code, out, errOut, calls.Load())
	}

	start := time.Now()
	_, errOut, code = cli(t, "room", "send", "broken", "hi", "--data", dir)
	if code != 1 || time.Since(start) > 2*time.Second || !strings.Contains(errOut, "publish failed") {
		t.Fatalf("a room error whose message mentions not_connected was retried or lost: code %d after %v, %q", code, time.Since(start), errOut)
	}

	_, errOut, code = cli(t, "room", "send", "lobby", "hi", "--data", dir)
	if code != 1 || !strings.Contains(errOut, "meshnode room join lobby") {
		t.Fatalf("not_joined: code %d, %q; want a hint to join", code, errOut)
	}

	_, errOut, code = cli(t, "status", "--data", dir)
	if code != 1 || !strings.Contains(errOut, "daemon answered 502 Bad Gateway") {
		t.Fatalf("a body that is not the API's error: code %d, %q", code, errOut)
	}

	_, errOut, code = cli(t, "nodes", "--data", dir)
	if code != 1 || !strings.Contains(errOut, "(unauthorized)") || !strings.Contains(errOut, "another daemon") {
		t.Fatalf("unauthorized: code %d, %q", code, errOut)
	}
	c, _ := newClient(dir)
	if err := c.get("/v1/nodes", nil); errCode(err) != "unauthorized" {
		t.Fatalf("errCode(%v) = %q", err, errCode(err))
	}
}

// `meshnode fleet token --json` prints JSON with the fleet ID.
func TestFleetTokenJSON(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f, err := mesh.NewFleet()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, node.FileToken), []byte(f.Token()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := cli(t, "fleet", "token", "--json", "--data", dir)
	var got FleetToken
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || got.Token != f.Token() || got.Fleet != f.ID {
		t.Fatalf("fleet token --json: code %d, %q %q", code, out, errOut)
	}
	out, _, code = cli(t, "fleet", "token", "--data", dir)
	if code != 0 || out != f.Token()+"\n" {
		t.Fatalf("fleet token: code %d, %q", code, out)
	}
}

// Client commands run right after `meshnode run ... &` wait for the
// daemon instead of failing, as the README's quick start does.
func TestClientWaitsForStartingDaemon(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "fresh")
	cmd := exec.Command(os.Args[0], "run", "--data", dir, "--mdns=false", "--api", "127.0.0.1:0",
		"--listen", "/ip4/127.0.0.1/tcp/0", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--name", "starting")
	cmd.Env = append(os.Environ(), "MN_TEST_AS_MAIN=1")
	out := &testutil.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	tok, errOut, code := cli(t, "fleet", "token", "--data", dir)
	if code != 0 || !strings.HasPrefix(tok, "mn2-") {
		t.Fatalf("fleet token right after start: code %d, %q %q\ndaemon:\n%s", code, tok, errOut, out)
	}
	status, errOut, code := cli(t, "status", "--json", "--data", dir)
	var st node.Status
	if code != 0 || json.Unmarshal([]byte(status), &st) != nil || len(st.Addrs) != 2 {
		t.Fatalf("status right after start: code %d, %q %q\ndaemon:\n%s", code, status, errOut, out)
	}
}

// With no daemon, a client command says so after the short grace; with a
// live process holding the lock but no API yet, after the longer wait.
func TestClientWithoutDaemonWaitsBriefly(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	start := time.Now()
	_, errOut, code := cli(t, "status", "--data", dir)
	// It waits the grace out, and gives up then (the upper bound only
	// catches a wait with no end: the suite shares two cores).
	if took := time.Since(start); code != 1 || took < daemonGrace || took > daemonGrace+10*time.Second || !strings.Contains(errOut, "meshnode run") {
		t.Fatalf("no daemon: code %d after %v, %q; want a failure after about %v", code, took, errOut, daemonGrace)
	}

	// The lock names a live process (this test) that never serves.
	if err := os.WriteFile(filepath.Join(dir, node.FileLock), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	_, errOut, code = cli(t, "status", "--data", dir)
	if took := time.Since(start); code != 1 || took < daemonWait || took > daemonWait+10*time.Second || !strings.Contains(errOut, "no meshnode daemon is running") {
		t.Fatalf("starting daemon that never serves: code %d after %v, %q; want a failure after about %v", code, took, errOut, daemonWait)
	}
}
