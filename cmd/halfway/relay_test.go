package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// notifiedRelay is a relay run as systemd runs a Type=notify service.
type notifiedRelay struct {
	t    *testing.T
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan error
	// states are what it sent to $NOTIFY_SOCKET, a datagram each.
	states chan string
}

// startNotified runs bin relay -c file with $NOTIFY_SOCKET and env, and
// files as descriptors 3, 4, … with $LISTEN_PID, $LISTEN_FDS and
// $LISTEN_FDNAMES set (socket activation) when there are any.
func startNotified(t *testing.T, bin, file string, env []string, files ...*os.File) *notifiedRelay {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "notify.sock")
	nc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	r := &notifiedRelay{t: t, out: &syncBuffer{}, done: make(chan error, 1), states: make(chan string, 256)}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := nc.Read(buf)
			if err != nil {
				return
			}
			select {
			case r.states <- string(buf[:n]):
			default: // a test that stopped reading
			}
		}
	}()
	if len(files) == 0 {
		r.cmd = exec.Command(bin, "relay", "-c", file, "--grace", "1s")
	} else {
		// LISTEN_PID names the relay's own PID, known only once it runs:
		// the shell's, which exec keeps.
		var names []string
		for _, f := range files {
			names = append(names, f.Name())
		}
		r.cmd = exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" relay -c "$1" --grace 1s`, bin, file)
		env = append(env, fmt.Sprintf("LISTEN_FDS=%d", len(files)), "LISTEN_FDNAMES="+strings.Join(names, ":"))
		r.cmd.ExtraFiles = files
	}
	r.cmd.Env = append(append(os.Environ(), "NOTIFY_SOCKET="+sock), env...)
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	if err := r.cmd.Start(); err != nil {
		nc.Close()
		t.Fatal(err)
	}
	go func() { r.done <- r.cmd.Wait() }()
	t.Cleanup(func() {
		r.cmd.Process.Kill()
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
		}
		nc.Close()
		if t.Failed() {
			t.Logf("relay output:\n%s", r.out.String())
		}
	})
	return r
}

// next waits for the next state that contains want.
func (r *notifiedRelay) next(want string) string {
	r.t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case s := <-r.states:
			if strings.Contains(s, want) {
				return s
			}
		case err := <-r.done:
			r.t.Fatalf("relay exited (%v) before it told %q", err, want)
		case <-timeout:
			r.t.Fatalf("no %q from the relay in 20s", want)
		}
	}
}

// logged waits up to 10 s for the relay's output to hold s: its log
// comes through a pipe, and may come after a state it sent before.
func (r *notifiedRelay) logged(s string) bool {
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if strings.Contains(r.out.String(), s) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// reload writes cfg to file, sends SIGHUP and returns the READY=1 state
// that ends the reload: its STATUS says whether it was applied.
func (r *notifiedRelay) reload(file, cfg string) string {
	r.t.Helper()
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		r.t.Fatal(err)
	}
	r.cmd.Process.Signal(syscall.SIGHUP)
	r.next("RELOADING=1")
	return r.next("READY=1")
}

// TestRelayNotify runs the relay as systemd would with Type=notify: it
// must tell READY=1 once it listens, RELOADING=1 then READY=1 around each
// SIGHUP (with a STATUS naming a refused reload), WATCHDOG=1 while it
// runs, and STOPPING=1 on SIGTERM. (A SIGHUP sent before Go's runtime has started ends any Go
// process; systemd sends none before READY=1.)
func TestRelayNotify(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := l.Addr().String()
	l.Close()
	// Forwarded to an echo server: to a closed port the relay would reset
	// the client, sometimes before its connect had returned.
	echo := startEcho(t)
	cfg := fmt.Sprintf("admin: {listen: off}\nlisteners:\n  - {name: svc, listen: %q, mode: forward, forward_to: %q}\n", listen, echo)
	file := filepath.Join(dir, "relay.yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	r := startNotified(t, bin, file, []string{"WATCHDOG_USEC=200000"})
	cmd, next, done := r.cmd, r.next, r.done

	if s := next("READY=1"); strings.Contains(s, "RELOADING=1") {
		t.Fatalf("first state %q", s)
	}
	next("WATCHDOG=1") // every 100 ms, half of WATCHDOG_USEC

	if err := os.WriteFile(file, []byte(cfg+"log: {level: debug}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGHUP)
	if s := next("RELOADING=1"); !strings.Contains(s, "MONOTONIC_USEC=") {
		t.Errorf("reloading state %q has no MONOTONIC_USEC", s)
	}
	next("STATUS=running")

	if err := os.WriteFile(file, []byte("listeners: [{name: svc}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGHUP)
	if s := next("STATUS=last reload failed"); !strings.Contains(s, "READY=1") {
		t.Errorf("after a refused reload: %q, want READY=1", s)
	}
	if c, err := net.DialTimeout("tcp", listen, 5*time.Second); err != nil {
		t.Errorf("after a refused reload the listener is gone: %v", err)
	} else {
		if _, err := c.Write([]byte("still forwarded\n")); err != nil {
			t.Error(err)
		}
		expectEcho(t, c, "still forwarded\n")
		c.Close()
	}

	cmd.Process.Signal(syscall.SIGTERM)
	next("STOPPING=1")
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("relay after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("relay did not exit 20s after SIGTERM")
	}
}

// TestRelaySocketActivation passes the relay a listening socket as
// systemd socket activation does, while this test keeps it open as
// systemd would: a relay that opened its own would fail to bind. A
// connection made before the relay started waits in the socket's accept
// queue and is served; a reload that gives the listener a new socket
// (forward to SOCKS5) takes the same one again; an IPv6 socket that takes
// IPv4 too is refused with the setting to change.
func TestRelaySocketActivation(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	echo := startEcho(t)
	var lc net.ListenConfig
	lc.SetMultipathTCP(false) // a systemd socket's default
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	listen := ln.Addr().String()

	// Before the relay runs: the kernel completes the handshake.
	early, err := net.DialTimeout("tcp", listen, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer early.Close()
	if _, err := early.Write([]byte("queued before the relay started\n")); err != nil {
		t.Fatal(err)
	}

	forward := fmt.Sprintf("admin: {listen: off}\nlisteners:\n  - {name: svc, listen: %q, mode: forward, forward_to: %q}\n", listen, echo)
	if os.Geteuid() == 0 { // SO_RCVBUFFORCE
		forward += "legs: {client: {receive_buffer: 1MiB}}\n"
	}
	file := filepath.Join(dir, "relay.yaml")
	if err := os.WriteFile(file, []byte(forward), 0o644); err != nil {
		t.Fatal(err)
	}
	r := startNotified(t, bin, file, nil, f)
	r.next("READY=1")
	expectEcho(t, early, "queued before the relay started\n")
	if !r.logged("inherited=true") {
		t.Errorf("the relay did not say it listens on the inherited socket")
	}

	socks := fmt.Sprintf("admin: {listen: off}\nlisteners:\n  - {name: svc, listen: %q, mode: explicit, protocols: [socks5], allow_clients: [127.0.0.0/8], allow_destinations: [127.0.0.1/32]}\n", listen)
	if s := r.reload(file, socks); !strings.Contains(s, "STATUS=running") {
		t.Fatalf("reload to a SOCKS5 listener on the inherited socket: %q", s)
	}
	c, err := net.DialTimeout("tcp", listen, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	eap := netip.MustParseAddrPort(echo)
	req := append([]byte{5, 1, 0, 5, 1, 0, 1}, eap.Addr().AsSlice()...)
	req = binary.BigEndian.AppendUint16(req, eap.Port())
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 2+10)
	if _, err := io.ReadFull(c, reply); err != nil || reply[1] != 0 || reply[3] != 0 {
		t.Fatalf("SOCKS5 through the reloaded listener: % x, %v", reply, err)
	}
	if _, err := c.Write([]byte("through SOCKS5\n")); err != nil {
		t.Fatal(err)
	}
	expectEcho(t, c, "through SOCKS5\n")
	if os.Geteuid() == 0 && !r.logged("keeps the fixed receive buffer") {
		t.Error("a reload that dropped legs.client.receive_buffer did not say the inherited socket keeps it")
	}

	// The listener moves elsewhere: the inherited socket is unused, and
	// the log says so.
	elsewhere := fmt.Sprintf("admin: {listen: off}\nlisteners:\n  - {name: svc, listen: \"127.0.0.1:0\", mode: forward, forward_to: %q}\n", echo)
	if s := r.reload(file, elsewhere); !strings.Contains(s, "STATUS=running") {
		t.Fatalf("reload moving the listener off the inherited socket: %q", s)
	}
	if !r.logged("matches no listener's listen address") {
		t.Error("the unused inherited socket went unmentioned")
	}

	// An IPv6 socket that takes IPv4 too.
	fd, err := syscall.Socket(syscall.AF_INET6, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no IPv6 socket: %v", err)
	}
	dual := os.NewFile(uintptr(fd), "dual")
	defer dual.Close()
	if err := syscall.SetsockoptInt(fd, syscall.IPPROTO_IPV6, syscall.IPV6_V6ONLY, 0); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet6{}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 8); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	dualCfg := fmt.Sprintf("admin: {listen: off}\nlisteners:\n  - {name: svc, listen: \"[::]:%d\", mode: forward, forward_to: %q}\n", sa.(*syscall.SockaddrInet6).Port, echo)
	dualFile := filepath.Join(dir, "dual.yaml")
	if err := os.WriteFile(dualFile, []byte(dualCfg), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startNotified(t, bin, dualFile, nil, dual)
	select {
	case err := <-d.done:
		if err == nil || !strings.Contains(d.out.String(), "BindIPv6Only=ipv6-only") {
			t.Errorf("a dual-stack socket: exit %v, output %q; want a refusal naming BindIPv6Only=ipv6-only", err, d.out.String())
		}
	case s := <-d.states:
		t.Errorf("a dual-stack socket was taken: %q", s)
	case <-time.After(20 * time.Second):
		t.Error("the relay given a dual-stack socket neither started nor exited in 20s")
	}
}

// startEcho runs a TCP echo server on loopback until the test ends; it
// returns its address.
func startEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// expectEcho reads want back from c.
func expectEcho(t *testing.T, c net.Conn, want string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != want {
		t.Fatalf("echo: %q, %v; want %q", got, err, want)
	}
}
