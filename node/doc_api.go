package node

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/meshnode/meshnode/crdt"
)

// MaxChangesBody bounds the body of POST /v1/doc/changes. Changes a
// client makes are small; this leaves room for a client that pushes a
// long offline history at once, and refuses a runaway one before any of
// it is read into memory past the limit.
const MaxChangesBody = 16 << 20

// ChangesResult is the answer of POST /v1/doc/changes.
type ChangesResult struct {
	// Accepted counts changes that passed every check and are in the
	// document (on disk, and published to the peers); Refused those that
	// are not: each broke a rule (its verdict's Rule), or depends on
	// changes this node does not hold (no Rule; make changes on a copy
	// of GET /v1/doc).
	Accepted int `json:"accepted"`
	Refused  int `json:"refused"`
	// Changes has one verdict per change, in the order of the body.
	Changes []crdt.ChangeVerdict `json:"changes"`
	// Heads are the document heads after the changes.
	Heads []string `json:"heads"`
}

// handlePostChanges takes changes made by any automerge implementation
// (concatenated change chunks) and puts each through the document's
// checks, as a change from a peer. It answers 200 when every change was
// accepted, 422 changes_refused when any was refused (the verdicts say
// which and why), and 400 bad_changes when the body is not change
// chunks at all.
func (n *Node) handlePostChanges(w http.ResponseWriter, r *http.Request) {
	b, ok := readBody(w, r, MaxChangesBody, "changes body")
	if !ok {
		return
	}
	vs, err := n.Doc.ApplyChanges(b)
	switch {
	case errors.Is(err, crdt.ErrCorrupt):
		writeError(w, http.StatusBadRequest, "bad_changes", fmt.Sprintf("the body is not automerge changes (concatenated change chunks, as getChanges or getLastLocalChange produce; a whole document from save is not changes): %v", err))
		return
	case errors.Is(err, crdt.ErrClosed):
		writeError(w, http.StatusServiceUnavailable, "stopping", err.Error()+"; the node is stopping")
		return
	case err != nil:
		n.docWriteError(w, err)
		return
	}
	res := changesResult(vs, n.Doc.HeadStrings())
	switch {
	case res.Refused > 0:
		// The API's error shape, and the result beside it.
		writeJSON(w, http.StatusUnprocessableEntity, struct {
			APIError
			ChangesResult
		}{refusedError(res), res})
	default:
		writeJSON(w, http.StatusOK, res)
	}
}

// changesResult counts the verdicts.
func changesResult(vs []crdt.ChangeVerdict, heads []string) ChangesResult {
	res := ChangesResult{Changes: vs, Heads: heads}
	for _, v := range vs {
		switch {
		case v.Accepted:
			res.Accepted++
		default:
			res.Refused++
		}
	}
	return res
}

// refusedError is the error part of a 422 answer: it names the first
// refused change, so a client that reads only the error learns why.
func refusedError(res ChangesResult) APIError {
	var e APIError
	e.Error.Code = "changes_refused"
	for _, v := range res.Changes {
		if !v.Accepted {
			e.Error.Message = fmt.Sprintf("%d of %d changes refused; first %s: %s", res.Refused, len(res.Changes), v.Hash, v.Reason)
			break
		}
	}
	return e
}
