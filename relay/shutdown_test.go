package relay

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"halfway/socks5"
)

// hungPeer listens on loopback and accepts connections it never answers,
// as a peer relay that hangs (stopped, or stuck) does once its kernel has
// accepted them. accepted counts them.
func hungPeer(t *testing.T) (addr string, accepted func() int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	return ln.Addr().String(), func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(held)
	}
}

// TestDrainEndsRelayWaits: a drain past its grace ends at once the waits
// for a peer relay that does not answer, a flow's chain answers and a
// pool's greeting, rather than let them run on to connect_timeout (10m
// here).
func TestDrainEndsRelayWaits(t *testing.T) {
	for _, tc := range []struct {
		name string
		pool bool // a pool's greeting, not a flow's chain
	}{{"chain answers", false}, {"pool greeting", true}} {
		t.Run(tc.name, func(t *testing.T) {
			peer, accepted := hungPeer(t)
			y := fmt.Sprintf(`
admin: {listen: off}
auth: {psk_file: %q}
limits: {connect_timeout: 10m}
listeners:
  - {name: socks, listen: "127.0.0.1:0", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
routes:
  - {via: [%q]}
`, testPSK(t), peer)
			if tc.pool {
				y += fmt.Sprintf("peers:\n  - {address: %q, pool: {low: 1, high: 1}}\n", peer)
			}
			s := newServer(t, y)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- s.Run(ctx, 100*time.Millisecond) }()
			waitListening(t, s)
			if !tc.pool {
				c, err := net.Dial("tcp", s.Addr("socks").String())
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(time.Minute))
				go socks5.ClientHandshake(c, c, socks5.Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 9}, "", "")
				waitFor(t, func() bool { return s.pending.Load() == 1 })
			}
			waitFor(t, func() bool { return accepted() == 1 })
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Error(err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Run still draining 30s after a 100ms grace: it waits for the silent peer until connect_timeout (10m)")
			}
		})
	}
}
