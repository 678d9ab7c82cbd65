package crdt

import "fmt"

// ChangeVerdict is what ApplyChanges did with one change.
type ChangeVerdict struct {
	// Hash is the change's hash (hex).
	Hash string `json:"hash"`
	// Accepted is true when the change passed every check and is in the
	// document (New tells whether it was new here).
	Accepted bool `json:"accepted"`
	New      bool `json:"new,omitempty"`
	// Waiting is true for a change that passed the checks this node can
	// make without its dependencies, which it does not hold: it is kept
	// and applies when they arrive.
	Waiting bool `json:"waiting,omitempty"`
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
func (d *Doc) ApplyChanges(raw []byte) ([]ChangeVerdict, error) {
	chs, err := splitChanges(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	out := make([]ChangeVerdict, 0, len(chs))
	for _, c := range chs {
		v := ChangeVerdict{Hash: c.hash.String()}
		fresh, err := d.ApplyChange(c.raw, c.hash, c.deps)
		switch r, refused := AsRefused(err); {
		case err == nil:
			v.Accepted, v.New = true, fresh
		case refused:
			v.Rule, v.Reason = r.Rule, r.Error()
		default:
			v.Rule, v.Reason = RuleDecode, err.Error()
		}
		out = append(out, v)
	}
	return out, nil
}
