package node

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/meshnode/meshnode/crdt"
)

// jsWriter finds Node.js and scripts/js/write.mjs with its Automerge
// installed. Missing, the test fails: the JavaScript interop is part of
// what the API promises, and CI installs both (.ci/run).
func jsWriter(t *testing.T) (nodeBin, script string) {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root := wd
	for {
		if _, err := os.Stat(filepath.Join(root, "go.mod")); err == nil {
			break
		}
		up := filepath.Dir(root)
		if up == root {
			t.Fatalf("no go.mod above %s: cannot find scripts/js", wd)
		}
		root = up
	}
	js := filepath.Join(root, "scripts", "js")
	nodeBin, err = exec.LookPath("node")
	if err != nil {
		t.Fatalf("Node.js is not installed (%v): install it (apt-get install nodejs npm), then run `npm ci --prefix scripts/js`", err)
	}
	if _, err := os.Stat(filepath.Join(js, "node_modules", "@automerge", "automerge", "package.json")); err != nil {
		t.Fatalf("@automerge/automerge is not installed in %s: run `npm ci --prefix scripts/js` in the repository (%v)", js, err)
	}
	return nodeBin, filepath.Join(js, "write.mjs")
}

// writeJS runs write.mjs on doc and returns the change it wrote; args
// are write.mjs's flags, then KEY and VALUE.
func writeJS(t *testing.T, nodeBin, script string, doc []byte, args ...string) []byte {
	t.Helper()
	dir := t.TempDir()
	docPath, outPath := filepath.Join(dir, "doc.automerge"), filepath.Join(dir, "change.bin")
	if err := os.WriteFile(docPath, doc, 0o600); err != nil {
		t.Fatal(err)
	}
	n := len(args)
	cmd := exec.Command(nodeBin, append(append([]string{script}, args[:n-2]...), docPath, args[n-2], args[n-1], outPath)...)
	cmd.Dir = filepath.Dir(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node write.mjs %q: %v\n%s", args, err, out)
	}
	t.Logf("write.mjs: %s", bytes.TrimSpace(out))
	change, err := os.ReadFile(outPath)
	if err != nil {
		t.Fatal(err)
	}
	return change
}

// roomValue is GET /v1/rooms/{topic}/state/{key} on n: its status and
// value.
func roomValue(t *testing.T, n *Node, topic, key string) (int, string) {
	t.Helper()
	resp, b := apiGet(t, n, "/v1/rooms/"+topic+"/state/"+key, n.APIToken())
	var v RoomStateValue
	_ = json.Unmarshal(b, &v)
	return resp.StatusCode, v.Value
}

// A change made with the official JavaScript Automerge, on the document
// as GET /v1/doc serves it, goes in through POST /v1/doc/changes and
// reaches the other node; a JavaScript string, which Automerge 3 makes a
// Text object with an operation per character, is refused and leaves the
// document as it was.
func TestJavaScriptAutomergeWritesThroughAPI(t *testing.T) {
	t.Parallel()
	nodeBin, script := jsWriter(t)
	c := newCluster(t, 2)
	a, b := c.nodes[0], c.nodes[1]
	waitFor(t, 60*time.Second, "fleet formed", func() bool { return c.allAuthenticated(1) && c.converged() })

	const greeting = "hello from JavaScript"
	change := writeJS(t, nodeBin, script, docBytes(t, a), "rooms/js/state/greeting", greeting)
	res := postChanges(t, a, bytes.NewReader(change), a.APIToken())
	if res.status != http.StatusOK || res.res.Accepted != 1 || res.res.Refused != 0 {
		t.Fatalf("posting an ImmutableString write: %d %s; want 200 and it accepted", res.status, res.body)
	}
	if status, v := roomValue(t, a, "js", "greeting"); status != http.StatusOK || v != greeting {
		t.Fatalf("room state on A: %d %q; want %q", status, v, greeting)
	}
	waitFor(t, 20*time.Second, "the JavaScript write on B", func() bool {
		status, v := roomValue(t, b, "js", "greeting")
		return status == http.StatusOK && v == greeting
	})

	headsBefore := a.Doc.HeadStrings()
	bomb := writeJS(t, nodeBin, script, docBytes(t, a), "--text", "--repeat", strconv.Itoa(200_000), "rooms/js/state/bomb", "x")
	res = postChanges(t, a, bytes.NewReader(bomb), a.APIToken())
	if len(res.res.Changes) == 1 {
		t.Logf("the Text bomb's verdict: %+v", res.res.Changes[0])
	}
	if res.status != http.StatusUnprocessableEntity || res.err.Error.Code != "changes_refused" || res.res.Refused != 1 || len(res.res.Changes) != 1 {
		t.Fatalf("posting a 200,000-character Text object: %d %.600s; want 422 changes_refused", res.status, res.body)
	}
	if v := res.res.Changes[0]; v.Accepted || v.Rule == "" {
		t.Fatalf("the Text bomb's verdict %+v; want refused with a rule", v)
	}
	if h, err := crdt.ParseHash(res.res.Changes[0].Hash); err != nil || a.Doc.HasAll([]crdt.Hash{h}) {
		t.Fatalf("the refused change is in A's document (%v)", err)
	}
	if after := a.Doc.HeadStrings(); !slices.Equal(after, headsBefore) {
		t.Fatalf("A's heads moved from %v to %v", headsBefore, after)
	}
	if status, _ := roomValue(t, a, "js", "bomb"); status != http.StatusNotFound {
		t.Fatalf("the refused key reads %d on A; want 404", status)
	}
}
