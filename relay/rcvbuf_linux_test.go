package relay

import (
	"net"
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"halfway/netlab/labtest"
)

// TestAcceptedReceiveBuffer: which leg's receive_buffer a listener's
// socket takes for the connections it accepts.
func TestAcceptedReceiveBuffer(t *testing.T) {
	cfg := &Config{}
	cfg.Legs.Client.ReceiveBuffer = 4 << 20
	cfg.Legs.Relay.ReceiveBuffer = 32 << 20
	for _, tc := range []struct {
		name string
		lc   ListenerConfig
		want int
	}{
		{"forward", ListenerConfig{Mode: "forward"}, 4 << 20},
		{"tproxy", ListenerConfig{Mode: "tproxy"}, 4 << 20},
		{"explicit socks5 and http", ListenerConfig{Mode: "explicit", Protocols: []string{"socks5", "http"}}, 4 << 20},
		{"convert hops", ListenerConfig{Mode: "explicit", Protocols: []string{"convert"}}, 32 << 20},
		{"convert and socks5, buffers differ", ListenerConfig{Mode: "explicit", Protocols: []string{"convert", "socks5"}}, 0},
		{"MPTCP", ListenerConfig{Mode: "explicit", Protocols: []string{"convert"}, MPTCP: true}, 0},
	} {
		if got := acceptedReceiveBuffer(cfg, tc.lc); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
	same := &Config{}
	same.Legs.Client.ReceiveBuffer, same.Legs.Relay.ReceiveBuffer = 8<<20, 8<<20
	if got := acceptedReceiveBuffer(same, ListenerConfig{Mode: "explicit", Protocols: []string{"convert", "socks5"}}); got != 8<<20 {
		t.Errorf("convert and socks5, one buffer: %d, want %d", got, 8<<20)
	}
}

// peerWindowScale is the window scale the peer of c advertised in its
// handshake (tcpi_snd_wscale): the scale of the window it can offer c.
func peerWindowScale(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	var ws int
	rc, _ := c.SyscallConn()
	rc.Control(func(fd uintptr) {
		ti, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			t.Fatal(err)
		}
		// x/sys's TCPInfo leaves out the byte after tcpi_options, whose
		// low four bits are tcpi_snd_wscale.
		ws = int((*[8]byte)(unsafe.Pointer(ti))[6] & 0x0f)
	})
	return ws
}

// TestListenerReceiveBuffer: a connection the relay accepts scales its
// window for the leg's receive_buffer, not for net.ipv4.tcp_rmem's
// maximum. With that maximum at 6 MiB (a common default) and
// legs.client.receive_buffer at 32 MiB set only after accept, the window
// scale was 7: the relay could offer at most 8 MiB.
func TestListenerReceiveBuffer(t *testing.T) {
	labtest.RequireRoot(t) // SO_RCVBUFFORCE, a namespace
	s := newServer(t, `
admin: {listen: off}
legs: {client: {receive_buffer: 32MiB}}
listeners:
  - {name: fwd, listen: "127.0.0.1:0", mode: forward, forward_to: "127.0.0.1:9"}
`)
	cfg := s.state.Load().cfg
	labtest.InNetns(t, func() {
		if err := os.WriteFile("/proc/sys/net/ipv4/tcp_rmem", []byte("4096 131072 6291456"), 0o644); err != nil {
			t.Fatal(err)
		}
		l, err := s.openListener(cfg.Listeners[0], cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer l.closeNow()
		c, err := net.Dial("tcp4", l.ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		a, err := l.ln.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		setLeg(l, a, cfg.Legs.Client)
		if ws := peerWindowScale(t, c.(*net.TCPConn)); ws < 8 {
			t.Errorf("the accepted connection's window scale is %d (a window of at most %d KiB), want at least 8 for legs.client.receive_buffer 32MiB", ws, (65535<<ws)>>10)
		}
	})
}

// TestReloadListenerReceiveBuffer: a reload that changes the accepted
// leg's receive_buffer sets it on the listening socket; one that removes
// it opens a new socket (a fixed buffer cannot be unfixed, and accepted
// sockets would inherit it without autotuning).
func TestReloadListenerReceiveBuffer(t *testing.T) {
	labtest.RequireRoot(t) // SO_RCVBUFFORCE
	cfgYAML := func(legs string) string {
		return "admin: {listen: off}\n" + legs + `listeners:
  - {name: fwd, listen: "127.0.0.1:0", mode: forward, forward_to: "127.0.0.1:9"}
`
	}
	s := startLoopback(t, cfgYAML("legs: {client: {receive_buffer: 4MiB}}\n"))
	rcvbuf := func(l *listener) int {
		rc, _ := l.ln.SyscallConn()
		var n int
		rc.Control(func(fd uintptr) { n, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF) })
		return n
	}
	reload := func(legs string) *listener {
		t.Helper()
		if err := reloadYAML(t, s, cfgYAML(legs)); err != nil {
			t.Fatal(err)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.listeners["fwd"]
	}
	s.mu.Lock()
	first := s.listeners["fwd"]
	s.mu.Unlock()
	if got := rcvbuf(first); got != 4<<20 {
		t.Fatalf("listening socket's SO_RCVBUF %d, want %d", got, 4<<20)
	}
	second := reload("legs: {client: {receive_buffer: 8MiB}}\n")
	if second != first {
		t.Errorf("a changed receive_buffer opened a new listening socket")
	}
	if got := rcvbuf(second); got != 8<<20 {
		t.Errorf("after a reload to 8MiB: SO_RCVBUF %d, want %d", got, 8<<20)
	}
	third := reload("")
	if third == second {
		t.Errorf("a reload without receive_buffer kept the socket whose buffer is fixed")
	}
	if third.rcvbuf != 0 {
		t.Errorf("the new socket's rcvbuf %d, want 0", third.rcvbuf)
	}
}

// TestListenerNoDelay: a TCP listener's socket has TCP_NODELAY, so the
// connections plain flows accept from its duplicate have it without a
// setsockopt of their own.
func TestListenerNoDelay(t *testing.T) {
	s := newServer(t, `
admin: {listen: off}
listeners:
  - {name: fwd, listen: "127.0.0.1:0", mode: forward, forward_to: "127.0.0.1:9"}
`)
	cfg := s.state.Load().cfg
	l, err := s.openListener(cfg.Listeners[0], cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.closeNow()
	if l.acceptFile == nil {
		t.Fatal("no accept file: plain flows off")
	}
	c, err := net.Dial("tcp4", l.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fd, _, err := unix.Accept4(int(l.acceptFile.Fd()), unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY); err != nil || v == 0 || !l.nodelay {
		t.Errorf("an accepted connection's TCP_NODELAY: %d, %v (listener nodelay %v); want it inherited", v, err, l.nodelay)
	}
}
