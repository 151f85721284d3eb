package sockopt

import (
	"context"
	"io"
	"net"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"halfway/netlab/labtest"
)

// subflowRTOs reads the retransmission timeout of each subflow of an
// MPTCP connection.
func subflowRTOs(c *net.TCPConn) ([]time.Duration, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var infos []unix.TCPInfo
	var serr error
	if err := rc.Control(func(fd uintptr) { infos, serr = SubflowTCPInfo(int(fd)) }); err != nil {
		return nil, err
	}
	var rtos []time.Duration
	for _, ti := range infos {
		rtos = append(rtos, time.Duration(ti.Rto)*time.Microsecond)
	}
	return rtos, serr
}

// openSubflows loads the programs for a test, which needs root.
func openSubflows(t *testing.T) *Subflows {
	t.Helper()
	labtest.RequireRoot(t)
	s, err := OpenSubflows()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// set gives a listener o and checks that one listening socket took it.
func set(t *testing.T, s *Subflows, ln net.Listener, o SubflowOptions) {
	t.Helper()
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var serr error
	if err := rc.Control(func(fd uintptr) { n, serr = s.Set(int(fd), o) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil || n != 1 {
		t.Fatalf("set %+v: %d listening sockets, %v; want 1", o, n, serr)
	}
}

// TestSubflows accepts Multipath TCP connections of two subflows (the
// second a join) in a namespace of their own, on a listener given a 20 ms
// minimum RTO, on the same listener after its options went back to the
// kernel's, and on one never given any, on the same port of another
// address. After some round trips, every subflow's retransmission timeout
// sits near the minimum that applies: 20 ms, then 200.
func TestSubflows(t *testing.T) {
	s := openSubflows(t)
	labtest.InNetns(t, func() {
		// A second subflow, a join, from 127.0.0.2.
		for _, args := range [][]string{{"limits", "set", "subflow", "2", "add_addr_accepted", "2"}, {"endpoint", "add", "127.0.0.2", "dev", "lo", "subflow"}} {
			if out, err := exec.Command("ip", append([]string{"mptcp"}, args...)...).CombinedOutput(); err != nil {
				t.Fatalf("ip mptcp %v: %v: %s", args, err, out)
			}
		}
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(true)
		listen := func(addr string) net.Listener {
			ln, err := lc.Listen(context.Background(), "tcp4", addr)
			if err != nil {
				t.Fatal(err)
			}
			return ln
		}
		registered := listen("127.0.0.1:5000")
		defer registered.Close()
		other := listen("127.0.0.3:5000")
		defer other.Close()
		set(t, s, registered, SubflowOptions{RTOMin: 20 * time.Millisecond, ThinTimeouts: true, UserTimeout: 10 * time.Second})
		check := func(name string, ln net.Listener, lo, hi time.Duration) {
			t.Helper()
			accepted := make(chan *net.TCPConn, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					accepted <- nil
					return
				}
				accepted <- c.(*net.TCPConn)
			}()
			d := net.Dialer{Timeout: 5 * time.Second}
			d.SetMultipathTCP(true)
			c, err := d.Dial("tcp4", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			sc := <-accepted
			if sc == nil {
				t.Fatal("accept failed")
			}
			defer sc.Close()
			if mp, err := sc.MultipathTCP(); err != nil || !mp {
				t.Fatalf("accepted connection: MPTCP %v, %v", mp, err)
			}
			// Round trips, each acknowledged, let the RTO settle toward
			// its floor; the client echoes. The join comes from the path
			// manager's worker, which a busy machine runs late: more
			// rounds until it is up (at most 50 rounds, or 5 s).
			go io.Copy(c, c)
			b := make([]byte, 100)
			var rtos []time.Duration
			for round, start := 0, time.Now(); ; round++ {
				for range 200 {
					if _, err := sc.Write(b); err != nil {
						t.Fatal(err)
					}
					if _, err := io.ReadFull(sc, b); err != nil {
						t.Fatal(err)
					}
				}
				var err error
				if rtos, err = subflowRTOs(sc); err != nil {
					t.Fatal(err)
				}
				if len(rtos) >= 2 || round == 50 || time.Since(start) > 5*time.Second {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			t.Logf("%s: subflow RTOs %v", name, rtos)
			if len(rtos) < 2 {
				t.Fatalf("%s: %d subflows, want 2", name, len(rtos))
			}
			for _, d := range rtos {
				if d < lo || d >= hi {
					t.Errorf("%s: subflow RTO %v, want %v to %v", name, d, lo, hi)
				}
			}
		}
		check("registered", registered, 20*time.Millisecond, 100*time.Millisecond)
		check("not registered", other, 200*time.Millisecond, time.Hour)
		set(t, s, registered, SubflowOptions{})
		check("registered, back to the kernel's options", registered, 200*time.Millisecond, time.Hour)
	})
	if set, failed, err := s.Counts(); err != nil || set != 2 || failed != 0 {
		t.Errorf("counts: %d set, %d failed, %v; want 2 and 0", set, failed, err)
	}
}

// TestSubflowsTCP gives a plain TCP listener the options, whose accepted
// sockets user space can read back: each is there, inherited.
func TestSubflowsTCP(t *testing.T) {
	s := openSubflows(t)
	labtest.InNetns(t, func() {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		set(t, s, ln, SubflowOptions{RTOMin: 20 * time.Millisecond, ThinTimeouts: true, UserTimeout: 7 * time.Second, Pacing: true})
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		sc, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close()
		src, _ := sc.(*net.TCPConn).SyscallConn()
		src.Control(func(fd uintptr) {
			for _, o := range []struct {
				name       string
				level, opt int
				want       int
			}{
				{"TCP_RTO_MIN_US", unix.IPPROTO_TCP, unix.TCP_RTO_MIN_US, 20000},
				{"TCP_THIN_LINEAR_TIMEOUTS", unix.IPPROTO_TCP, unix.TCP_THIN_LINEAR_TIMEOUTS, 1},
				{"TCP_USER_TIMEOUT", unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, 7000},
			} {
				got, err := unix.GetsockoptInt(int(fd), o.level, o.opt)
				// The kernel keeps the minimum RTO in clock ticks, rounded up.
				if err != nil || got < o.want || got > o.want+o.want/4 {
					t.Errorf("accepted socket: %s %d, %v; want %d", o.name, got, err, o.want)
				}
			}
			if got, err := unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_MAX_PACING_RATE); err != nil || got != subflowPacingCap {
				t.Errorf("accepted socket: SO_MAX_PACING_RATE %d, %v; want %d", got, err, uint64(subflowPacingCap))
			}
		})
	})
	if set, failed, err := s.Counts(); err != nil || set != 1 || failed != 0 {
		t.Errorf("counts: %d set, %d failed, %v; want 1 and 0", set, failed, err)
	}
}
