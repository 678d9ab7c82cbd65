package transfer

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/meshnode/meshnode/internal/atomicfile"
)

// swapIntent is written before the staged item replaces the final one.
type swapIntent struct {
	Item    string `json:"item"`
	Staging string `json:"staging"`
}

// swapIn makes the staged item the item, with an intent log so that a
// crash at any step is completed at the next start. The item is already
// marked busy with the swap (beginSwap).
func (l *Library) swapIn(id, staging string) error {
	b, _ := json.Marshal(swapIntent{Item: id, Staging: staging})
	p := filepath.Join(staging, swapFile)
	if err := atomicfile.WriteFile(p, b, 0o600); err != nil {
		return diskError("write", p, err)
	}
	l.mu.Lock()
	l.swaps[filepath.Base(staging)] = id // its removal ends the swap's events
	l.mu.Unlock()
	return l.completeSwap(id, staging)
}

// completeSwap carries a swap to its end from whatever step it reached.
// Steps: keep the user-owned entries of the old item, move the old item
// aside, move the staged one in, remove the old one and the staging
// folder. Each is skipped when already done.
func (l *Library) completeSwap(id, staging string) error {
	final := filepath.Join(l.cfg.Share, id)
	staged := filepath.Join(staging, stagingData)
	aside := filepath.Join(staging, "old")
	if _, err := os.Stat(staged); err == nil {
		if _, err := os.Lstat(final); err == nil {
			if err := keepUserOwned(final, staged); err != nil {
				return err
			}
			if err := os.Rename(final, aside); err != nil {
				return fmt.Errorf("transfer: move the old %s aside: %w", id, err)
			}
		}
		if err := os.Rename(staged, final); err != nil {
			return fmt.Errorf("transfer: move %s into place: %w", id, err)
		}
		if err := syncPath(l.cfg.Share); err != nil {
			return err
		}
	}
	return os.RemoveAll(staging)
}

// keepUserOwned moves the old item's user-owned top-level entries (local/
// and .meshignore matches) into the new one, where it lacks them.
func keepUserOwned(oldRoot, newRoot string) error {
	ig, err := LoadIgnore(oldRoot)
	if err != nil {
		ig = &Ignore{patterns: []string{LocalDir}}
	}
	ents, err := os.ReadDir(oldRoot)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !ig.Ignored(e.Name()) {
			continue
		}
		dst := filepath.Join(newRoot, e.Name())
		if _, err := os.Lstat(dst); err == nil {
			continue
		}
		if err := os.Rename(filepath.Join(oldRoot, e.Name()), dst); err != nil {
			return fmt.Errorf("transfer: keep %s: %w", e.Name(), err)
		}
	}
	return nil
}

// recoverSwaps completes the swaps a crash interrupted.
func (l *Library) recoverSwaps() {
	for _, staging := range l.stagingDirs() {
		b, err := os.ReadFile(filepath.Join(staging, swapFile))
		if err != nil {
			continue
		}
		var in swapIntent
		if json.Unmarshal(b, &in) != nil || ValidItemID(in.Item) != nil {
			l.lg.Warn().Str("staging", staging).Msg("unreadable swap intent left alone")
			continue
		}
		if err := l.completeSwap(in.Item, staging); err != nil {
			l.lg.Error().Str("item", in.Item).Err(err).Msg("completing an interrupted swap failed")
			continue
		}
		l.lg.Info().Str("item", in.Item).Msg("completed an interrupted swap")
	}
}
