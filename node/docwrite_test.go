package node

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/meshnode/meshnode/crdt"
	"github.com/meshnode/meshnode/internal/disktest"
	"github.com/meshnode/meshnode/room"
)

// Document write errors, however wrapped, get one answer each, from the
// PUT room state path and the room actions alike.
func TestDocWriteErrorAnswers(t *testing.T) {
	t.Parallel()
	n := &Node{cfg: Config{DataDir: "/srv/meshnode"}}
	full := fmt.Errorf("crdt: append change log /srv/meshnode/doc/doc.log: %w", fmt.Errorf("%w: %w", crdt.ErrDiskFull, syscall.ENOSPC))
	for _, tc := range []struct {
		name   string
		err    error
		status int
		code   string
		want   []string
	}{
		{"disk full", full, http.StatusInsufficientStorage, "disk_full", []string{"/srv/meshnode", "free space there", "crdt: disk full"}},
		{"disk full, wrapped again", fmt.Errorf("room presence: %w", full), http.StatusInsufficientStorage, "disk_full", []string{"free space there"}},
		{"other write error", fmt.Errorf("crdt: sync change log /srv/meshnode/doc/doc.log: %w", syscall.EIO), http.StatusInternalServerError, "doc_write", []string{"/srv/meshnode/doc/doc.log", "input/output error"}},
		{"invalid value", fmt.Errorf("room state: %w", crdt.ErrInvalidValue), http.StatusBadRequest, "invalid", []string{"invalid value"}},
	} {
		for _, via := range []string{"helper", "room action"} {
			rec := httptest.NewRecorder()
			if via == "helper" {
				n.docWriteError(rec, tc.err)
			} else {
				n.roomAction(func(string) error { return tc.err })(rec, httptest.NewRequest("POST", "/v1/rooms/x/join", nil))
			}
			checkAPIError(t, tc.name+" via "+via, rec, tc.status, tc.code, tc.want...)
		}
	}
	// Room errors keep their own answers.
	rec := httptest.NewRecorder()
	n.roomAction(func(string) error { return fmt.Errorf("%w: x", room.ErrNotJoined) })(rec, httptest.NewRequest("POST", "/", nil))
	checkAPIError(t, "not joined", rec, http.StatusConflict, "not_joined")
	rec = httptest.NewRecorder()
	roomError(rec, errors.New("room: publish: closed"), roomFailed)
	checkAPIError(t, "send failure", rec, http.StatusInternalServerError, "room")
}

func checkAPIError(t *testing.T, what string, rec *httptest.ResponseRecorder, status int, code string, want ...string) {
	t.Helper()
	var e APIError
	if rec.Code != status || json.Unmarshal(rec.Body.Bytes(), &e) != nil || e.Error.Code != code {
		t.Errorf("%s: %d %s; want %d %s", what, rec.Code, rec.Body, status, code)
		return
	}
	for _, w := range want {
		if !strings.Contains(e.Error.Message, w) {
			t.Errorf("%s: message %q lacks %q", what, e.Error.Message, w)
		}
	}
}

// On a real full disk, writes through the API answer 507 disk_full and
// leave the document as it was; once space is freed they succeed. Needs
// root to mount a small tmpfs as the data dir.
func TestDiskFullAPIAnswers507(t *testing.T) {
	t.Parallel()
	small := disktest.Tmpfs(t, "4m")
	dir := filepath.Join(small, "node")
	c := newCluster(t, 0)
	n := c.add(func(_ int, cfg *Config) { cfg.DataDir = dir })
	// Values span pages, so that no write fits in a page already held.
	value := func(c byte) []byte { return bytes.Repeat([]byte{c}, 12<<10) }
	put := func(v []byte) (int, APIError) {
		return apiDo(t, n, "PUT", "/v1/rooms/lobby/state/k", v)
	}
	if code, e := put(value('a')); code != http.StatusOK {
		t.Fatalf("write before the disk filled: %d %+v", code, e)
	}
	filler := disktest.Fill(t, small)
	// (A small write, such as a room join's lease, may still fit in a page
	// the log holds; the room actions' mapping is checked above.)
	code, e := put(value('b'))
	if code != http.StatusInsufficientStorage || e.Error.Code != "disk_full" || !strings.Contains(e.Error.Message, dir) || !strings.Contains(e.Error.Message, "free space") {
		t.Fatalf("write on a full disk: %d %+v; want 507 disk_full naming %s", code, e, dir)
	}
	if st, _, _ := n.Doc.Room("lobby"); st.State["k"] != string(value('a')) {
		t.Fatal("the refused write changed the document")
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if code, e := put(value('c')); code != http.StatusOK {
		t.Fatalf("write after space was freed: %d %+v", code, e)
	}
	if st, _, _ := n.Doc.Room("lobby"); st.State["k"] != string(value('c')) {
		t.Fatal("the write after space was freed is not in the document")
	}
}

// apiDo sends one request to n's API and decodes an error answer.
func apiDo(t *testing.T, n *Node, method, path string, body []byte) (int, APIError) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+n.APIAddr()+path, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+n.APIToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e APIError
	_ = json.Unmarshal(b, &e)
	return resp.StatusCode, e
}
