package transfer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/meshnode/meshnode/crdt"
	"github.com/meshnode/meshnode/internal/atomicfile"
)

// Following items.
//
// A followed item is downloaded by this node, by itself, as soon as a
// newer version than the one it holds is published (versions.go): the
// download is of the item, not a pinned version, so it also moves on when
// a version is replaced while it runs. The local copy's user-owned files
// (local/, .meshignore patterns) stay, as in every update. The set of
// followed items is this node's own choice, not the fleet's: it lives in
// the library folder (follow.json), not in the document.

const followFile = "follow.json"

// followRetry is how long a follower waits before it tries again a
// version whose download failed.
const followRetry = 30 * time.Second

// FollowInfo is one followed item.
type FollowInfo struct {
	SinceMs int64 `json:"since_ms"`
	// UpdatedMs is when following last put a new version in place, and
	// Manifest that version.
	UpdatedMs int64  `json:"updated_ms,omitempty"`
	Manifest  string `json:"manifest,omitempty"`
}

// loadFollows reads follow.json. A file that does not parse is set aside
// (follow.json.bad) with a log line naming it: nothing is followed until
// the user follows again, and the file is kept for them.
func (l *Library) loadFollows() map[string]FollowInfo {
	p := filepath.Join(l.cfg.Dir, followFile)
	b, err := os.ReadFile(p)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			l.lg.Warn().Str("file", p).Err(err).Msg("cannot read the followed items; following none")
		}
		return map[string]FollowInfo{}
	}
	var m map[string]FollowInfo
	err = json.Unmarshal(b, &m)
	for id := range m {
		if err == nil {
			if verr := ValidItemID(id); verr != nil {
				err = fmt.Errorf("item %q: %v", id, verr)
			}
		}
	}
	if err != nil {
		bad := p + ".bad"
		_ = os.Rename(p, bad)
		l.lg.Error().Str("file", p).Str("kept_as", bad).Err(err).Msg("the followed items file is damaged; following none until items are followed again")
		return map[string]FollowInfo{}
	}
	if m == nil {
		m = map[string]FollowInfo{}
	}
	return m
}

// saveFollows writes follow.json from the set as it is now. saveMu orders
// the writers; l.mu is held only to copy the set.
func (l *Library) saveFollows() error {
	l.saveMu.Lock()
	defer l.saveMu.Unlock()
	l.mu.Lock()
	b, err := json.Marshal(l.follows)
	l.mu.Unlock()
	if err != nil {
		return err
	}
	return l.writeState(followFile, b)
}

// writeState writes one of the library's own files (follow.json,
// versions.json) atomically; it may come before Run made the folder.
func (l *Library) writeState(name string, b []byte) error {
	if err := os.MkdirAll(l.cfg.Dir, 0o755); err != nil {
		return diskError("create", l.cfg.Dir, err)
	}
	p := filepath.Join(l.cfg.Dir, name)
	if err := atomicfile.WriteFile(p, b, 0o600); err != nil {
		return diskError("write", p, err)
	}
	return nil
}

// Follow marks item id to be kept at its latest version by this node
// (see above). Following an item that is not in the library yet is
// allowed: it is downloaded once it appears.
func (l *Library) Follow(id string) (FollowInfo, error) {
	if err := ValidItemID(id); err != nil {
		return FollowInfo{}, fmt.Errorf("transfer: item %q: %w", id, err)
	}
	l.mu.Lock()
	fi, ok := l.follows[id]
	if !ok {
		fi = FollowInfo{SinceMs: l.cfg.Now().UnixMilli()}
		l.follows[id] = fi
	}
	l.mu.Unlock()
	if !ok {
		if err := l.saveFollows(); err != nil {
			l.mu.Lock()
			delete(l.follows, id)
			l.mu.Unlock()
			return FollowInfo{}, err
		}
		l.lg.Info().Str("item", id).Msg("following item")
		l.cfg.OnEvent("item.followed", map[string]any{"item": id})
	}
	l.kickFollow()
	return fi, nil
}

// Unfollow stops following item id. A download it started goes on.
func (l *Library) Unfollow(id string) error {
	l.mu.Lock()
	fi, ok := l.follows[id]
	delete(l.follows, id)
	l.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %q", ErrNotFollowed, id)
	}
	if err := l.saveFollows(); err != nil {
		l.mu.Lock()
		l.follows[id] = fi
		l.mu.Unlock()
		return err
	}
	l.lg.Info().Str("item", id).Msg("no longer following item")
	l.cfg.OnEvent("item.unfollowed", map[string]any{"item": id})
	return nil
}

// ErrNotFollowed is returned by Unfollow for an item not followed.
var ErrNotFollowed = errors.New("transfer: item not followed")

// Following returns the followed items.
func (l *Library) Following() map[string]FollowInfo {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]FollowInfo, len(l.follows))
	for id, fi := range l.follows {
		out[id] = fi
	}
	return out
}

func (l *Library) kickFollow() {
	select {
	case l.followKick <- struct{}{}:
	default:
	}
}

// followed records that following put version m of item id in place.
func (l *Library) followed(id, m string) {
	l.mu.Lock()
	fi, ok := l.follows[id]
	if ok {
		fi.UpdatedMs, fi.Manifest = l.cfg.Now().UnixMilli(), m
		l.follows[id] = fi
	}
	l.mu.Unlock()
	if ok {
		if err := l.saveFollows(); err != nil {
			l.lg.Warn().Str("item", id).Err(err).Msg("cannot record the followed item's update")
		}
	}
}

// follow runs until ctx ends: a pass over the followed items at each
// change of the document (coalesced) and every 10 s.
func (l *Library) follow(ctx context.Context) {
	stop := l.cfg.Doc.Watch(func(crdt.Event) { l.kickFollow() })
	defer stop()
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	tried := map[string]followTry{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.followKick:
		case <-tick.C:
		}
		l.followPass(tried)
		// Many changes in a burst (a publisher's scan, the followers'
		// own entries) make one pass, not one each.
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

type followTry struct {
	manifest string
	at       time.Time
}

// followPass starts a download of each followed item whose latest version
// is newer than the one held here and that no download is busy with.
// tried is the pass's memory of what it started, owned by the caller.
func (l *Library) followPass(tried map[string]followTry) {
	l.mu.Lock()
	ids := make([]string, 0, len(l.follows))
	for id := range l.follows {
		ids = append(ids, id)
	}
	l.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	sort.Strings(ids)
	lib, err := l.cfg.Doc.Library()
	if err != nil {
		return
	}
	self := l.cfg.Host.ID().String()
	now := l.cfg.Now()
	for _, id := range ids {
		it, ok := lib[id]
		if !ok {
			continue
		}
		l.mu.Lock()
		busy, local := l.busy[id] != "", l.local[id]
		l.mu.Unlock()
		held, lin := "", heldVersion{}
		if local != nil {
			held = local.Hash.String()
			v, known, _ := l.heldOf(id, held)
			if own := it.Holders[self]; !known && own.Manifest != held {
				continue // an edit here not published yet: never downloaded over
			}
			lin = v
		}
		to, newer := newerVersion(it, held, self, lin, nil)
		if busy || !newer {
			continue
		}
		if tr := tried[id]; tr.manifest == to.String() && now.Sub(tr.at) < followRetry {
			continue
		}
		tried[id] = followTry{to.String(), now}
		st, err := l.StartDownload(id, "")
		if err != nil {
			l.lg.Debug().Str("item", id).Err(err).Msg("following: download not started")
			continue
		}
		l.lg.Info().Str("item", id).Str("manifest", st.Manifest).Str("transfer", st.ID).Msg("following: downloading the item's new version")
	}
}
