package relay

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"halfway/socks5"
)

// startLoopback runs a Server in this process on loopback.
func startLoopback(t *testing.T, cfgYAML string) *Server {
	t.Helper()
	cfg, err := ParseConfig([]byte(cfgYAML))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, time.Second) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	for i := 0; s.Addr("socks") == nil; i++ {
		if i > 200 {
			t.Fatal("listener never opened")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return s
}

// TestHandshakePerClientShare: a client may hold an eighth of the
// handshakes; past that its silent connections are reset at once, and the
// share comes back when one ends.
func TestHandshakePerClientShare(t *testing.T) {
	s := startLoopback(t, `
admin: {listen: off}
limits: {max_handshakes: 16, handshake_timeout: 30s}
listeners:
  - {name: socks, listen: "127.0.0.1:0", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
`)
	addr := s.Addr("socks").String()
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	// Two silent connections fill this client's share (16/8).
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	waitFor(t, func() bool { return s.handshakes.Load() == 2 })
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("third silent connection: %v, want a reset", err)
	}
	c.Close()
	// One ends: a full SOCKS flow fits again.
	held[0].Close()
	waitFor(t, func() bool { return s.handshakes.Load() == 1 })
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		e, err := echo.Accept()
		if err == nil {
			io.Copy(e, e)
			e.Close()
		}
	}()
	c, err = net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	dst := netip.MustParseAddrPort(echo.Addr().String())
	if _, err := socks5.ClientHandshake(c, c, socks5.Addr{IP: dst.Addr(), Port: dst.Port()}, "", ""); err != nil {
		t.Fatalf("socks after the share came back: %v", err)
	}
	c.Write([]byte("ok"))
	b := make([]byte, 2)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "ok" {
		t.Errorf("echo through the relay: %q %v", b, err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; !cond(); i++ {
		if i > 500 {
			t.Fatal("condition never held")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
