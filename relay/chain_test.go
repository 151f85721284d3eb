package relay

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"halfway/socks5"
)

// TestChainRelayDownNoVerdict: a relay of the chain that cannot be
// reached is no verdict on the destination, wherever it stands in the
// chain. The first relay refusing its connect, or a later one refusing the
// connect of the relay before it, reaches a SOCKS5 client as a general
// failure, not as the destination's "connection refused".
func TestChainRelayDownNoVerdict(t *testing.T) {
	psk := filepath.Join(t.TempDir(), "psk")
	if err := os.WriteFile(psk, []byte("chain test key 0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hop := startLoopback(t, fmt.Sprintf(`
admin: {listen: off}
auth: {psk_file: %q}
listeners:
  - {name: hop, listen: "127.0.0.1:0", protocols: [convert], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
`, psk))
	hopAddr := hop.Addr("hop").String()
	down := freeLoopback(t) // nothing listens there: a connect to it is refused
	dst := echoServer(t)
	for _, tc := range []struct {
		name string
		via  string
	}{
		{"first relay down", fmt.Sprintf("[%q]", down)},
		{"second relay down", fmt.Sprintf("[%q, %q]", hopAddr, down)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			entry := startLoopback(t, fmt.Sprintf(`
admin: {listen: off}
auth: {psk_file: %q}
listeners:
  - {name: socks, listen: "127.0.0.1:0", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
routes:
  - {via: %s}
`, psk, tc.via))
			c, err := net.DialTimeout("tcp", entry.Addr("socks").String(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			_, err = socks5.ClientHandshake(c, c, socks5.Addr{IP: dst.Addr(), Port: dst.Port()}, "", "")
			var re *socks5.ReplyError
			if !errors.As(err, &re) || re.Reply != socks5.GeneralFailure {
				t.Errorf("SOCKS5 answer: %v, want reply %v", err, socks5.GeneralFailure)
			}
		})
	}
}
