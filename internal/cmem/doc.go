// Package cmem releases memory that the C heap (automerge's, reached
// through cgo) holds free but resident.
package cmem
