package relay

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"halfway/convert"
	"halfway/socks5"
)

// TestExplicitSOCKSAuthFailurePipelined: a SOCKS5 client that sends its
// request right behind its credentials (or its method offer, or data
// behind an unsupported command) reads the refusal and then an orderly end of stream, not a reset that could
// destroy the refusal.
func TestExplicitSOCKSAuthFailurePipelined(t *testing.T) {
	users := t.TempDir() + "/users"
	if err := os.WriteFile(users, []byte("alice:wonderland\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startLoopback(t, `
admin: {listen: off}
listeners:
  - {name: x, listen: "127.0.0.1:0", protocols: [socks5], users_file: "`+users+`", allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
`)
	req := []byte{5, 1, 0, 1, 127, 0, 0, 1, 0, 80, 'd', 'a', 't', 'a'}
	cases := []struct {
		name       string
		head, want []byte
	}{
		{"wrong password", append([]byte{5, 1, 2, 1, 5, 'a', 'l', 'i', 'c', 'e', 3, 'b', 'a', 'd'}, req...), []byte{5, 2, 1, 1}},
		{"unknown user", append([]byte{5, 1, 2, 1, 3, 'b', 'o', 'b', 3, 'b', 'a', 'd'}, req...), []byte{5, 2, 1, 1}},
		{"no acceptable method", append([]byte{5, 1, 0}, req...), []byte{5, 0xff}},
		{"bind", append([]byte{5, 1, 2, 1, 5, 'a', 'l', 'i', 'c', 'e', 10, 'w', 'o', 'n', 'd', 'e', 'r', 'l', 'a', 'n', 'd', 5, 2, 0, 1, 127, 0, 0, 1, 0, 80}, "data"...),
			[]byte{5, 2, 1, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", s.Addr("x").String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(tc.head); err != nil {
				t.Fatal(err)
			}
			// Let the relay answer and close before reading, as a client
			// on a slow path would.
			time.Sleep(200 * time.Millisecond)
			b, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(b, tc.want) {
				t.Errorf("answer %v, %v; want %v then EOF", b, err, tc.want)
			}
			if errors.Is(err, syscall.ECONNRESET) {
				t.Log("the relay reset the connection")
			}
		})
	}
}

// TestExplicitHTTPHeadTimeout: an HTTP client that does not finish its
// request head within handshake_timeout is told 408 Request Timeout (RFC
// 9110 §15.5.9), not that its request was malformed.
func TestExplicitHTTPHeadTimeout(t *testing.T) {
	s := startLoopback(t, `
admin: {listen: off}
limits: {handshake_timeout: 200ms}
listeners:
  - {name: x, listen: "127.0.0.1:0", protocols: [http], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
`)
	c, err := net.Dial("tcp", s.Addr("x").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: 127.0.0.1:80\r\n")); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil || !bytes.HasPrefix(b, []byte("HTTP/1.1 408 ")) {
		t.Errorf("answer %q, %v; want 408", b, err)
	}
}

// TestExplicitRefusedPipelined: a client the relay has no room for gets
// its refusal, in its protocol, and then an orderly end of stream, even
// when it pipelined its request behind credentials the relay rejects.
func TestExplicitRefusedPipelined(t *testing.T) {
	users := t.TempDir() + "/users"
	if err := os.WriteFile(users, []byte("alice:wonderland\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startLoopback(t, `
admin: {listen: off}
limits: {max_flows: 1}
listeners:
  - {name: x, listen: "127.0.0.1:0", protocols: [socks5], users_file: "`+users+`", allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
`)
	// A silent client holds the only flow.
	hold, err := net.Dial("tcp", s.Addr("x").String())
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	waitFor(t, func() bool { return s.active.Load() == 1 })
	req := []byte{5, 1, 0, 1, 127, 0, 0, 1, 0, 80, 'd', 'a', 't', 'a'}
	c, err := net.Dial("tcp", s.Addr("x").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(append([]byte{5, 1, 2, 1, 5, 'a', 'l', 'i', 'c', 'e', 3, 'b', 'a', 'd'}, req...)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	b, err := io.ReadAll(c)
	if want := []byte{5, 2, 1, 1}; err != nil || !bytes.Equal(b, want) {
		t.Errorf("answer %v, %v; want %v then EOF", b, err, want)
	}
}

// TestExplicitRefusedOtherProtocol: a client the relay has no room for,
// speaking a protocol its listener does not, gets no answer in that
// protocol, as when there is room: the listener does not reveal that
// the relay speaks it elsewhere.
func TestExplicitRefusedOtherProtocol(t *testing.T) {
	s := startLoopback(t, `
admin: {listen: off}
limits: {max_flows: 1}
listeners:
  - {name: x, listen: "127.0.0.1:0", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
`)
	hold, err := net.Dial("tcp", s.Addr("x").String())
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	waitFor(t, func() bool { return s.active.Load() == 1 })
	c, err := net.Dial("tcp", s.Addr("x").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(c); len(b) > 0 {
		t.Errorf("a socks5-only listener answered HTTP: %q", b)
	}
}

// TestExplicitHandshakeShareEndsWithHead: a client's handshake share
// counts connections still sending their protocol head (SOCKS5, HTTP or
// Convert). One whose head is
// in, waiting for a slow connect, holds a pending connect (max_pending)
// and its flow, not a handshake: the client's next connection is served.
func TestExplicitHandshakeShareEndsWithHead(t *testing.T) {
	psk := writeTestFile(t, t.TempDir(), "psk", "0123456789abcdef\n")
	s := startLoopback(t, `
admin: {listen: off}
auth: {psk_file: `+psk+`}
limits: {max_handshakes: 8, connect_timeout: 1s}
listeners:
  - {name: x, listen: "127.0.0.1:0", protocols: [socks5, http, convert], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
`)
	slow := unansweredServer(t)
	echo := echoServer(t)

	for _, proto := range []string{"socks5", "http", "convert"} {
		t.Run(proto, func(t *testing.T) {
			waiting, err := net.Dial("tcp", s.Addr("x").String())
			if err != nil {
				t.Fatal(err)
			}
			defer waiting.Close()
			if err := sendConnect(waiting, proto, s, "x", slow); err != nil {
				t.Fatal(err)
			}
			waitFor(t, func() bool { return s.pending.Load() == 1 })
			c, err := net.Dial("tcp", s.Addr("x").String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := socks5.ClientHandshake(c, c, socks5.Addr{IP: echo.Addr(), Port: echo.Port()}, "", ""); err != nil {
				t.Errorf("a second connection while the first waits for its connect: %v", err)
			}
			waiting.Close()
			waitFor(t, func() bool { return s.pending.Load() == 0 })
		})
	}
}

// unansweredServer is a server whose accept queue is full: its SYNs are
// dropped, so a connect to it waits for connect_timeout. It lasts until
// the test ends.
func unansweredServer(t *testing.T) netip.AddrPort {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	slow := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(sa.(*unix.SockaddrInet4).Port))
	fill, err := net.Dial("tcp", slow.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fill.Close() })
	return slow
}

// sendConnect sends, on c, a client's whole head in proto asking the
// listener of s to connect to dst (a SOCKS5 client's method offer and
// request in one write).
func sendConnect(c net.Conn, proto string, s *Server, listener string, dst netip.AddrPort) error {
	var err error
	switch proto {
	case "socks5":
		_, err = c.Write([]byte{5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, byte(dst.Port() >> 8), byte(dst.Port())})
	case "http":
		_, err = fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %[1]s\r\n\r\n", dst)
	case "convert":
		cookie := s.state.Load().auth.cookie(addrPortOf(s.Addr(listener)), dst)
		var raw []byte
		if raw, err = convert.AppendMessage(nil, &convert.Message{Connect: &convert.Connect{Dst: dst}, Cookie: cookie}); err == nil {
			_, err = c.Write(raw)
		}
	}
	return err
}

// waitReleased waits until s holds no connect slot and no flow, and
// fails 20 s after what: a liveness bound, not a timing one (the tests
// that call it give connect_timeout 60 s). name starts the failure.
func waitReleased(t *testing.T, s *Server, name, what string) {
	t.Helper()
	giveUp := time.Now().Add(20 * time.Second)
	for s.pending.Load() != 0 || s.active.Load() != 0 {
		if time.Now().After(giveUp) {
			t.Fatalf("%s%d connects pending and %d flows 20 s after %s", name, s.pending.Load(), s.active.Load(), what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// wantNoErrors checks that s counted none of kinds in halfway_errors_total.
func wantNoErrors(t *testing.T, s *Server, name string, kinds ...string) {
	t.Helper()
	for _, kind := range kinds {
		if n := s.metrics.errors.With(kind).Value(); n != 0 {
			t.Errorf("%s%d errors counted as %s, want none", name, n, kind)
		}
	}
}

// wantResetClient checks that n flows of listener and route ended as the
// client's reset, and that s counted no failed connect.
func wantResetClient(t *testing.T, s *Server, name, listener, route string, n uint64) {
	t.Helper()
	if got := s.metrics.flows.With(listener, route, "reset-client").Value(); got != n {
		t.Errorf("%s%d flows counted as reset-client, want %d", name, got, n)
	}
	wantNoErrors(t, s, name, "connect_failure", "connect_timeout")
}

// TestExplicitClientGoneEndsConnect: a client that resets while its
// connect is in progress (to a server that does not answer, with
// connect_timeout 60 s), directly or through a relay, ends the connect
// at once: its connect slot (max_pending) and its flow are given back on
// every relay of the way, and it counts as the client's reset, not as a
// failed connect.
func TestExplicitClientGoneEndsConnect(t *testing.T) {
	psk := writeTestFile(t, t.TempDir(), "psk", "chain test key 0123456789\n")
	slow := unansweredServer(t)
	const relayYAML = `
admin: {listen: off}
auth: {psk_file: %q}
limits: {connect_timeout: 60s}
listeners:
  - {name: x, listen: "127.0.0.1:0", protocols: [socks5, http, convert], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
%s`
	for _, tc := range []struct {
		name  string
		proto string
		chain bool
	}{
		{"socks5", "socks5", false},
		{"http", "http", false},
		{"convert", "convert", false}, // a relay before this one gave up
		{"socks5 through a relay", "socks5", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			type onRelay struct {
				s     *Server
				route string
			}
			var hops []onRelay
			routes, route := "", "direct"
			if tc.chain {
				hop := startLoopback(t, fmt.Sprintf(relayYAML, psk, ""))
				hops = append(hops, onRelay{hop, "direct"})
				routes = fmt.Sprintf("routes:\n  - {via: [%q]}\n", hop.Addr("x"))
				route = "via " + hop.Addr("x").String()
			}
			entry := startLoopback(t, fmt.Sprintf(relayYAML, psk, routes))
			relays := append([]onRelay{{entry, route}}, hops...)
			c, err := net.Dial("tcp", entry.Addr("x").String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := sendConnect(c, tc.proto, entry, "x", slow); err != nil {
				t.Fatal(err)
			}
			for _, r := range relays {
				waitFor(t, func() bool { return r.s.pending.Load() == 1 })
			}
			resetConn(c.(*net.TCPConn))
			for i, r := range relays {
				name := fmt.Sprintf("relay %d of %d: ", i+1, len(relays))
				waitReleased(t, r.s, name, "the client reset")
				wantResetClient(t, r.s, name, "x", r.route, 1)
			}
		})
	}
}

// TestExplicitClientHalfCloseKeepsConnect: a client's FIN right behind
// its request and first bytes, while its connect is in progress, is no
// reset: the connect goes on, and the data path passes the bytes and the
// FIN to the server.
func TestExplicitClientHalfCloseKeepsConnect(t *testing.T) {
	psk := writeTestFile(t, t.TempDir(), "psk", "chain test key 0123456789\n")
	// A first relay that answers the chain late, then echoes.
	rl := serveOne(t, func(c net.Conn) {
		if _, err := convert.ReadRaw(c); err != nil {
			return
		}
		time.Sleep(300 * time.Millisecond) // the client's FIN comes meanwhile
		answer, _ := convert.AppendMessage(nil, &convert.Message{})
		if _, err := c.Write(answer); err != nil {
			return
		}
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
	s := startLoopback(t, fmt.Sprintf(`
admin: {listen: off}
auth: {psk_file: %q}
limits: {connect_timeout: 60s}
listeners:
  - {name: x, listen: "127.0.0.1:0", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
routes:
  - {via: [%q]}
`, psk, rl))
	c, err := net.Dial("tcp", s.Addr("x").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if err := sendConnect(c, "socks5", s, "x", netip.MustParseAddrPort("127.0.0.1:9")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	// The method choice, the request's reply (an IPv4 address), the echo.
	if want := 2 + 10 + len("hello"); err != nil || len(got) != want || got[3] != byte(socks5.Succeeded) || string(got[want-5:]) != "hello" {
		t.Errorf("through the relay: %q, %v; want a reply of success, then the echo and the end", got, err)
	}
}
