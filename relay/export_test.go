package relay

import (
	"net/netip"
	"time"
)

// PipelinedHopCookie signs a hop cookie with key as a pipelining relay
// does, for tests that speak to a hop themselves.
func PipelinedHopCookie(key []byte, hop, dst netip.AddrPort) []byte {
	return newHopAuth(key, time.Minute).pipelinedCookie(hop, dst)
}

// HopCookie signs a hop cookie with key as a relay that waits for the
// answer does.
func HopCookie(key []byte, hop, dst netip.AddrPort) []byte {
	return newHopAuth(key, time.Minute).cookie(hop, dst)
}

// AcceptEach is acceptEach, for the lab tests' servers.
var AcceptEach = acceptEach
