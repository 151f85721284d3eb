package sockopt

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestFastOpenConnect dials a loopback listener with TCP_FASTOPEN_CONNECT,
// writes the first bytes, waits for the handshake and checks they arrive.
func TestFastOpenConnect(t *testing.T) {
	lc := net.ListenConfig{Control: Options{FastOpenQueue: 16}.Control}
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		b := make([]byte, 5)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _ := c.Read(b)
		got <- string(b[:n])
	}()
	d := net.Dialer{Control: Options{FastOpenConnect: true, UserTimeout: 5 * time.Second}.Control}
	nc, err := d.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := nc.(*net.TCPConn)
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := WaitEstablished(ctx, c); err != nil {
		t.Fatalf("WaitEstablished: %v", err)
	}
	if g := <-got; g != "hello" {
		t.Errorf("server read %q", g)
	}
	// ESTABLISHED, or CLOSE_WAIT once the server has read and closed.
	if info, err := Info(c); err != nil || info.State != 1 && info.State != 8 {
		t.Errorf("TCP_INFO: %v, %v", info, err)
	}
}

// TestWaitEstablishedRefused: a Fast Open connect to a closed port reports
// the refusal once the write has sent the SYN.
func TestWaitEstablishedRefused(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	d := net.Dialer{Control: Options{FastOpenConnect: true}.Control}
	nc, err := d.Dial("tcp4", addr)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return // the kernel connected at once: the refusal came straight away
		}
		t.Fatal(err)
	}
	defer nc.Close()
	c := nc.(*net.TCPConn)
	_, werr := c.Write([]byte("x"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = WaitEstablished(ctx, c)
	if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(werr, syscall.ECONNREFUSED) {
		t.Errorf("write %v, wait %v: want connection refused", werr, err)
	}
}

func TestOriginalDstWithoutRedirect(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: the REDIRECT path is tested in the relay's lab tests; here only the error path")
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			time.Sleep(time.Second)
			c.Close()
		}
	}()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Without conntrack NAT there is no original destination to report.
	if ap, err := OriginalDst(c.(*net.TCPConn)); err == nil && ap.String() != ln.Addr().String() {
		t.Errorf("OriginalDst of an unredirected flow: %v", ap)
	}
}

// TestListenerKeepaliveInherited: what SetListenerKeepalive sets on a
// listening socket, the connections it accepts have without a setsockopt
// of their own (the relay relies on it); turning it off is inherited too.
func TestListenerKeepaliveInherited(t *testing.T) {
	lc := net.ListenConfig{KeepAlive: -1}
	nl, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := nl.(*net.TCPListener)
	defer ln.Close()
	for _, tc := range []struct {
		d     time.Duration
		count int
		on    bool
		idle  int
	}{
		{17 * time.Second, 3, true, 17},
		{0, 0, false, -1},
	} {
		if err := SetListenerKeepalive(ln, tc.d, tc.count); err != nil {
			t.Fatal(err)
		}
		d := net.Dialer{KeepAlive: -1}
		c, err := d.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		a, err := ln.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		on, idle, intvl, count, _, err := Keepalive(a)
		a.Close()
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		if on != tc.on || tc.on && (idle != tc.idle || intvl != tc.idle || count != tc.count) {
			t.Errorf("accepted socket: keepalive %v idle %d intvl %d count %d; want %v %d/%d/%d",
				on, idle, intvl, count, tc.on, tc.idle, tc.idle, tc.count)
		}
	}
}

// TestRefused: a TCP socket takes the options Refused tries; an MPTCP one
// (Linux 6.18) refuses the user timeout, pacing and the minimum RTO, and
// takes what else it is asked.
func TestRefused(t *testing.T) {
	all := Options{UserTimeout: time.Second, RTOMin: 20 * time.Millisecond, Pacing: true, Congestion: "cubic"}
	for _, tc := range []struct {
		name  string
		o     Options
		mptcp bool
		want  []string
	}{
		{"tcp", all, false, nil},
		{"mptcp", all, true, []string{"TCP_USER_TIMEOUT: protocol not available", "TCP_RTO_MIN_US: protocol not available", "SO_MAX_PACING_RATE: operation not supported"}},
		{"mptcp, nothing it refuses", Options{Congestion: "cubic", SendBuffer: 1 << 20}, true, nil},
		{"rto_min below two ticks", Options{RTOMin: time.Microsecond}, false, []string{"TCP_RTO_MIN_US: invalid argument"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Refused(tc.o, tc.mptcp)
			if errors.Is(err, unix.EPROTONOSUPPORT) {
				t.Skipf("no MPTCP here: %v", err)
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Errorf("Refused: %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestTuneMPTCP: on an MPTCP socket, which refuses SO_MAX_PACING_RATE,
// Tune still sets congestion control and buffers, and reports the pacing
// it could not set.
func TestTuneMPTCP(t *testing.T) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(true)
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	d := net.Dialer{}
	d.SetMultipathTCP(true)
	nc, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := nc.(*net.TCPConn)
	if ok, _ := c.MultipathTCP(); !ok {
		t.Skip("skipped: MPTCP is off here (net.mptcp.enabled)")
	}
	err = Tune(c, "reno", 0, 1<<20, true)
	if err == nil || !strings.Contains(err.Error(), "SO_MAX_PACING_RATE") {
		t.Errorf("Tune: %v, want the pacing refused", err)
	}
	if cc, _ := Congestion(c); cc != "reno" {
		t.Errorf("congestion %q after Tune, want reno", cc)
	}
	rc, _ := c.SyscallConn()
	var rcvbuf int
	rc.Control(func(fd uintptr) { rcvbuf, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF) })
	if rcvbuf != 1<<20 {
		t.Errorf("SO_RCVBUF %d after Tune, want %d", rcvbuf, 1<<20)
	}
}

// TestCongestionUsable: reno, built into every kernel, is usable; a name
// no kernel knows is not available.
func TestCongestionUsable(t *testing.T) {
	for _, tc := range []struct {
		name string
		want error
	}{
		{"reno", nil},
		{"warp", ErrCongestionNotAvailable},
	} {
		if err := CongestionUsable(tc.name); !errors.Is(err, tc.want) {
			t.Errorf("CongestionUsable(%q): %v, want %v", tc.name, err, tc.want)
		}
	}
}
