//go:build !linux || !cgo

package cmem

// Trim returns the C heap's free memory to the operating system; a no-op
// where the C library has no malloc_trim.
func Trim() {}
