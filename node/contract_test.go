package node

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meshnode/meshnode/room"
)

// contractCall is one request against a node's API and what it answered.
type contractCall struct {
	status int
	header http.Header
	body   []byte
	err    APIError
}

// contractDo sends one request to n's API with the bearer token and does
// not follow redirects: a redirect is an answer under test too.
func contractDo(t testing.TB, n *Node, method, path string, body io.Reader) contractCall {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+n.APIAddr()+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+n.APIToken())
	cl := &http.Client{
		Timeout:       10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	c := contractCall{status: resp.StatusCode, header: resp.Header, body: b}
	_ = json.Unmarshal(b, &c.err)
	return c
}

// wantError checks a call answered status with a JSON error of code.
func (c contractCall) wantError(t *testing.T, what string, status int, code string) {
	t.Helper()
	if c.status != status || c.err.Error.Code != code || c.err.Error.Message == "" {
		t.Errorf("%s: answered %d %q; want %d with a JSON error %q", what, c.status, c.body, status, code)
	}
}

// The API answers each kind of bad request with the status and JSON
// error the README promises, over real HTTP.
func TestAPIContract(t *testing.T) {
	t.Parallel()
	n := newCluster(t, 1).nodes[0]

	t.Run("state value not UTF-8", func(t *testing.T) {
		contractDo(t, n, "PUT", "/v1/rooms/lobby/state/k", strings.NewReader("ok\xff\xfe")).
			wantError(t, "PUT invalid UTF-8 value", http.StatusBadRequest, "invalid")
		contractDo(t, n, "PUT", "/v1/rooms/lobby/state/%FF", strings.NewReader("v")).
			wantError(t, "PUT invalid UTF-8 key", http.StatusBadRequest, "invalid")
		if st, ok := n.roomStateOf(t, "lobby"); ok && len(st) != 0 {
			t.Errorf("refused writes left state %v", st)
		}
	})

	t.Run("one topic validator", func(t *testing.T) {
		for _, topic := range []string{"a%09b", "a%7Fb", strings.Repeat("x", 129), "%FF"} {
			join := contractDo(t, n, "POST", "/v1/rooms/"+topic+"/join", nil)
			join.wantError(t, "join "+topic, http.StatusBadRequest, "bad_topic")
			contractDo(t, n, "PUT", "/v1/rooms/"+topic+"/state/k", strings.NewReader("v")).
				wantError(t, "PUT state of "+topic, http.StatusBadRequest, "bad_topic")
			contractDo(t, n, "GET", "/v1/rooms/"+topic+"/state", nil).
				wantError(t, "GET state of "+topic, http.StatusBadRequest, "bad_topic")
		}
	})

	t.Run("message body over the limit", func(t *testing.T) {
		big := `{"type":"text","text":"` + strings.Repeat("a", 4*room.MaxPayload) + `"}`
		contractDo(t, n, "POST", "/v1/rooms/lobby/messages", strings.NewReader(big)).
			wantError(t, "oversized message body", http.StatusRequestEntityTooLarge, "too_large")
		contractDo(t, n, "POST", "/v1/rooms/lobby/messages", strings.NewReader(`{"type":`)).
			wantError(t, "truncated message body", http.StatusBadRequest, "bad_body")
	})

	t.Run("empty and dot segments", func(t *testing.T) {
		for _, tc := range []struct{ method, path string }{
			{"POST", "/v1/rooms//join"},
			{"PUT", "/v1/rooms//state/k"},
			{"PUT", "/v1/rooms/lobby/state/"},
			{"POST", "/v1/rooms/../join"},
			{"POST", "/v1/rooms/%2E%2E/join"},
			{"PUT", "/v1/rooms/lobby/state/.."},
			{"GET", "/v1/rooms/./state"},
			{"POST", "/v1/items//download"},
			{"GET", "/v1//status"},
		} {
			contractDo(t, n, tc.method, tc.path, strings.NewReader("v")).
				wantError(t, tc.method+" "+tc.path, http.StatusBadRequest, "bad_path")
		}
	})

	t.Run("wrong method", func(t *testing.T) {
		for _, tc := range []struct{ method, path, allow string }{
			{"DELETE", "/v1/rooms/lobby/state/k", "GET, PUT"},
			{"GET", "/v1/items/x/download", "POST"},
			{"POST", "/v1/status", "GET"},
			{"PUT", "/v1/transfers/x", "DELETE, GET"},
			{"GET", "/v1/rooms/lobby/join", "DELETE, POST"},
		} {
			c := contractDo(t, n, tc.method, tc.path, nil)
			c.wantError(t, tc.method+" "+tc.path, http.StatusMethodNotAllowed, "method_not_allowed")
			if got := c.header.Get("Allow"); got != tc.allow {
				t.Errorf("%s %s: Allow %q, want %q", tc.method, tc.path, got, tc.allow)
			}
		}
		contractDo(t, n, "GET", "/v1/nope", nil).wantError(t, "unknown path", http.StatusNotFound, "not_found")
		contractDo(t, n, "GET", "/v1/status/", nil).wantError(t, "trailing slash", http.StatusBadRequest, "bad_path")
	})

	t.Run("unknown transfer", func(t *testing.T) {
		contractDo(t, n, "DELETE", "/v1/transfers/nope", nil).
			wantError(t, "cancel unknown transfer", http.StatusNotFound, "no_such_transfer")
		contractDo(t, n, "GET", "/v1/transfers/nope", nil).
			wantError(t, "get unknown transfer", http.StatusNotFound, "no_such_transfer")
		contractDo(t, n, "GET", "/v1/transfers/nope?wait=1s", nil).
			wantError(t, "wait on unknown transfer", http.StatusNotFound, "no_such_transfer")
		for _, w := range []string{"1h", "-1s", "soon"} {
			contractDo(t, n, "GET", "/v1/transfers/nope?wait="+w, nil).
				wantError(t, "wait="+w, http.StatusBadRequest, "bad_wait")
		}
	})

	t.Run("download body over the limit", func(t *testing.T) {
		big := `{"manifest":"` + strings.Repeat("a", 8192) + `"}`
		contractDo(t, n, "POST", "/v1/items/x/download", strings.NewReader(big)).
			wantError(t, "oversized download body", http.StatusRequestEntityTooLarge, "too_large")
	})

	t.Run("valid requests still work", func(t *testing.T) {
		c := contractDo(t, n, "PUT", "/v1/rooms/lobby/state/k", strings.NewReader("héllo"))
		var v RoomStateValue
		if c.status != http.StatusOK || json.Unmarshal(c.body, &v) != nil || v.Value != "héllo" || len(v.Heads) == 0 {
			t.Fatalf("PUT state: %d %s", c.status, c.body)
		}
		c = contractDo(t, n, "GET", "/v1/rooms/lobby/state/k", nil)
		if c.status != http.StatusOK || json.Unmarshal(c.body, &v) != nil || v.Value != "héllo" {
			t.Fatalf("GET state key: %d %s", c.status, c.body)
		}
		contractDo(t, n, "GET", "/v1/rooms/lobby/state/nope", nil).wantError(t, "unset key", http.StatusNotFound, "no_such_key")
	})

	t.Run("profiles behind the token", func(t *testing.T) {
		c := contractDo(t, n, "GET", "/v1/debug/pprof/heap", nil)
		if c.status != http.StatusOK || len(c.body) == 0 {
			t.Fatalf("GET heap profile: %d, %d bytes", c.status, len(c.body))
		}
		c = contractDo(t, n, "GET", "/v1/debug/pprof/profile?seconds=1", nil)
		if c.status != http.StatusOK || len(c.body) == 0 {
			t.Fatalf("GET CPU profile: %d, %d bytes", c.status, len(c.body))
		}
		resp, err := http.Get("http://" + n.APIAddr() + "/v1/debug/pprof/heap")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("a profile without the token: %d", resp.StatusCode)
		}
	})
}

func (n *Node) roomStateOf(t *testing.T, topic string) (map[string]string, bool) {
	t.Helper()
	r, ok, err := n.Doc.Room(topic)
	if err != nil {
		t.Fatal(err)
	}
	return r.State, ok
}

// A request body trickled slowly is cut off after the body timeout with
// 408, while event streams, which read nothing, live on past it.
func TestAPIBodyReadTimeout(t *testing.T) {
	t.Parallel()
	n := newCluster(t, 1, func(_ int, c *Config) { c.apiBodyTimeout = time.Second }).nodes[0]

	// Events first: the stream must outlive the body timeout.
	req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://"+n.APIAddr()+"/v1/events", nil)
	req.Header.Set("Authorization", "Bearer "+n.APIToken())
	sse, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer sse.Body.Close()
	got := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(sse.Body)
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				got <- data
			}
		}
		close(got)
	}()

	conn, err := net.Dial("tcp", n.APIAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	head := "PUT /v1/rooms/lobby/state/k HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + n.APIToken() + "\r\nContent-Length: 100\r\n\r\n"
	if _, err := conn.Write([]byte(head)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	answered := make(chan *http.Response, 1)
	go func() {
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err == nil {
			answered <- resp
		}
		close(answered)
	}()
	tick := time.NewTicker(time.Second / 2)
	defer tick.Stop()
	var resp *http.Response
trickle:
	for {
		select {
		case resp = <-answered:
			break trickle
		case <-tick.C:
			if time.Since(start) > 5*time.Second {
				t.Fatal("a body trickled one byte each half second is still being read after 5s")
			}
			_, _ = conn.Write([]byte("x"))
		}
	}
	if resp == nil {
		t.Fatal("connection closed without an answer")
	}
	b, _ := io.ReadAll(resp.Body)
	var e APIError
	if resp.StatusCode != http.StatusRequestTimeout || json.Unmarshal(b, &e) != nil || e.Error.Code != "body_timeout" {
		t.Fatalf("trickled body: %d %s; want 408 body_timeout", resp.StatusCode, b)
	}
	if st, _ := n.roomStateOf(t, "lobby"); len(st) != 0 {
		t.Fatalf("a cut-off body was written: %v", st)
	}

	// The stream opened before is still live after the body timeout.
	time.Sleep(time.Second)
	n.Events.Publish(EventServiceFailed, map[string]any{"component": "probe"})
	deadline := time.After(5 * time.Second)
	for {
		select {
		case data, ok := <-got:
			if !ok {
				t.Fatal("the event stream ended")
			}
			if bytes.Contains([]byte(data), []byte(`"probe"`)) {
				return
			}
		case <-deadline:
			t.Fatal("no event on a stream older than the body timeout")
		}
	}
}
