package transfer

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
)

// This node's memory of item versions (versions.go): for each item, the
// versions it published or is putting in place, newest first, with their
// generation and parent. It lives in the library folder (versions.json),
// not in the document, so that neither a crash between a download's swap
// and its publication, nor a scan that briefly missed the item folder
// (which withdraws the holder entry), loses what this node knew: a
// version it downloaded keeps the generation the fleet gave it, and a
// version it makes keeps its own previous one as parent.

const lineageFile = "versions.json"

// keptVersions bounds the versions remembered per item.
const keptVersions = 4

// heldVersion is a version's lineage; the zero value: none known.
type heldVersion struct {
	Manifest string `json:"manifest"`
	Gen      int64  `json:"gen"`
	Parent   string `json:"parent,omitempty"`
}

// loadHeld reads versions.json; a missing or damaged file is an empty
// memory (the document still has the entries this node published), with
// a log line for a damaged one.
func (l *Library) loadHeld() map[string][]heldVersion {
	p := filepath.Join(l.cfg.Dir, lineageFile)
	m := map[string][]heldVersion{}
	b, err := os.ReadFile(p)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			l.lg.Warn().Str("file", p).Err(err).Msg("cannot read the versions this node held; starting without them")
		}
		return m
	}
	if err := json.Unmarshal(b, &m); err != nil {
		l.lg.Warn().Str("file", p).Err(err).Msg("the versions this node held are unreadable; starting without them")
		return map[string][]heldVersion{}
	}
	return m
}

// remember records versions of items, newest first, and writes
// versions.json if that changed anything. heldMu orders the writers; l.mu
// is held only to update and copy the map.
func (l *Library) remember(vs map[string]heldVersion) {
	if len(vs) == 0 {
		return
	}
	l.heldMu.Lock()
	defer l.heldMu.Unlock()
	l.mu.Lock()
	changed := false
	for id, v := range vs {
		list := l.held[id]
		if len(list) > 0 && list[0] == v {
			continue
		}
		out := []heldVersion{v}
		for _, o := range list {
			if o.Manifest != v.Manifest && len(out) < keptVersions {
				out = append(out, o)
			}
		}
		l.held[id] = out
		changed = true
	}
	var b []byte
	var err error
	if changed {
		b, err = json.Marshal(l.held)
	}
	l.mu.Unlock()
	if !changed {
		return
	}
	if err == nil {
		err = l.writeState(lineageFile, b)
	}
	if err != nil {
		l.lg.Warn().Err(err).Msg("cannot record the versions this node holds")
	}
}

// heldOf returns what this node remembers of item id: version m's lineage
// if it held or fetched m, and the version it held before m.
func (l *Library) heldOf(id, m string) (v heldVersion, known bool, prev heldVersion) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, h := range l.held[id] {
		switch {
		case h.Manifest == m && !known:
			v, known = h, true
		case h.Manifest != m && prev.Manifest == "":
			prev = h
		}
	}
	return v, known, prev
}
