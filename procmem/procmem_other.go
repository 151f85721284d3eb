//go:build !linux

package procmem

// ReleaseBinary is not supported here.
func ReleaseBinary() (Stats, error) { return Stats{}, ErrNotSupported }
