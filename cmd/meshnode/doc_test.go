package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	am "github.com/automerge/automerge-go"

	"github.com/meshnode/meshnode/node"
)

// `meshnode doc get` writes a document any automerge library loads;
// `meshnode doc push` sends a change made with one, from a file or
// stdin, and the node takes it.
func TestCLIDocGetAndPush(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	startDaemon(t, dir)
	work := t.TempDir()

	docFile := filepath.Join(work, "doc.automerge")
	out, errOut, code := cli(t, "doc", "get", docFile, "--data", dir)
	if code != 0 || !strings.Contains(out, docFile) {
		t.Fatalf("doc get: code %d, %q %q", code, out, errOut)
	}
	b, err := os.ReadFile(docFile)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := am.Load(b)
	if err != nil {
		t.Fatalf("the document doc get wrote does not load: %v", err)
	}
	if err := doc.Path("rooms/lobby/state/pushed").Set("by the CLI"); err != nil {
		t.Fatal(err)
	}
	h, err := doc.Commit("external")
	if err != nil {
		t.Fatal(err)
	}
	ch, _ := doc.Change(h)
	changeFile := filepath.Join(work, "change.bin")
	if err := os.WriteFile(changeFile, ch.Save(), 0o600); err != nil {
		t.Fatal(err)
	}

	out, errOut, code = cli(t, "doc", "push", changeFile, "--data", dir)
	if code != 0 || !strings.Contains(out, h.String()) || !strings.Contains(out, "accepted") || !strings.Contains(out, "1 accepted, 0 refused") {
		t.Fatalf("doc push: code %d, %q %q", code, out, errOut)
	}
	out, _, code = cli(t, "room", "state", "lobby", "pushed", "--data", dir)
	if code != 0 || strings.TrimSpace(out) != "by the CLI" {
		t.Fatalf("the pushed value: code %d, %q", code, out)
	}

	// From stdin, with --json: the daemon's answer as it is.
	cmd := exec.Command(os.Args[0], "doc", "push", "-", "--json", "--data", dir)
	cmd.Env = append(os.Environ(), "MN_TEST_AS_MAIN=1")
	f, err := os.Open(changeFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd.Stdin = f
	js, err := cmd.Output()
	var res node.ChangesResult
	if err != nil || json.Unmarshal(js, &res) != nil || res.Accepted != 1 || len(res.Changes) != 1 || res.Changes[0].Hash != h.String() {
		t.Fatalf("doc push - --json: %v, %q", err, js)
	}

	if err := os.WriteFile(changeFile, []byte("not automerge"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = cli(t, "doc", "push", changeFile, "--data", dir)
	if code != 1 || !strings.Contains(errOut, "(bad_changes)") {
		t.Fatalf("doc push of garbage: code %d, %q; want 1 and bad_changes", code, errOut)
	}
	_, errOut, code = cli(t, "doc", "frob", "--data", dir)
	if code != 1 || !strings.Contains(errOut, "usage: meshnode doc") {
		t.Fatalf("doc frob: code %d, %q", code, errOut)
	}
}

// A push with a refused change prints the rule and reason per change
// and exits 1; --json prints the answer and exits 1 too.
func TestCLIDocPushRefused(t *testing.T) {
	t.Parallel()
	answer := `{"error": {"code": "changes_refused", "message": "1 of 2 changes refused"},
"accepted": 1, "refused": 1, "heads": ["aa"],
"changes": [{"hash": "aa", "accepted": true, "new": true},
{"hash": "bb", "accepted": false, "rule": "object", "reason": "a text object at rooms/x/state/y"}]}`
	dir := fakeDaemon(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != "POST" || r.URL.Path != "/v1/doc/changes" {
			answerError(w, http.StatusNotFound, "not_found", r.URL.Path)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnprocessableEntity)
		fmt.Fprint(w, answer)
	})
	changes := filepath.Join(t.TempDir(), "changes.bin")
	if err := os.WriteFile(changes, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := cli(t, "doc", "push", changes, "--data", dir)
	if code != 1 || !strings.Contains(errOut, "1 of 2 changes refused") {
		t.Fatalf("push: code %d, stderr %q; want 1 and the count", code, errOut)
	}
	lines := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			lines[f[0]] = strings.Join(f[1:], " ")
		}
	}
	if lines["aa"] != "accepted - -" || lines["bb"] != "refused object a text object at rooms/x/state/y" || !strings.Contains(out, "\n1 accepted, 1 refused\n") {
		t.Errorf("push output, one line per change and the counts:\n%s", out)
	}
	out, _, code = cli(t, "doc", "push", changes, "--json", "--data", dir)
	if code != 1 || out != answer {
		t.Fatalf("push --json: code %d, %q; want 1 and the answer as sent", code, out)
	}
}
