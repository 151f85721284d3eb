package relay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"halfway/netlab/labtest"
)

// TestSYNSnifferHostOnly sends SYN frames to b over a veth pair of its
// own (the lab's links pass frames through a wire that drops VLAN tags):
// the sniffer in b reads the IPv4 ones addressed to b's MAC, untagged or
// priority-tagged (VLAN 0), and not one for another host
// (PACKET_OTHERHOST), nor a SYN-ACK, nor frames the kernel's IP never
// takes though their bytes read as a SYN: another EtherType, and a VLAN b
// has no device for (the core strips the tag before the tap, then drops
// the frame as not b's).
func TestSYNSnifferHostOnly(t *testing.T) {
	lab := labtest.Start(t, `
name: sniff
nodes: [a, b]
links: [{a: a, b: b}]`)
	b := lab.Host("b")
	if out, err := b.Command(t.Context(), "sh", "-c", "ip link add x0 type veth peer name x1 && ip link set x0 up && ip link set x1 up").CombinedOutput(); err != nil {
		t.Fatalf("veth: %v: %s", err, out)
	}
	var sniffer *os.File
	var bMAC, srcMAC net.HardwareAddr
	var fd, ifindex int
	if err := b.Do(func() error {
		x0, err := net.InterfaceByName("x0")
		if err != nil {
			return err
		}
		x1, err := net.InterfaceByName("x1")
		if err != nil {
			return err
		}
		bMAC, srcMAC, ifindex = x0.HardwareAddr, x1.HardwareAddr, x1.Index
		if sniffer, err = openSYNSniffer(); err != nil {
			return err
		}
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sniffer.Close()
	defer unix.Close(fd)
	src, dst := netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("10.99.0.2")
	ipv4 := []byte{0x08, 0x00}
	// send sends an IPv4 TCP segment after the link-layer bytes that
	// follow the source MAC (an EtherType, or a VLAN tag and one).
	send := func(mac net.HardwareAddr, l2 []byte, srcPort uint16, flags byte) {
		t.Helper()
		frame := append(append(append([]byte{}, mac...), srcMAC...), l2...)
		frame = append(frame, ipv4TCP(src, dst, srcPort, 80, flags)...)
		sa := &unix.SockaddrLinklayer{Ifindex: ifindex, Protocol: htons(unix.ETH_P_ALL)}
		if err := unix.Sendto(fd, frame, 0, sa); err != nil {
			t.Fatal(err)
		}
	}
	other := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
	send(other, ipv4, 1001, 0x02)                                     // a SYN for another host's MAC
	send(bMAC, ipv4, 1002, 0x12)                                      // a SYN-ACK
	send(bMAC, []byte{0x88, 0xb5}, 1005, 0x02)                        // not IP
	send(bMAC, []byte{0x81, 0x00, 0x00, 100, 0x08, 0x00}, 1006, 0x02) // VLAN 100
	send(bMAC, []byte{0x81, 0x00, 0xa0, 0, 0x08, 0x00}, 1007, 0x02)   // VLAN 0, priority 5
	send(bMAC, ipv4, 1003, 0x02)                                      // the one to read
	send(other, ipv4, 1004, 0x02)                                     // another for another host
	seen := map[uint16]int{}
	buf := make([]byte, 256)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		sniffer.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := sniffer.Read(buf)
		if err != nil {
			if os.IsTimeout(err) {
				if seen[1003] > 0 && seen[1007] > 0 {
					break
				}
				continue
			}
			t.Fatal(err)
		}
		if client, _, ok := parseSYN(buf[:n]); ok && client.Addr() == src {
			seen[client.Port()]++
		}
	}
	for _, p := range []uint16{1003, 1007} {
		if seen[p] != 1 {
			t.Errorf("the SYN addressed to b from port %d read %d times, want once", p, seen[p])
		}
	}
	for _, p := range []uint16{1001, 1002, 1004, 1005, 1006} {
		if seen[p] > 0 {
			t.Errorf("segment from port %d read: only IP SYNs addressed to this host should pass", p)
		}
	}
}

// ipv4TCP builds an IPv4 packet holding a bare TCP header with flags.
func ipv4TCP(src, dst netip.Addr, sport, dport uint16, flags byte) []byte {
	p := make([]byte, 40)
	p[0], p[8], p[9] = 0x45, 64, unix.IPPROTO_TCP
	binary.BigEndian.PutUint16(p[2:], 40)
	copy(p[12:16], src.AsSlice())
	copy(p[16:20], dst.AsSlice())
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(p[10:], ^uint16(sum))
	binary.BigEndian.PutUint16(p[20:], sport)
	binary.BigEndian.PutUint16(p[22:], dport)
	p[32], p[33] = 5<<4, flags
	return p
}

// TestEarlySYNBurst: SYNs read in a burst start early dials only while
// fewer than half of max_pending connects are in progress, so the dials
// of accepted flows keep the other half, and no early dial fails for want
// of a connect (its client would be reset when accepted). The SYNs are
// handed to onSYN directly, as the sniffer's loop does; their connects go
// to a loopback listener whose accept queue is full, where they wait.
func TestEarlySYNBurst(t *testing.T) {
	labtest.RequireRoot(t) // IP_TRANSPARENT and the sniffer
	dst, _ := fullListener(t)
	s := startLoopback(t, fmt.Sprintf(`
admin: {listen: off}
limits: {max_pending: 100, max_early: 1000, connect_timeout: 30s}
listeners:
  - name: tp
    listen: "127.0.0.1:0"
    mode: tproxy
    allow_clients: [10.200.0.0/16]
    allow_destinations: ["127.0.0.1/32"]
    capture: {dst: ["127.0.0.1/32"], ports: "%d", install: false}
    early_syn: true
`, dst.Port()))
	const syns = 400
	for i := range syns {
		client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 200, byte(i / 200), byte(1 + i%200)}), 40000)
		s.onSYN(client, dst)
	}
	if n := s.pending.Load(); n != 50 {
		t.Errorf("after %d SYNs, %d connects in progress; want 50 (half of max_pending)", syns, n)
	}
	time.Sleep(200 * time.Millisecond) // the dials' goroutines run
	s.early.mu.Lock()
	entered, failed := len(s.early.pending), 0
	var firstErr error
	for _, e := range s.early.pending {
		select {
		case <-e.done:
			if failed++; firstErr == nil {
				firstErr = e.err
			}
		default:
		}
	}
	s.early.mu.Unlock()
	if entered != 50 || failed != 0 {
		t.Errorf("%d early dials entered, %d already failed (%v); want 50 waiting", entered, failed, firstErr)
	}
	if !s.beginConnect() {
		t.Error("an accepted flow's dial found no connect free")
	} else {
		s.endConnect()
	}
}

// loopServer is a server on loopback for early-SYN tests that serve flows
// in process: the dials of the relay and the tests' clients reach it, and
// conns has what it accepted.
type loopServer struct {
	dst   netip.AddrPort
	conns chan net.Conn
}

func newLoopServer(t *testing.T) *loopServer {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ls := &loopServer{dst: netip.MustParseAddrPort(ln.Addr().String()), conns: make(chan net.Conn, 8)}
	go acceptEach(ln, func(c net.Conn) { ls.conns <- c })
	return ls
}

// next is the next connection the server accepted: what, which the test
// waits for.
func (ls *loopServer) next(t *testing.T, what string) net.Conn {
	t.Helper()
	select {
	case c := <-ls.conns:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(10 * time.Second):
		t.Fatalf("the server never saw %s", what)
		return nil
	}
}

// accepted is a connection as a TPROXY listener accepts it: from client
// to the server's address. It is the server's side of a connection the
// test makes from client, as transparent serves it.
func (ls *loopServer) accepted(t *testing.T, client netip.AddrPort) *net.TCPConn {
	t.Helper()
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(client)}
	cc, err := d.Dial("tcp4", ls.dst.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return ls.next(t, "the client").(*net.TCPConn)
}

// freeClient is an address of 127.0.0.2 with a port no socket holds.
func freeClient(t *testing.T) netip.AddrPort {
	t.Helper()
	free, err := net.Listen("tcp4", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer free.Close()
	return netip.MustParseAddrPort(free.Addr().String())
}

// TestEarlySYNReloadWindow: a SYN read while a reload is under way, not
// yet in force, starts a dial that follows the old configuration (here, no
// PROXY header). The flow accepted after the reload must not take it: it
// connects as the new configuration says. The window is held open by
// holding s.mu, which the reload takes to apply; the SYN is handed to
// onSYN directly, as the sniffer's loop does, and transparent serves the
// flow. (The reload swaps the runtime, then the listeners' states, both
// under s.mu: a SYN between the two is told apart the same way.)
func TestEarlySYNReloadWindow(t *testing.T) {
	labtest.RequireRoot(t) // IP_TRANSPARENT and the sniffer
	srv := newLoopServer(t)
	dst := srv.dst
	cfg := loopEarlyConfig(dst.Port())
	s := startLoopback(t, cfg)
	client := freeClient(t)

	reloaded := reloadHeld(t, s, strings.Replace(cfg, "early_syn: true", "early_syn: true\n    proxy_protocol: true", 1))
	s.onSYN(client, dst)
	s.mu.Unlock()
	if err := <-reloaded; err != nil {
		t.Fatal(err)
	}
	early := srv.next(t, "the SYN's dial")

	c := srv.accepted(t, client)
	l := s.listeners["tp"]
	f := &flow{listener: "tp", l: l, client: client}
	server, err := s.transparent(l, l.cur.Load(), s.state.Load(), f, c)
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	if _, err := server.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	got := early
	if addrPortOf(server.LocalAddr()) != addrPortOf(early.RemoteAddr()) {
		got = srv.next(t, "the flow's dial")
	}
	got.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 1)
	if _, err := io.ReadFull(got, b); err != nil {
		t.Fatal(err)
	}
	if b[0] != '\r' { // the PROXY v2 signature's first byte
		t.Errorf("the server's first byte %q, want the PROXY header the reload turned on (the flow took the dial its SYN started during the reload)", b)
	}
}

// TestEarlySYNOverlapPlain: where an early-SYN listener's capture and
// that of a listener without early SYN overlap, the SYN starts a dial for
// the first; when the kernel hands the flow to the second, its accept
// resets that dial at once (as an early-SYN listener's would), rather than
// leave the server a connection until the dial expires, for every flow.
func TestEarlySYNOverlapPlain(t *testing.T) {
	labtest.RequireRoot(t) // IP_TRANSPARENT and the sniffer
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
    allow_clients: [127.0.0.2/32]
    allow_destinations: ["127.0.0.1/32"]
    capture: {dst: ["127.0.0.1/32"], ports: "%[1]d", install: false}
`, srv.dst.Port()))
	client := freeClient(t)
	s.onSYN(client, srv.dst)
	early := srv.next(t, "the SYN's dial")

	c := srv.accepted(t, client)
	l := s.listeners["plain"]
	f := &flow{listener: "plain", l: l, client: client}
	server, err := s.transparent(l, l.cur.Load(), s.state.Load(), f, c)
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	s.early.mu.Lock()
	pending := s.early.pending[[2]netip.AddrPort{client, srv.dst}] != nil
	s.early.mu.Unlock()
	if pending {
		t.Fatal("the flow accepted on plain left the dial its SYN started for early pending (until it expires)")
	}
	if n := s.metrics.early.With("dropped").Value(); n != 1 {
		t.Errorf("early SYN dials counted dropped: %d, want 1 (every dial ends counted)", n)
	}
	early.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := early.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the early dial's connection: %v, want a reset", err)
	}
}

// TestEarlySYNSnifferRestart: a sniffer that stopped on read errors is
// opened anew by the next reload; it used to stay stopped until the relay
// restarted, every flow dialing at accept.
func TestEarlySYNSnifferRestart(t *testing.T) {
	labtest.RequireRoot(t) // IP_TRANSPARENT and the sniffer
	cfg := loopEarlyConfig(80)
	s := startLoopback(t, cfg)
	// Every read of a directory fails (EISDIR): the sniffer retries, then
	// gives up.
	bad, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.stopEarly()
	s.startEarly(bad)
	stopped := s.early.stopped
	s.mu.Unlock()
	select {
	case <-stopped:
	case <-time.After(20 * time.Second):
		t.Fatal("the sniffer did not give up on read errors")
	}

	if err := reloadYAML(t, s, cfg); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.early.sniffer == bad {
		t.Fatal("after a reload, early SYN still reads the sniffer that stopped on errors")
	}
	select {
	case <-s.early.stopped:
		t.Fatal("after a reload, the sniffer is stopped")
	default:
	}
}

// loopEarlyConfig is a relay with one early-SYN tproxy listener, tp, on
// loopback, capturing flows to 127.0.0.1:port without rules of its own.
// allow_clients leaves out 127.0.0.1: the relay's own dials, looped back
// past the sniffer, start nothing.
func loopEarlyConfig(port uint16) string {
	return fmt.Sprintf(`
admin: {listen: off}
listeners:
  - name: tp
    listen: "127.0.0.1:0"
    mode: tproxy
    allow_clients: [127.0.0.2/32]
    allow_destinations: ["127.0.0.1/32"]
    capture: {dst: ["127.0.0.1/32"], ports: "%d", install: false}
    early_syn: true
`, port)
}

// TestEarlySYNClientGone: a flow whose client resets while the dial its
// SYN started is in progress (to a server that does not answer, with
// connect_timeout 60 s) ends that dial at once: its connect slot
// (max_pending) and the flow are given back, and it counts as the
// client's reset, not as a failed connect. The SYN is handed to onSYN
// directly, as the sniffer's loop does, and serve takes the flow as
// accept does, on a socket whose own address is the server's (as TPROXY
// gives it).
func TestEarlySYNClientGone(t *testing.T) {
	labtest.RequireRoot(t) // IP_TRANSPARENT and the sniffer
	dst, accept := fullListener(t)
	accept().Close() // the filler: the client's connection takes its place
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(freeClient(t))}
	cc, err := d.Dial("tcp4", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := accept().(*net.TCPConn)
	defer c.Close()
	filler, err := net.Dial("tcp4", dst.String()) // the queue full again: the relay's SYNs are dropped
	if err != nil {
		t.Fatal(err)
	}
	defer filler.Close()
	client := addrPortOf(cc.LocalAddr())
	s := startLoopback(t, strings.Replace(loopEarlyConfig(dst.Port()), "admin: {listen: off}", "admin: {listen: off}\nlimits: {connect_timeout: 60s}", 1))
	s.onSYN(client, dst)
	waitFor(t, func() bool { return s.pending.Load() == 1 })
	served := make(chan struct{})
	go func() { defer close(served); s.serve(s.listeners["tp"], c) }()
	waitFor(t, func() bool { return s.active.Load() == 1 })
	resetConn(cc.(*net.TCPConn))
	waitReleased(t, s, "", "the client reset")
	<-served
	if n := s.metrics.early.With("claimed").Value(); n != 1 {
		t.Errorf("early SYN dials claimed: %d, want 1", n)
	}
	wantResetClient(t, s, "", "tp", "direct", 1)
}

// TestEarlySYNAbandonedEndsDial: an early SYN's dial that no flow takes,
// dropped (here as expired), ends at once, rather than holding its
// connect slot until connect_timeout for a server that does not answer,
// and counts as no failed connect.
func TestEarlySYNAbandonedEndsDial(t *testing.T) {
	labtest.RequireRoot(t) // IP_TRANSPARENT and the sniffer
	dst, accept := fullListener(t)
	accept().Close()                              // the filler: the next connection takes its place
	filler, err := net.Dial("tcp4", dst.String()) // the queue full again: the relay's SYNs are dropped
	if err != nil {
		t.Fatal(err)
	}
	defer filler.Close()
	s := startLoopback(t, strings.Replace(loopEarlyConfig(dst.Port()), "admin: {listen: off}", "admin: {listen: off}\nlimits: {connect_timeout: 60s}", 1))
	s.onSYN(freeClient(t), dst)
	waitFor(t, func() bool { return s.pending.Load() == 1 })
	s.early.expire(time.Time{}, s.metrics.early.With("expired"))
	waitReleased(t, s, "", "the dial was dropped") // no flow: its connect slot
	wantNoErrors(t, s, "", "connect_failure", "connect_timeout")
}
