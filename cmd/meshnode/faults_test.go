package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshnode/meshnode/internal/disktest"
	"github.com/meshnode/meshnode/node"
)

// Storage faults on real `meshnode run` processes: the issue "Durable
// document" promises that a write the API acknowledged is never lost to a
// damaged or full disk. These tests write through the HTTP API, kill -9
// the daemon, damage its files the way a disk does, restart it, and count
// what came back.

// faultTopic is the room whose durable state the tests write.
const faultTopic = "faults"

// faultWait bounds every wait for convergence in these tests.
const faultWait = 30 * time.Second

// putState sets one room state key through the API and returns the status
// code and, for an error, the decoded error body. (The CLI hides the code,
// and the 507 of a full disk is part of what is tested.)
func putState(t *testing.T, dir, key, value string) (int, node.APIError) {
	t.Helper()
	addr, tok, err := node.ReadClientInfo(dir)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("PUT", "http://"+addr+"/v1/rooms/"+faultTopic+"/state/"+key, strings.NewReader(value))
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("PUT %s: %v", key, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e node.APIError
	if resp.StatusCode != http.StatusOK {
		_ = json.Unmarshal(b, &e)
	}
	return resp.StatusCode, e
}

// mustPut sets key to its value and fails unless the API acknowledged it.
func mustPut(t *testing.T, dir, key string) {
	t.Helper()
	if code, e := putState(t, dir, key, valueOf(key)); code != http.StatusOK {
		t.Fatalf("PUT %s: HTTP %d %+v", key, code, e)
	}
}

func valueOf(key string) string { return "value of " + key }

// stateOf returns the room state a daemon holds (empty when it cannot
// answer).
func stateOf(t *testing.T, dir string) map[string]string {
	t.Helper()
	st := map[string]string{}
	if code := api(t, dir, "GET", "/v1/rooms/"+faultTopic+"/state", &st); code != http.StatusOK {
		return map[string]string{}
	}
	return st
}

// missing returns the keys of want that st lacks or holds with another
// value.
func missing(st map[string]string, want []string) []string {
	var out []string
	for _, k := range want {
		if st[k] != valueOf(k) {
			out = append(out, k)
		}
	}
	return out
}

func statusOf(t *testing.T, dir string) (node.Status, int) {
	t.Helper()
	var st node.Status
	code := api(t, dir, "GET", "/v1/status", &st)
	return st, code
}

// stopDaemon stops d with SIGTERM and fails unless it exits cleanly.
func stopDaemon(t *testing.T, d *daemon) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-d.exited:
		d.exited <- err
		if err != nil {
			t.Fatalf("daemon exit after SIGTERM: %v; output:\n%s", err, d.out)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("daemon still running 15s after SIGTERM; output:\n%s", d.out)
	}
}

// killDaemon kills d with SIGKILL and removes the API address file the
// killed process leaves behind.
func killDaemon(t *testing.T, d *daemon, dir string) {
	t.Helper()
	if err := d.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	d.exited <- <-d.exited
	os.Remove(filepath.Join(dir, node.FileAPIAddr))
}

// stillRunning fails if d has exited.
func stillRunning(t *testing.T, d *daemon, name string) {
	t.Helper()
	select {
	case err := <-d.exited:
		d.exited <- err
		t.Fatalf("%s exited (%v); output:\n%s", name, err, d.out)
	default:
	}
}

func firstAddr(t *testing.T, dir string) string {
	t.Helper()
	st, code := statusOf(t, dir)
	if code != http.StatusOK || len(st.Addrs) == 0 {
		t.Fatalf("status: HTTP %d, addrs %v", code, st.Addrs)
	}
	return st.Addrs[0]
}

// logRec is one record of a doc.log: the offset of its header and its
// payload (format in crdt/format.go: "MNLOG01\n", then len u32 LE |
// crc32c u32 | payload).
type logRec struct {
	off     int
	payload []byte
}

// readLog parses an intact doc.log.
func readLog(t *testing.T, path string) []logRec {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("MNLOG01\n")) {
		t.Fatalf("%s does not start with the log magic", path)
	}
	var recs []logRec
	for off := 8; off < len(b); {
		if len(b)-off < 8 {
			t.Fatalf("%s: torn record header at %d before any damage", path, off)
		}
		n := int(binary.LittleEndian.Uint32(b[off:]))
		if n > len(b)-off-8 {
			t.Fatalf("%s: torn record at %d before any damage", path, off)
		}
		recs = append(recs, logRec{off: off, payload: b[off+8 : off+8+n]})
		off += 8 + n
	}
	return recs
}

// recordOf returns the index of the record that holds key, or -1.
func recordOf(recs []logRec, key string) int {
	for i, r := range recs {
		if bytes.Contains(r.payload, []byte(key)) {
			return i
		}
	}
	return -1
}

// keyIn returns the first of keys held by rec, or "".
func keyIn(rec logRec, keys []string) string {
	for _, k := range keys {
		if bytes.Contains(rec.payload, []byte(k)) {
			return k
		}
	}
	return ""
}

type faultKind int

const (
	logCut faultKind = iota
	logFlip
	snapFlip
	snapCut
	snapDelete
)

func (k faultKind) String() string {
	return [...]string{"log-cut-mid-record", "log-byte-flipped-mid-log", "snapshot-byte-flipped", "snapshot-truncated", "snapshot-deleted"}[k]
}

func (k faultKind) snapshot() bool { return k >= snapFlip }

// faultHit is what a damage did to the log, for the alone expectations.
type faultHit struct {
	recs   []logRec // the log's records at the kill
	hitIdx int      // the damaged log record, -1 for snapshot damage
	hitKey string   // the acknowledged key in that record, if any
}

// damage applies k to the document files in docDir of a killed node.
func damage(t *testing.T, k faultKind, docDir string, acked []string) faultHit {
	t.Helper()
	logPath, snapPath := filepath.Join(docDir, "doc.log"), filepath.Join(docDir, "doc.snapshot")
	h := faultHit{recs: readLog(t, logPath), hitIdx: -1}
	for _, key := range acked {
		if recordOf(h.recs, key) < 0 {
			t.Fatalf("acknowledged key %s is in no record of the log (%d records)", key, len(h.recs))
		}
	}
	switch k {
	case logCut:
		h.hitIdx = len(h.recs) - 1
		r := h.recs[h.hitIdx]
		if err := os.Truncate(logPath, int64(r.off+8+len(r.payload)/2)); err != nil {
			t.Fatal(err)
		}
	case logFlip:
		h.hitIdx = recordOf(h.recs, acked[len(acked)/2])
		r := h.recs[h.hitIdx]
		flipByte(t, logPath, r.off+8+len(r.payload)/2)
	case snapFlip:
		fi, err := os.Stat(snapPath)
		if err != nil {
			t.Fatal(err)
		}
		flipByte(t, snapPath, int(fi.Size()/2))
	case snapCut:
		fi, err := os.Stat(snapPath)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(snapPath, fi.Size()/2); err != nil {
			t.Fatal(err)
		}
	case snapDelete:
		if err := os.Remove(snapPath); err != nil {
			t.Fatal(err)
		}
	}
	if h.hitIdx >= 0 {
		h.hitKey = keyIn(h.recs[h.hitIdx], acked)
	}
	return h
}

func flipByte(t *testing.T, path string, off int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[off] ^= 0x5a
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func keyList(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%02d", prefix, i)
	}
	return out
}

// Every storage fault of the document's files, on a node with a peer
// and on a node alone. With a peer, no acknowledged write is lost: what
// the damage took, the peer brings back, and both end with every key.
// Alone, the node keeps every intact record, reports the damage with a
// kept copy, counts what waits for a lost base, and keeps running.
func TestStorageFaultMatrix(t *testing.T) {
	t.Parallel()
	for _, peer := range []bool{true, false} {
		for _, k := range []faultKind{logCut, logFlip, snapFlip, snapCut, snapDelete} {
			name := k.String() + "/alone"
			if peer {
				name = k.String() + "/with-peer"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				start := time.Now()
				storageFault(t, k, peer)
				t.Logf("took %v", time.Since(start).Round(100*time.Millisecond))
			})
		}
	}
}

// storageFault runs one case: base keys on C (and its peer A), a clean
// stop that folds them into C's snapshot, a start, 20 acknowledged keys
// that only C holds (snapshot cases: A is stopped) or that A holds too
// (log cases), kill -9, damage k, restart and count.
func storageFault(t *testing.T, k faultKind, withPeer bool) {
	dirC, dirA := t.TempDir(), t.TempDir()
	docDir := filepath.Join(dirC, node.DirDoc)
	base, acked := keyList("base", 5), keyList("acked", 20)
	all := append(slices.Clone(base), acked...)

	c := startDaemon(t, dirC, "--name", "c")
	var a *daemon
	var joinArgs []string
	if withPeer {
		tok, _, _ := cli(t, "fleet", "token", "--data", dirC)
		joinArgs = []string{"--name", "a", "--join", strings.TrimSpace(tok)}
		a = startDaemon(t, dirA, append(joinArgs, "--bootstrap", firstAddr(t, dirC))...)
	}
	for _, key := range base {
		mustPut(t, dirC, key)
	}
	if withPeer {
		waitUntil(t, faultWait, "A to hold the base keys", func() bool { return len(missing(stateOf(t, dirA), base)) == 0 })
	}
	// A clean stop folds the base into doc.snapshot.
	stopDaemon(t, c)
	var cArgs []string
	if withPeer {
		cArgs = []string{"--bootstrap", firstAddr(t, dirA)}
	}
	c = startDaemon(t, dirC, append([]string{"--name", "c"}, cArgs...)...)
	if withPeer && k.snapshot() {
		stopDaemon(t, a) // only C holds the writes that follow
	}
	for _, key := range acked {
		mustPut(t, dirC, key)
	}
	if withPeer && !k.snapshot() {
		waitUntil(t, faultWait, "A to hold every acknowledged key", func() bool { return len(missing(stateOf(t, dirA), acked)) == 0 })
	}
	killDaemon(t, c, dirC)
	hit := damage(t, k, docDir, acked)
	t.Logf("log at the kill: %d records; damaged record %d holds %q", len(hit.recs), hit.hitIdx, hit.hitKey)

	switch {
	case withPeer && k.snapshot():
		c = startDaemon(t, dirC, "--name", "c")
		a = startDaemon(t, dirA, append(joinArgs, "--bootstrap", firstAddr(t, dirC))...)
	case withPeer:
		c = startDaemon(t, dirC, append([]string{"--name", "c"}, cArgs...)...)
	default:
		c = startDaemon(t, dirC, "--name", "c")
	}
	st, code := statusOf(t, dirC)
	if code != http.StatusOK || len(st.Document.Damage) == 0 {
		t.Fatalf("C's status after the damage: HTTP %d, document %+v; want the damage reported", code, st.Document)
	}
	checkDamageReport(t, k, docDir, st.Document)

	if withPeer {
		waitUntil(t, faultWait, "C to hold every base and acknowledged key again", func() bool {
			return len(missing(stateOf(t, dirC), all)) == 0
		})
		waitUntil(t, faultWait, "A to hold every base and acknowledged key", func() bool {
			return len(missing(stateOf(t, dirA), all)) == 0
		})
		waitUntil(t, faultWait, "C's waiting records to apply", func() bool {
			st, _ := statusOf(t, dirC)
			return st.Document.WaitingRecords == 0
		})
		stillRunning(t, c, "C")
		stillRunning(t, a, "A")
		// What the peer brought back is now on C's own disk: after
		// another kill -9, C alone (A stopped first) has every key.
		stopDaemon(t, a)
		killDaemon(t, c, dirC)
		startDaemon(t, dirC, "--name", "c")
		st, _ := statusOf(t, dirC)
		if m := missing(stateOf(t, dirC), all); len(m) > 0 || st.Document.WaitingRecords != 0 || len(st.Document.Damage) != 0 {
			t.Fatalf("C alone after a second kill -9: lost %v, %d waiting records, damage %+v", m, st.Document.WaitingRecords, st.Document.Damage)
		}
		return
	}

	// Alone: what the node's own files still hold.
	got := stateOf(t, dirC)
	switch k {
	case logCut:
		want := slices.DeleteFunc(slices.Clone(all), func(s string) bool { return s == hit.hitKey })
		if m := missing(got, want); len(m) > 0 {
			t.Errorf("log cut in its last record (%q): C lost %v, want only that record's key missing", hit.hitKey, m)
		}
		if st.Document.WaitingRecords != 0 {
			t.Errorf("log cut: %d waiting records, want 0", st.Document.WaitingRecords)
		}
	case logFlip:
		before, after := []string{}, []string{}
		for _, key := range acked {
			switch i := recordOf(hit.recs, key); {
			case i < hit.hitIdx:
				before = append(before, key)
			case i > hit.hitIdx:
				after = append(after, key)
			}
		}
		if m := missing(got, append(slices.Clone(base), before...)); len(m) > 0 {
			t.Errorf("byte flipped in record %d (%q): C lost %v, which were written before it", hit.hitIdx, hit.hitKey, m)
		}
		if _, ok := got[hit.hitKey]; ok {
			t.Errorf("the key of the damaged record (%q) is present", hit.hitKey)
		}
		// Every later record builds on the damaged one: each waits.
		want := len(hit.recs) - hit.hitIdx - 1
		if st.Document.WaitingRecords != want {
			t.Errorf("byte flipped in record %d of %d: %d waiting records, want %d (every later record)",
				hit.hitIdx, len(hit.recs), st.Document.WaitingRecords, want)
		}
		for _, key := range after {
			if _, ok := got[key]; ok {
				t.Errorf("%s is present though it builds on the damaged record", key)
			}
		}
	default:
		// The base is gone with the snapshot: every record of the log,
		// the 20 acknowledged ones among them, waits for it.
		if st.Document.WaitingRecords != len(hit.recs) || st.Document.WaitingRecords < len(acked) {
			t.Errorf("snapshot lost: %d waiting records, want %d (every record in the log at the kill, %d of them acknowledged keys)",
				st.Document.WaitingRecords, len(hit.recs), len(acked))
		}
	}
	stillRunning(t, c, "C")

	// The waiting records are kept on disk: a clean stop (which compacts)
	// and a start find the same keys and the same records waiting.
	stopDaemon(t, c)
	startDaemon(t, dirC, "--name", "c")
	again, _ := statusOf(t, dirC)
	if got2 := stateOf(t, dirC); fmt.Sprint(got2) != fmt.Sprint(got) || again.Document.WaitingRecords != st.Document.WaitingRecords {
		t.Errorf("after a clean restart: %d keys and %d waiting records, want %d and %d",
			len(got2), again.Document.WaitingRecords, len(got), st.Document.WaitingRecords)
	}
}

// checkDamageReport checks C's status names the damaged file and a kept
// copy that exists.
func checkDamageReport(t *testing.T, k faultKind, docDir string, ds node.DocumentStatus) {
	t.Helper()
	file := filepath.Join(docDir, "doc.log")
	if k == snapFlip || k == snapCut {
		file = filepath.Join(docDir, "doc.snapshot")
	}
	for _, d := range ds.Damage {
		if d.File != file {
			continue
		}
		if k == snapDelete {
			// Nothing is left to keep: the report is of the records that
			// wait for what the snapshot held.
			if strings.Contains(d.Problem, "depend") {
				return
			}
			continue
		}
		if d.KeptAs == "" {
			continue
		}
		if _, err := os.Stat(d.KeptAs); err != nil {
			t.Errorf("damage of %s: kept copy %s: %v", file, d.KeptAs, err)
		}
		return
	}
	t.Errorf("%s: no damage report for %s with a kept copy; status: %+v", k, file, ds.Damage)
}

// A full disk under a real daemon: writes answer 507 disk_full once the
// log can take no more (those answered 200 before that are acknowledged
// like any other); the refused value is nowhere, not on this node and
// not on its peer after they sync; once space is freed writes succeed,
// and after kill -9 every acknowledged key is on the node's own disk and
// no damage is reported. Needs root to mount a small tmpfs as the data
// dir (CI runs as root).
func TestDiskFullOnRealDaemon(t *testing.T) {
	t.Parallel()
	start := time.Now()
	mnt := disktest.Tmpfs(t, "8m")
	dirC, dirA := filepath.Join(mnt, "c"), t.TempDir()

	c := startDaemon(t, dirC, "--name", "c")
	tok, _, _ := cli(t, "fleet", "token", "--data", dirC)
	a := startDaemon(t, dirA, "--name", "a", "--join", strings.TrimSpace(tok), "--bootstrap", firstAddr(t, dirC))
	acked := keyList("before", 5)
	for _, key := range acked {
		mustPut(t, dirC, key)
	}
	waitUntil(t, faultWait, "A to hold the keys written before the disk filled", func() bool {
		return len(missing(stateOf(t, dirA), acked)) == 0
	})

	filler := disktest.Fill(t, mnt)
	refused := ""
	for i := 0; i < 1000 && refused == ""; i++ {
		key := fmt.Sprintf("full-%03d", i)
		switch code, e := putState(t, dirC, key, valueOf(key)); {
		case code == http.StatusOK:
			acked = append(acked, key) // it fit in a page the log already held
		case code == http.StatusInsufficientStorage && e.Error.Code == "disk_full" && strings.Contains(e.Error.Message, dirC):
			refused = key
		default:
			t.Fatalf("PUT %s on a full disk: HTTP %d %+v; want 200 or 507 disk_full naming %s", key, code, e, dirC)
		}
	}
	if refused == "" {
		t.Fatal("1000 writes on a full disk were all acknowledged")
	}
	t.Logf("%d writes acknowledged on the full disk before %s was refused", len(acked)-5, refused)
	var e node.APIError
	if code := api(t, dirC, "GET", "/v1/rooms/"+faultTopic+"/state/"+refused, &e); code != http.StatusNotFound {
		t.Fatalf("GET of the refused key on C: HTTP %d %+v, want 404", code, e)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	marker := "after-free"
	mustPut(t, dirC, marker)
	acked = append(acked, marker)
	waitUntil(t, faultWait, "A to hold every acknowledged key and the marker written after space was freed", func() bool {
		return len(missing(stateOf(t, dirA), acked)) == 0
	})
	if v, ok := stateOf(t, dirA)[refused]; ok {
		t.Fatalf("A holds the refused key %s = %q", refused, v)
	}
	if v, ok := stateOf(t, dirC)[refused]; ok {
		t.Fatalf("C holds the refused key %s = %q", refused, v)
	}

	// C's own disk: A stops first, so nothing can come back from it.
	stopDaemon(t, a)
	killDaemon(t, c, dirC)
	c = startDaemon(t, dirC, "--name", "c")
	got := stateOf(t, dirC)
	if m := missing(got, acked); len(m) > 0 {
		t.Errorf("after kill -9 C lost acknowledged keys %v (of %d)", m, len(acked))
	}
	if v, ok := got[refused]; ok {
		t.Errorf("after kill -9 C holds the refused key %s = %q", refused, v)
	}
	if st, code := statusOf(t, dirC); code != http.StatusOK || len(st.Document.Damage) != 0 || st.Document.WaitingRecords != 0 {
		t.Errorf("C's status after the restart: HTTP %d, document %+v; want no damage and nothing waiting", code, st.Document)
	}
	stillRunning(t, c, "C")
	t.Logf("took %v", time.Since(start).Round(100*time.Millisecond))
}
