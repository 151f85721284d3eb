package datapath

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestParkedFlows opens flows, lets them fall idle and checks that they
// hold no goroutine (every direction parked), then wakes each by sending
// both ways and finishes it with half-closes: with parking at once and
// after a wait, on splice and on copy.
func TestParkedFlows(t *testing.T) {
	for _, park := range []time.Duration{0, 30 * time.Millisecond} {
		t.Run(fmt.Sprint("park-after-", park), func(t *testing.T) {
			const flows = 60
			type tf struct {
				client, server *net.TCPConn
				res            chan Result
			}
			s0 := ReadStats()
			g0 := runtime.NumGoroutine()
			fs := make([]tf, flows)
			for i := range fs {
				client, relayIn := tcpPair(t)
				relayOut, server := tcpPair(t)
				ch := make(chan Result, 1)
				go New(relayIn, relayOut, Options{ParkAfter: park, ForceCopy: i%2 == 1, Idle: time.Minute},
					func(r Result) { ch <- r }).Run()
				fs[i] = tf{client, server, ch}
				// One byte each way, so both directions have run and emptied.
				exchange(t, client, server, []byte{byte(i)}, []byte{byte(i + 1)})
			}
			var st Stats
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				if st = ReadStats(); st.Parked-s0.Parked == 2*flows {
					break
				}
			}
			if got := st.Parked - s0.Parked; got != 2*flows {
				t.Fatalf("%d directions parked, want %d", got, 2*flows)
			}
			// The shards' goroutines (two each) and the pairs' leftovers,
			// but nothing per flow.
			if g := runtime.NumGoroutine() - g0; g > 2*len(parker.shards)+4 {
				t.Errorf("%d idle flows hold %d goroutines", flows, g)
			}
			for i, f := range fs {
				up, down := payload(uint64(i), 3000+i*997), payload(uint64(i+100), 70000+i)
				exchange(t, f.client, f.server, up, down)
				f.client.CloseWrite()
				f.server.CloseWrite()
				for _, c := range []*net.TCPConn{f.client, f.server} {
					c.SetReadDeadline(time.Now().Add(10 * time.Second))
					if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
						t.Fatalf("flow %d: after the FIN read %d bytes, %v", i, len(rest), err)
					}
				}
				select {
				case r := <-f.res:
					if r.Reason != ReasonClosed || r.Up != int64(1+len(up)) || r.Down != int64(1+len(down)) {
						t.Errorf("flow %d: %+v", i, r)
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("flow %d did not end", i)
				}
			}
			if w := ReadStats().Wakes - s0.Wakes; w < 2*flows {
				t.Errorf("%d wake-ups from the epoll set, want at least %d", w, 2*flows)
			}
		})
	}
}

// finishBoth half-closes both apps' ends and checks that nothing but the
// FIN follows on either.
func finishBoth(t *testing.T, client, server *net.TCPConn) {
	t.Helper()
	client.CloseWrite()
	server.CloseWrite()
	for _, c := range []*net.TCPConn{client, server} {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
			t.Fatalf("after the FIN read %d bytes, %v", len(rest), err)
		}
	}
}

// exchange sends up from the client and down from the server at once and
// checks each arrives whole.
func exchange(t *testing.T, client, server *net.TCPConn, up, down []byte) {
	t.Helper()
	errs := make(chan error, 2)
	go func() { _, err := client.Write(up); errs <- err }()
	go func() { _, err := server.Write(down); errs <- err }()
	for _, c := range []struct {
		conn *net.TCPConn
		want []byte
	}{{server, up}, {client, down}} {
		got := make([]byte, len(c.want))
		c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c.conn, got); err != nil || !bytes.Equal(got, c.want) {
			t.Fatalf("read %d bytes (%v), want %d", len(got), err, len(c.want))
		}
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// TestInlineWake checks the directions that the shards' wait loops run
// themselves: a message moves there and the direction parks again, and a
// burst past inlineBudget, or into a client that is not reading, goes on
// on a goroutine of its own, every byte in order.
func TestInlineWake(t *testing.T) {
	client, relayIn := tcpPair(t)
	relayOut, server := tcpPair(t)
	relayIn.SetWriteBuffer(4096)
	client.SetReadBuffer(4096)
	res := make(chan Result, 1)
	s0 := ReadStats()
	New(relayIn, relayOut, Options{Idle: time.Minute}, func(r Result) { res <- r }).Run()
	waitParked := func(want int64) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if ReadStats().Parked >= want {
				return
			}
		}
		t.Fatalf("%d directions parked, want %d", ReadStats().Parked, want)
	}
	var up, down int64
	for i := range 20 {
		// Messages: each wakes a parked direction, which moves it and parks.
		waitParked(s0.Parked + 2)
		m1, m2 := payload(uint64(i), 100+i*50), payload(uint64(i+50), 1000+i*300)
		exchange(t, client, server, m1, m2)
		up, down = up+int64(len(m1)), down+int64(len(m2))
	}
	if w := ReadStats().Wakes - s0.Wakes; w < 40 {
		t.Errorf("%d wakes for 40 messages", w)
	}
	// A burst, under inlineBudget, into a client that reads nothing for a
	// while through small buffers: the inline direction finds the client's
	// socket full with bytes in its pipe and hands off.
	waitParked(s0.Parked + 2)
	h0 := ReadStats().Handoffs
	burst := payload(99, 200<<10+3)
	werr := make(chan error, 1)
	go func() { _, err := server.Write(burst); werr <- err }()
	time.Sleep(200 * time.Millisecond)
	got := make([]byte, len(burst))
	client.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(client, got); err != nil || !bytes.Equal(got, burst) {
		t.Fatalf("burst: read %d bytes (%v), want %d, equal %v", len(got), err, len(burst), bytes.Equal(got, burst))
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	down += int64(len(burst))
	if ReadStats().Handoffs == h0 {
		t.Error("a burst into a full client was never handed to a goroutine")
	}
	finishBoth(t, client, server)
	select {
	case r := <-res:
		if r.Reason != ReasonClosed || r.Up != up || r.Down != down {
			t.Errorf("result %+v, want %d up, %d down, closed", r, up, down)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the flow did not end")
	}
}

// TestInlineFallback checks that a direction that must copy (no pipe to be
// had) while its shard's wait loop runs it goes on on a goroutine: copying
// blocks on a full destination, which would stall every flow of the shard.
func TestInlineFallback(t *testing.T) {
	flow := func() (client, server *net.TCPConn, f *Flow) {
		client, relayIn := tcpPair(t)
		relayOut, server := tcpPair(t)
		relayIn.SetWriteBuffer(4096)
		client.SetReadBuffer(4096)
		f = New(relayIn, relayOut, Options{Idle: time.Minute}, nil)
		f.Run()
		t.Cleanup(f.Abort)
		return client, server, f
	}
	clientA, serverA, a := flow()
	var clientB, serverB *net.TCPConn
	for range 50 {
		c, s, b := flow()
		if b.shard == a.shard {
			clientB, serverB = c, s
			break
		}
	}
	if clientB == nil {
		t.Fatal("no second flow in the first one's shard")
	}
	for deadline := time.Now().Add(5 * time.Second); a.dirs[0].state.Load() != dirParked && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
	}
	Drain()
	noPipes.Store(true)
	go serverA.Write(payload(7, 128<<10)) // client A reads nothing
	time.Sleep(300 * time.Millisecond)
	noPipes.Store(false)
	msg := []byte("a message of flow B")
	if _, err := clientB.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	serverB.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(serverB, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("flow B stalled behind flow A's full client: %v", err)
	}
	// Flow A's bytes still arrive, in order, by copying.
	clientA.SetReadDeadline(time.Now().Add(30 * time.Second))
	want := payload(7, 128<<10)
	back := make([]byte, len(want))
	if _, err := io.ReadFull(clientA, back); err != nil || !bytes.Equal(back, want) {
		t.Fatalf("flow A: %v, equal %v", err, bytes.Equal(back, want))
	}
}

// TestWakesWhileBusy runs many flows that trade small messages at once, so
// that sockets become ready while a shard's wait loop is busy moving other
// flows' bytes: a wake-up lost then would leave a message in a parked
// direction's socket, and its flow would stall.
func TestWakesWhileBusy(t *testing.T) {
	const flows, rounds = 40, 300
	s0 := ReadStats()
	errs := make(chan error, flows)
	for i := range flows {
		client, relayIn := tcpPair(t)
		relayOut, server := tcpPair(t)
		go New(relayIn, relayOut, Options{Idle: time.Minute}, nil).Run()
		go func() {
			defer client.Close()
			defer server.Close()
			deadline := time.Now().Add(30 * time.Second)
			client.SetDeadline(deadline)
			server.SetDeadline(deadline)
			msg, got := make([]byte, 100+i), make([]byte, 100+i)
			for r := range rounds {
				msg[0] = byte(r)
				for _, hop := range [][2]*net.TCPConn{{client, server}, {server, client}} {
					if _, err := hop[0].Write(msg); err != nil {
						errs <- fmt.Errorf("flow %d round %d: %w", i, r, err)
						return
					}
					if _, err := io.ReadFull(hop[1], got); err != nil || !bytes.Equal(got, msg) {
						errs <- fmt.Errorf("flow %d round %d: read %v", i, r, err)
						return
					}
				}
			}
			errs <- nil
		}()
	}
	for range flows {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if w := ReadStats().Wakes - s0.Wakes; w < flows*rounds {
		t.Errorf("%d wake-ups from the epoll set for %d messages each way", w, flows*rounds)
	}
}

// TestServerKeepalive: Options.ServerKeepalive reaches the server leg once
// the flow has lasted a while, and a flow without it keeps what it had.
func TestServerKeepalive(t *testing.T) {
	keepidle := func(c *net.TCPConn) int {
		rc, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		v := -1
		rc.Control(func(fd uintptr) { v, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE) })
		return v
	}
	ka := &net.KeepAliveConfig{Enable: true, Idle: 77 * time.Second, Interval: 5 * time.Second, Count: 3}
	var outs [2]*net.TCPConn
	for i, opt := range []*net.KeepAliveConfig{ka, nil} {
		client, relayIn := tcpPair(t)
		relayOut, server := tcpPair(t)
		outs[i] = relayOut
		New(relayIn, relayOut, Options{Idle: time.Minute, ServerKeepalive: opt}, nil).Run()
		exchange(t, client, server, []byte("up"), []byte("down"))
		defer client.Close()
		defer server.Close()
	}
	before := keepidle(outs[1])
	for i := 0; keepidle(outs[0]) != 77; i++ {
		if i > 500 {
			t.Fatalf("keepalive idle %d s on the server leg, want 77", keepidle(outs[0]))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := keepidle(outs[1]); got != before || got == 77 {
		t.Errorf("a flow without ServerKeepalive: keepalive idle %d s, was %d", got, before)
	}
}

// TestEarlyDeadlineIsNoFIN: a direction waiting for bytes under
// park_after can have its read deadline fire before its wait is long
// enough to park (the sweep chose it, then bytes came, or a kick raced
// with a park). That read reads again: the source has sent no FIN, so
// none may reach the destination, and later bytes still cross. The test
// sets the deadline itself, as the sweep does, with park_after too long
// for the sweep to.
func TestEarlyDeadlineIsNoFIN(t *testing.T) {
	for _, copy := range []bool{false, true} {
		t.Run(fmt.Sprint("copy-", copy), func(t *testing.T) {
			client, relayIn := tcpPair(t)
			relayOut, server := tcpPair(t)
			res := make(chan Result, 1)
			f := New(relayIn, relayOut, Options{ParkAfter: time.Hour, ForceCopy: copy, Idle: time.Minute}, func(r Result) { res <- r })
			go f.Run()
			up := &f.dirs[1]
			send := func(msg string) {
				t.Helper()
				if _, err := client.Write([]byte(msg)); err != nil {
					t.Fatal(err)
				}
				got := make([]byte, len(msg))
				server.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.ReadFull(server, got); err != nil || string(got) != msg {
					t.Fatalf("server read %q, %v; want %q", got, err, msg)
				}
			}
			waiting := func() {
				t.Helper()
				for i := 0; up.waitSince.Load() <= 0; i++ {
					if i > 1000 {
						t.Fatal("the direction never waited for bytes")
					}
					time.Sleep(time.Millisecond)
				}
			}
			send("a")
			waiting()
			up.src().SetReadDeadline(time.Unix(1, 0))
			send("b")
			waiting()
			up.src().SetReadDeadline(time.Unix(1, 0))
			time.Sleep(10 * time.Millisecond) // the early deadline fires
			send("c")
			client.Close()
			server.Close()
			select {
			case <-res:
			case <-time.After(10 * time.Second):
				t.Fatal("the flow did not end")
			}
		})
	}
}
