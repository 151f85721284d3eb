package relay

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"halfway/datapath"
	"halfway/netlab/labtest"
	"halfway/sockopt"
)

// TestPlainFlows: a forward listener's flows are plain (accepted and
// dialed with raw system calls, out of Go's poller from the start, so
// halfway_datapath_detached counts them at once), unless the
// configuration needs the general path; either way messages, a burst and
// the FINs cross byte-exact, the admin API lists the flow and the server
// leg gets its keepalive.
func TestPlainFlows(t *testing.T) {
	for _, tc := range []struct {
		name, extra string
		plain       bool
	}{
		{"plain", "", true},
		{"data_path copy", "data_path: copy", false},
		{"park_after", "park_after: 2ms", false},
		{"detach_after 0", "detach_after: 0s", false},
		{"MPTCP route", "routes: [{listener: fwd, mptcp: true}]", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			extra := "legs: {server: {keepalive: 77s}}\n" + tc.extra
			if tc.name != "detach_after 0" {
				extra += "\ndetach_after: 1h # no flow of the general path detaches during the test"
			}
			s := forwardRelay(t, extra)
			before := datapath.ReadStats().Detached
			c, roundTrip := dialEcho(t, s)
			roundTrip(1)
			if d := datapath.ReadStats().Detached - before; (d == 1) != tc.plain {
				t.Errorf("flows detached from the start: %d; plain %v", d, tc.plain)
			}
			if n := s.metrics.plain.With("fwd").Value(); (n == 1) != tc.plain {
				t.Errorf("halfway_flows_plain_total %d; plain %v", n, tc.plain)
			}
			// (The counters move just after the bytes.)
			waitFor(t, func() bool { fs := s.Flows(); return len(fs) == 1 && fs[0].Up == 1 && fs[0].Down == 1 })
			if fs := s.Flows(); len(fs) != 1 || fs[0].Client != c.LocalAddr().String() || fs[0].Route != "direct" {
				t.Errorf("admin flows: %+v", fs)
			}
			// The server leg's keepalive comes once the flow has lasted
			// a second, on its raw descriptor if the flow is plain.
			waitFor(t, func() bool {
				fd := socketTo(t, s.state.Load().cfg.Listeners[0].ForwardTo)
				return fd >= 0 && getsockopt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE) == 1 && getsockopt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE) == 77
			})
			roundTrip(100)
			roundTrip(3 << 20)
			roundTrip(10)
			c.(*net.TCPConn).CloseWrite()
			if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
				t.Errorf("after the FIN: %d bytes, %v", len(rest), err)
			}
			waitFor(t, func() bool { return len(s.Flows()) == 0 })
			if n := s.metrics.flows.With("fwd", "direct", "closed").Value(); n != 1 {
				t.Errorf("flows closed: %d, want 1", n)
			}
		})
	}
}

// socketTo finds the descriptor of this process's socket connected to
// addr (host:port), or -1.
func socketTo(t *testing.T, addr string) int {
	t.Helper()
	want := netip.MustParseAddrPort(addr)
	found := -1
	eachFD(t, func(fd int) bool {
		if sa, err := syscall.Getpeername(fd); err == nil {
			if a, ok := sa.(*syscall.SockaddrInet4); ok && netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)) == want {
				found = fd
			}
		}
		return found < 0
	})
	return found
}

// synSent says whether a socket of this process is connecting (SYN_SENT).
func synSent(t *testing.T) bool {
	t.Helper()
	found := false
	eachFD(t, func(fd int) bool {
		info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		found = err == nil && info.State == unix.BPF_TCP_SYN_SENT
		return !found
	})
	return found
}

// eachFD calls f with the process's descriptors while it returns true.
func eachFD(t *testing.T, f func(fd int) bool) {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		var fd int
		if _, err := fmt.Sscan(e.Name(), &fd); err == nil && !f(fd) {
			return
		}
	}
}

func getsockopt(fd, level, opt int) int {
	v, err := unix.GetsockoptInt(fd, level, opt)
	if err != nil {
		return -1
	}
	return v
}

// fullListener listens on loopback with an accept queue that one
// connection, made here and not accepted, fills: the kernel drops the
// SYNs of the next ones until a connection is taken from the queue.
// accept fails the test when none comes within 20 s.
func fullListener(t *testing.T) (addr netip.AddrPort, accept func() net.Conn) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "full")
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	addr = netip.MustParseAddrPort(ln.Addr().String())
	filler, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { filler.Close() })
	return addr, func() net.Conn {
		t.Helper()
		_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(20 * time.Second))
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
}

// TestPlainConnect: a plain flow whose connect the kernel has not
// finished when connect returns waits for it (and its bytes cross once
// it is done); one that the server refuses or that times out resets the
// client, and the flow's result says why.
func TestPlainConnect(t *testing.T) {
	t.Run("slow", func(t *testing.T) {
		addr, accept := fullListener(t)
		s := startLoopback(t, fmt.Sprintf(`
admin: {listen: off}
listeners:
  - {name: fwd, listen: "127.0.0.1:0", mode: forward, forward_to: %q}
`, addr))
		c, err := net.Dial("tcp", s.Addr("fwd").String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("early")); err != nil {
			t.Fatal(err)
		}
		// Once the relay's SYN is out (and dropped), free the queue for
		// its retransmission, a second later.
		waitFor(t, func() bool { return synSent(t) })
		accept().Close()
		srv := accept()
		defer srv.Close()
		srv.SetDeadline(time.Now().Add(20 * time.Second))
		got := make([]byte, 5)
		if _, err := io.ReadFull(srv, got); err != nil || string(got) != "early" {
			t.Fatalf("server read %q, %v", got, err)
		}
		srv.Write([]byte("answer"))
		srv.Close()
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if b, err := io.ReadAll(c); err != nil || string(b) != "answer" {
			t.Errorf("client read %q, %v", b, err)
		}
	})
	refused := func() netip.AddrPort {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln.Close()
		return netip.MustParseAddrPort(ln.Addr().String())
	}()
	timeout, _ := fullListener(t)
	for _, tc := range []struct {
		name   string
		to     netip.AddrPort
		result string
	}{
		{"refused", refused, "connect_refused"},
		{"timeout", timeout, "connect_timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startLoopback(t, fmt.Sprintf(`
admin: {listen: off}
limits: {connect_timeout: 300ms}
listeners:
  - {name: fwd, listen: "127.0.0.1:0", mode: forward, forward_to: %q}
`, tc.to))
			c, err := net.Dial("tcp", s.Addr("fwd").String())
			if err == nil {
				defer c.Close()
				c.SetReadDeadline(time.Now().Add(20 * time.Second))
				_, err = c.Read(make([]byte, 1))
			} // else the reset came before the dial returned
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("client got %v, want a reset", err)
			}
			waitFor(t, func() bool { return s.metrics.flows.With("fwd", "direct", tc.result).Value() == 1 })
		})
	}
}

// TestLegRTOMin: legs.*.rto_min sets TCP_RTO_MIN_US on the client leg
// (accepted) and the server leg (before its connect), for plain flows and
// the general path alike; legs without it keep the namespace's minimum.
func TestLegRTOMin(t *testing.T) {
	def, err := os.ReadFile("/proc/sys/net/ipv4/tcp_rto_min_us")
	if err != nil {
		t.Skipf("no net.ipv4.tcp_rto_min_us here: %v", err)
	}
	nsMin := strings.TrimSpace(string(def)) + "µs"
	for _, tc := range []struct {
		name, legs     string
		plain          bool
		client, server string // the legs' minimums
	}{
		{"plain", "legs: {client: {rto_min: 20ms}, server: {rto_min: 30ms}}", true, "20ms", "30ms"},
		{"general path", "legs: {client: {rto_min: 20ms}, server: {rto_min: 30ms}}\ndetach_after: 0s", false, "20ms", "30ms"},
		{"client leg only", "legs: {client: {rto_min: 5ms}}", true, "5ms", nsMin},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := forwardRelay(t, tc.legs)
			before := s.metrics.plain.With("fwd").Value()
			c, roundTrip := dialEcho(t, s)
			roundTrip(100)
			if n := s.metrics.plain.With("fwd").Value() - before; (n == 1) != tc.plain {
				t.Errorf("plain flows %d, want plain %v", n, tc.plain)
			}
			for _, leg := range []struct{ name, peer, want string }{
				{"client", c.LocalAddr().String(), tc.client},
				{"server", s.state.Load().cfg.Listeners[0].ForwardTo, tc.server},
			} {
				fd := socketTo(t, leg.peer)
				if fd < 0 {
					t.Fatalf("no %s leg socket to %s", leg.name, leg.peer)
				}
				// The kernel keeps it in clock ticks (4 ms at HZ=250), rounded up.
				want, _ := time.ParseDuration(leg.want)
				got, err := sockopt.RTOMinFD(fd)
				if err != nil || got < want || got >= want+10*time.Millisecond {
					t.Errorf("%s leg: rto_min %v, %v; want %v", leg.name, got, err, want)
				}
			}
			roundTrip(1 << 20)
		})
	}
}

// TestPlainDialZone: a plain flow's raw connect keeps the IPv6 zone of a
// link-local destination ([fe80::1%hw0]:port), as Go's dialer does for the
// general path: by name or by index.
func TestPlainDialZone(t *testing.T) {
	s := forwardRelay(t, "")
	rt := s.state.Load()
	labtest.InNetns(t, func() {
		ln := linkLocalListener(t)
		defer ln.Close()
		port := ln.Addr().(*net.TCPAddr).Port
		ifi, err := net.InterfaceByName("hw0")
		if err != nil {
			t.Fatal(err)
		}
		for _, zone := range []string{"hw0", strconv.Itoa(ifi.Index)} {
			dst := netip.AddrPortFrom(netip.MustParseAddr("fe80::1%"+zone), uint16(port))
			fd, err := s.dialFD(rt, dst, rt.cfg.Legs.Server, -1)
			if err != nil {
				t.Errorf("dial %v: %v", dst, err)
				continue
			}
			unix.Close(fd)
		}
		if _, err := s.dialFD(rt, netip.MustParseAddrPort("[fe80::1%nosuch0]:80"), rt.cfg.Legs.Server, -1); err == nil {
			t.Errorf("dial with an unknown zone: no error")
		}
	})
}

// TestPlainSelfConnect: a plain flow's dial to a port of this host that
// nothing listens on, in the ephemeral range, can connect the socket to
// itself; the dial reports it as refused. In a namespace whose ephemeral
// range is that one port, such a connect does.
func TestPlainSelfConnect(t *testing.T) {
	s := forwardRelay(t, "")
	rt := s.state.Load()
	labtest.InNetns(t, func() {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte("40000 40000"), 0o644); err != nil {
			t.Fatal(err)
		}
		s.ephemeral.Store(ephemeralRange())
		if r := s.ephemeral.Load(); r != 40000<<16|40000 {
			t.Fatalf("ephemeral range %d-%d, want 40000-40000", r>>16, r&0xffff)
		}
		// Without the check the connect succeeds, on itself.
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		err = unix.Connect(fd, &unix.SockaddrInet4{Port: 40000, Addr: [4]byte{127, 0, 0, 1}})
		sa, _ := unix.Getsockname(fd)
		resetFD(fd) // a reset leaves no TIME_WAIT on the one port
		if err != nil || sa.(*unix.SockaddrInet4).Port != 40000 {
			t.Fatalf("raw connect to 127.0.0.1:40000: %v from %+v; want a self-connect", err, sa)
		}
		for i := range 3 {
			fd, err := s.dialFD(rt, netip.MustParseAddrPort("127.0.0.1:40000"), rt.cfg.Legs.Server, -1)
			if err == nil {
				unix.Close(fd)
				t.Fatalf("dial %d to 127.0.0.1:40000: connected, to itself", i)
			}
			if !errors.Is(err, unix.ECONNREFUSED) {
				t.Errorf("dial %d to 127.0.0.1:40000: %v, want connection refused", i, err)
			}
		}
	})
}

// TestPlainEarlySYNOverlap: TestEarlySYNOverlapPlain for a plain flow.
// Where an early-SYN listener's capture overlaps a plain listener's, the
// SYN starts a dial for the first; when the kernel hands the flow to the
// plain listener, servePlain resets that dial at once, as transparent
// does, whether it relays the flow or refuses it, rather than leave the
// server a second connection until the dial expires.
func TestPlainEarlySYNOverlap(t *testing.T) {
	labtest.RequireRoot(t) // IP_TRANSPARENT and the sniffer
	for _, tc := range []struct {
		name, clients string
	}{
		{"relayed", "127.0.0.2/32"},
		{"client not allowed", "127.0.0.3/32"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newLoopServer(t)
			s := startLoopback(t, fmt.Sprintf(`
admin: {listen: off}
listeners:
  - name: early
    listen: "127.0.0.1:0"
    mode: tproxy
    allow_clients: [127.0.0.2/32]
    allow_destinations: ["127.0.0.1/32"]
    capture: {dst: ["127.0.0.1/32"], ports: "%[1]d", install: false}
    early_syn: true
  - name: plain
    listen: "127.0.0.1:0"
    mode: tproxy
    allow_clients: [%[2]s]
    allow_destinations: ["127.0.0.1/32"]
    capture: {dst: ["127.0.0.1/32"], ports: "%[1]d", install: false}
`, srv.dst.Port(), tc.clients))
			l := s.listeners["plain"]
			if !s.plain(l) {
				t.Fatal("the listener's flows are not plain")
			}
			client := freeClient(t)
			s.onSYN(client, srv.dst)
			early := srv.next(t, "the SYN's dial")

			// The accepted socket as accept4 gives it: a descriptor
			// no Go poller watches.
			c := srv.accepted(t, client)
			fd := -1
			rc, _ := c.SyscallConn()
			rc.Control(func(s uintptr) { fd, _ = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) })
			c.Close()
			if fd < 0 {
				t.Fatal("no duplicate of the accepted socket")
			}
			s.servePlain(l, fd, client)
			s.early.mu.Lock()
			pending := s.early.pending[[2]netip.AddrPort{client, srv.dst}] != nil
			s.early.mu.Unlock()
			if pending {
				t.Fatal("the plain flow left the dial its SYN started for early pending (until it expires)")
			}
			early.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := early.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("the early dial's connection: %v, want a reset", err)
			}
		})
	}
}

// TestPlainDstZone: a plain TPROXY flow to a link-local destination keeps
// the destination's zone, as the general path (the socket's local
// address) does: without it, the flow's connect to that destination
// fails (EINVAL), and its log loses the interface.
func TestPlainDstZone(t *testing.T) {
	labtest.InNetns(t, func() {
		ln := linkLocalListener(t)
		defer ln.Close()
		want := netip.AddrPortFrom(netip.MustParseAddr("fe80::1%hw0"), uint16(ln.Addr().(*net.TCPAddr).Port))
		c, err := net.Dial("tcp6", want.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		a, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		st := &listenerState{cfg: ListenerConfig{Mode: "tproxy"}}
		dst, _, err := plainDst(st, int(sysfdOf(t, a.(*net.TCPConn))))
		if err != nil {
			t.Fatal(err)
		}
		if dst.Addr().WithZone("") != want.Addr().WithZone("") || dst.Port() != want.Port() {
			t.Fatalf("destination %v, want %v", dst, want)
		}
		if dst.Addr().Zone() == "" {
			t.Fatalf("destination %v has no zone", dst)
		}
		rt := &runtime{cfg: &Config{}, tunables: Tunables{ConnectTimeout: 5 * time.Second}}
		s := &Server{flowCtx: t.Context()}
		fd, err := s.dialFD(rt, dst, LegConfig{}, -1)
		if err != nil {
			t.Fatalf("dial %v: %v", dst, err)
		}
		unix.Close(fd)
	})
}

func sysfdOf(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	fd := -1
	rc, _ := c.SyscallConn()
	rc.Control(func(s uintptr) { fd = int(s) })
	return fd
}

// linkLocalListener listens at fe80::1 on hw0, a veth made in the calling
// thread's namespace (labtest.InNetns), the address usable at once.
func linkLocalListener(t *testing.T) net.Listener {
	t.Helper()
	link := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "hw0"}, PeerName: "hw1"}
	if err := netlink.LinkAdd(link); err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr("fe80::1/64")
	addr.Flags = unix.IFA_F_NODAD
	if err := netlink.AddrAdd(link, addr); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp6", "[fe80::1%hw0]:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}
