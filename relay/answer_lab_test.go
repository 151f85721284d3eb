package relay_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"halfway/convert"
	"halfway/relay"
	"halfway/sockopt"
)

// TestHopAnswerSegments: a hop answers a pipelining sender whose Connect
// came in a Fast Open SYN at once, in a segment of its own; one whose
// Connect came after the handshake gets the answer in one segment with the
// server's first bytes. Counted in segments the sender received, against
// a server that speaks first.
func TestHopAnswerSegments(t *testing.T) {
	cl := startChain(t)
	rc, server := cl.lab.Host("rc"), cl.lab.Host("server")
	banner := []byte("220 banner from the server\r\n")
	dst := netip.MustParseAddrPort(server.AddrPort(2525))
	ln, err := server.Listen("tcp4", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go relay.AcceptEach(ln, func(c net.Conn) {
		defer c.Close()
		c.Write(banner)
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		io.Copy(io.Discard, c)
	})
	hop := netip.MustParseAddrPort(cl.rsHop)
	connect := func() []byte {
		b, err := convert.AppendMessage(nil, &convert.Message{
			Connect: &convert.Connect{Dst: dst},
			Cookie:  relay.PipelinedHopCookie(cl.psk, hop, dst),
		})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// answerThenBanner reads the hop's answer and the banner behind it and
	// returns how many segments with data c received.
	answerThenBanner := func(c *net.TCPConn) uint32 {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		m, err := convert.ReadMessage(c)
		if err != nil || m.Error != nil {
			t.Fatalf("answer: %+v, %v", m, err)
		}
		got := make([]byte, len(banner))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, banner) {
			t.Fatalf("after the answer: %q, %v; want the banner", got, err)
		}
		info, err := sockopt.Info(c)
		if err != nil {
			t.Fatal(err)
		}
		return info.Data_segs_in
	}

	// After the handshake: the answer rides with the banner.
	c, err := rc.Dial(context.Background(), "tcp4", cl.rsHop)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(connect()); err != nil {
		t.Fatal(err)
	}
	if n := answerThenBanner(c.(*net.TCPConn)); n != 1 {
		t.Errorf("Connect after the handshake: answer and banner came in %d segments, want 1", n)
	}

	// In a Fast Open SYN: the first connect fetches the hop's cookie (its
	// bytes go after the handshake), the next ones carry the Connect.
	for try := 0; ; try++ {
		// As a relay dials: TCP_FASTOPEN_CONNECT, then the first write.
		d := &net.Dialer{Control: sockopt.Options{FastOpenConnect: true}.Control}
		nc, err := rc.DialWith(context.Background(), d, "tcp4", cl.rsHop)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		c := nc.(*net.TCPConn)
		if _, err := c.Write(connect()); err != nil {
			t.Fatal(err)
		}
		if err := sockopt.WaitEstablished(context.Background(), c); err != nil {
			t.Fatal(err)
		}
		if !sockopt.SYNData(c) {
			answerThenBanner(c)
			if try == 3 {
				t.Fatal("the hop never took data in a Fast Open SYN")
			}
			continue
		}
		if n := answerThenBanner(c); n != 2 {
			t.Errorf("Connect in a Fast Open SYN: answer and banner came in %d segments, want 2 (the answer first, alone)", n)
		}
		break
	}
}
