package relay

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"testing"
)

// BenchmarkFlow measures what one short flow costs the process: a
// connection, a 100-byte request, a 1 KB answer after which the server
// closes, then the client closes. "direct" is the same without the relay,
// so the difference in allocs/op and B/op is the relay's per flow (with a
// forward listener: its accept, dial and data path).
func BenchmarkFlow(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	answer := bytes.Repeat([]byte("x"), 1024)
	go acceptEach(ln, func(c net.Conn) {
		defer c.Close()
		req := make([]byte, 100)
		if _, err := io.ReadFull(c, req); err == nil {
			c.Write(answer)
		}
	})
	request := bytes.Repeat([]byte("r"), 100)
	run := func(b *testing.B, addr string) {
		buf := make([]byte, 2048)
		b.ReportAllocs()
		for b.Loop() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := c.Write(request); err != nil {
				b.Fatal(err)
			}
			n := 0
			for {
				m, err := c.Read(buf[n:])
				n += m
				if err != nil {
					break
				}
			}
			c.Close()
			if n != len(answer) {
				b.Fatalf("got %d bytes, want %d", n, len(answer))
			}
		}
	}
	b.Run("direct", func(b *testing.B) { run(b, ln.Addr().String()) })
	b.Run("relayed", func(b *testing.B) {
		s := startLoopback(b, fmt.Sprintf(`admin: {listen: off}
log: {level: warn}
listeners:
  - {name: f, listen: "127.0.0.1:0", mode: forward, forward_to: %q}
`, ln.Addr().String()))
		run(b, s.Addr("f").String())
	})
}
