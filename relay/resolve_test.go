package relay

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"halfway/socks5"
)

// testDNS is a DNS server on loopback for the names a test gives: A
// records for those in a, no answer at all for those in silent, SERVFAIL
// for those in fail, and NXDOMAIN for every other name.
type testDNS struct {
	a      map[string][]netip.Addr
	silent map[string]bool
	fail   map[string]bool
}

// start serves until the test ends and returns a resolver that asks it.
func (d *testDNS) start(t *testing.T) *net.Resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if resp := d.answer(buf[:n]); resp != nil {
				pc.WriteTo(resp, from)
			}
		}
	}()
	addr := pc.LocalAddr().String()
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "udp", addr)
	}}
}

// answer is the response to query q, nil for none.
func (d *testDNS) answer(q []byte) []byte {
	if len(q) < 12 {
		return nil
	}
	// The question: labels up to the root, then type and class.
	i, name := 12, ""
	for i < len(q) && q[i] != 0 {
		l := int(q[i])
		if i+1+l > len(q) {
			return nil
		}
		name += strings.ToLower(string(q[i+1:i+1+l])) + "."
		i += 1 + l
	}
	if i+5 > len(q) {
		return nil
	}
	qtype := binary.BigEndian.Uint16(q[i+1:])
	question := q[12 : i+5]
	if d.silent[name] {
		return nil
	}
	rcode := uint16(0)
	var ans []netip.Addr
	switch addrs, ok := d.a[name]; {
	case d.fail[name]:
		rcode = 2
	case !ok:
		rcode = 3
	case qtype == 1: // A; AAAA gets no answer
		ans = addrs
	}
	r := binary.BigEndian.AppendUint16(nil, binary.BigEndian.Uint16(q))
	r = binary.BigEndian.AppendUint16(r, 0x8180|rcode) // a response, recursion desired and available
	r = binary.BigEndian.AppendUint16(r, 1)
	r = binary.BigEndian.AppendUint16(r, uint16(len(ans)))
	r = append(r, 0, 0, 0, 0)
	r = append(r, question...)
	for _, a := range ans {
		r = append(r, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4) // the question's name, A, IN, TTL 60
		r = append(r, a.AsSlice()...)
	}
	return r
}

// fullListenerAt listens on ap with a full accept queue: SYNs to it are
// dropped, so a connect to it waits for its timeout.
func fullListenerAt(t *testing.T, ap netip.AddrPort) error {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}); err != nil {
		return err
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	fill, err := net.Dial("tcp", ap.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fill.Close() })
	return nil
}

// fullListeners are full listeners on one port of each of addrs.
func fullListeners(t *testing.T, addrs ...netip.Addr) uint16 {
	t.Helper()
	for range 20 {
		port := uint16(20000 + time.Now().UnixNano()%20000)
		ok := true
		for _, a := range addrs {
			if err := fullListenerAt(t, netip.AddrPortFrom(a, port)); err != nil {
				ok = false
				break
			}
		}
		if ok {
			return port
		}
	}
	t.Fatal("no port free on every address")
	return 0
}

// socksName connects to s's listener x and asks SOCKS5 for name:port,
// within the given time; the connection is the caller's to close.
func socksName(t *testing.T, s *Server, name string, port uint16, within time.Duration) (net.Conn, error) {
	t.Helper()
	c, err := net.Dial("tcp", s.Addr("x").String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(within))
	_, err = socks5.ClientHandshake(c, c, socks5.Addr{Name: name, Port: port}, "", "")
	return c, err
}

// helloServer listens on ap until the test ends and writes "hello" to
// each connection, then closes it; it returns the address.
func helloServer(t *testing.T, ap netip.AddrPort) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", ap.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hello"))
			c.Close()
		}
	}()
	return addrPortOf(l.Addr())
}

// TestExplicitNameBudget: the addresses of a name are raced within one
// connect_timeout. A name with three unanswering addresses and a budget
// of 1s tries all three within it, each ending when it ends; with 60s,
// the third address, which answers, serves the client long before the
// first two time out (tried in turn with a share each, it would have
// waited 40s, past the client's 30s), and the two given up are not
// counted as timeouts.
func TestExplicitNameBudget(t *testing.T) {
	a2, a3, a4 := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"), netip.MustParseAddr("127.0.0.4")
	port := fullListeners(t, a2, a3)
	helloServer(t, netip.AddrPortFrom(a4, port))
	var six []netip.Addr
	for i := range 6 {
		six = append(six, netip.AddrFrom4([4]byte{127, 0, 0, byte(2 + i)}))
	}
	full := fullListeners(t, six...)
	dns := &testDNS{a: map[string][]netip.Addr{"three.test.": {a2, a3, a4}, "six.test.": six}}
	for _, tc := range []struct {
		name     string
		host     string
		budget   string
		port     uint16
		reply    socks5.Reply
		timeouts uint64
	}{
		{"all unanswering", "three.test", "1s", full, socks5.HostUnreachable, 3},
		{"third answers", "three.test", "60s", port, socks5.Succeeded, 0},
		{"six unanswering, four at once", "six.test", "1s", full, socks5.HostUnreachable, maxRacing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, `
admin: {listen: off}
limits: {connect_timeout: `+tc.budget+`}
listeners:
  - {name: x, listen: "127.0.0.1:0", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.2/32", "127.0.0.3/32", "127.0.0.4/32", "127.0.0.5/32", "127.0.0.6/32", "127.0.0.7/32"]}
`)
			s.resolver = dns.start(t)
			runServer(t, s)
			c, err := socksName(t, s, tc.host, tc.port, 30*time.Second)
			defer c.Close()
			var re *socks5.ReplyError
			switch {
			case tc.reply == socks5.Succeeded && err != nil:
				t.Errorf("reply: %v, want success", err)
			case tc.reply == socks5.Succeeded:
				b := make([]byte, 5)
				if _, err := c.Read(b); err != nil || string(b) != "hello" {
					t.Errorf("read %q, %v through the third address", b, err)
				}
			case !errors.As(err, &re) || re.Reply != tc.reply:
				t.Errorf("reply: %v, want %v", err, tc.reply)
			}
			if got := s.metrics.errors.With("connect_timeout").Value(); got != tc.timeouts {
				t.Errorf("%d connects timed out, want %d", got, tc.timeouts)
			}
		})
	}
}

// TestExplicitNameResolution: why a name did not resolve reaches the
// client in its protocol: a name that does not exist is unreachable
// (SOCKS5 reply 4, HTTP 502), a resolver that does not answer within
// connect_timeout a timeout (reply 4, HTTP 504), a resolver's failure a
// general failure (reply 1, HTTP 502); and the relay counts each.
func TestExplicitNameResolution(t *testing.T) {
	dns := &testDNS{
		silent: map[string]bool{"silent.test.": true},
		fail:   map[string]bool{"fail.test.": true},
	}
	s := newServer(t, `
admin: {listen: off}
limits: {connect_timeout: 500ms}
listeners:
  - {name: x, listen: "127.0.0.1:0", protocols: [socks5, http], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.2/32", "127.0.0.3/32", "127.0.0.4/32"]}
`)
	s.resolver = dns.start(t)
	runServer(t, s)
	for _, tc := range []struct {
		name   string
		reply  socks5.Reply
		status int
		kind   string
	}{
		{"missing.test", socks5.HostUnreachable, http.StatusBadGateway, "resolve_unreachable"},
		{"silent.test", socks5.HostUnreachable, http.StatusGatewayTimeout, "resolve_timeout"},
		{"fail.test", socks5.GeneralFailure, http.StatusBadGateway, "resolve_failure"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := s.metrics.errors.With(tc.kind).Value()
			c, err := net.Dial("tcp", s.Addr("x").String())
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(30 * time.Second))
			_, err = socks5.ClientHandshake(c, c, socks5.Addr{Name: tc.name, Port: 80}, "", "")
			c.Close()
			if re := (*socks5.ReplyError)(nil); !errors.As(err, &re) || re.Reply != tc.reply {
				t.Errorf("SOCKS5: %v, want reply %v", err, tc.reply)
			}
			c, err = net.Dial("tcp", s.Addr("x").String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			fmt.Fprintf(c, "CONNECT %s:80 HTTP/1.1\r\nHost: %[1]s:80\r\n\r\n", tc.name)
			b := make([]byte, 64)
			n, _ := c.Read(b)
			if want := fmt.Sprintf("HTTP/1.1 %d ", tc.status); !strings.HasPrefix(string(b[:n]), want) {
				t.Errorf("HTTP: %q, want %q", b[:n], want)
			}
			if got := s.metrics.errors.With(tc.kind).Value() - before; got != 2 {
				t.Errorf("%s counted %d times, want 2", tc.kind, got)
			}
		})
	}
}

// TestInterleave: a name's addresses are raced with the families in
// turn, from the first address's, each in the resolver's order.
func TestInterleave(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"1.0.0.1", "1.0.0.1"},
		{"1.0.0.1 1.0.0.2 1.0.0.3", "1.0.0.1 1.0.0.2 1.0.0.3"},
		{"::1 ::2 1.0.0.1 1.0.0.2", "::1 1.0.0.1 ::2 1.0.0.2"},
		{"1.0.0.1 ::1 ::2 ::3", "1.0.0.1 ::1 ::2 ::3"},
		{"1.0.0.1 1.0.0.2 1.0.0.3 ::1", "1.0.0.1 ::1 1.0.0.2 1.0.0.3"},
	} {
		var in []netip.AddrPort
		for _, a := range strings.Fields(tc.in) {
			in = append(in, netip.AddrPortFrom(netip.MustParseAddr(a), 80))
		}
		var got []string
		for _, d := range interleave(in) {
			got = append(got, d.Addr().String())
		}
		if g := strings.Join(got, " "); g != tc.want {
			t.Errorf("interleave(%s) = %s, want %s", tc.in, g, tc.want)
		}
	}
}

// TestExplicitNameSlotHandedOn: an attempt at a name's address that
// fails gives its connect slot back before the race hears of it, so the
// next address can take it: with max_pending 1, a name whose first
// address refuses and whose second answers serves its client every time.
func TestExplicitNameSlotHandedOn(t *testing.T) {
	a2, a3 := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")
	echo, err := net.Listen("tcp", netip.AddrPortFrom(a3, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := addrPortOf(echo.Addr()).Port() // nothing listens on a2 there: refused
	dns := &testDNS{a: map[string][]netip.Addr{"two.test.": {a2, a3}}}
	s := newServer(t, `
admin: {listen: off}
limits: {connect_timeout: 10s, max_pending: 1}
listeners:
  - {name: x, listen: "127.0.0.1:0", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.2/32", "127.0.0.3/32"]}
`)
	s.resolver = dns.start(t)
	runServer(t, s)
	for i := range 200 {
		c, err := net.Dial("tcp", s.Addr("x").String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		_, err = socks5.ClientHandshake(c, c, socks5.Addr{Name: "two.test", Port: port}, "", "")
		c.Close()
		if err != nil {
			t.Fatalf("connect %d: %v, want success through the second address", i, err)
		}
	}
}

// TestExplicitNameVerdictEndsRace: a verdict that another address cannot
// change (here the relay a route goes through is down) ends the race at
// once: the attempts still running are given up, not waited for until
// connect_timeout, and are not counted as timeouts.
func TestExplicitNameVerdictEndsRace(t *testing.T) {
	psk := writeTestFile(t, t.TempDir(), "psk", "chain test key 0123456789\n")
	a2, a3 := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")
	port := fullListeners(t, a2) // a2 does not answer
	dns := &testDNS{a: map[string][]netip.Addr{"two.test.": {a2, a3}}}
	s := newServer(t, fmt.Sprintf(`
admin: {listen: off}
auth: {psk_file: %q}
limits: {connect_timeout: 60s}
listeners:
  - {name: x, listen: "127.0.0.1:0", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.2/32", "127.0.0.3/32"]}
routes:
  - {dst: ["127.0.0.3/32"], via: [%q]}
`, psk, freeLoopback(t)))
	s.resolver = dns.start(t)
	runServer(t, s)
	c, err := socksName(t, s, "two.test", port, 10*time.Second)
	defer c.Close()
	if re := (*socks5.ReplyError)(nil); !errors.As(err, &re) || re.Reply != socks5.GeneralFailure {
		t.Errorf("reply: %v, want %v (the relay down, within the client's 10s)", err, socks5.GeneralFailure)
	}
	if got := s.metrics.errors.With("connect_timeout").Value(); got != 0 {
		t.Errorf("%d connects timed out, want 0", got)
	}
}

// TestExplicitNameChainMovesOn: through a chain, the last relay's
// refusal or unreachable for one of a name's addresses is about that
// address, as this relay's own would be: the next address is tried
// through the chain and serves the client (a far relay with no IPv6
// route must not fail a name that has IPv4 addresses too).
func TestExplicitNameChainMovesOn(t *testing.T) {
	psk := writeTestFile(t, t.TempDir(), "psk", "chain test key 0123456789\n")
	a2, a3 := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")
	port := helloServer(t, netip.AddrPortFrom(a3, 0)).Port() // nothing listens on a2 there: refused
	hop := startLoopback(t, fmt.Sprintf(`
admin: {listen: off}
auth: {psk_file: %q}
listeners:
  - {name: hop, listen: "127.0.0.1:0", protocols: [convert], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.2/32", "127.0.0.3/32"]}
`, psk))
	dns := &testDNS{a: map[string][]netip.Addr{"two.test.": {a2, a3}}}
	s := newServer(t, fmt.Sprintf(`
admin: {listen: off}
auth: {psk_file: %q}
limits: {connect_timeout: 60s}
listeners:
  - {name: x, listen: "127.0.0.1:0", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.2/32", "127.0.0.3/32"]}
routes:
  - {via: [%q]}
`, psk, hop.Addr("hop").String()))
	s.resolver = dns.start(t)
	runServer(t, s)
	c, err := socksName(t, s, "two.test", port, 10*time.Second)
	defer c.Close()
	if err != nil {
		t.Fatalf("reply: %v, want success through the second address", err)
	}
	b := make([]byte, 5)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "hello" {
		t.Errorf("read %q, %v through the second address", b, err)
	}
}

// TestExplicitNameClientGone: a client that resets while its name's
// addresses are raced ends every attempt at once, and counts as its own
// reset, not as failed connects.
func TestExplicitNameClientGone(t *testing.T) {
	a2, a3 := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")
	port := fullListeners(t, a2, a3)
	dns := &testDNS{a: map[string][]netip.Addr{"two.test.": {a2, a3}}}
	s := newServer(t, `
admin: {listen: off}
limits: {connect_timeout: 60s}
listeners:
  - {name: x, listen: "127.0.0.1:0", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.2/32", "127.0.0.3/32"]}
`)
	s.resolver = dns.start(t)
	runServer(t, s)
	c, err := net.Dial("tcp", s.Addr("x").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := []byte{5, 1, 0, 5, 1, 0, 3, byte(len("two.test"))}
	req = append(append(req, "two.test"...), byte(port>>8), byte(port))
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return s.pending.Load() == 2 }) // both addresses tried
	resetConn(c.(*net.TCPConn))
	waitReleased(t, s, "", "the client reset")
	wantResetClient(t, s, "", "x", "direct", 1)
}

// flowRecords is a slog.Handler that hands on the attributes of each
// "flow" record (the line of an ended flow).
type flowRecords chan map[string]string

func (flowRecords) Enabled(context.Context, slog.Level) bool { return true }
func (h flowRecords) WithAttrs([]slog.Attr) slog.Handler     { return h }
func (h flowRecords) WithGroup(string) slog.Handler          { return h }
func (h flowRecords) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "flow" {
		return nil
	}
	m := map[string]string{}
	r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
	select {
	case h <- m:
	default:
	}
	return nil
}

// TestExplicitNameFailureNamesItsAddress: a name whose race fails ends
// with the error of one of its addresses (the last in the race's order
// that failed), and the flow's line names that address as its dst, as
// its error does. Here the first address does not answer and the second
// refuses: the answer is the refusal. The line named the first address,
// where the race had begun, beside the second's refusal.
func TestExplicitNameFailureNamesItsAddress(t *testing.T) {
	a2, a3 := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")
	port := fullListeners(t, a2) // a2 does not answer; nothing listens on a3 there: refused
	dns := &testDNS{a: map[string][]netip.Addr{"two.test.": {a2, a3}}}
	s := newServer(t, `
admin: {listen: off}
limits: {connect_timeout: 1s}
listeners:
  - {name: x, listen: "127.0.0.1:0", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.2/32", "127.0.0.3/32"]}
`)
	records := make(flowRecords, 1)
	s.log = slog.New(records)
	s.resolver = dns.start(t)
	runServer(t, s)
	c, err := socksName(t, s, "two.test", port, 20*time.Second)
	defer c.Close()
	if re := (*socks5.ReplyError)(nil); !errors.As(err, &re) || re.Reply != socks5.ConnectionRefused {
		t.Fatalf("reply: %v, want %v (the second address's)", err, socks5.ConnectionRefused)
	}
	select {
	case m := <-records:
		want := netip.AddrPortFrom(a3, port).String()
		if m["dst"] != want || !strings.Contains(m["err"], want) {
			t.Errorf("the flow's line: dst %s, err %q; want dst %s, whose error it is", m["dst"], m["err"], want)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no flow line")
	}
}

// hangingResolver is a resolver whose server never answers, nor lets a
// timeout of its own end the wait (as one with several servers and
// attempts may outlast connect_timeout): only the lookup's context ends
// it. asked counts the queries that reached the server.
func hangingResolver(t *testing.T) (r *net.Resolver, asked *atomic.Int64) {
	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	asked = new(atomic.Int64)
	return &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
		asked.Add(1)
		<-hang
		return nil, errors.New("the test ended")
	}}, asked
}

// TestExplicitNameResolveClientGone: a client that resets while its name
// is looked up, from a resolver that does not answer, ends the lookup at
// once (with connect_timeout 60 s): its flow is given back and counts as
// the client's reset, not as a failed resolution.
func TestExplicitNameResolveClientGone(t *testing.T) {
	s := newServer(t, `
admin: {listen: off}
limits: {connect_timeout: 60s}
listeners:
  - {name: x, listen: "127.0.0.1:0", protocols: [socks5, http], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.2/32"]}
`)
	var asked *atomic.Int64
	s.resolver, asked = hangingResolver(t)
	runServer(t, s)
	for i, proto := range []string{"socks5", "http"} {
		t.Run(proto, func(t *testing.T) {
			c, err := net.Dial("tcp", s.Addr("x").String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			before := asked.Load()
			name := proto + ".test" // a lookup of its own, not the last one's
			if proto == "socks5" {
				req := []byte{5, 1, 0, 5, 1, 0, 3, byte(len(name))}
				_, err = c.Write(append(append(req, name...), 0, 80))
			} else {
				_, err = fmt.Fprintf(c, "CONNECT %s:80 HTTP/1.1\r\nHost: %[1]s:80\r\n\r\n", name)
			}
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, func() bool { return asked.Load() > before })
			resetConn(c.(*net.TCPConn))
			waitReleased(t, s, "", "the client reset") // a lookup holds no connect slot
			if n := s.metrics.flows.With("x", "none", "reset-client").Value(); n != uint64(i+1) {
				t.Errorf("%d flows counted as reset-client, want %d", n, i+1)
			}
			wantNoErrors(t, s, "", "resolve_timeout", "resolve_failure")
		})
	}
}
