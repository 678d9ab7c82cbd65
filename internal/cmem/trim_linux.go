//go:build linux && cgo

package cmem

/*
#include <malloc.h>
*/
import "C"

// Trim returns the C heap's free memory to the operating system.
func Trim() { C.malloc_trim(0) }
