package relay

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"halfway/proxyproto"
)

// recordServer accepts connections on loopback and sends each one's whole
// input, read to EOF, on the returned channel.
func recordServer(t *testing.T) (netip.AddrPort, <-chan []byte) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	got := make(chan []byte, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				b, _ := io.ReadAll(c)
				got <- b
			}()
		}
	}()
	return addrPortOf(l.Addr()), got
}

func socksIPRequest(dst netip.AddrPort) []byte {
	b := []byte{5, 1, 0, 5, 1, 0}
	if dst.Addr().Is4() {
		a := dst.Addr().As4()
		b = append(append(b, 1), a[:]...)
	} else {
		a := dst.Addr().As16()
		b = append(append(b, 4), a[:]...)
	}
	return append(b, byte(dst.Port()>>8), byte(dst.Port()))
}

func socksNameRequest(name string, port uint16) []byte {
	b := []byte{5, 1, 0, 5, 1, 0, 3, byte(len(name))}
	b = append(b, name...)
	return append(b, byte(port>>8), byte(port))
}

// TestExplicitPipelined: bytes a client sends in the same segment as its
// protocol head reach the server exactly once, in order, after the PROXY
// header when the listener sends one.
func TestExplicitPipelined(t *testing.T) {
	payload := bytes.Repeat([]byte("\x16\x03\x01ClientHello"), 50)
	for _, mode := range []struct {
		pp   bool
		path string
	}{{false, "splice"}, {true, "splice"}, {false, "copy"}, {true, "copy"}, {false, "sockmap"}, {true, "sockmap"}} {
		pp := mode.pp
		dst, got := recordServer(t)
		s := startLoopback(t, fmt.Sprintf(`
admin: {listen: off}
data_path: %s
listeners:
  - {name: x, listen: "127.0.0.1:0", protocols: [socks5, http], proxy_protocol: %v, allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
`, mode.path, pp))
		heads := map[string][]byte{
			"socks5 ipv4":   socksIPRequest(dst),
			"socks5 mapped": socksIPRequest(netip.AddrPortFrom(netip.AddrFrom16(dst.Addr().As16()), dst.Port())),
			"socks5 name":   socksNameRequest("127.0.0.1", dst.Port()),
			"http":          fmt.Appendf(nil, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", dst, dst),
			"http mapped":   fmt.Appendf(nil, "CONNECT [::ffff:%s]:%d HTTP/1.1\r\nHost: x\r\n\r\n", dst.Addr(), dst.Port()),
			// RFC 9112 §2.2: a server ignores an empty line before the request line.
			"http after an empty line": fmt.Appendf(nil, "\r\nCONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", dst, dst),
		}
		for name, head := range heads {
			t.Run(fmt.Sprintf("%s/%s/pp=%v", mode.path, name, pp), func(t *testing.T) {
				c, err := net.Dial("tcp", s.Addr("x").String())
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Write(append(append([]byte(nil), head...), payload...)); err != nil {
					t.Fatal(err)
				}
				c.(*net.TCPConn).CloseWrite()
				if _, err := io.ReadAll(c); err != nil {
					t.Fatal(err)
				}
				var b []byte
				select {
				case b = <-got:
				case <-time.After(5 * time.Second):
					t.Fatal("server got no connection")
				}
				if pp {
					h, n, err := proxyproto.Parse(b)
					if err != nil {
						t.Fatalf("PROXY header: %v", err)
					}
					if h.Src.Addr() != netip.MustParseAddr("127.0.0.1") || h.Dst != dst {
						t.Errorf("PROXY header %v -> %v, want 127.0.0.1 -> %v", h.Src, h.Dst, dst)
					}
					b = b[n:]
				}
				if !bytes.Equal(b, payload) {
					t.Errorf("server got %d bytes %q..., want the %d pipelined bytes once", len(b), b[:min(len(b), 40)], len(payload))
				}
			})
		}
	}
}

// TestExplicitRefusedNotDialed: a destination the policy refuses, in any
// spelling, gets the refusal and never a connection.
func TestExplicitRefusedNotDialed(t *testing.T) {
	l, err := net.Listen("tcp", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	s := startLoopback(t, `
admin: {listen: off}
listeners:
  - {name: x, listen: "127.0.0.1:0", protocols: [socks5, http], allow_clients: [127.0.0.1/32], allow_destinations: ["0.0.0.0/0", "::/0"]}
`)
	lo4 := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	cases := []struct {
		name string
		head []byte
		want []byte // the start of the answer
	}{
		{"socks5 ipv4", socksIPRequest(lo4), []byte{5, 0, 5, 2}},
		{"socks5 mapped", socksIPRequest(netip.AddrPortFrom(netip.AddrFrom16(lo4.Addr().As16()), port)), []byte{5, 0, 5, 2}},
		{"socks5 ipv6", socksIPRequest(netip.AddrPortFrom(netip.IPv6Loopback(), port)), []byte{5, 0, 5, 2}},
		{"socks5 unspecified", socksIPRequest(netip.AddrPortFrom(netip.IPv4Unspecified(), port)), []byte{5, 0, 5, 2}},
		{"socks5 unspecified6", socksIPRequest(netip.AddrPortFrom(netip.IPv6Unspecified(), port)), []byte{5, 0, 5, 2}},
		{"socks5 name", socksNameRequest("localhost", port), []byte{5, 0, 5, 2}},
		{"socks5 literal name", socksNameRequest("::ffff:127.0.0.1", port), []byte{5, 0, 5, 2}},
		{"socks5 short name", socksNameRequest("127.1", port), []byte{5, 0}},
		{"http ipv4", fmt.Appendf(nil, "CONNECT %s HTTP/1.1\r\nHost: x\r\n\r\n", lo4), []byte("HTTP/1.1 403")},
		{"http mapped", fmt.Appendf(nil, "CONNECT [::ffff:127.0.0.1]:%d HTTP/1.1\r\nHost: x\r\n\r\n", port), []byte("HTTP/1.1 403")},
		{"http name", fmt.Appendf(nil, "CONNECT localhost:%d HTTP/1.1\r\nHost: x\r\n\r\n", port), []byte("HTTP/1.1 403")},
		{"http short", fmt.Appendf(nil, "CONNECT 127.1:%d HTTP/1.1\r\nHost: x\r\n\r\n", port), []byte("HTTP/1.1 ")},
		{"http zero", fmt.Appendf(nil, "CONNECT 0:%d HTTP/1.1\r\nHost: x\r\n\r\n", port), []byte("HTTP/1.1 ")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", s.Addr("x").String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(8 * time.Second))
			c.Write(tc.head)
			b, err := io.ReadAll(c)
			if err != nil {
				t.Errorf("answer: %v", err)
			}
			if !bytes.HasPrefix(b, tc.want) || bytes.HasPrefix(b, []byte("HTTP/1.1 200")) || len(b) >= 4 && b[0] == 5 && b[3] == 0 {
				t.Errorf("answer %q, want a refusal starting %q", b, tc.want)
			}
			l.(*net.TCPListener).SetDeadline(time.Now().Add(50 * time.Millisecond))
			if a, err := l.Accept(); err == nil {
				a.Close()
				t.Errorf("the refused destination got a connection from %v", a.RemoteAddr())
			} else if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal(err)
			}
		})
	}
}
