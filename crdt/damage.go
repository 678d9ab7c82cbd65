package crdt

import "fmt"

// Damage describes one problem found in the document's files when it was
// opened, and what recovery did about it. Recovery never deletes a damaged
// file: it copies or moves it aside first (KeptAs).
type Damage struct {
	// File is the damaged file.
	File string `json:"file"`
	// Problem says what was wrong with it.
	Problem string `json:"problem"`
	// Lost says what could not be recovered from this node's own files
	// ("nothing" when every record was kept).
	Lost string `json:"lost"`
	// KeptAs is where the damaged file (or a copy of it) now lies.
	KeptAs string `json:"kept_as,omitempty"`
}

// String renders the damage as one line for logs and the CLI.
func (d Damage) String() string {
	s := fmt.Sprintf("%s: %s; lost: %s", d.File, d.Problem, d.Lost)
	if d.KeptAs != "" {
		s += "; damaged copy kept as " + d.KeptAs
	}
	return s
}
