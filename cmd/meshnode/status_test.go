package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/meshnode/meshnode/node"
)

// A damaged document file shows at the top of `meshnode status` after the
// restart that found it, and in status --json.
func TestStatusShowsDamage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d := startDaemon(t, dir)
	if _, errOut, code := cli(t, "room", "state", "lobby", "k", "v", "--data", dir); code != 0 {
		t.Fatalf("room state set: %d %s", code, errOut)
	}
	if status, _, _ := cli(t, "status", "--data", dir); strings.Contains(status, "WARNING") {
		t.Fatalf("status of an intact node warns:\n%s", status)
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-d.exited; err != nil {
		t.Fatalf("daemon exit: %v\n%s", err, d.out)
	}
	d.exited <- nil
	snap := filepath.Join(dir, node.DirDoc, "doc.snapshot")
	b, err := os.ReadFile(snap)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(snap, b[:len(b)/2], 0o600); err != nil {
		t.Fatal(err)
	}

	startDaemon(t, dir)
	status, errOut, code := cli(t, "status", "--data", dir)
	if code != 0 || !strings.HasPrefix(status, "WARNING: the document's files were damaged") ||
		!strings.Contains(status, "File     "+snap) || !strings.Contains(status, "Kept as  "+snap+".damaged-") {
		t.Fatalf("status after damage: code %d, %s %s", code, status, errOut)
	}
	var st node.Status
	if api(t, dir, "GET", "/v1/status", &st); len(st.Document.Damage) == 0 || st.Document.Damage[0].File != snap {
		t.Fatalf("status --json damage: %+v", st.Document)
	}
}
