package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/meshnode/meshnode/scripts/internal/benchproc"
)

// daemon is one `meshnode run` process.
type daemon struct {
	name, dir, logPath string
	cmd                *exec.Cmd
	pid                int
	exited             chan struct{}
	exitErr            error
	// killed: the benchmark killed it on purpose (set before the signal,
	// read only by the goroutine that set it).
	killed bool

	api, token string
	id         string
	addrs      []string
}

// startDaemon starts `meshnode run` on a fresh data dir with args added;
// its stdout and stderr go to logPath.
func startDaemon(bin, name, dir, logPath string, args []string) (*daemon, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	all := append([]string{"run", "--data", dir, "--name", name,
		"--listen", "/ip4/127.0.0.1/tcp/0", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1",
		"--api", "127.0.0.1:0", "--mdns=false"}, args...)
	cmd := exec.Command(bin, all...)
	cmd.Env = benchproc.CleanEnv()
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = benchproc.DaemonAttr()
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	d := &daemon{name: name, dir: dir, logPath: logPath, cmd: cmd, pid: cmd.Process.Pid, exited: make(chan struct{})}
	go func() {
		d.exitErr = cmd.Wait()
		lf.Close()
		close(d.exited)
	}()
	return d, nil
}

func (d *daemon) running() bool {
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// dead describes an exit, with the end of the log, or is nil while the
// process runs.
func (d *daemon) dead() error {
	if d.running() {
		return nil
	}
	return fmt.Errorf("%s (pid %d) exited (%v); its log %s ends: %s", d.name, d.pid, d.exitErr, d.logPath, benchproc.TailFile(d.logPath, 600))
}

// kill sends SIGKILL and waits for the exit.
func (d *daemon) kill() {
	d.killed = true
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.exited
}

// signalStop asks the daemon to stop (SIGTERM) unless it has exited.
func (d *daemon) signalStop() {
	if d.running() {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
	}
}

// awaitStop waits for an exit asked with signalStop until deadline, then
// kills. It reports a daemon that had to be killed.
func (d *daemon) awaitStop(deadline time.Time) {
	select {
	case <-d.exited:
	case <-time.After(time.Until(deadline)):
		fmt.Fprintf(os.Stderr, "fleetbench: %s did not stop after SIGTERM; killing it (log: %s)\n", d.name, d.logPath)
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
}

// waitAPI waits for the daemon's API (api.addr and api.token in its data
// dir, as the CLI finds them) and reads its ID and addresses.
func (d *daemon) waitAPI(ctx context.Context, hc *http.Client, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if err := d.dead(); err != nil {
			return err
		}
		if d.readClientInfo() {
			var st struct {
				ID    string   `json:"id"`
				Addrs []string `json:"addrs"`
			}
			if err := d.call(ctx, hc, "GET", "/v1/status", nil, &st, 5*time.Second); err == nil && st.ID != "" {
				d.id, d.addrs = st.ID, st.Addrs
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no API after %v (log: %s)", d.name, limit, d.logPath)
		}
		if err := benchproc.Sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// readClientInfo reads api.addr and api.token as node.ReadClientInfo
// does (this program reads the files itself so that it builds without
// cgo and without the node package).
func (d *daemon) readClientInfo() bool {
	a, aerr := os.ReadFile(filepath.Join(d.dir, "api.addr"))
	t, terr := os.ReadFile(filepath.Join(d.dir, "api.token"))
	if aerr != nil || terr != nil {
		return false
	}
	d.api, d.token = strings.TrimSpace(string(a)), strings.TrimSpace(string(t))
	return d.api != "" && d.token != ""
}

// loopbackTCP is the daemon's 127.0.0.1 TCP address with /p2p/<id>.
func (d *daemon) loopbackTCP() (string, error) {
	for _, a := range d.addrs {
		if strings.HasPrefix(a, "/ip4/127.0.0.1/tcp/") {
			return a, nil
		}
	}
	return "", fmt.Errorf("%s has no 127.0.0.1 TCP address: %v", d.name, d.addrs)
}

// apiError is a non-2xx answer.
type apiError struct {
	status int
	body   string
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s", e.status, e.body) }

func isStatus(err error, status int) bool {
	var ae *apiError
	return errors.As(err, &ae) && ae.status == status
}

// call makes one API request and decodes its JSON answer into out
// (unless nil); a non-2xx answer is an *apiError.
func (d *daemon) call(ctx context.Context, hc *http.Client, method, path string, body []byte, out any, timeout time.Duration) error {
	b, err := d.fetch(ctx, hc, method, path, body, timeout)
	if err != nil || out == nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// do sends one API request with the daemon's token.
func (d *daemon) do(ctx context.Context, hc *http.Client, method, path string, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+d.api+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+d.token)
	return hc.Do(req)
}

// fetch makes one API request and returns the answer's body.
func (d *daemon) fetch(ctx context.Context, hc *http.Client, method, path string, body []byte, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := d.do(ctx, hc, method, path, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		return nil, &apiError{status: resp.StatusCode, body: string(bytes.TrimSpace(b))}
	}
	return b, nil
}

// benchTopic is the room whose durable state carries the changes timed.
const benchTopic = "fleetbench"

func statePath(key string) string {
	return "/v1/rooms/" + benchTopic + "/state/" + url.PathEscape(key)
}

// putState writes key=val on the daemon: one document change, on disk
// before the answer.
func (d *daemon) putState(ctx context.Context, hc *http.Client, key, val string) error {
	return d.call(ctx, hc, "PUT", statePath(key), []byte(val), nil, 10*time.Second)
}

// stateValue reads key, "" while the daemon does not have it.
func (d *daemon) stateValue(ctx context.Context, hc *http.Client, key string) (string, error) {
	var v struct {
		Value string `json:"value"`
	}
	err := d.call(ctx, hc, "GET", statePath(key), nil, &v, 5*time.Second)
	if isStatus(err, http.StatusNotFound) {
		return "", nil
	}
	return v.Value, err
}

// nodeStates is the daemon's view of the fleet: peer ID -> alive, stale
// or left (GET /v1/nodes).
func (d *daemon) nodeStates(ctx context.Context, hc *http.Client) (map[string]string, error) {
	var nodes []struct {
		ID    string `json:"id"`
		State string `json:"state"`
	}
	if err := d.call(ctx, hc, "GET", "/v1/nodes", nil, &nodes, 10*time.Second); err != nil {
		return nil, err
	}
	out := make(map[string]string, len(nodes))
	for _, n := range nodes {
		out[n.ID] = n.State
	}
	return out, nil
}

// meshView is the part of GET /v1/mesh the benchmark checks.
type meshView struct {
	Cap   int `json:"cap"`
	Slots []struct {
		Peer string `json:"peer"`
	} `json:"slots"`
	Eligible     []string `json:"eligible"`
	MaxSlotsSeen int      `json:"max_slots_seen"`
}

func (d *daemon) mesh(ctx context.Context, hc *http.Client) (meshView, error) {
	var m meshView
	err := d.call(ctx, hc, "GET", "/v1/mesh", nil, &m, 10*time.Second)
	return m, err
}

// events opens the daemon's event stream (GET /v1/events), which lasts
// until ctx ends.
func (d *daemon) events(ctx context.Context, hc *http.Client) (*http.Response, error) {
	resp, err := d.do(ctx, hc, "GET", "/v1/events", nil)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, &apiError{status: resp.StatusCode}
	}
	return resp, nil
}

// progress prints a progress line to stderr, stamped with the UTC time
// that the daemons' logs use.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "fleetbench: %s %s\n", time.Now().UTC().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}
