package relay_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"halfway/netlab/labtest"
)

// chainTopo6 is chainTopo with IPv6 on every link.
const chainTopo6 = `
name: chain6
ipv6: true
nodes: [client, rc, rs, server]
links:
  - {a: client, b: rc, delay: 2ms}
  - {a: rc, b: rs, delay: 2ms}
  - {a: rs, b: server, delay: 2ms}
`

// TestCaptureOtherFamily: a transparent listener's socket is of one
// family (Go's tcp4 or a v6-only tcp6), so capture without dst must leave
// the other family's flows alone: steered to a port where nothing of their
// family listens, they would be refused.
func TestCaptureOtherFamily(t *testing.T) {
	requireTools(t, "nft")
	labtest.RequireRoot(t)
	for _, tc := range []struct {
		mode, listen string
		v6           bool // the flow tried is IPv6 (else IPv4)
	}{
		{"redirect", "0.0.0.0:7000", true},
		{"redirect", "[::]:7000", false},
		{"tproxy", "0.0.0.0:7000", true},
		{"tproxy", "[::]:7000", false},
	} {
		t.Run(fmt.Sprintf("%s %s", tc.mode, tc.listen), func(t *testing.T) {
			lab := labtest.Start(t, chainTopo6)
			rc, server, client := lab.Host("rc"), lab.Host("server"), lab.Host("client")
			runRelay(t, rc, "rc", fmt.Sprintf("admin: {listen: off}\nlisteners:\n  - {name: web, listen: %q, mode: %s, capture: {ports: \"8080\", install: true}}\n", tc.listen, tc.mode))
			waitCapture(t, rc, "halfway_web", "7000")
			serveEchoOn(t, server, 8080)
			dst := server.AddrPort(8080)
			if tc.v6 {
				dst = net.JoinHostPort(server.Addr6().String(), "8080")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := client.Dial(ctx, "tcp", dst)
			if err == nil {
				err = echoOnce(c, "hi")
				c.Close()
			}
			if err != nil {
				out, _ := rc.Command(ctx, "nft", "list", "table", "inet", "halfway_web").CombinedOutput()
				t.Errorf("flow to %s, of the family the listener does not take: %v\n%s", dst, err, strings.TrimSpace(string(out)))
			}
		})
	}
}
