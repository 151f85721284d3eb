package datapath

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// detachedFlow is a flow under test with the apps' ends.
type detachedFlow struct {
	f              *Flow
	client, server *net.TCPConn
	res            chan Result
}

// openDetachable starts n relayed flows with opt, sends a byte each way
// and waits (bounded) until the sweep has detached every one. With raw,
// the flows are made by NewFDs, of descriptors out of Go's poller, and
// are detached from the start.
func openDetachable(t *testing.T, n int, raw bool, opt func(i int) Options) []detachedFlow {
	t.Helper()
	s0 := ReadStats()
	fs := make([]detachedFlow, n)
	for i := range fs {
		client, relayIn := tcpPair(t)
		relayOut, server := tcpPair(t)
		ch := make(chan Result, 1)
		var f *Flow
		if raw {
			f = NewFDs(rawFD(t, relayIn), rawFD(t, relayOut), opt(i), func(r Result) { ch <- r })
			f.Run()
			if !f.detached() {
				t.Fatal("a flow of NewFDs is not detached")
			}
		} else {
			f = New(relayIn, relayOut, opt(i), func(r Result) { ch <- r })
			go f.Run()
		}
		fs[i] = detachedFlow{f, client, server, ch}
		exchange(t, client, server, []byte{byte(i)}, []byte{byte(i + 1)})
	}
	waitFor(t, "every flow detached", func() bool {
		for _, f := range fs {
			if !f.f.detached() {
				return false
			}
		}
		return true
	})
	if d := ReadStats().Detached - s0.Detached; d < int64(n) {
		t.Errorf("Stats.Detached rose by %d, want %d", d, n)
	}
	return fs
}

// rawFD turns c into a descriptor of its socket that no Go poller
// watches.
func rawFD(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	fd := int(sysfd(c))
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	return dup
}

// waitFor polls cond for up to 15 s (the sweep detaches after four
// sweeps, about a second).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting: %s", what)
}

// epollEntries counts, over every epoll set of this process, the entries
// watching each socket inode.
func epollEntries(t *testing.T) map[uint64]int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := map[uint64]int{}
	for _, e := range fds {
		if l, _ := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); l != "anon_inode:[eventpoll]" {
			continue
		}
		fh, err := os.Open(filepath.Join("/proc/self/fdinfo", e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			// tfd:       12 events:       19 data: ... pos:0 ino:1a2b sdev:8
			if !strings.HasPrefix(sc.Text(), "tfd:") {
				continue
			}
			for _, field := range strings.Fields(sc.Text()) {
				var ino uint64
				if _, err := fmt.Sscanf(field, "ino:%x", &ino); err == nil {
					n[ino]++
				}
			}
		}
		fh.Close()
	}
	return n
}

func inode(t *testing.T, fd int) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestDetachedFlows checks that an idle flow leaves Go's poller (its
// sockets are then watched by its shard's epoll set alone), that
// messages move while it stays out, and that a burst, half-closes and
// the byte counts come out as for any flow: on splice, on copy and with
// ParkAfter.
func TestDetachedFlows(t *testing.T) {
	const n = 12
	fs := openDetachable(t, n, false, func(i int) Options {
		o := Options{DetachAfter: time.Millisecond, Idle: time.Minute, ForceCopy: i%3 == 1}
		if i%3 == 2 {
			o.ParkAfter = 20 * time.Millisecond
		}
		return o
	})
	entries := epollEntries(t)
	for i, f := range fs {
		f.f.mu.Lock()
		raw := f.f.fd
		f.f.mu.Unlock()
		for leg, fd := range raw {
			// The shard's set only: Go's poller let the socket go.
			if got := entries[inode(t, int(fd))]; got != 1 {
				t.Errorf("flow %d leg %d: %d epoll entries, want 1 (the shard's set)", i, leg, got)
			}
		}
	}
	// A message each way on the raw descriptors: the splice flows that
	// park at once stay out of the poller.
	for i, f := range fs {
		exchange(t, f.client, f.server, []byte("ping"), []byte("pong"))
		if i%3 == 0 {
			waitFor(t, "directions parked again", func() bool {
				return f.f.dirs[0].state.Load() == dirParked && f.f.dirs[1].state.Load() == dirParked
			})
			if !f.f.detached() {
				t.Errorf("flow %d: attached for a message", i)
			}
		}
	}
	// A burst each way: more than the wait loop moves inline, so the
	// directions go on goroutines, attached.
	for i, f := range fs {
		burstAndEnd(t, i, f)
	}
}

// burstAndEnd sends flow i of openDetachable (after a message each way)
// a burst each way and the FINs, and checks its result.
func burstAndEnd(t *testing.T, i int, f detachedFlow) {
	t.Helper()
	up, down := payload(uint64(i), 1<<20+i), payload(uint64(i+50), 700<<10+i)
	exchange(t, f.client, f.server, up, down)
	finishBoth(t, f.client, f.server)
	select {
	case r := <-f.res:
		if r.Reason != ReasonClosed || r.Up != int64(1+4+len(up)) || r.Down != int64(1+4+len(down)) {
			t.Errorf("flow %d: %+v", i, r)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("flow %d did not end", i)
	}
}

// TestNewFDs checks flows made of raw descriptors: their sockets are
// watched by their shard's epoll set alone from the start, a message each
// way keeps them so, and a burst (which attaches them) and the FINs cross
// byte-exact.
func TestNewFDs(t *testing.T) {
	const n = 6
	fs := openDetachable(t, n, true, func(int) Options { return Options{Idle: time.Minute} })
	entries := epollEntries(t)
	for i, f := range fs {
		for leg, fd := range f.f.fd {
			if got := entries[inode(t, int(fd))]; got != 1 {
				t.Errorf("flow %d leg %d: %d epoll entries, want 1 (the shard's set)", i, leg, got)
			}
		}
	}
	for i, f := range fs {
		exchange(t, f.client, f.server, []byte("ping"), []byte("pong"))
		waitFor(t, "directions parked again", func() bool {
			return f.f.dirs[0].state.Load() == dirParked && f.f.dirs[1].state.Load() == dirParked
		})
		if !f.f.detached() {
			t.Errorf("flow %d: attached for a message", i)
		}
		burstAndEnd(t, i, f)
	}
}

// TestSmallMessagesFullDestination: messages into a destination that
// stops taking bytes wait there, on a goroutine (the wait loop, or the
// goroutine that ran a NewFDs flow, hands the direction off), and arrive
// in order once it reads again; on a flow made by New and one made by
// NewFDs.
func TestSmallMessagesFullDestination(t *testing.T) {
	for _, raw := range []bool{false, true} {
		t.Run(fmt.Sprintf("raw=%v", raw), func(t *testing.T) {
			client, relayIn := tcpPair(t)
			relayOut, server := tcpPair(t)
			res := make(chan Result, 1)
			var fl *Flow
			if raw {
				fl = NewFDs(rawFD(t, relayIn), rawFD(t, relayOut), Options{}, func(r Result) { res <- r })
			} else {
				fl = New(relayIn, relayOut, Options{}, func(r Result) { res <- r })
			}
			fl.Run()
			f := detachedFlow{fl, client, server, res}
			h0 := ReadStats().Handoffs
			// 1000-byte messages, spaced so that most wakes read one,
			// to a server that reads nothing until all are sent: more
			// than the relay's and the server's socket buffers hold.
			const msgs, size = 12000, 1000
			want := payload(7, msgs*size)
			sent := make(chan error, 1)
			go func() {
				for i := 0; i < msgs; i++ {
					if _, err := f.client.Write(want[i*size : (i+1)*size]); err != nil {
						sent <- err
						return
					}
					if i%10 == 0 {
						time.Sleep(100 * time.Microsecond)
					}
				}
				sent <- f.client.CloseWrite()
			}()
			// Until the destination is full: the client's writes then
			// stop (bounded: they fill the relay's socket buffers).
			waitFor(t, "a handoff to a goroutine", func() bool { return ReadStats().Handoffs > h0 })
			f.server.SetReadDeadline(time.Now().Add(30 * time.Second))
			got, err := io.ReadAll(f.server)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("server read %d of %d bytes, equal %v, %v", len(got), len(want), bytes.Equal(got, want), err)
			}
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
			f.server.CloseWrite()
			if r := <-f.res; r.Reason != ReasonClosed || r.Up != int64(len(want)) {
				t.Errorf("result %+v", r)
			}
		})
	}
}

// TestDetachedKeepsSocketOptions checks that attaching again (net.FileConn
// turns keepalive on with Go's defaults) leaves a leg's options as they
// were.
func TestDetachedKeepsSocketOptions(t *testing.T) {
	client, relayIn := tcpPair(t)
	relayOut, server := tcpPair(t)
	if err := relayIn.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: 77 * time.Second, Interval: 11 * time.Second, Count: 5}); err != nil {
		t.Fatal(err)
	}
	if err := relayOut.SetKeepAlive(false); err != nil {
		t.Fatal(err)
	}
	if err := relayOut.SetNoDelay(false); err != nil {
		t.Fatal(err)
	}
	read := func(c *net.TCPConn) (v [len(legOpts)]int) {
		rc, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		rc.Control(func(fd uintptr) {
			for i, o := range legOpts {
				v[i], _ = unix.GetsockoptInt(int(fd), o.level, o.opt)
			}
		})
		return v
	}
	before := [2][len(legOpts)]int{read(relayIn), read(relayOut)}
	ch := make(chan Result, 1)
	f := New(relayIn, relayOut, Options{DetachAfter: time.Millisecond}, func(r Result) { ch <- r })
	go f.Run()
	exchange(t, client, server, []byte{1}, []byte{2})
	waitFor(t, "the flow detached", f.detached)
	// A burst attaches it (and the sweep may detach it again after).
	a0 := ReadStats().Attaches
	exchange(t, client, server, payload(1, 2<<20), payload(2, 2<<20))
	waitFor(t, "an attach", func() bool { return ReadStats().Attaches > a0 })
	var after [2][len(legOpts)]int
	f.mu.Lock() // the descriptors, attached or detached again, stay open
	for leg, fd := range f.fd {
		for i, o := range legOpts {
			after[leg][i], _ = unix.GetsockoptInt(int(fd), o.level, o.opt)
		}
	}
	f.mu.Unlock()
	if after != before {
		t.Errorf("options (nodelay, keepalive, idle, interval, count) were %v, after attaching %v", before, after)
	}
	finishBoth(t, client, server)
	if r := <-ch; r.Reason != ReasonClosed {
		t.Errorf("result %+v", r)
	}
}

// TestDetachedEnds checks that a detached flow ends as any flow does: a
// reset crosses it, Abort and the idle timeout close both legs, and a
// FIN is passed on; its sockets are closed after (no descriptor left).
func TestDetachedEnds(t *testing.T) {
	for _, tc := range []struct {
		name string
		idle time.Duration
		end  func(f detachedFlow)
		want Reason
		// what the apps then read: a reset on the other side, or EOF on both
		resetAt *net.TCPConn
	}{
		{name: "client reset", want: ReasonResetClient, end: func(f detachedFlow) { f.client.SetLinger(0); f.client.Close() }},
		{name: "server reset", want: ReasonResetServer, end: func(f detachedFlow) { f.server.SetLinger(0); f.server.Close() }},
		{name: "abort", want: ReasonCanceled, end: func(f detachedFlow) { f.f.Abort() }},
		{name: "idle", idle: 4 * time.Second, want: ReasonIdle, end: func(detachedFlow) {}},
		{name: "half-closes", want: ReasonClosed, end: func(f detachedFlow) {
			// The client's FIN crosses on the raw descriptors, then the
			// server answers after it and closes too.
			f.client.CloseWrite()
			f.server.SetReadDeadline(time.Now().Add(10 * time.Second))
			if b, err := io.ReadAll(f.server); err != nil || len(b) != 0 {
				t.Errorf("server read %d bytes, %v; want the FIN", len(b), err)
			}
			f.server.Write([]byte("late answer"))
			f.server.CloseWrite()
		}},
	} {
		for _, raw := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/raw=%v", tc.name, raw), func(t *testing.T) {
				testDetachedEnd(t, raw, tc.idle, tc.end, tc.want)
			})
		}
	}
}

// testDetachedEnd ends a detached flow (made by NewFDs if raw) with end
// and checks that it ends as want says, with no descriptor left.
func testDetachedEnd(t *testing.T, raw bool, idle time.Duration, end func(detachedFlow), want Reason) {
	fs := openDetachable(t, 1, raw, func(int) Options {
		return Options{DetachAfter: time.Millisecond, Idle: idle}
	})
	f := fs[0]
	f.f.mu.Lock()
	fds := f.f.fd
	f.f.mu.Unlock()
	inos := [2]uint64{inode(t, int(fds[0])), inode(t, int(fds[1]))}
	end(f)
	select {
	case r := <-f.res:
		if r.Reason != want {
			t.Errorf("reason %v, want %v", r.Reason, want)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the flow did not end")
	}
	switch want {
	case ReasonResetClient, ReasonResetServer:
		other := f.server
		if want == ReasonResetServer {
			other = f.client
		}
		other.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := other.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("the other side read %v, want a reset", err)
		}
	case ReasonClosed:
		f.client.SetReadDeadline(time.Now().Add(10 * time.Second))
		if b, err := io.ReadAll(f.client); err != nil || !bytes.Equal(b, []byte("late answer")) {
			t.Errorf("client read %q, %v", b, err)
		}
	default:
		for _, c := range []*net.TCPConn{f.client, f.server} {
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == nil {
				t.Errorf("read a byte from a flow that ended")
			}
		}
	}
	// The relay's sockets are gone: no descriptor of this process
	// refers to them.
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		var st unix.Stat_t
		var fd int
		if _, err := fmt.Sscan(e.Name(), &fd); err != nil || unix.Fstat(fd, &st) != nil {
			continue
		}
		if st.Mode&unix.S_IFMT == unix.S_IFSOCK && (st.Ino == inos[0] || st.Ino == inos[1]) {
			t.Errorf("descriptor %d still holds a relayed socket", fd)
		}
	}
}

// BenchmarkDetachAttach measures taking an idle flow out of Go's poller
// and putting it back (what a burst after an idle spell costs).
func BenchmarkDetachAttach(b *testing.B) {
	_, relayIn := tcpPair(b)
	relayOut, _ := tcpPair(b)
	f := New(relayIn, relayOut, Options{}, nil)
	go f.Run()
	for f.dirs[0].state.Load() != dirParked || f.dirs[1].state.Load() != dirParked {
		time.Sleep(time.Millisecond)
	}
	b.ResetTimer()
	for range b.N {
		if !f.detach() {
			b.Fatal("not detached")
		}
		d := &f.dirs[1]
		if !d.unpark() {
			b.Fatal("not parked")
		}
		f.attach(d)
		d.repark()
	}
	b.StopTimer()
	f.Abort()
}

// BenchmarkParkedMessage sends a message through a parked flow and its
// answer back, with the flow in Go's poller and detached from it.
func BenchmarkParkedMessage(b *testing.B) {
	for _, detached := range []bool{false, true} {
		b.Run(map[bool]string{false: "attached", true: "detached"}[detached], func(b *testing.B) {
			client, relayIn := tcpPair(b)
			relayOut, server := tcpPair(b)
			f := New(relayIn, relayOut, Options{}, nil)
			go f.Run()
			defer f.Abort()
			parked := func() {
				for f.dirs[0].state.Load() != dirParked || f.dirs[1].state.Load() != dirParked {
					runtime.Gosched()
				}
			}
			parked()
			if detached && !f.detach() {
				b.Fatal("not detached")
			}
			msg, buf := make([]byte, 100), make([]byte, 100)
			b.ResetTimer()
			for range b.N {
				client.Write(msg)
				io.ReadFull(server, buf)
				server.Write(msg)
				io.ReadFull(client, buf)
			}
			b.StopTimer()
			if f.detached() != detached {
				b.Fatalf("detached %v, want %v", f.detached(), detached)
			}
		})
	}
}
