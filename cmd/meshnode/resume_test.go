package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshnode/meshnode/node"
	"github.com/meshnode/meshnode/transfer"
)

// api calls a daemon's local API.
func api(t *testing.T, dir, method, path string, v any) int {
	t.Helper()
	addr, tok, err := node.ReadClientInfo(dir)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(method, "http://"+addr+path, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if v != nil {
		_ = json.Unmarshal(b, v)
	}
	return resp.StatusCode
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// kill -9 the downloading process mid-transfer and restart it: the
// download resumes by itself, fetches less than the whole, and ends with
// identical bytes; the item never appears under its name half-written.
func TestDownloadResumesAfterKill9(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("moves 192 MiB")
	}
	dirA, dirB := t.TempDir(), t.TempDir()
	blob := make([]byte, 192<<20)
	_, _ = rand.Read(blob)
	if err := os.MkdirAll(filepath.Join(dirA, node.DirShare, "big"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dirA, node.DirShare, "big", "blob"), blob, 0o644); err != nil {
		t.Fatal(err)
	}
	startDaemon(t, dirA, "--name", "a")
	tok, _, _ := cli(t, "fleet", "token", "--data", dirA)
	var st node.Status
	api(t, dirA, "GET", "/v1/status", &st)
	args := []string{"--name", "b", "--join", string(bytes.TrimSpace([]byte(tok))), "--bootstrap", st.Addrs[0]}
	b := startDaemon(t, dirB, args...)
	waitUntil(t, 30*time.Second, "B to see A's item", func() bool {
		var items []transfer.ItemView
		api(t, dirB, "GET", "/v1/library", &items)
		return len(items) == 1 && items[0].Latest != ""
	})
	var tr transfer.TransferStatus
	if code := api(t, dirB, "POST", "/v1/items/big/download", &tr); code != http.StatusAccepted {
		t.Fatalf("download request: HTTP %d %+v", code, tr)
	}
	final := filepath.Join(dirB, node.DirShare, "big")
	waitUntil(t, 30*time.Second, "part of the item to arrive", func() bool {
		api(t, dirB, "GET", "/v1/transfers/"+tr.ID, &tr)
		if _, err := os.Stat(final); err == nil {
			t.Fatal("the item appeared under its name before it was complete")
		}
		return tr.Done > 16<<20
	})
	if err := b.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-b.exited
	b.exited <- nil
	if tr.Done >= tr.Total {
		t.Fatalf("the download finished before the kill; nothing to resume (%d of %d)", tr.Done, tr.Total)
	}
	if _, err := os.Stat(final); err == nil {
		t.Fatal("a partial item is visible under its name after the kill")
	}
	os.Remove(filepath.Join(dirB, node.FileAPIAddr)) // left by the killed process

	startDaemon(t, dirB, args...)
	var done transfer.TransferStatus
	waitUntil(t, 60*time.Second, "the resumed download to finish", func() bool {
		var ts []transfer.TransferStatus
		api(t, dirB, "GET", "/v1/transfers", &ts)
		for _, x := range ts {
			if x.State == transfer.TransferFailed {
				t.Fatalf("resumed download failed: %s", x.Error)
			}
			if x.State == transfer.TransferDone {
				done = x
				return true
			}
		}
		// The swap renames the complete item into place just before the
		// state turns done; until the data is complete it must not exist.
		if len(ts) > 0 && ts[0].State == transfer.TransferRunning && ts[0].Done < ts[0].Total {
			if _, err := os.Stat(final); err == nil {
				t.Fatal("the item appeared under its name before it was complete")
			}
		}
		return false
	})
	if done.Resumed == 0 || done.Fetched >= done.Total {
		t.Fatalf("after restart: resumed %d, fetched %d of %d; want a partial refetch", done.Resumed, done.Fetched, done.Total)
	}
	got, err := os.ReadFile(filepath.Join(final, "blob"))
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("resumed item differs (%d bytes, %v)", len(got), err)
	}
	t.Logf("killed at %d of %d bytes; after restart resumed %d and fetched %d", tr.Done, tr.Total, done.Resumed, done.Fetched)
}

// meshnode get, as a user runs it: two daemons of one fleet; B gets A's
// item with progress on stderr and a summary on stdout, and the files
// match. An item nobody has is refused with the reason.
func TestCLIGet(t *testing.T) {
	t.Parallel()
	dirA, dirB := t.TempDir(), t.TempDir()
	files := map[string][]byte{"bin/tool": make([]byte, 3<<20+17), "README": []byte("a tool\n")}
	for p, b := range files {
		_, _ = rand.Read(b)
		full := filepath.Join(dirA, node.DirShare, "tools", filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	startDaemon(t, dirA, "--name", "a")
	tok, _, _ := cli(t, "fleet", "token", "--data", dirA)
	var st node.Status
	api(t, dirA, "GET", "/v1/status", &st)
	startDaemon(t, dirB, "--name", "b", "--join", string(bytes.TrimSpace([]byte(tok))), "--bootstrap", st.Addrs[0])
	waitUntil(t, 30*time.Second, "B to see A's item", func() bool {
		var items []transfer.ItemView
		api(t, dirB, "GET", "/v1/library", &items)
		return len(items) == 1 && items[0].Latest != ""
	})
	out, errOut, code := cli(t, "get", "tools", "--data", dirB)
	if code != 0 || !strings.Contains(out, "tools: 3.0 MiB") || !strings.Contains(errOut, "100%") {
		t.Fatalf("get: code %d, stdout %q, stderr %q", code, out, errOut)
	}
	for p, want := range files {
		got, err := os.ReadFile(filepath.Join(dirB, node.DirShare, "tools", filepath.FromSlash(p)))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s differs after get (%v)", p, err)
		}
	}
	if _, errOut, code := cli(t, "get", "nothing", "--data", dirB); code != 1 || !strings.Contains(errOut, `no item "nothing"`) {
		t.Fatalf("get of a missing item: code %d, %q", code, errOut)
	}
}
