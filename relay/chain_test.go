package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"halfway/convert"
	"halfway/socks5"
)

// TestChainRelayDownNoVerdict: a relay of the chain that cannot be
// reached is no verdict on the destination, wherever it stands in the
// chain. The first relay refusing its connect, or a later one refusing the
// connect of the relay before it, reaches a SOCKS5 client as a general
// failure, not as the destination's "connection refused".
func TestChainRelayDownNoVerdict(t *testing.T) {
	psk := filepath.Join(t.TempDir(), "psk")
	if err := os.WriteFile(psk, []byte("chain test key 0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hop := startLoopback(t, fmt.Sprintf(`
admin: {listen: off}
auth: {psk_file: %q}
listeners:
  - {name: hop, listen: "127.0.0.1:0", protocols: [convert], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
`, psk))
	hopAddr := hop.Addr("hop").String()
	down := freeLoopback(t) // nothing listens there: a connect to it is refused
	dst := echoServer(t)
	for _, tc := range []struct {
		name string
		via  string
	}{
		{"first relay down", fmt.Sprintf("[%q]", down)},
		{"second relay down", fmt.Sprintf("[%q, %q]", hopAddr, down)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			entry := startLoopback(t, fmt.Sprintf(`
admin: {listen: off}
auth: {psk_file: %q}
listeners:
  - {name: socks, listen: "127.0.0.1:0", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
routes:
  - {via: %s}
`, psk, tc.via))
			c, err := net.DialTimeout("tcp", entry.Addr("socks").String(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			_, err = socks5.ClientHandshake(c, c, socks5.Addr{IP: dst.Addr(), Port: dst.Port()}, "", "")
			var re *socks5.ReplyError
			if !errors.As(err, &re) || re.Reply != socks5.GeneralFailure {
				t.Errorf("SOCKS5 answer: %v, want reply %v", err, socks5.GeneralFailure)
			}
		})
	}
}

// TestSettleWriteTimeout: a transparent flow sends its client's first
// bytes to the first relay before the chain answers, within the connect's
// deadline. When the relay answers within it, at once or late, but reads
// the client's bytes only after it (its window full meanwhile), the chain
// is good: a write the deadline cut short goes on where it stopped, the
// writes after the answer are not bound by that deadline, and the relay
// gets the client's bytes whole and in order.
func TestSettleWriteTimeout(t *testing.T) {
	const connectTimeout = 2 * time.Second
	psk := writeTestFile(t, t.TempDir(), "psk", "chain test key 0123456789\n")
	rc := startLoopback(t, fmt.Sprintf(`
admin: {listen: off}
auth: {psk_file: %q}
limits: {connect_timeout: %s}
listeners:
  - {name: socks, listen: "127.0.0.1:0", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
`, psk, connectTimeout))
	for _, tc := range []struct {
		name   string
		answer time.Duration // after the connect began
	}{
		{"answer at once", 0},
		{"answer just before the deadline", connectTimeout * 3 / 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// As connectReserved opens the chain: within connect_timeout,
			// which settle's writes and answers share.
			rt := rc.state.Load()
			begun := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), rt.tunables.ConnectTimeout)
			defer cancel()
			relay, relayGot := lateReader(t, begun.Add(tc.answer), begun.Add(connectTimeout*3/2))

			// A client connection, as accept would return it, sending more
			// than the chain's connection holds before the relay reads.
			cli, acc := acceptedPair(t)
			data := make([]byte, 200_000)
			rand.Read(data)
			go func() {
				_ = cli.SetWriteDeadline(time.Now().Add(30 * time.Second))
				if _, err := cli.Write(data); err == nil {
					cli.(*net.TCPConn).CloseWrite()
				}
			}()

			dst := netip.MustParseAddrPort("127.0.0.1:9")
			pc, err := rc.openChain(ctx, rt, &route{via: []netip.AddrPort{relay}}, dst, nil, true)
			if err != nil {
				t.Fatal(err)
			}
			if err := pc.c.SetWriteBuffer(4096); err != nil { // no autotuning past what the relay reads
				t.Fatal(err)
			}
			relayConn, err := rc.settle(rt, pc, acc, &flow{})
			if err != nil {
				t.Fatalf("settle: %v; the relay answered within the connect's deadline", err)
			}
			go func() {
				io.Copy(relayConn, acc)
				relayConn.CloseWrite()
			}()
			defer relayConn.Close()
			res := <-relayGot
			if res.err != nil {
				t.Fatalf("relay: %v", res.err)
			}
			if !bytes.Equal(res.got, data) {
				n := 0
				for n < len(res.got) && n < len(data) && res.got[n] == data[n] {
					n++
				}
				t.Errorf("the relay got %d bytes, the first %d as sent; want the %d sent, whole", len(res.got), n, len(data))
			}
		})
	}
}

// TestSettleAnsweredAbort: the relay answers within the connect's
// deadline (at 1 s of 2 s) but never reads the client's bytes (its window
// full), so a write of them waits past that deadline. The chain is good:
// its connect is over, its slot goes back, and the write waits as the
// data path would, until a drain's abort ends it (it used to fail at the
// deadline, a timeout).
func TestSettleAnsweredAbort(t *testing.T) {
	psk := writeTestFile(t, t.TempDir(), "psk", "chain test key 0123456789\n")
	rc := newServer(t, fmt.Sprintf("admin: {listen: off}\nauth: {psk_file: %q}\nlimits: {connect_timeout: 2s}\nlisteners:\n  - {name: t, listen: \"127.0.0.1:0\", mode: forward, forward_to: \"127.0.0.1:9\"}\n", psk))
	t.Cleanup(rc.cancelAll)
	relay, _ := lateReader(t, time.Now().Add(time.Second), time.Now().Add(time.Hour))
	cli, acc := acceptedPair(t)
	go func() {
		_ = cli.SetWriteDeadline(time.Now().Add(30 * time.Second))
		cli.Write(make([]byte, 200_000))
	}()
	rt := rc.state.Load()
	ctx, cancel := context.WithTimeout(context.Background(), rt.tunables.ConnectTimeout)
	defer cancel()
	pc, err := rc.openChain(ctx, rt, &route{via: []netip.AddrPort{relay}}, netip.MustParseAddrPort("127.0.0.1:9"), nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := pc.c.SetWriteBuffer(4096); err != nil {
		t.Fatal(err)
	}
	released := make(chan struct{})
	pc.release = func() { close(released) } // as connectReserved gives the slot back
	done := make(chan error, 1)
	go func() {
		_, err := rc.settle(rt, pc, acc, &flow{})
		done <- err
	}()
	// Liveness bounds, not timing ones.
	select {
	case <-released:
	case <-time.After(15 * time.Second):
		t.Fatal("the connect's slot still held 15 s after the chain answered")
	}
	rc.cancelAll() // as a drain's abort (abortFlows)
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("settle: %v; want the abort's end", err)
		}
	case <-time.After(15 * time.Second):
		t.Error("settle still waited for the relay to read 15 s after the abort")
		pc.c.Close()
		<-done
	}
}

type relayResult struct {
	got []byte
	err error
}

// lateReader is a first relay of a chain with a small window: it takes
// the chain's message, answers at answerAt, and reads the client's bytes
// from readAt on, until their end, or until the test ends.
func lateReader(t *testing.T, answerAt, readAt time.Time) (netip.AddrPort, <-chan relayResult) {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		}); err != nil {
			return err
		}
		return serr
	}}
	rl, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rl.Close() })
	got := make(chan relayResult, 1)
	go func() {
		c, err := rl.Accept()
		if err != nil {
			got <- relayResult{err: err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := convert.ReadRaw(c); err != nil {
			got <- relayResult{err: err}
			return
		}
		wait := func(until time.Time) error {
			select {
			case <-time.After(time.Until(until)):
				return nil
			case <-t.Context().Done():
				return t.Context().Err()
			}
		}
		if err := wait(answerAt); err != nil {
			got <- relayResult{err: err}
			return
		}
		answer, _ := convert.AppendMessage(nil, &convert.Message{})
		if _, err := c.Write(answer); err != nil {
			got <- relayResult{err: err}
			return
		}
		if err := wait(readAt); err != nil {
			got <- relayResult{err: err}
			return
		}
		b, err := io.ReadAll(c)
		got <- relayResult{b, err}
	}()
	return addrPortOf(rl.Addr()), got
}

// TestSettleEnds: the wait for a chain's answers (a first relay that
// never answers; connect_timeout 30 s) ends without them:
//   - at the connect's deadline, begun when the chain was opened, not a
//     fresh connect_timeout later ("connect_timeout covers the whole
//     chain"; a transparent or early-SYN flow waited up to twice it);
//   - at once when the client resets: no answer could serve it, and the
//     wait held its connect slot until connect_timeout. The flow ends as
//     the client's reset (errClientGone).
func TestSettleEnds(t *testing.T) {
	psk := writeTestFile(t, t.TempDir(), "psk", "chain test key 0123456789\n")
	rc := newServer(t, fmt.Sprintf("admin: {listen: off}\nauth: {psk_file: %q}\nlimits: {connect_timeout: 30s}\nlisteners:\n  - {name: t, listen: \"127.0.0.1:0\", mode: forward, forward_to: \"127.0.0.1:9\"}\n", psk))
	for _, tc := range []struct {
		name     string
		deadline time.Duration // left of the connect's
		client   func(net.Conn)
		want     func(error) bool
		stuck    string
	}{
		{"connect deadline", 300 * time.Millisecond, func(net.Conn) {},
			func(err error) bool { return errKind(err) == "timeout" },
			"settle still waited for the answers 15 s after the connect's deadline (0.3 s): it took a fresh connect_timeout"},
		{"client reset", 30 * time.Second, func(c net.Conn) { c.Write([]byte("hello")); resetConn(c.(*net.TCPConn)) },
			func(err error) bool { return errors.Is(err, syscall.ECONNRESET) && errors.Is(err, errClientGone) },
			"settle still waited for the answers 15 s after the client reset"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rl := silentRelay(t)
			cli, acc := acceptedPair(t)
			rt := rc.state.Load()
			ctx, cancel := context.WithTimeout(context.Background(), tc.deadline)
			defer cancel()
			pc, err := rc.openChain(ctx, rt, &route{via: []netip.AddrPort{rl}}, netip.MustParseAddrPort("127.0.0.1:9"), nil, false)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				_, err := rc.settle(rt, pc, acc, &flow{})
				done <- err
			}()
			tc.client(cli)
			select {
			case err := <-done:
				if !tc.want(err) {
					t.Errorf("settle: %v", err)
				}
			case <-time.After(15 * time.Second): // not a timing bound: connect_timeout is 30 s
				t.Error(tc.stuck)
				pc.c.Close()
				<-done
			}
		})
	}
}

// silentRelay is a first relay of a chain that takes the chain's messages
// and never answers, until the test ends.
func silentRelay(t *testing.T) netip.AddrPort {
	t.Helper()
	return serveOne(t, func(c net.Conn) {
		stop := context.AfterFunc(t.Context(), func() { c.Close() })
		defer stop()
		io.Copy(io.Discard, c)
	})
}

// serveOne listens on loopback and runs serve on the first connection,
// given 20 s at most; the test's end closes the listener and waits for it.
func serveOne(t *testing.T, serve func(c net.Conn)) netip.AddrPort {
	t.Helper()
	rl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { rl.Close(); <-done })
	go func() {
		defer close(done)
		c, err := rl.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		serve(c)
	}()
	return addrPortOf(rl.Addr())
}

// acceptedPair is a loopback connection: the client's end, and the end
// accept returned, as a relay gets it; both close when the test ends.
func acceptedPair(t *testing.T) (cli net.Conn, acc *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if cli, err = net.Dial("tcp", ln.Addr().String()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return cli, c.(*net.TCPConn)
}
