package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"halfway/datapath"
	"halfway/httpconnect"
	"halfway/socks5"
)

// startLoopback runs a Server in this process on loopback, until the test
// ends.
func startLoopback(t testing.TB, cfgYAML string) *Server {
	t.Helper()
	s, _ := startStoppable(t, cfgYAML)
	return s
}

// startStoppable runs a Server until stop is called or the test ends, and
// returns once its first listener is open.
func startStoppable(t testing.TB, cfgYAML string) (s *Server, stop func()) {
	t.Helper()
	s = newServer(t, cfgYAML)
	return s, runServer(t, s)
}

// runServer runs s, a Server not yet started, until stop is called or the
// test ends, and returns once its first listener is open.
func runServer(t testing.TB, s *Server) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, time.Second) }()
	stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	t.Cleanup(stop)
	waitListening(t, s)
	return stop
}

// startInherited runs a Server of cfgYAML given files as socket
// activation gives them (Inherit), until the test ends; it returns once
// the Server has started.
func startInherited(t *testing.T, cfgYAML string, files ...*os.File) *Server {
	t.Helper()
	s := newServer(t, cfgYAML)
	if err := s.Inherit(files); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, time.Second) }()
	t.Cleanup(func() {
		cancel()
		s.Hurry()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	select {
	case <-s.Started():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the relay did not start in 10s")
	}
	return s
}

// listenFile is a listening socket on a free loopback port, as a service
// manager would pass it (MPTCP or TCP), and its address; it stays open
// until the test ends.
func listenFile(t *testing.T, mptcp bool) (*os.File, string) {
	t.Helper()
	var lc net.ListenConfig
	lc.SetMultipathTCP(mptcp)
	ln, err := lc.Listen(t.Context(), "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, ln.Addr().String()
}

// newServer makes a Server of cfgYAML that logs nothing, not yet running.
func newServer(t testing.TB, cfgYAML string) *Server {
	t.Helper()
	cfg, err := ParseConfig([]byte(cfgYAML))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// waitListening waits for a running Server's first listener to open.
func waitListening(t testing.TB, s *Server) {
	t.Helper()
	name := s.state.Load().cfg.Listeners[0].Name
	for i := 0; s.Addr(name) == nil; i++ {
		if i > 200 {
			t.Fatal("listener never opened")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestHandshakePerClientShare: a client may hold an eighth of the
// handshakes; past that its silent connections are reset at once, and the
// share comes back when one ends.
func TestHandshakePerClientShare(t *testing.T) {
	s := startLoopback(t, `
admin: {listen: off}
limits: {max_handshakes: 16, handshake_timeout: 30s}
listeners:
  - {name: socks, listen: "127.0.0.1:0", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
`)
	addr := s.Addr("socks").String()
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	// Two silent connections fill this client's share (16/8).
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	// Wait on the client's share, not the total: beginHandshake counts a
	// handshake in the total before it takes the share.
	lo := netip.MustParseAddr("127.0.0.1")
	waitFor(t, func() bool { return handshakesOf(s, lo) == 2 })
	// The reset may come before Dial has read the socket's state, which
	// then fails with it.
	c, err := net.Dial("tcp", addr)
	if err == nil {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("third silent connection: %v, want a reset", err)
	}
	// One ends: a full SOCKS flow fits again.
	held[0].Close()
	waitFor(t, func() bool { return s.handshakes.Load() == 1 })
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		e, err := echo.Accept()
		if err == nil {
			io.Copy(e, e)
			e.Close()
		}
	}()
	c, err = net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	dst := netip.MustParseAddrPort(echo.Addr().String())
	if _, err := socks5.ClientHandshake(c, c, socks5.Addr{IP: dst.Addr(), Port: dst.Port()}, "", ""); err != nil {
		t.Fatalf("socks after the share came back: %v", err)
	}
	c.Write([]byte("ok"))
	b := make([]byte, 2)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "ok" {
		t.Errorf("echo through the relay: %q %v", b, err)
	}
}

// handshakesOf is how many of the handshake share client holds.
func handshakesOf(s *Server, client netip.Addr) int {
	sh := s.table.byClient(client)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.hsClient[client]
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; !cond(); i++ {
		if i > 500 {
			t.Fatal("condition never held")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestUserAuthentication: with a users file, SOCKS5 clients must log in
// (RFC 1929) and HTTP CONNECT clients must send Proxy-Authorization.
func TestUserAuthentication(t *testing.T) {
	users := t.TempDir() + "/users"
	if err := os.WriteFile(users, []byte("# operators\nalice:wonderland\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startLoopback(t, `
admin: {listen: off}
listeners:
  - {name: socks, listen: "127.0.0.1:0", protocols: [socks5, http], users_file: "`+users+`", allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
`)
	addr := s.Addr("socks").String()
	dst := echoServer(t)
	dial := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		return c
	}
	for _, tc := range []struct {
		user, pass string
		ok         bool
	}{{"alice", "wonderland", true}, {"alice", "looking-glass", false}, {"bob", "wonderland", false}} {
		c := dial()
		_, err := socks5.ClientHandshake(c, c, socks5.Addr{IP: dst.Addr(), Port: dst.Port()}, tc.user, tc.pass)
		if (err == nil) != tc.ok {
			t.Errorf("socks5 %s:%s: %v, want ok=%v", tc.user, tc.pass, err, tc.ok)
		}
		c.Close()
	}
	for _, tc := range []struct {
		user, pass string
		status     int
	}{{"alice", "wonderland", 200}, {"alice", "x", 407}, {"", "", 407}} {
		c := dial()
		if err := httpconnect.WriteRequest(c, dst.Addr().String(), dst.Port(), tc.user, tc.pass); err != nil {
			t.Fatal(err)
		}
		status, err := httpconnect.ReadResponse(c)
		if err != nil || status != tc.status {
			t.Errorf("http %q:%q: status %d, %v; want %d", tc.user, tc.pass, status, err, tc.status)
		}
		c.Close()
	}
}

// TestForwardListener: a forward listener sends every flow to its
// forward_to, byte-exact both ways with half-close; a client outside
// allow_clients is reset.
func TestForwardListener(t *testing.T) {
	echo := echoServer(t)
	s := startLoopback(t, fmt.Sprintf(`
admin: {listen: off}
listeners:
  - {name: fwd, listen: "127.0.0.1:0", mode: forward, forward_to: %q}
  - {name: fenced, listen: "127.0.0.1:0", mode: forward, forward_to: %q, allow_clients: [10.0.0.0/8]}
`, echo, echo))
	for _, n := range []int{0, 1, 70_000, 3 << 20} {
		if err := echoDirect(s.Addr("fwd"), n); err != nil {
			t.Fatalf("%d bytes through the forward listener: %v", n, err)
		}
	}
	c, err := net.Dial("tcp", s.Addr("fenced").String())
	if err != nil {
		return // reset before the dial returned: refused
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || os.IsTimeout(err) {
		t.Errorf("a client outside allow_clients: %v, want a reset", err)
	}
}

// TestDataPaths: with data_path: copy or sockmap, flows move through a
// user-space buffer or the sockmap program, byte-exact, and the metrics
// say so.
func TestDataPaths(t *testing.T) {
	for _, path := range []string{"copy", "sockmap"} {
		t.Run(path, func(t *testing.T) {
			if path == "sockmap" && os.Geteuid() != 0 {
				t.Skip("the sockmap data path needs root to load its program")
			}
			s := forwardRelay(t, "data_path: "+path)
			// A first byte and its echo, so the flow has entered the
			// sockmap (if it can) before the rest comes.
			if err := echoDirect(s.Addr("fwd"), 1<<20, 1); err != nil {
				t.Fatalf("through the %s path: %v", path, err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for s.metrics.path.With(path).Value() < 2 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if n, sp := s.metrics.path.With(path).Value(), s.metrics.path.With("splice").Value(); n != 2 || sp != 0 {
				t.Errorf("directions by path: %s %d, splice %d; want 2 and 0", path, n, sp)
			}
		})
	}
}

// acceptEach runs handle on a goroutine of its own for every connection
// ln accepts, until ln is closed; handle closes the connection.
func acceptEach(ln net.Listener, handle func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go handle(c)
	}
}

// forwardRelay starts a relay on loopback with one forward listener,
// "fwd", to an echo server, and the config lines in extra.
func forwardRelay(t *testing.T, extra string) *Server {
	t.Helper()
	return startLoopback(t, fmt.Sprintf(`
admin: {listen: off}
%s
listeners:
  - {name: fwd, listen: "127.0.0.1:0", mode: forward, forward_to: %q}
`, extra, echoServer(t)))
}

// echoDirect sends n random bytes to addr, which leads to an echo server,
// half-closes, and checks they all come back. The first `first` bytes
// go alone, and come back, before the rest is sent.
func echoDirect(addr net.Addr, n int, first ...int) error {
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		return err
	}
	defer c.Close()
	data := make([]byte, n)
	rand.Read(data)
	if len(first) > 0 && first[0] > 0 {
		k := first[0]
		if _, err := c.Write(data[:k]); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		got := make([]byte, k)
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, data[:k]) {
			return fmt.Errorf("the first %d bytes: %v", k, err)
		}
		data = data[k:]
	}
	go func() {
		c.Write(data)
		c.(*net.TCPConn).CloseWrite()
	}()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("got %d bytes back, not the %d sent", len(got), n)
	}
	return nil
}

// dialEcho connects to s's listener "fwd", which leads to an echo
// server, and returns the connection and a function that sends n random
// bytes on it and checks they come back.
func dialEcho(t *testing.T, s *Server) (net.Conn, func(n int)) {
	c, err := net.Dial("tcp", s.Addr("fwd").String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, func(n int) {
		t.Helper()
		data := make([]byte, n)
		rand.Read(data)
		go c.Write(data)
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		got := make([]byte, n)
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes echoed: %v", n, err)
		}
	}
}

// TestServerLegKeepalive: a flow's dial leaves TCP keepalive to the data
// path, which sets legs.server.keepalive on the server leg once the flow
// has lasted a second; other dials (a pool's) set it at once.
func TestServerLegKeepalive(t *testing.T) {
	echo := echoServer(t)
	s := startLoopback(t, fmt.Sprintf(`
admin: {listen: off}
legs: {server: {keepalive: 77s}}
detach_after: 0s # the test reads the server leg's options through its *net.TCPConn
listeners:
  - {name: fwd, listen: "127.0.0.1:0", mode: forward, forward_to: %q}
`, echo))
	sockopt := func(c *net.TCPConn, level, opt int) int {
		rc, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		v := -1
		rc.Control(func(fd uintptr) { v, _ = unix.GetsockoptInt(int(fd), level, opt) })
		return v
	}
	rt := s.state.Load()
	leg := rt.cfg.Legs.Server
	for _, late := range []bool{true, false} {
		leg.lateKeepalive = late
		c, err := s.dial(context.Background(), rt, echo, nil, leg, netip.Addr{})
		if err != nil {
			t.Fatal(err)
		}
		on, idle := sockopt(c, unix.SOL_SOCKET, unix.SO_KEEPALIVE), sockopt(c, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		c.Close()
		if want := !late; (on == 1) != want || want && idle != 77 {
			t.Errorf("dial with lateKeepalive %v: SO_KEEPALIVE %d, idle %d s", late, on, idle)
		}
	}
	c, err := net.Dial("tcp", s.Addr("fwd").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	var server *net.TCPConn
	waitFor(t, func() bool {
		s.table.each(func(f *flow) {
			if dp := f.dp.Load(); dp != nil {
				_, server = dp.Conns()
			}
		})
		return server != nil
	})
	waitFor(t, func() bool {
		return sockopt(server, unix.SOL_SOCKET, unix.SO_KEEPALIVE) == 1 && sockopt(server, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE) == 77
	})
}

// TestDetachedFlow: an idle flow leaves Go's poller after detach_after
// (halfway_datapath_detached counts it), stays listed by the admin API,
// and moves bytes both ways after, a message and a burst; detach_after: 0
// keeps it in.
func TestDetachedFlow(t *testing.T) {
	for _, detach := range []string{"1ms", "0s"} {
		t.Run(detach, func(t *testing.T) {
			s := forwardRelay(t, "detach_after: "+detach)
			before := datapath.ReadStats().Detached
			c, roundTrip := dialEcho(t, s)
			roundTrip(1)
			var dp *datapath.Flow
			waitFor(t, func() bool {
				s.table.each(func(f *flow) { dp = f.dp.Load() })
				return dp != nil
			})
			if detach == "0s" {
				// Past the sweeps that would have detached it.
				time.Sleep(2 * time.Second)
				if d := datapath.ReadStats().Detached - before; d != 0 {
					t.Errorf("detach_after: 0s, and %d flows detached", d)
				}
			} else {
				waitFor(t, func() bool { return datapath.ReadStats().Detached-before == 1 })
			}
			// (The counters move just after the bytes.)
			waitFor(t, func() bool { fs := s.Flows(); return len(fs) == 1 && fs[0].Up == 1 && fs[0].Down == 1 })
			roundTrip(100)
			roundTrip(3 << 20)
			c.(*net.TCPConn).CloseWrite()
			if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
				t.Errorf("after the FIN: %d bytes, %v", len(rest), err)
			}
		})
	}
}
