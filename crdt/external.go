package crdt

import (
	"errors"
	"fmt"
)

// ChangeVerdict is what ApplyChanges did with one change.
type ChangeVerdict struct {
	// Hash is the change's hash (hex).
	Hash string `json:"hash"`
	// Accepted is true when the change passed every check and is in the
	// document (New tells whether it was new here).
	Accepted bool `json:"accepted"`
	New      bool `json:"new,omitempty"`
	// Rule and Reason say why a change was refused.
	Rule   string `json:"rule,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// ApplyChanges takes changes made by any automerge implementation
// (concatenated change chunks, as automerge's saveChanges or
// getLastLocalChange produce) and puts each, in order, through the same
// checks as a change from a peer. Changes that pass are applied, logged
// and published like local ones; a refused change is reported with the
// rule it broke, and so is every later change that depends on it. The
// error is for input that is not a sequence of change chunks at all.
//
// Accepted changes are on disk before ApplyChanges returns, and are
// published to peers like a local commit.
func (d *Doc) ApplyChanges(raw []byte) ([]ChangeVerdict, error) {
	chs, err := splitChanges(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	defer d.deliver()
	out := make([]ChangeVerdict, 0, len(chs))
	var last int64
	for _, c := range chs {
		v := ChangeVerdict{Hash: c.hash.String()}
		d.mu.Lock()
		end, fresh, err := d.applyChangeLocked(c.raw, c.hash, c.deps)
		if err == nil && fresh {
			d.enqueueLocked(Event{Local: true, Change: c.raw, Hash: c.hash, Deps: c.deps, Heads: d.Heads()}, end)
			last = end
		}
		d.mu.Unlock()
		r, refused := AsRefused(err)
		switch {
		case err == nil:
			v.Accepted, v.New = true, fresh
		case refused:
			v.Rule, v.Reason = r.Rule, r.Error()
		case errors.Is(err, ErrMissingDeps):
			v.Reason = "depends on changes this node does not hold: make changes on a copy of GET /v1/doc"
		case errors.Is(err, ErrCorrupt):
			v.Rule, v.Reason = RuleDecode, err.Error()
		default: // the disk, or a closed document
			// What was accepted before is durable and answered for.
			if last > 0 {
				if serr := d.syncTo(last); serr != nil {
					return out, serr
				}
			}
			return out, err
		}
		out = append(out, v)
	}
	if last > 0 {
		if err := d.syncTo(last); err != nil {
			return out, err
		}
	}
	return out, nil
}
