package relay

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"halfway/socks5"
)

// reloadYAML reloads s with a configuration, or fails the test when it
// does not parse.
func reloadYAML(t *testing.T, s *Server, y string) error {
	t.Helper()
	cfg, err := ParseConfig([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return s.Reload(cfg)
}

// accepts tells whether something accepts connections at addr.
func accepts(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// TestReloadRefusedKeepsRunning: a reload with a listener that cannot open
// (its port is taken by another socket) changes nothing, its limits
// included; one that swaps two listeners' ports applies whole.
func TestReloadRefusedKeepsRunning(t *testing.T) {
	portA, portB := freeLoopback(t), freeLoopback(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	conf := func(a, b string, maxFlows int) string {
		return fmt.Sprintf(`
admin: {listen: off}
limits: {max_flows: %d}
listeners:
  - {name: a, listen: %q, protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
  - {name: b, listen: %q, protocols: [http], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
`, maxFlows, a, b)
	}
	s := startLoopback(t, conf(portA, portB, 99))
	err = reloadYAML(t, s, conf(busy.Addr().String(), portB, 10))
	if !errors.Is(err, ErrNotApplied) {
		t.Fatalf("reload onto a busy port: %v, want ErrNotApplied", err)
	}
	if got := s.Addr("a"); got == nil || got.String() != portA || !accepts(portA) {
		t.Errorf("after the refused reload, listener a is at %v (accepting: %v), want %s", got, accepts(portA), portA)
	}
	if n := s.state.Load().tunables.MaxFlows; n != 99 {
		t.Errorf("after the refused reload, max_flows %d, want 99 as before", n)
	}
	if err := reloadYAML(t, s, conf(portB, portA, 99)); err != nil {
		t.Fatalf("reload swapping the ports: %v", err)
	}
	if a, b := s.Addr("a"), s.Addr("b"); a == nil || b == nil || a.String() != portB || b.String() != portA || !accepts(portA) || !accepts(portB) {
		t.Errorf("after the swap: a at %v, b at %v; want %s and %s, accepting", a, b, portB, portA)
	}
}

// TestReloadAdminListen: a reload moves the admin API, or turns it off.
func TestReloadAdminListen(t *testing.T) {
	first, second := freeLoopback(t), freeLoopback(t)
	conf := func(admin string) string {
		return fmt.Sprintf("admin: {listen: %q}\nlisteners:\n  - {name: s, listen: \"127.0.0.1:0\", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: [127.0.0.1/32]}\n", admin)
	}
	s := startLoopback(t, conf(first))
	get := func(addr string) error {
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/api/status")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %s", resp.Status)
		}
		return nil
	}
	if err := get(first); err != nil {
		t.Fatalf("admin API at %s: %v", first, err)
	}
	if err := reloadYAML(t, s, conf(second)); err != nil {
		t.Fatal(err)
	}
	if err := get(second); err != nil || accepts(first) {
		t.Errorf("after the move: %s answers %v, %s accepts %v; want the API at %s only", second, err, first, accepts(first), second)
	}
	if err := reloadYAML(t, s, conf("off")); err != nil {
		t.Fatal(err)
	}
	if s.AdminAddr() != nil || accepts(second) {
		t.Errorf("admin off: AdminAddr %v, %s accepts %v", s.AdminAddr(), second, accepts(second))
	}
}

// TestDrainEndsHandshakes: past the grace period a drain ends the flows
// still in their client's protocol head too, rather than wait for
// handshake_timeout.
func TestDrainEndsHandshakes(t *testing.T) {
	s := newServer(t, `
admin: {listen: off}
limits: {handshake_timeout: 10m}
listeners:
  - {name: socks, listen: "127.0.0.1:0", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
`)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, 100*time.Millisecond) }()
	waitListening(t, s)
	c, err := net.Dial("tcp", s.Addr("socks").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{5}) // a SOCKS5 greeting's first byte, and silence
	waitFor(t, func() bool { return s.handshakes.Load() == 1 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Run still draining a minute after a 100ms grace: it waits for the handshake's 10m timeout")
	}
}

// TestAdminHost: the admin API answers only requests for a loopback
// address or localhost (a DNS name rebound to 127.0.0.1 gets 403).
func TestAdminHost(t *testing.T) {
	admin := freeLoopback(t)
	startLoopback(t, fmt.Sprintf("admin: {listen: %q}\nlisteners:\n  - {name: s, listen: \"127.0.0.1:0\", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: [127.0.0.1/32]}\n", admin))
	for _, tc := range []struct {
		host string
		want int
	}{{admin, 200}, {"localhost:9190", 200}, {"[::1]:9190", 200}, {"127.0.0.2", 200}, {"rebound.example:9190", 403}, {"10.0.0.1:9190", 403}} {
		req, _ := http.NewRequest("GET", "http://"+admin+"/api/tunables", nil)
		req.Host = tc.host
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("Host %s: %s, want %d", tc.host, resp.Status, tc.want)
		}
	}
}

// TestReloadRefusedKeepsAuth: a refused reload leaves the hop
// authentication as it was (its window), and the own addresses
// (auth.advertise).
func TestReloadRefusedKeepsAuth(t *testing.T) {
	psk := writeTestFile(t, t.TempDir(), "psk", "0123456789abcdef\n")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	conf := func(listen, window, adv string) string {
		return fmt.Sprintf("admin: {listen: off}\nauth: {psk_file: %s, window: %s, advertise: [%q]}\nlisteners:\n  - {name: hop, listen: %q, protocols: [convert], allow_clients: [127.0.0.1/32], allow_destinations: [127.0.0.1/32]}\n", psk, window, adv, listen)
	}
	s := startLoopback(t, conf("127.0.0.1:0", "30s", "192.0.2.10:7100"))
	if err := reloadYAML(t, s, conf(busy.Addr().String(), "5s", "192.0.2.11:7100")); !errors.Is(err, ErrNotApplied) {
		t.Fatalf("reload onto a busy port: %v", err)
	}
	if w := time.Duration(s.state.Load().auth.window.Load()); w != 30*time.Second {
		t.Errorf("after the refused reload, auth.window %v, want 30s", w)
	}
	if own := s.own.Load(); !own.has(netip.MustParseAddr("192.0.2.10")) || own.has(netip.MustParseAddr("192.0.2.11")) {
		t.Error("after the refused reload, the own addresses follow the refused auth.advertise")
	}
}

// TestReloadJudgesRequestNow: a client's request is judged by the
// configuration in force when it arrives, as a pooled connection's is: a
// reload during its protocol head that takes its destination away, takes
// the client out of allow_clients, takes its protocol away or removes the
// listener refuses it; one that replaces the listener by another of its
// name that allows it still serves it.
func TestReloadJudgesRequestNow(t *testing.T) {
	echo := echoServer(t)
	conf := func(listen, protos, clients, dests string) string {
		y := "admin: {listen: off}\nlimits: {handshake_timeout: 30s}\nlisteners:\n  - {name: keep, listen: \"127.0.0.1:0\", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: [192.0.2.1/32]}\n"
		if listen != "" {
			y += fmt.Sprintf("  - {name: s, listen: %q, protocols: [%s], allow_clients: [%s], allow_destinations: [%q]}\n", listen, protos, clients, dests)
		}
		return y
	}
	const at, both = "127.0.0.1:0", "socks5, http"
	for _, tc := range []struct {
		name   string
		after  func(proto string) string
		served bool
	}{
		{"destination removed", func(string) string { return conf(at, both, "127.0.0.1/32", "192.0.2.1/32") }, false},
		{"client removed", func(string) string { return conf(at, both, "192.0.2.1/32", "127.0.0.1/32") }, false},
		{"protocol removed", func(p string) string {
			return conf(at, map[string]string{"socks5": "http", "http": "socks5"}[p], "127.0.0.1/32", "127.0.0.1/32")
		}, false},
		{"listener removed", func(string) string { return conf("", "", "", "") }, false},
		{"listener replaced", func(string) string { return conf("127.0.0.2:0", both, "127.0.0.1/32", "127.0.0.1/32") }, true},
		{"listener replaced, destination removed", func(string) string { return conf("127.0.0.2:0", both, "127.0.0.1/32", "192.0.2.1/32") }, false},
	} {
		for _, proto := range []string{"socks5", "http"} {
			t.Run(tc.name+"/"+proto, func(t *testing.T) {
				s := startLoopback(t, conf(at, both, "127.0.0.1/32", "127.0.0.1/32"))
				c, err := net.DialTimeout("tcp", s.Addr("s").String(), 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				if proto == "socks5" {
					// The greeting and its answer: the handshake has begun.
					if _, err := c.Write([]byte{5, 1, 0}); err != nil {
						t.Fatal(err)
					}
					if b := make([]byte, 2); func() error { _, err := io.ReadFull(c, b); return err }() != nil || b[1] != 0 {
						t.Fatalf("socks5 greeting: %v", b)
					}
				} else if _, err := c.Write([]byte("CONNECT ")); err != nil {
					t.Fatal(err)
				}
				// The first byte is in: wait until the relay reads on.
				for i := 0; s.handshakes.Load() == 0; i++ {
					if i > 500 {
						t.Fatal("the relay never began the handshake")
					}
					time.Sleep(2 * time.Millisecond)
				}
				if err := reloadYAML(t, s, tc.after(proto)); err != nil {
					t.Fatal(err)
				}
				ok := false
				if proto == "socks5" {
					a := echo.Addr().As4()
					req := append([]byte{5, 1, 0, 1}, a[:]...)
					req = append(req, byte(echo.Port()>>8), byte(echo.Port()))
					if _, err := c.Write(req); err != nil {
						t.Fatal(err)
					}
					b := make([]byte, 10)
					_, err = io.ReadFull(c, b)
					ok = err == nil && b[1] == 0
				} else {
					if _, err := fmt.Fprintf(c, "%s HTTP/1.1\r\nHost: %s\r\n\r\n", echo, echo); err != nil {
						t.Fatal(err)
					}
					line, _ := bufio.NewReader(c).ReadString('\n')
					ok = strings.HasPrefix(line, "HTTP/1.1 200")
				}
				if ok != tc.served {
					t.Errorf("after the reload (%s), the request to %s served: %v, want %v", tc.name, echo, ok, tc.served)
				}
			})
		}
	}
}

// TestReloadWhileDraining: a reload that comes while the relay drains is
// refused as one that changes nothing (ErrNotApplied, which the daemon
// logs as "reload refused", not as a reload left incomplete), and the
// running configuration stays.
func TestReloadWhileDraining(t *testing.T) {
	conf := func(maxFlows int) string {
		return fmt.Sprintf(`
admin: {listen: off}
limits: {max_flows: %d}
listeners:
  - {name: socks, listen: "127.0.0.1:0", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
`, maxFlows)
	}
	s := newServer(t, conf(99))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, time.Minute) }()
	defer func() {
		s.Hurry()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	waitListening(t, s)
	// A flow keeps the drain waiting.
	dst := echoServer(t)
	c, err := net.Dial("tcp", s.Addr("socks").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	if _, err := socks5.ClientHandshake(c, c, socks5.Addr{IP: dst.Addr(), Port: dst.Port()}, "", ""); err != nil {
		t.Fatal(err)
	}
	cancel()
	waitFor(t, func() bool { return s.draining.Load() })
	if err := reloadYAML(t, s, conf(10)); !errors.Is(err, ErrNotApplied) {
		t.Errorf("reload while draining: %v, want ErrNotApplied", err)
	}
	if n := s.state.Load().tunables.MaxFlows; n != 99 {
		t.Errorf("after the reload while draining, max_flows %d, want 99 as before", n)
	}
}

// reloading tells whether a Reload is at work (it holds reloadMu).
func reloading(s *Server) bool {
	if s.reloadMu.TryLock() {
		s.reloadMu.Unlock()
		return false
	}
	return true
}

// reloadHeld starts a reload of s with a configuration while holding s.mu,
// which stops the reload before apply, and returns once it is under way.
// Its result comes once the caller unlocks s.mu.
func reloadHeld(t *testing.T, s *Server, y string) <-chan error {
	t.Helper()
	cfg, err := ParseConfig([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	reloaded := make(chan error, 1)
	go func() { reloaded <- s.Reload(cfg) }()
	waitFor(t, func() bool { return reloading(s) })
	return reloaded
}

// TestReloadRefusedNeverInForce: a reload that will be refused is not in
// force while it is being applied either: flows meanwhile keep the running
// configuration's limits and routes.
func TestReloadRefusedNeverInForce(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	conf := func(listen string, maxFlows int) string {
		return fmt.Sprintf("admin: {listen: off}\nlimits: {max_flows: %d}\nlisteners:\n  - {name: s, listen: %q, protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: [127.0.0.1/32]}\n", maxFlows, listen)
	}
	s := startLoopback(t, conf("127.0.0.1:0", 99))
	old := s.state.Load()
	reloaded := reloadHeld(t, s, conf(busy.Addr().String(), 10))
	time.Sleep(300 * time.Millisecond) // the reload reaches apply, and waits there
	during := s.state.Load()
	s.mu.Unlock()
	if err := <-reloaded; !errors.Is(err, ErrNotApplied) {
		t.Fatalf("reload onto a busy port: %v, want ErrNotApplied", err)
	}
	if during != old {
		t.Errorf("while the refused reload was being applied, its file was in force (max_flows %d, want 99)", during.tunables.MaxFlows)
	}
}

// TestReloadRefusedKeepsParked: a refused reload that would have changed
// the key leaves the peers' pooled connections parked; a reload applied
// with the new key closes them.
func TestReloadRefusedKeepsParked(t *testing.T) {
	pp := newPoolPair(t, func(rs string) string { return rs }, 3, 3)
	rs := startLoopback(t, pp.rsYAML)
	rc := startLoopback(t, pp.rcYAML)
	waitFor(t, func() bool { return poolOf(t, rc).Idle == 3 })
	waitFor(t, func() bool { return parkedOf(rs) == 3 })
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	psk2 := writeTestFile(t, t.TempDir(), "psk2", "the next key 9876543210\n")
	next := regexp.MustCompile(`psk_file: "[^"]*"`).ReplaceAllString(pp.rsYAML, fmt.Sprintf("psk_file: %q", psk2))
	refused := strings.Replace(next, fmt.Sprintf("listen: %q", pp.rsAddr), fmt.Sprintf("listen: %q", busy.Addr().String()), 1)
	if err := reloadYAML(t, rs, refused); !errors.Is(err, ErrNotApplied) {
		t.Fatalf("reload onto a busy port: %v, want ErrNotApplied", err)
	}
	if n := parkedOf(rs); n != 3 {
		t.Errorf("after a refused reload with another key, %d pooled connections parked, want the 3 as before", n)
	}
	if err := reloadYAML(t, rs, next); err != nil {
		t.Fatal(err)
	}
	if n := parkedOf(rs); n != 0 {
		t.Errorf("after the key changed, %d pooled connections still parked", n)
	}
}

// TestReloadLog: a reload applies a changed log section to the daemon's
// logger (NewLogger's), as it does the rest of the file: here its level.
func TestReloadLog(t *testing.T) {
	conf := func(level string) string {
		return fmt.Sprintf("admin: {listen: off}\nlog: {level: %s}\nlisteners:\n  - {name: s, listen: \"127.0.0.1:0\", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: [127.0.0.1/32]}\n", level)
	}
	cfg, err := ParseConfig([]byte(conf("error")))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, NewLogger(cfg.Log), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, time.Second) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	waitFor(t, func() bool { return s.Addr("s") != nil })
	if s.log.Enabled(ctx, slog.LevelWarn) {
		t.Fatal("log.level error: warnings enabled")
	}
	if err := reloadYAML(t, s, conf("warn")); err != nil {
		t.Fatal(err)
	}
	if !s.log.Enabled(ctx, slog.LevelWarn) {
		t.Error("reloaded with log.level warn: warnings still off")
	}
}

// TestReloadJudgesSOCKSLoginNow: a SOCKS5 client's request is judged by
// the users in force when it arrives, as an HTTP client's
// Proxy-Authorization is: a reload during its head that makes the
// listener require a login, or that takes the client's user out,
// refuses the request with 2 (not allowed); one that keeps the users
// serves it.
func TestReloadJudgesSOCKSLoginNow(t *testing.T) {
	echo := echoServer(t)
	dir := t.TempDir()
	alice := writeTestFile(t, dir, "alice", "alice:wonderland\n")
	bob := writeTestFile(t, dir, "bob", "bob:builder\n")
	login := []byte{5, 1, 2, 1, 5, 'a', 'l', 'i', 'c', 'e', 10, 'w', 'o', 'n', 'd', 'e', 'r', 'l', 'a', 'n', 'd'}
	conf := func(users string) string {
		y := "admin: {listen: off}\nlimits: {handshake_timeout: 30s}\nlisteners:\n  - {name: s, listen: \"127.0.0.1:0\", protocols: [socks5, http], allow_clients: [127.0.0.1/32], allow_destinations: [127.0.0.1/32]"
		if users != "" {
			y += ", users_file: " + users
		}
		return y + "}\n"
	}
	for _, tc := range []struct {
		name          string
		before, after string
		greeting      []byte
		answer        int // the method, and the login's status if any
		reply         socks5.Reply
	}{
		{"login required", "", alice, []byte{5, 1, 0}, 2, socks5.NotAllowed},
		{"user removed", alice, bob, login, 4, socks5.NotAllowed},
		{"users kept", alice, alice, login, 4, socks5.Succeeded},
		{"login no longer required", alice, "", login, 4, socks5.Succeeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startLoopback(t, conf(tc.before))
			c, err := net.DialTimeout("tcp", s.Addr("s").String(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write(tc.greeting); err != nil {
				t.Fatal(err)
			}
			b := make([]byte, tc.answer)
			if _, err := io.ReadFull(c, b); err != nil || b[len(b)-1] != 0 {
				t.Fatalf("socks5 greeting: %v %v", b, err)
			}
			if err := reloadYAML(t, s, conf(tc.after)); err != nil {
				t.Fatal(err)
			}
			a := echo.Addr().As4()
			req := append([]byte{5, 1, 0, 1}, a[:]...)
			req = append(req, byte(echo.Port()>>8), byte(echo.Port()))
			if _, err := c.Write(req); err != nil {
				t.Fatal(err)
			}
			r := make([]byte, 10)
			if _, err := io.ReadFull(c, r); err != nil || r[1] != byte(tc.reply) {
				t.Errorf("after the reload (%s), the reply is %v %v, want %d (%v)", tc.name, r, err, tc.reply, tc.reply)
			}
		})
	}
}

// TestReloadKeyGoneNotApplied: a reload whose key file cannot be read when
// it is applied (removed after the file was checked) changes nothing, and
// says so with ErrNotApplied, as every reload refused whole does: the
// daemon logs "reload refused: the running configuration stays", not
// "reload incomplete".
func TestReloadKeyGoneNotApplied(t *testing.T) {
	dir := t.TempDir()
	psk := writeTestFile(t, dir, "psk", "0123456789abcdef\n")
	conf := func(maxFlows int) string {
		return fmt.Sprintf("admin: {listen: off}\nauth: {psk_file: %q}\nlimits: {max_flows: %d}\nlisteners:\n  - {name: hop, listen: \"127.0.0.1:0\", protocols: [convert], allow_clients: [127.0.0.1/32], allow_destinations: [127.0.0.1/32]}\n", psk, maxFlows)
	}
	s := startLoopback(t, conf(99))
	next, err := ParseConfig([]byte(conf(10)))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(psk); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(next); !errors.Is(err, ErrNotApplied) {
		t.Errorf("reload with its key file gone: %v, want ErrNotApplied", err)
	}
	if n := s.state.Load().tunables.MaxFlows; n != 99 {
		t.Errorf("after the refused reload, max_flows %d, want 99 as before", n)
	}
}

// TestReloadAdminRefused: a reload whose admin.listen cannot open (another
// socket has it) is refused whole, as one whose listener cannot open: its
// limits do not apply while the API stays where it was.
func TestReloadAdminRefused(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	admin := freeLoopback(t)
	conf := func(admin string, maxFlows int) string {
		return fmt.Sprintf("admin: {listen: %q}\nlimits: {max_flows: %d}\nlisteners:\n  - {name: s, listen: \"127.0.0.1:0\", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: [127.0.0.1/32]}\n", admin, maxFlows)
	}
	s := startLoopback(t, conf(admin, 99))
	err = reloadYAML(t, s, conf(busy.Addr().String(), 10))
	if !errors.Is(err, ErrNotApplied) {
		t.Errorf("reload onto a busy admin address: %v, want ErrNotApplied", err)
	}
	if n := s.state.Load().tunables.MaxFlows; n != 99 {
		t.Errorf("after the refused reload, max_flows %d, want 99 as before", n)
	}
	if a := s.AdminAddr(); a == nil || a.String() != admin {
		t.Errorf("after the refused reload, the admin API is at %v, want %s", a, admin)
	}
}

// TestReloadAdminPortToListener: a reload that moves the admin API and
// gives its old address to a listener applies, as a swap of two
// listeners' ports does: the listener opens once the API has left.
func TestReloadAdminPortToListener(t *testing.T) {
	first, second := freeLoopback(t), freeLoopback(t)
	conf := func(admin, listen string) string {
		return fmt.Sprintf("admin: {listen: %q}\nlisteners:\n  - {name: s, listen: %q, protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: [127.0.0.1/32]}\n", admin, listen)
	}
	s := startLoopback(t, conf(first, "127.0.0.1:0"))
	if err := reloadYAML(t, s, conf(second, first)); err != nil {
		t.Fatalf("reload moving the admin API off %s and a listener onto it: %v", first, err)
	}
	if a, l := s.AdminAddr(), s.Addr("s"); a == nil || l == nil || a.String() != second || l.String() != first {
		t.Errorf("after the reload: admin at %v, listener at %v; want %s and %s", a, l, second, first)
	}
	if code, body, err := adminRequest(second, "GET", "/api/status", ""); err != nil || code != http.StatusOK {
		t.Errorf("admin API at %s: %d %s %v", second, code, body, err)
	}
}
