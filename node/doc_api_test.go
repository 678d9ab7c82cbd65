package node

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	am "github.com/automerge/automerge-go"

	"github.com/meshnode/meshnode/crdt"
	"github.com/meshnode/meshnode/internal/disktest"
)

// changesCall is one POST /v1/doc/changes and its answer.
type changesCall struct {
	status int
	res    ChangesResult
	err    APIError
	body   []byte
}

// postChanges posts raw changes to n's API with token ("" sends none).
func postChanges(t *testing.T, n *Node, body io.Reader, token string) changesCall {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+n.APIAddr()+"/v1/doc/changes", body)
	req.Header.Set("Content-Type", "application/octet-stream")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	c := changesCall{status: resp.StatusCode}
	c.body, _ = io.ReadAll(resp.Body)
	_ = json.Unmarshal(c.body, &c.res)
	_ = json.Unmarshal(c.body, &c.err)
	return c
}

// docBytes is n's GET /v1/doc.
func docBytes(t *testing.T, n *Node) []byte {
	t.Helper()
	resp, b := apiGet(t, n, "/v1/doc", n.APIToken())
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/doc: %d %s", resp.StatusCode, b)
	}
	return b
}

// goChange makes one change to the document in snapshot with
// automerge-go, as an external Go client would, setting key to a string.
func goChange(t *testing.T, snapshot []byte, key, value string) (raw []byte, hash string) {
	t.Helper()
	doc, err := am.Load(snapshot)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Path(key).Set(value); err != nil {
		t.Fatal(err)
	}
	h, err := doc.Commit("external write")
	if err != nil {
		t.Fatal(err)
	}
	ch, err := doc.Change(h)
	if err != nil {
		t.Fatal(err)
	}
	return ch.Save(), h.String()
}

// changeChunk frames body as an automerge change chunk with a correct
// checksum: it splits and hashes as a change, and automerge cannot
// parse it.
func changeChunk(body []byte) []byte {
	hdr := []byte{1}
	for n := uint64(len(body)); ; n >>= 7 {
		if n < 0x80 {
			hdr = append(hdr, byte(n))
			break
		}
		hdr = append(hdr, byte(n)|0x80)
	}
	h := sha256.Sum256(append(slices.Clone(hdr), body...))
	out := append([]byte("\x85\x6f\x4a\x83"), h[:4]...)
	return append(append(out, hdr...), body...)
}

// A change made by another automerge implementation and posted raw is
// accepted, is in the document, and is visible through the API; posting
// it again is harmless.
func TestPostChangesAccepted(t *testing.T) {
	t.Parallel()
	n := newCluster(t, 1).nodes[0]
	raw, hash := goChange(t, docBytes(t, n), "rooms/lobby/state/from-go", "hello from automerge-go")

	c := postChanges(t, n, bytes.NewReader(raw), n.APIToken())
	if c.status != http.StatusOK || c.res.Accepted != 1 || c.res.Refused != 0 || len(c.res.Changes) != 1 {
		t.Fatalf("post: %d %s; want 200 with one accepted change", c.status, c.body)
	}
	if v := c.res.Changes[0]; v.Hash != hash || !v.Accepted || !v.New {
		t.Fatalf("verdict %+v; want change %s accepted and new", v, hash)
	}
	if !slices.Contains(c.res.Heads, hash) {
		t.Fatalf("heads %v; want the posted change %s among them", c.res.Heads, hash)
	}
	resp, b := apiGet(t, n, "/v1/rooms/lobby/state/from-go", n.APIToken())
	var v RoomStateValue
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &v) != nil || v.Value != "hello from automerge-go" {
		t.Fatalf("room state after the post: %d %s", resp.StatusCode, b)
	}

	again := postChanges(t, n, bytes.NewReader(raw), n.APIToken())
	if again.status != http.StatusOK || again.res.Accepted != 1 || again.res.Changes[0].New {
		t.Fatalf("posting it again: %d %s; want 200, accepted, not new", again.status, again.body)
	}
}

// A body whose changes are not all accepted answers 422 changes_refused,
// in the API's error shape with every verdict beside it; the accepted
// change before the refused one is in, the refused one is not.
func TestPostChangesRefused(t *testing.T) {
	t.Parallel()
	n := newCluster(t, 1).nodes[0]
	good, goodHash := goChange(t, docBytes(t, n), "rooms/lobby/state/ok", "fine")
	bad := changeChunk(append([]byte{0}, "not an automerge change body"...))

	c := postChanges(t, n, bytes.NewReader(append(slices.Clone(good), bad...)), n.APIToken())
	if c.status != http.StatusUnprocessableEntity || c.err.Error.Code != "changes_refused" || c.err.Error.Message == "" {
		t.Fatalf("post: %d %s; want 422 changes_refused", c.status, c.body)
	}
	if c.res.Accepted != 1 || c.res.Refused != 1 || len(c.res.Changes) != 2 {
		t.Fatalf("counts in %s; want 1 accepted, 1 refused", c.body)
	}
	if v := c.res.Changes[0]; !v.Accepted || v.Hash != goodHash {
		t.Fatalf("first verdict %+v; want %s accepted", v, goodHash)
	}
	if v := c.res.Changes[1]; v.Accepted || v.Rule == "" || v.Reason == "" {
		t.Fatalf("second verdict %+v; want refused with a rule and a reason", v)
	}
	if !strings.Contains(c.err.Error.Message, c.res.Changes[1].Hash) {
		t.Fatalf("error message %q does not name the refused change", c.err.Error.Message)
	}
	if !slices.Contains(c.res.Heads, goodHash) {
		t.Fatalf("heads %v; want the accepted change %s among them", c.res.Heads, goodHash)
	}
	if h, err := crdt.ParseHash(c.res.Changes[1].Hash); err != nil || n.Doc.HasAll([]crdt.Hash{h}) {
		t.Fatalf("the refused change %s is in the document (%v)", c.res.Changes[1].Hash, err)
	}

	// A change on top of one the node never saw is not applied either,
	// and the reason says what to do.
	doc, err := am.Load(docBytes(t, n))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"unsent", "orphan"} {
		if err := doc.Path("rooms/lobby/state/" + v).Set(v); err != nil {
			t.Fatal(err)
		}
		if _, err := doc.Commit(v); err != nil {
			t.Fatal(err)
		}
	}
	orphan, _ := doc.Change(doc.Heads()[0])
	c = postChanges(t, n, bytes.NewReader(orphan.Save()), n.APIToken())
	if c.status != http.StatusUnprocessableEntity || c.res.Refused != 1 || c.res.Changes[0].Accepted || !strings.Contains(c.res.Changes[0].Reason, "GET /v1/doc") {
		t.Fatalf("a change whose dependency the node lacks: %d %s; want 422, refused, with a reason naming GET /v1/doc", c.status, c.body)
	}
}

// Bodies that are not changes at all, too large or unauthenticated are
// answered before anything is applied.
func TestPostChangesBadRequests(t *testing.T) {
	t.Parallel()
	n := newCluster(t, 1).nodes[0]
	snapshot := docBytes(t, n)
	for _, tc := range []struct {
		name   string
		body   []byte
		token  string
		status int
		code   string
		want   string
	}{
		{"garbage", []byte("this is not automerge"), n.APIToken(), http.StatusBadRequest, "bad_changes", "not automerge changes"},
		{"empty", nil, n.APIToken(), http.StatusBadRequest, "bad_changes", "empty"},
		{"a whole document", snapshot, n.APIToken(), http.StatusBadRequest, "bad_changes", "whole document"},
		{"too large", make([]byte, MaxChangesBody+1), n.APIToken(), http.StatusRequestEntityTooLarge, "too_large", "16777216 bytes"},
		{"no token", []byte("x"), "", http.StatusUnauthorized, "unauthorized", "bearer token"},
		{"wrong token", []byte("x"), "wrong", http.StatusUnauthorized, "unauthorized", "bearer token"},
	} {
		c := postChanges(t, n, bytes.NewReader(tc.body), tc.token)
		if c.status != tc.status || c.err.Error.Code != tc.code || !strings.Contains(c.err.Error.Message, tc.want) {
			t.Errorf("%s: %d %.300s; want %d %s mentioning %q", tc.name, c.status, c.body, tc.status, tc.code, tc.want)
		}
	}
	get := contractDo(t, n, "GET", "/v1/doc/changes", nil)
	if get.status != http.StatusMethodNotAllowed || get.header.Get("Allow") != "POST" {
		t.Errorf("GET /v1/doc/changes: %d Allow %q; want 405 Allow POST", get.status, get.header.Get("Allow"))
	}
}

// On a full disk a push answers 507 disk_full, like every document
// write, and the change is not in; once space is freed the same push
// goes in. Needs root to mount a small tmpfs as the data dir.
func TestPostChangesDiskFull(t *testing.T) {
	t.Parallel()
	small := disktest.Tmpfs(t, "4m")
	dir := filepath.Join(small, "node")
	n := newCluster(t, 0).add(func(_ int, cfg *Config) { cfg.DataDir = dir })
	// The value spans pages, so that the change fits in no page already held.
	raw, hash := goChange(t, docBytes(t, n), "rooms/lobby/state/big", strings.Repeat("v", 12<<10))
	filler := disktest.Fill(t, small)
	c := postChanges(t, n, bytes.NewReader(raw), n.APIToken())
	if c.status != http.StatusInsufficientStorage || c.err.Error.Code != "disk_full" || !strings.Contains(c.err.Error.Message, dir) {
		t.Fatalf("push on a full disk: %d %s; want 507 disk_full naming %s", c.status, c.body, dir)
	}
	if h, _ := crdt.ParseHash(hash); n.Doc.HasAll([]crdt.Hash{h}) {
		t.Fatal("the change refused for a full disk is in the document")
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if c := postChanges(t, n, bytes.NewReader(raw), n.APIToken()); c.status != http.StatusOK || c.res.Accepted != 1 {
		t.Fatalf("push after space was freed: %d %s", c.status, c.body)
	}
}
