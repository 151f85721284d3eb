package relay

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"halfway/convert"
	"halfway/netlab/labtest"
	"halfway/sockopt"
)

// TestMPTCPSubflowOptions: an MPTCP listener's connections take
// legs.client.rto_min on their subflows, though the MPTCP socket refuses
// it; after a reload without it, new connections of the same listening
// socket (whose subflow was given 20 ms) run with the kernel's minimum
// again. The subflow's RTO, after round trips on loopback, sits just above
// whichever minimum applies.
func TestMPTCPSubflowOptions(t *testing.T) {
	labtest.RequireRoot(t)
	if _, err := sockopt.Refused(sockopt.Options{}, true); err != nil {
		t.Skipf("no MPTCP here: %v", err)
	}
	cfgYAML := func(legs string) string {
		return fmt.Sprintf(`
admin: {listen: off}
%s
listeners:
  - {name: fwd, listen: "127.0.0.1:%%d", mode: forward, forward_to: %q, mptcp: true}
`, legs, echoServer(t))
	}
	// The reload keeps the listener's address, so the listening socket
	// stays and its options change in place.
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := free.Addr().(*net.TCPAddr).Port
	free.Close()
	tuned := cfgYAML("legs: {client: {rto_min: 20ms, thin_linear_timeouts: true, user_timeout: 30s}}")
	s := startLoopback(t, fmt.Sprintf(tuned, port))
	s.mu.Lock()
	ln := s.listeners["fwd"]
	s.mu.Unlock()

	// rto returns the relay's client-leg subflow RTOs of a new connection.
	rto := func() []time.Duration {
		t.Helper()
		d := net.Dialer{Timeout: 5 * time.Second}
		d.SetMultipathTCP(true)
		c, err := d.Dial("tcp", s.Addr("fwd").String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if mp, err := c.(*net.TCPConn).MultipathTCP(); err != nil || !mp {
			t.Fatalf("client: MPTCP %v, %v", mp, err)
		}
		b, got := make([]byte, 100), make([]byte, 100)
		for range 200 {
			rand.Read(b)
			if _, err := c.Write(b); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, b) {
				t.Fatalf("echo: %v", err)
			}
		}
		fd := socketTo(t, c.LocalAddr().String())
		if fd < 0 {
			t.Fatal("no client leg socket")
		}
		infos, err := sockopt.SubflowTCPInfo(fd)
		if err != nil || len(infos) == 0 {
			t.Fatalf("client leg subflows: %d, %v", len(infos), err)
		}
		var rtos []time.Duration
		for _, ti := range infos {
			rtos = append(rtos, time.Duration(ti.Rto)*time.Microsecond)
		}
		return rtos
	}
	for _, d := range rto() {
		if d < 20*time.Millisecond || d >= 100*time.Millisecond {
			t.Errorf("with rto_min 20ms: subflow RTO %v, want 20 ms and a little", d)
		}
	}
	if s.subflows == nil {
		t.Fatal("subflow options not loaded")
	}
	if set, failed, err := s.subflows.Counts(); err != nil || set != 1 || failed != 0 {
		t.Errorf("subflow options: %d listening sockets set, %d failed, %v; want 1 and 0", set, failed, err)
	}

	cfg, err := ParseConfig([]byte(fmt.Sprintf(cfgYAML(""), port)))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	same := s.listeners["fwd"] == ln
	s.mu.Unlock()
	if !same {
		t.Fatal("the reload replaced the listener")
	}
	// The namespace's minimum, which the options went back to.
	nsMin := 200 * time.Millisecond
	if ns := sockopt.NamespaceRTOMin(); ns > 0 && ns <= nsMin {
		nsMin = ns
	}
	if nsMin < 100*time.Millisecond {
		t.Skipf("the host's net.ipv4.tcp_rto_min_us is %v: too close to 20 ms to tell", nsMin)
	}
	for _, d := range rto() {
		if d < nsMin {
			t.Errorf("after a reload without rto_min: subflow RTO %v, want the namespace's %v and more", d, nsMin)
		}
	}
}

// TestReloadMPTCP: a reload that turns a listener's mptcp off or on
// replaces its socket, so MPTCP clients see the change.
func TestReloadMPTCP(t *testing.T) {
	labtest.RequireRoot(t)
	if _, err := sockopt.Refused(sockopt.Options{}, true); err != nil {
		t.Skipf("no MPTCP here: %v", err)
	}
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := free.Addr().(*net.TCPAddr).Port
	free.Close()
	echo := echoServer(t)
	cfgYAML := func(mptcp bool) string {
		return fmt.Sprintf(`
admin: {listen: off}
listeners:
  - {name: fwd, listen: "127.0.0.1:%d", mode: forward, forward_to: %q, mptcp: %v}
`, port, echo, mptcp)
	}
	s := startLoopback(t, cfgYAML(true))
	for _, mptcp := range []bool{true, false, true} {
		cfg, err := ParseConfig([]byte(cfgYAML(mptcp)))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Reload(cfg); err != nil {
			t.Fatal(err)
		}
		d := net.Dialer{Timeout: 5 * time.Second}
		d.SetMultipathTCP(true)
		c, err := d.Dial("tcp", s.Addr("fwd").String())
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.(*net.TCPConn).MultipathTCP()
		c.Close()
		if err != nil || got != mptcp {
			t.Errorf("listener with mptcp: %v: the client's connection is MPTCP %v, %v", mptcp, got, err)
		}
	}
}

// TestMPTCPListenerFallback: a plain TCP client on an MPTCP listener is a
// fallback, in the flow's status and the metric; an MPTCP client is not.
func TestMPTCPListenerFallback(t *testing.T) {
	if _, err := sockopt.Refused(sockopt.Options{}, true); err != nil {
		t.Skipf("no MPTCP here: %v", err)
	}
	echo := echoServer(t)
	s := startLoopback(t, fmt.Sprintf(`
admin: {listen: off}
listeners:
  - {name: fwd, listen: "127.0.0.1:0", mode: forward, forward_to: %q, mptcp: true}
`, echo))
	for _, mptcp := range []bool{false, true} {
		d := net.Dialer{Timeout: 5 * time.Second}
		d.SetMultipathTCP(mptcp)
		c, err := d.Dial("tcp", s.Addr("fwd").String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte("x"))
		if _, err := c.Read(make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		fs := s.Flows()
		if len(fs) != 1 || fs[0].ClientMPTCP == nil || fs[0].ClientMPTCP.Active != mptcp {
			t.Errorf("client MPTCP %v: flows %+v, want one with client_mptcp active %v", mptcp, fs, mptcp)
		}
		c.Close()
		waitFor(t, func() bool { return len(s.Flows()) == 0 })
	}
	if n := s.metrics.mptcp.With("fwd", "client", "fallback").Value(); n != 1 {
		t.Errorf("halfway_mptcp_legs_total{leg=client,result=fallback} = %v, want 1", n)
	}
}

// TestMPTCPListenerUnavailable: where the kernel gives a TCP socket for an
// MPTCP listener (net.mptcp.enabled 0), the listener says so and a
// converter does not advertise MPTCP (kind 30); where MPTCP works, it does.
func TestMPTCPListenerUnavailable(t *testing.T) {
	psk := writeTestFile(t, t.TempDir(), "psk", "0123456789abcdef\n")
	cfg, err := ParseConfig([]byte("admin: {listen: off}\nauth: {psk_file: " + psk + "}\nlisteners:\n  - {name: hop, listen: \"127.0.0.1:0\", protocols: [convert], mptcp: true, allow_clients: [127.0.0.1/32], allow_destinations: [127.0.0.1/32]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	has30 := func(st *listenerState) bool {
		return slices.ContainsFunc(supportedExts(st), func(e convert.SupportedExt) bool { return e.Kind == 30 })
	}
	for _, enabled := range []string{"1", "0"} {
		labtest.InNetns(t, func() {
			if err := os.WriteFile("/proc/sys/net/mptcp/enabled", []byte(enabled), 0o644); err != nil {
				t.Skipf("skipped: no MPTCP sysctl here: %v", err)
			}
			l, err := s.openListener(cfg.Listeners[0], cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer l.closeNow()
			if want := enabled == "1"; l.tcpOnly == want || has30(l.cur.Load()) != want {
				t.Errorf("net.mptcp.enabled %s: tcpOnly %v, advertises MPTCP %v", enabled, l.tcpOnly, has30(l.cur.Load()))
			}
		})
	}
}

// TestInheritedSubflowOptions: an MPTCP listener on a socket a service
// manager passed, replaced by a reload (here renamed) whose legs.client
// wants no rto_min any more, takes the same socket, whose listening
// subflow still has the 20 ms its predecessor gave it: the reload resets
// it. A listener of its own starts from a fresh socket and needs none.
func TestInheritedSubflowOptions(t *testing.T) {
	labtest.RequireRoot(t)
	if _, err := sockopt.Refused(sockopt.Options{}, true); err != nil {
		t.Skipf("no MPTCP here: %v", err)
	}
	f, addr := listenFile(t, true)
	echo := echoServer(t)
	cfgYAML := func(name, legs string) string {
		return fmt.Sprintf("admin: {listen: off}\n%s\nlisteners:\n  - {name: %s, listen: %q, mode: forward, forward_to: %q, mptcp: true}\n", legs, name, addr, echo)
	}
	s := startInherited(t, cfgYAML("fwd", "legs: {client: {rto_min: 20ms}}"), f)
	if s.subflows == nil {
		t.Skip("subflow options not loaded (no BPF here)")
	}
	if set, _, err := s.subflows.Counts(); err != nil || set != 1 {
		t.Fatalf("subflow options: %d listening sockets set, %v; want 1", set, err)
	}
	cfg, err := ParseConfig([]byte(cfgYAML("fwd2", "")))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	l := s.listeners["fwd2"]
	s.mu.Unlock()
	if l == nil || !l.inherited.IsValid() {
		t.Fatalf("after the reload: listener %+v, want fwd2 on the inherited socket", l)
	}
	if set, _, err := s.subflows.Counts(); err != nil || set != 2 {
		t.Errorf("after a reload without rto_min: %d listening sockets set, %v; want 2 (the inherited socket's subflow reset)", set, err)
	}
}
