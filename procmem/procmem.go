// Package procmem gives back to the kernel memory the process holds but
// does not use: free heap, and the pages of its own executable that
// start-up or a burst of work mapped and that an idle process no longer
// touches.
//
// A Go binary's text and read-only data are mapped from the file, and the
// kernel maps them 64 KiB at a time around each fault ("fault-around"),
// so a daemon that has parsed its configuration and started listening
// shows most of its binary in its RSS although it will not run that code
// again. Release unmaps those pages: they stay in the page cache, shared
// and reclaimable, and fault back in, from the cache, when the process
// runs that code again.
//
//	st, err := procmem.Release()
//	if err == nil {
//		log.Info("memory released", "binary_bytes", st.BinaryBytes)
//	}
package procmem

import (
	"errors"
	"runtime/debug"
)

// ErrNotSupported is returned where the process cannot release its
// binary's pages (not Linux).
var ErrNotSupported = errors.New("procmem: not supported on this system")

// Stats say what a release gave back.
type Stats struct {
	// BinaryBytes were resident pages of the executable's read-only
	// mappings, unmapped from the process.
	BinaryBytes int64
	// Skipped counts read-only mappings of the executable left alone
	// because they hold private copies of pages (a debugger's breakpoint,
	// a uprobe) or are locked in memory.
	Skipped int
}

// Release returns free heap to the kernel, then unmaps the executable's
// resident read-only pages (ReleaseBinary).
func Release() (Stats, error) {
	debug.FreeOSMemory()
	return ReleaseBinary()
}
