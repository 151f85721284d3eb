package relay

import (
	"fmt"
	"strings"
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

// TestMemoryReleaseWithPool: a hop that keeps a peer's pooled connections
// parked is idle once the flows through them have ended: it releases.
func TestMemoryReleaseWithPool(t *testing.T) {
	pp := newPoolPair(t, func(rs string) string { return rs }, 2, 2)
	rs := startLoopback(t, strings.Replace(pp.rsYAML, "admin: {listen: off}", "admin: {listen: off}\nmemory: {release_after: 1s}", 1))
	rc := startLoopback(t, pp.rcYAML)
	dst := echoServer(t)
	waitFor(t, func() bool { return poolOf(t, rc).Idle == 2 })
	// A release the pool's arrival earns comes within two ticks of the
	// memory loop; after that, only the flow can earn one. Counting from
	// before the flow, a test goroutine slow to return from it (-race on a
	// busy machine) cannot miss the release the flow's end leads to.
	time.Sleep(2500 * time.Millisecond)
	start := rs.mem.releases.Load()
	if err := echoThrough(rc.Addr("socks"), dst, 50_000); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for rs.mem.releases.Load() == start {
		if time.Now().After(deadline) {
			t.Fatalf("no release in 20 s with only pooled connections parked (active %d, parked %d, handshakes %d, pending %d, ended %d)", rs.active.Load(), rs.parkedCount(), rs.handshakes.Load(), rs.pending.Load(), rs.ended.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
