package crdt

import (
	"errors"
	"fmt"
)

// ErrRefused is wrapped by every error for a change, snapshot or sync
// message that broke one of the document's rules (see validate.go). A
// refused change never enters the document, so it is never relayed.
var ErrRefused = errors.New("crdt: change refused")

// Rules a refused change can break; RefusedError.Rule is one of them.
const (
	RuleDecode    = "decode"    // not a well-formed automerge change
	RuleSchema    = "schema"    // a key outside the document's schema
	RuleObject    = "object"    // a map, list or text object, or an op inside one
	RuleType      = "type"      // a value of the wrong type for its key
	RuleSize      = "size"      // a key, value or change over its limit
	RuleSignature = "signature" // a single-writer record not signed by its writer
	RuleReplay    = "replay"    // a signed record whose counter does not advance
	RuleCreds     = "creds"     // room credentials that do not decode
	RuleEpoch     = "epoch"     // a genesis that does not verify, or a change outside the epoch
)

// RefusedError says which rule a change broke and where.
type RefusedError struct {
	// Change is the refused change's hash (zero for a snapshot or a
	// message that did not decode far enough to have one).
	Change Hash
	// Rule is one of the Rule constants.
	Rule string
	// Key is the document key the offending operation wrote, if any.
	Key string
	// Detail says what was wrong, for people.
	Detail string
}

func (e *RefusedError) Error() string {
	s := fmt.Sprintf("crdt: change refused (%s)", e.Rule)
	if e.Change != (Hash{}) {
		s += " " + e.Change.String()
	}
	if e.Key != "" {
		s += fmt.Sprintf(" at %q", e.Key)
	}
	return s + ": " + e.Detail
}

func (e *RefusedError) Unwrap() error { return ErrRefused }

// AsRefused returns the RefusedError in err's chain, if any.
func AsRefused(err error) (*RefusedError, bool) {
	var r *RefusedError
	ok := errors.As(err, &r)
	return r, ok
}
