package relay

import (
	"fmt"
	"testing"
	"time"
)

// TestMemoryRelease: the relay gives memory back once started and again
// after its flows have ended and it has been idle for release_after; with
// release: false it never does.
func TestMemoryRelease(t *testing.T) {
	echo := echoServer(t)
	cfg := `
admin: {listen: off}
memory: {release: %v, release_after: 1s}
listeners:
  - {name: fwd, listen: "127.0.0.1:0", mode: forward, forward_to: %q}
`
	waitReleases := func(s *Server, n int64) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for s.mem.releases.Load() < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d releases after 20 s, want %d", s.mem.releases.Load(), n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	on := startLoopback(t, fmt.Sprintf(cfg, true, echo))
	off := startLoopback(t, fmt.Sprintf(cfg, false, echo))
	waitReleases(on, 1)
	if on.mem.binaryBytes.Load() == 0 {
		t.Error("the start-up release unmapped no page of the binary")
	}
	for _, s := range []*Server{on, off} {
		if err := echoDirect(s.Addr("fwd"), 100_000); err != nil {
			t.Fatal(err)
		}
	}
	waitReleases(on, 2)
	if n := off.mem.releases.Load(); n != 0 {
		t.Errorf("with release: false, %d releases", n)
	}
}
