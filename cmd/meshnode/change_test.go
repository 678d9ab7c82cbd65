package main

import (
	"bytes"
	"crypto/rand"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/meshnode/meshnode/node"
	"github.com/meshnode/meshnode/transfer"
)

// The sequence a new user tried, with real daemons: A holds an item of
// three files and sends at 8 MiB/s; B downloads the item; one of A's
// files changes in place while B is a third of the way through. B's one
// download moves to A's new version and ends with it, byte-identical,
// having fetched at most one chunk more than the item (the changed
// region, fetched in both versions); A is never reported for bad data.
func TestChangeMidDownloadWithRealDaemons(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("moves 48 MiB at 8 MiB/s")
	}
	dirA, dirB := t.TempDir(), t.TempDir()
	item := filepath.Join(dirA, node.DirShare, "game")
	if err := os.MkdirAll(item, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a.bin", "b.bin", "c.bin"} {
		blob := make([]byte, 16<<20)
		_, _ = rand.Read(blob)
		if err := os.WriteFile(filepath.Join(item, name), blob, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	startDaemon(t, dirA, "--name", "a", "--max-send-rate", strconv.Itoa(8<<20))
	tok, _, _ := cli(t, "fleet", "token", "--data", dirA)
	var st node.Status
	api(t, dirA, "GET", "/v1/status", &st)
	startDaemon(t, dirB, "--name", "b", "--join", string(bytes.TrimSpace([]byte(tok))), "--bootstrap", st.Addrs[0])
	var v1 string
	waitUntil(t, 30*time.Second, "B to see A's item", func() bool {
		var items []transfer.ItemView
		api(t, dirB, "GET", "/v1/library", &items)
		if len(items) == 1 {
			v1 = items[0].Latest
		}
		return v1 != ""
	})
	var tr transfer.TransferStatus
	if code := api(t, dirB, "POST", "/v1/items/game/download", &tr); code != http.StatusAccepted {
		t.Fatalf("download request: HTTP %d %+v", code, tr)
	}
	waitUntil(t, 30*time.Second, "a third of the item on B", func() bool {
		api(t, dirB, "GET", "/v1/transfers/"+tr.ID, &tr)
		return tr.Done >= 16<<20
	})
	if tr.State != transfer.TransferRunning {
		t.Fatalf("the download ended (%s) before the change", tr.State)
	}
	// The patch: 100 bytes in the middle of one file, in place.
	f, err := os.OpenFile(filepath.Join(item, "c.bin"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	patch := make([]byte, 100)
	_, _ = rand.Read(patch)
	if _, err := f.WriteAt(patch, 8<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	waitUntil(t, 90*time.Second, "B's download to end", func() bool {
		api(t, dirB, "GET", "/v1/transfers/"+tr.ID, &tr)
		return tr.State != transfer.TransferRunning
	})
	t.Logf("ended %s at %.16s, moved from %v: fetched %d, reused %d of %d, bad sources %v", tr.State, tr.Manifest, tr.MovedFrom, tr.Fetched, tr.Reused, tr.Total, tr.BadSources)
	if tr.State != transfer.TransferDone {
		t.Fatalf("the download ended %s: %s", tr.State, tr.Error)
	}
	if len(tr.BadSources) != 0 {
		t.Fatalf("A was reported for bad data: %v", tr.BadSources)
	}
	if len(tr.MovedFrom) != 1 || tr.MovedFrom[0] != v1 || tr.Manifest == v1 {
		t.Fatalf("ended at %s having moved from %v; the first version was %s", tr.Manifest, tr.MovedFrom, v1)
	}
	if tr.Fetched > tr.Total+transfer.ChunkSize {
		t.Fatalf("fetched %d bytes for an item of %d: more than the changed chunk was fetched twice", tr.Fetched, tr.Total)
	}
	for _, name := range []string{"a.bin", "b.bin", "c.bin"} {
		want, _ := os.ReadFile(filepath.Join(item, name))
		got, err := os.ReadFile(filepath.Join(dirB, node.DirShare, "game", name))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s differs on B (%d bytes, %v)", name, len(got), err)
		}
	}
}
