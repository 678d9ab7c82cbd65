package transfer

import (
	"sort"

	"github.com/meshnode/meshnode/crdt"
)

// Local item states in the library view.
const (
	LocalAbsent      = "absent"
	LocalDownloading = "downloading"
	LocalComplete    = "complete"
	LocalOutdated    = "outdated"
)

// ItemVersion is one manifest of an item and who holds it.
type ItemVersion struct {
	Manifest string   `json:"manifest"`
	Size     int64    `json:"size"`
	Files    int64    `json:"files"`
	Holders  []string `json:"holders"`
	Partial  []string `json:"partial_holders,omitempty"`
	Updated  int64    `json:"updated_ms"`
	// Gen is the version's generation and Parent the version it replaced
	// (versions.go).
	Gen    int64  `json:"gen"`
	Parent string `json:"parent,omitempty"`
}

// ItemView is one item of the fleet's library as GET /v1/library shows it.
type ItemView struct {
	ID       string        `json:"id"`
	Name     string        `json:"name"`
	Latest   string        `json:"latest"` // manifest of the complete version of the highest generation
	Versions []ItemVersion `json:"versions"`
	Local    string        `json:"local"`
	LocalVer string        `json:"local_manifest,omitempty"`
	// Following: this node keeps the item at its latest version by
	// itself (follow.go); FollowUpdated is when that last brought one.
	Following     bool  `json:"following"`
	FollowUpdated int64 `json:"follow_updated_ms,omitempty"`
}

// View returns every item in the fleet's library, with this node's state.
func (l *Library) View() ([]ItemView, error) {
	lib, err := l.cfg.Doc.Library()
	if err != nil {
		return nil, err
	}
	self := l.cfg.Host.ID().String()
	// What this node holds and is busy with, taken under the lock; the
	// view is built after it.
	l.mu.Lock()
	held := make(map[string]Hash, len(l.local))
	for id, sv := range l.local {
		held[id] = sv.Hash
	}
	busy := make(map[string]bool, len(l.busy))
	for id, op := range l.busy {
		busy[id] = op != ""
	}
	follows := make(map[string]FollowInfo, len(l.follows))
	for id, fi := range l.follows {
		follows[id] = fi
	}
	l.mu.Unlock()
	out := make([]ItemView, 0, len(lib))
	for id, it := range lib {
		v := itemView(id, it)
		if h, ok := held[id]; ok {
			v.LocalVer = h.String()
			v.Local = LocalOutdated
			if v.LocalVer == v.Latest {
				v.Local = LocalComplete
			}
		} else if h, ok := it.Holders[self]; ok && h.State == crdt.HolderComplete {
			v.Local, v.LocalVer = LocalComplete, h.Manifest
		}
		if busy[id] {
			v.Local = LocalDownloading
		}
		if fi, ok := follows[id]; ok {
			v.Following, v.FollowUpdated = true, fi.UpdatedMs
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// itemView is item id as the document has it: its versions, latest
// first, and the latest complete one; Local is LocalAbsent.
func itemView(id string, it crdt.Item) ItemView {
	v := ItemView{ID: id, Name: it.Name, Versions: versionsOf(it), Local: LocalAbsent}
	v.Latest = latestIn(v.Versions, "")
	return v
}
