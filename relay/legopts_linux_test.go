package relay

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"halfway/netlab/labtest"
	"halfway/sockopt"
)

// TestLegCongestionOverRoute: a leg's congestion control holds on the
// legs the relay dials even when the route to the destination names
// another (ip route … congctl). The kernel takes the route's when it sends
// the SYN, after the setsockopt made before connect; the legs it accepts
// get theirs after the handshake, so there it held already.
func TestLegCongestionOverRoute(t *testing.T) {
	lab := labtest.Start(t, `
name: legcc
nodes: [a, b]
links: [{a: a, b: b}]`)
	a, b := lab.Host("a"), lab.Host("b")
	dst := netip.AddrPortFrom(b.Ifaces()[0].Addr4.Addr(), 9000)
	if out, err := a.Command(t.Context(), "ip", "route", "add", dst.Addr().String()+"/32", "dev", a.Ifaces()[0].Name, "congctl", "reno").CombinedOutput(); err != nil {
		t.Fatalf("ip route add … congctl reno: %v %s", err, out)
	}
	ln, err := b.Listen("tcp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go acceptEach(ln, func(c net.Conn) { io.Copy(io.Discard, c); c.Close() })
	s := newServer(t, `
admin: {listen: off}
legs: {server: {congestion: cubic}}
listeners:
  - {name: fwd, listen: "127.0.0.1:0", mode: forward, forward_to: "`+dst.String()+`"}
`)
	defer s.cancelAll()
	rt := s.state.Load()
	leg := rt.cfg.Legs.Server
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Do runs its function on a goroutine of its own: no t.Fatal there.
	var plain string
	if err := a.Do(func() error {
		c, err := new(net.Dialer).DialContext(ctx, "tcp", dst.String())
		if err != nil {
			return err
		}
		defer c.Close()
		plain, err = sockopt.Congestion(c.(*net.TCPConn))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// The route's congctl is in force: a dial that sets nothing runs it.
	if plain != "reno" {
		t.Fatalf("a plain dial runs %q, want the route's reno", plain)
	}
	for _, tc := range []struct {
		name string
		dial func() (string, error)
	}{
		{"dial", func() (string, error) {
			c, err := s.dial(ctx, rt, dst, nil, leg, netip.Addr{})
			if err != nil {
				return "", err
			}
			defer c.Close()
			return sockopt.Congestion(c)
		}},
		{"dial with early bytes (Fast Open)", func() (string, error) {
			c, err := s.dial(ctx, rt, dst, []byte("early"), leg, netip.Addr{})
			if err != nil {
				return "", err
			}
			defer c.Close()
			return sockopt.Congestion(c)
		}},
		{"dialFD (plain flows)", func() (string, error) {
			fd, err := s.dialFD(rt, dst, leg, -1)
			if err != nil {
				return "", err
			}
			defer unix.Close(fd)
			return unix.GetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION)
		}},
	} {
		var got string
		err := a.Do(func() (err error) { got, err = tc.dial(); return err })
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got != "cubic" {
			t.Errorf("%s: the leg runs %q, want legs.server.congestion's cubic", tc.name, got)
		}
	}
}
