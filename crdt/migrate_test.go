package crdt

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	am "github.com/automerge/automerge-go"
)

// A data dir of format 1 (records as unsigned maps) is never read as
// format 2: it is moved aside whole, and what needs no signature (item
// names, room creds and state) is carried over.
func TestFormat1DocumentMovedAsideAndCarried(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	old := am.New()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(old.Path("nodes/12D3KooWOld").Set(map[string]any{"name": "old", "alive": true}))
	must(old.Path("library/game/holders/12D3KooWOld").Set(map[string]any{"manifest": "m", "state": "complete"}))
	must(old.Path("library/game/name").Set("The Game"))
	must(old.Path("rooms/lobby/state/motd").Set("hello"))
	must(old.Path("rooms/lobby/creds").Set("garbage"))
	if _, err := old.Commit("format 1"); err != nil {
		t.Fatal(err)
	}
	must(os.WriteFile(filepath.Join(dir, snapFile), encodeSnapshot(old.Save()), 0o600))

	d := openT(t, dir)
	it, ok, _ := d.Item("game")
	if !ok || it.Name != "The Game" || len(it.Holders) != 0 {
		t.Fatalf("item after migration = %+v %v (name carried, unsigned holder not)", it, ok)
	}
	room, _, _ := d.Room("lobby")
	if room.State["motd"] != "hello" || room.Creds != "" {
		t.Fatalf("room after migration = %+v (state carried, bad creds not)", room)
	}
	if ns, _ := d.Nodes(); len(ns) != 0 {
		t.Fatalf("unsigned node records read as format 2: %v", ns)
	}
	kept, _ := filepath.Glob(filepath.Join(dir, "format1-*", snapFile))
	if len(kept) != 1 {
		t.Fatalf("format 1 snapshot not kept aside: %v", kept)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, formatFile)); strings.TrimSpace(string(b)) != "2" {
		t.Fatalf("format marker = %q", b)
	}
	d.Close()
	// The next start reads format 2 and carries nothing again.
	d2 := openT(t, dir)
	if it, _, _ := d2.Item("game"); it.Name != "The Game" {
		t.Fatalf("after restart: %+v", it)
	}
	if kept, _ := filepath.Glob(filepath.Join(dir, "format1-*")); len(kept) != 1 {
		t.Fatalf("moved aside again: %v", kept)
	}
}

// A dir of a format this build does not know is refused, not misread.
func TestNewerFormatRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, formatFile), []byte("3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(Config{Dir: dir})
	if err == nil || !strings.Contains(err.Error(), "format 3") {
		t.Fatalf("Open of a format 3 dir: %v", err)
	}
}

// A start cut short after the format 1 document was moved aside, before
// what it carries was written, carries it at the next start.
func TestFormat1CarriedAfterACrashMidMigration(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	old := am.New()
	if err := old.Path("library/game/name").Set("The Game"); err != nil {
		t.Fatal(err)
	}
	old.Path("nodes/12D3KooWOld").Set(map[string]any{"name": "old"})
	if _, err := old.Commit("format 1"); err != nil {
		t.Fatal(err)
	}
	kept := filepath.Join(dir, "format1-1")
	if err := os.MkdirAll(kept, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(kept, snapFile), encodeSnapshot(old.Save()), 0o600); err != nil {
		t.Fatal(err)
	}
	d := openT(t, dir)
	if it, ok, _ := d.Item("game"); !ok || it.Name != "The Game" {
		t.Fatalf("item after the interrupted migration = %+v %v", it, ok)
	}
	if _, err := os.Stat(filepath.Join(kept, carriedFile)); err != nil {
		t.Fatalf("moved-aside document not marked carried: %v", err)
	}
}
