package crdt

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	am "github.com/automerge/automerge-go"
	"github.com/rs/zerolog"

	"github.com/meshnode/meshnode/internal/atomicfile"
)

// Document formats. Format 1 kept records as automerge maps of fields,
// unsigned; format 2 (this one) keeps each single-writer record as one
// signed value and checks every change. A format 1 document cannot pass
// format 2's checks, so it is not read as one: at Open it is moved aside
// whole (format1-<ns>/ in the document dir) and the shared entries that
// need no signature (item names, room credentials and room state) are
// carried into a fresh document. A node's own records are rewritten by
// the services that own them within seconds of start; other nodes'
// records arrive from them. A dir of a newer format is refused.
const (
	formatFile    = "doc.format"
	currentFormat = 2
)

// legacy is what a format 1 document carries into format 2.
type legacy struct {
	dirs  []string                     // the moved-aside documents read
	names map[string]string            // item -> name
	creds map[string]string            // topic -> creds
	state map[string]map[string]string // topic -> key -> value
}

// checkFormat reads the dir's format marker. A dir without one that holds
// a format 1 document has it moved aside (format1-<ns>/) and read for
// what it carries; the marker is written by done, once what it carries is
// durable in the new document, so a crash in between carries it at the
// next start (the moved-aside copy is read again until it is marked
// carried). A fresh dir gets the marker at once.
func checkFormat(dir string, lg zerolog.Logger) (*legacy, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("crdt: create document dir %s: %w", dir, err)
	}
	path := filepath.Join(dir, formatFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		v, perr := strconv.Atoi(strings.TrimSpace(string(b)))
		if perr != nil {
			return nil, fmt.Errorf("crdt: %s says %q, not a format number; restore it (this meshnode writes %d) or move the document dir away", path, b, currentFormat)
		}
		if v != currentFormat {
			return nil, fmt.Errorf("crdt: the document in %s is format %d; this meshnode reads format %d: run a meshnode that reads it, or move the dir away to start afresh", dir, v, currentFormat)
		}
		return nil, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("crdt: read %s: %w", path, err)
	}
	if exists(filepath.Join(dir, snapFile)) || exists(filepath.Join(dir, logFile)) {
		doc := readLenient(dir)
		if !isFormat1(doc) {
			// Written by this format before the marker was (a copy of
			// the files alone, say): nothing to carry.
			return nil, writeFormat(dir)
		}
		if err := moveLegacy(dir); err != nil {
			return nil, err
		}
	}
	old := &legacy{names: map[string]string{}, creds: map[string]string{}, state: map[string]map[string]string{}}
	kept, _ := filepath.Glob(filepath.Join(dir, "format1-*"))
	for _, k := range kept {
		if !exists(filepath.Join(k, carriedFile)) {
			old.read(readLenient(k))
			old.dirs = append(old.dirs, k)
		}
	}
	if len(old.dirs) == 0 {
		return nil, writeFormat(dir)
	}
	lg.Warn().Strs("kept_as", old.dirs).Int("items", len(old.names)).Int("rooms", len(old.creds)+len(old.state)).
		Msg("document of format 1 (unsigned records) moved aside; item names and room state carried over, records are rewritten by their nodes")
	return old, nil
}

// carriedFile marks a moved-aside format 1 document whose entries are in
// the new document.
const carriedFile = "carried"

func writeFormat(dir string) error {
	path := filepath.Join(dir, formatFile)
	if err := atomicfile.WriteFile(path, []byte(strconv.Itoa(currentFormat)+"\n"), 0o600); err != nil {
		return fmt.Errorf("crdt: write %s: %w", path, err)
	}
	return nil
}

// done marks the moved-aside documents carried and the dir format 2. Call
// it once the carried entries are durable.
func (old *legacy) done(dir string) error {
	for _, k := range old.dirs {
		if err := atomicfile.WriteFile(filepath.Join(k, carriedFile), nil, 0o600); err != nil {
			return fmt.Errorf("crdt: mark %s carried: %w", k, err)
		}
	}
	return writeFormat(dir)
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// readLenient loads the document files with no checks (they are this
// node's own), skipping whatever does not load.
func readLenient(dir string) *am.Doc {
	doc := am.New()
	if raw, err := os.ReadFile(filepath.Join(dir, snapFile)); err == nil {
		if data, err := decodeSnapshot(raw); err == nil {
			if loaded, err := am.Load(data); err == nil {
				doc = loaded
			}
		}
	}
	if raw, err := os.ReadFile(filepath.Join(dir, logFile)); err == nil {
		recs, _ := decodeLog(raw)
		for _, r := range recs {
			_ = doc.LoadIncremental(r.payload)
		}
	}
	return doc
}

// isFormat1 reports whether doc keeps records as maps: every format 1
// node wrote its own node record, as a map.
func isFormat1(doc *am.Doc) bool {
	root := doc.RootMap()
	keys, _ := root.Keys()
	for _, k := range keys {
		if strings.HasPrefix(k, pNodes) || strings.Contains(k, sHolders) {
			if v, err := root.Get(k); err == nil && v.Kind() == am.KindMap {
				return true
			}
		}
	}
	return false
}

// moveLegacy moves a format 1 document's files aside.
func moveLegacy(dir string) error {
	keep := filepath.Join(dir, fmt.Sprintf("format1-%d", time.Now().UnixNano()))
	if err := os.Mkdir(keep, 0o700); err != nil {
		return fmt.Errorf("crdt: keep the format 1 document: %w", err)
	}
	for _, f := range []string{snapFile, logFile} {
		if err := os.Rename(filepath.Join(dir, f), filepath.Join(keep, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("crdt: keep the format 1 document: %w", err)
		}
	}
	return syncDir(dir)
}

// read collects what a format 1 document carries: its item names, room
// credentials and room state.
func (old *legacy) read(doc *am.Doc) {
	root := doc.RootMap()
	keys, _ := root.Keys()
	for _, k := range keys {
		v, err := root.Get(k)
		if err != nil || v.Kind() != am.KindStr {
			continue
		}
		sk, _, err := parseKey(k)
		if err != nil {
			continue
		}
		s := v.Str()
		switch sk.kind {
		case kItemName:
			old.names[sk.id] = s
		case kCreds:
			old.creds[sk.id] = s
		case kRoomState:
			if old.state[sk.id] == nil {
				old.state[sk.id] = map[string]string{}
			}
			old.state[sk.id][sk.sub] = s
		}
	}
}

// carry writes what a format 1 document carried over, leaving out any
// entry the checks would refuse.
func (d *Doc) carry(old *legacy) error {
	_, err := d.Update("carried over from document format 1", func(tx *Tx) error {
		for item, name := range old.names {
			if checkKey("item id", item) == nil && len(name) <= MaxItemName {
				tx.SetItemName(item, name)
			}
		}
		for topic, c := range old.creds {
			if _, err := DecodeRoomCreds(c); err == nil && checkKey("room topic", topic) == nil {
				tx.SetRoomCreds(topic, c)
			}
		}
		for topic, kv := range old.state {
			for k, v := range kv {
				if checkKey("room topic", topic) == nil && checkKey("state key", k) == nil && len(v) <= MaxRoomStateValue {
					tx.SetRoomState(topic, k, v)
				}
			}
		}
		return nil
	})
	return err
}
