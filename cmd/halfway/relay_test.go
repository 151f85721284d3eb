package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRelayNotify runs the relay as systemd would with Type=notify: it
// must tell READY=1 once it listens, RELOADING=1 then READY=1 around each
// SIGHUP (with a STATUS naming a refused reload), WATCHDOG=1 while it
// runs, and STOPPING=1 on SIGTERM. (A SIGHUP sent before Go's runtime has started ends any Go
// process; systemd sends none before READY=1.)
func TestRelayNotify(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify.sock")
	nc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	states := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := nc.Read(buf)
			if err != nil {
				close(states)
				return
			}
			states <- string(buf[:n])
		}
	}()

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := l.Addr().String()
	l.Close()
	cfg := fmt.Sprintf("admin: {listen: off}\nlisteners:\n  - {name: svc, listen: %q, mode: forward, forward_to: \"127.0.0.1:9\"}\n", listen)
	file := filepath.Join(dir, "relay.yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "relay", "-c", file, "--grace", "1s")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=200000")
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
		if t.Failed() {
			t.Logf("relay output:\n%s", out.String())
		}
	}()

	// next waits for the next state that contains want.
	next := func(want string) string {
		t.Helper()
		timeout := time.After(20 * time.Second)
		for {
			select {
			case s := <-states:
				if strings.Contains(s, want) {
					return s
				}
			case err := <-done:
				t.Fatalf("relay exited (%v) before it told %q", err, want)
			case <-timeout:
				t.Fatalf("no %q from the relay in 20s", want)
			}
		}
	}

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
