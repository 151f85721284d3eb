package relay

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// TestTransparentClientGoneEndsConnect: a transparent flow's client (a
// forward listener's here) that resets while the flow's connect is in
// progress (to a server, or a first relay, that does not answer, with
// connect_timeout 60 s) ends the connect at once: its connect slot
// (max_pending) and its flow are given back, and it counts as the
// client's reset, not as a failed connect.
func TestTransparentClientGoneEndsConnect(t *testing.T) {
	psk := writeTestFile(t, t.TempDir(), "psk", "chain test key 0123456789\n")
	slow := unansweredServer(t)
	for _, tc := range []struct {
		name, extra, route string
		plain              bool
	}{
		{"direct", "data_path: copy", "direct", false},
		{"via a relay", fmt.Sprintf("routes:\n  - {via: [%q]}", slow), "via " + slow.String(), false},
		{"plain", "", "direct", true}, // raw sockets (plain_linux.go)
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startLoopback(t, fmt.Sprintf(`
admin: {listen: off}
auth: {psk_file: %q}
limits: {connect_timeout: 60s}
listeners:
  - {name: fwd, listen: "127.0.0.1:0", mode: forward, forward_to: %q}
%s
`, psk, slow, tc.extra))
			c, err := net.Dial("tcp", s.Addr("fwd").String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			waitFor(t, func() bool { return s.pending.Load() == 1 })
			if n := s.metrics.plain.With("fwd").Value(); (n == 1) != tc.plain {
				t.Fatalf("halfway_flows_plain_total %d; plain %v", n, tc.plain)
			}
			resetConn(c.(*net.TCPConn))
			waitReleased(t, s, "", "the client reset")
			wantResetClient(t, s, "", "fwd", tc.route, 1)
		})
	}
}

// TestTransparentClientHalfCloseKeepsConnect: a transparent client's FIN
// right behind its first bytes, while the flow's connect is in progress
// (to a server whose accept queue is full until the test frees it) is no
// reset: the connect goes on, and the server gets the bytes and the FIN.
func TestTransparentClientHalfCloseKeepsConnect(t *testing.T) {
	for _, tc := range []struct{ name, extra string }{
		{"general", "data_path: copy"},
		{"plain", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			late, accept := fullListener(t)
			s := startLoopback(t, fmt.Sprintf(`
admin: {listen: off}
limits: {connect_timeout: 60s}
listeners:
  - {name: fwd, listen: "127.0.0.1:0", mode: forward, forward_to: %q}
%s
`, late, tc.extra))
			c, err := net.Dial("tcp", s.Addr("fwd").String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			waitFor(t, func() bool { return s.pending.Load() == 1 })
			if _, err := c.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			c.(*net.TCPConn).CloseWrite()
			time.Sleep(100 * time.Millisecond) // for a watch to take the FIN for a reset
			// Free the queue: the relay's SYN, retried, gets in.
			accept().Close()
			sc := accept()
			defer sc.Close()
			_ = sc.SetDeadline(time.Now().Add(20 * time.Second))
			if got, err := io.ReadAll(sc); err != nil || string(got) != "hello" {
				t.Errorf("the server read %q, %v; want hello and the FIN", got, err)
			}
		})
	}
}
