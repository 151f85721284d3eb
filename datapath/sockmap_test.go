package datapath

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"halfway/netlab/labtest"
)

// needSockmap loads the sockmap program, or skips: it needs root (or
// CAP_BPF and CAP_NET_ADMIN).
func needSockmap(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the sockmap data path needs root to load its program")
	}
	// A small backlog, so that directions are held (and resumed) often.
	if err := EnableSockmap(4096, 256<<10); err != nil {
		t.Fatal(err)
	}
}

// sockmapped runs one relayed flow on the sockmap path and records the
// paths its directions used.
func sockmapped(t *testing.T, opt Options) (client, server *net.TCPConn, res <-chan Result, paths func() []Path) {
	t.Helper()
	var mu sync.Mutex
	var got []Path
	opt.Sockmap = true
	opt.OnPath = func(up bool, p Path) { mu.Lock(); got = append(got, p); mu.Unlock() }
	client, server, res = relayed(t, context.Background(), opt)
	return client, server, res, func() []Path { mu.Lock(); defer mu.Unlock(); return append([]Path(nil), got...) }
}

// TestSockmapTransfers moves random amounts both ways at once through
// flows on the sockmap path, half-closes each side in turn, and checks
// every byte, the counts and the path.
func TestSockmapTransfers(t *testing.T) {
	needSockmap(t)
	s0 := ReadStats()
	var wg sync.WaitGroup
	const flows = 24
	for i := range flows {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client, server, res, paths := sockmapped(t, Options{Idle: time.Minute})
			r := rand.New(rand.NewPCG(uint64(i), 3))
			sizes := []int{0, 1, 1500, 65536, r.IntN(4 << 20)}
			up, down := payload(uint64(i), sizes[i%len(sizes)]), payload(uint64(i+500), sizes[(i+2)%len(sizes)])
			// One byte first, so the flow is in the sockmap when the rest comes.
			exchange(t, client, server, []byte{1}, []byte{2})
			go func() { client.Write(up); client.CloseWrite() }()
			go func() { server.Write(down); server.CloseWrite() }()
			var gotUp, gotDown []byte
			var w2 sync.WaitGroup
			w2.Add(2)
			go func() {
				defer w2.Done()
				server.SetReadDeadline(time.Now().Add(30 * time.Second))
				gotUp, _ = io.ReadAll(server)
			}()
			go func() {
				defer w2.Done()
				client.SetReadDeadline(time.Now().Add(30 * time.Second))
				gotDown, _ = io.ReadAll(client)
			}()
			w2.Wait()
			if sha256.Sum256(gotUp) != sha256.Sum256(up) || sha256.Sum256(gotDown) != sha256.Sum256(down) {
				t.Errorf("flow %d: bytes differ (%d/%d up, %d/%d down)", i, len(gotUp), len(up), len(gotDown), len(down))
			}
			select {
			case rr := <-res:
				if rr.Reason != ReasonClosed || rr.Up != int64(1+len(up)) || rr.Down != int64(1+len(down)) {
					t.Errorf("flow %d: %+v, want closed with %d up and %d down", i, rr, 1+len(up), 1+len(down))
				}
			case <-time.After(30 * time.Second):
				t.Errorf("flow %d did not end", i)
				return
			}
			for _, p := range paths() {
				if p != PathSockmap {
					t.Errorf("flow %d: a direction used %s", i, p)
				}
			}
		}()
	}
	wg.Wait()
	if n := ReadStats().SockmapFlows - s0.SockmapFlows; n != flows {
		t.Errorf("%d flows entered the sockmap, want %d", n, flows)
	}
}

// TestSockmapEarlyBytes: bytes waiting on either socket when the flow
// enters the sockmap (the server's banner, the client's second request)
// are moved at once, not when the next segment comes.
func TestSockmapEarlyBytes(t *testing.T) {
	needSockmap(t)
	client, relayIn := tcpPair(t)
	relayOut, server := tcpPair(t)
	server.Write([]byte("banner"))
	client.Write([]byte("request"))
	time.Sleep(20 * time.Millisecond) // both are in the relay's receive queues
	ch := make(chan Result, 1)
	go New(relayIn, relayOut, Options{Sockmap: true}, func(r Result) { ch <- r }).Run()
	for _, c := range []struct {
		conn *net.TCPConn
		want string
	}{{server, "request"}, {client, "banner"}} {
		got := make([]byte, len(c.want))
		c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c.conn, got); err != nil || string(got) != c.want {
			t.Fatalf("read %q (%v), want %q", got, err, c.want)
		}
	}
	// A byte that comes after the flow entered the sockmap, then a second
	// one after a pause: neither waits for a later segment.
	for _, b := range []string{"x", "y"} {
		client.Write([]byte(b))
		got := make([]byte, 1)
		server.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(server, got); err != nil || string(got) != b {
			t.Fatalf("read %q (%v), want %q", got, err, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	client.Close()
	server.Close()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("the flow did not end")
	}
}

// TestSockmapBackpressure: a server that reads nothing must stop the
// client, as TCP would end to end: the program holds the direction once
// its destination falls behind, and user space carries it on with the
// destination's flow control. Once the server reads and user space has
// caught up, the direction goes back to the kernel. Every byte arrives,
// in order.
func TestSockmapBackpressure(t *testing.T) {
	needSockmap(t)
	s0 := ReadStats()
	// The buffers' autotuning, not the relay, decides how much the
	// client can write before it blocks: up to tcp_wmem's maximum at the
	// client and the relay's send side, tcp_rmem's at the relay's receive
	// side and the server, and the program's 4 MB hold. Redirected bytes
	// count as read, so the relay's receive buffer grows as fast as the
	// round trip allows, on a loaded machine to the host's maximum (32 MB
	// here, 6 MB by default). A namespace of its own with 4 MB maximums
	// keeps that sum under half of what the client sends.
	var client, server *net.TCPConn
	var res <-chan Result
	var paths func() []Path
	labtest.InNetns(t, func() {
		for _, k := range []string{"tcp_rmem", "tcp_wmem"} {
			if err := os.WriteFile("/proc/sys/net/ipv4/"+k, []byte("4096 131072 4194304"), 0o644); err != nil {
				panic(err)
			}
		}
		client, server, res, paths = sockmapped(t, Options{})
	})
	exchange(t, client, server, []byte{1}, []byte{2})
	const total = 64 << 20
	data := payload(7, total)
	wrote := make(chan int, 1)
	go func() {
		var n int
		for n < total {
			client.SetWriteDeadline(time.Now().Add(2 * time.Second))
			m, err := client.Write(data[n:min(n+1<<20, total)])
			n += m
			if err != nil {
				break
			}
		}
		wrote <- n
	}()
	n := <-wrote
	t.Logf("the client wrote %.1f MB before it blocked", float64(n)/1e6)
	// Socket buffers and the kernel's backlog hold some megabytes; without
	// backpressure all 64 MB are taken at once.
	if n >= total/2 {
		t.Fatalf("the client wrote %d MB to a server that reads nothing", n>>20)
	}
	go func() {
		client.SetWriteDeadline(time.Time{})
		client.Write(data[n:])
	}()
	got := make([]byte, total)
	server.SetReadDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.ReadFull(server, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the server read %v, equal %v", err, bytes.Equal(got, data))
	}
	// Quiet now: the held direction hands back to the kernel, and later
	// messages move there.
	var resumed bool
	sent := int64(total + 1)
	for i := range 50 {
		msg := payload(uint64(i), 1000)
		exchange(t, client, server, msg, nil)
		sent += int64(len(msg))
		if ReadStats().SockmapResumes > s0.SockmapResumes {
			resumed = true
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !resumed {
		t.Error("the held direction never went back to the kernel")
	}
	client.CloseWrite()
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	if rest, err := io.ReadAll(server); err != nil || len(rest) != 0 {
		t.Fatalf("after the FIN the server read %d bytes, %v", len(rest), err)
	}
	server.CloseWrite()
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if rest, err := io.ReadAll(client); err != nil || len(rest) != 0 {
		t.Fatalf("after the FIN the client read %d bytes, %v", len(rest), err)
	}
	if r := <-res; r.Reason != ReasonClosed || r.Up != sent || r.Down != 1 {
		t.Errorf("%+v, want closed with %d up and 1 down", r, sent)
	}
	for _, p := range paths() {
		if p != PathSockmap {
			t.Errorf("a direction used %s", p)
		}
	}
	// The up direction was held at least once, and both were taken over
	// at their FINs.
	if n := ReadStats().SockmapTakeovers - s0.SockmapTakeovers; n < 3 {
		t.Errorf("%d directions taken over from the sockmap, want at least 3", n)
	}
}

// TestSockmapReset: a reset on either leg resets the other while both
// directions are in the kernel.
func TestSockmapReset(t *testing.T) {
	needSockmap(t)
	for _, serverResets := range []bool{true, false} {
		t.Run(map[bool]string{true: "server", false: "client"}[serverResets], func(t *testing.T) {
			client, server, res, _ := sockmapped(t, Options{})
			exchange(t, client, server, []byte("hi"), []byte("yo"))
			resetter, other := server, client
			want := ReasonResetServer
			if !serverResets {
				resetter, other, want = client, server, ReasonResetClient
			}
			resetter.SetLinger(0)
			resetter.Close()
			other.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := other.Read(make([]byte, 2)); !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("the other side read %v, want a reset", err)
			}
			if r := <-res; r.Reason != want || r.Up != 2 || r.Down != 2 {
				t.Errorf("%+v, want %v with 2 bytes each way", r, want)
			}
		})
	}
}

// TestSockmapIdle: bytes the kernel moves keep a flow alive past its idle
// timeout; a flow that moves none ends at it.
func TestSockmapIdle(t *testing.T) {
	needSockmap(t)
	client, server, res, _ := sockmapped(t, Options{Idle: 600 * time.Millisecond})
	exchange(t, client, server, []byte{1}, []byte{2})
	for i := range 12 { // 1.8 s of a byte every 150 ms
		exchange(t, client, server, []byte{byte(i)}, nil)
		time.Sleep(150 * time.Millisecond)
	}
	select {
	case r := <-res:
		t.Fatalf("a busy flow ended: %+v", r)
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	select {
	case r := <-res:
		if r.Reason != ReasonIdle || r.Up != 13 || r.Down != 1 {
			t.Errorf("%+v, want idle with 13 up and 1 down", r)
		}
	case <-ctx.Done():
		t.Fatal("an idle flow did not end")
	}
}

// TestSockmapDownPrefix: a flow whose down direction first writes the
// relay's own answer (DownPrefix) enters the sockmap once that is out and
// both directions are idle; the answer still comes first.
func TestSockmapDownPrefix(t *testing.T) {
	needSockmap(t)
	s0 := ReadStats()
	client, server, res, paths := sockmapped(t, Options{DownPrefix: []byte("answer:"), PrefixWait: 20 * time.Millisecond})
	client.Write([]byte("request"))
	got := make([]byte, len("request"))
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(server, got); err != nil || string(got) != "request" {
		t.Fatalf("server read %q, %v", got, err)
	}
	server.Write([]byte("first"))
	got = make([]byte, len("answer:first"))
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(client, got); err != nil || string(got) != "answer:first" {
		t.Fatalf("client read %q, %v", got, err)
	}
	for i := range 20 {
		exchange(t, client, server, payload(uint64(i), 700), payload(uint64(i+50), 1300))
		if ReadStats().SockmapFlows > s0.SockmapFlows {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if ReadStats().SockmapFlows == s0.SockmapFlows {
		t.Fatal("the flow never entered the sockmap")
	}
	exchange(t, client, server, []byte("after"), []byte("entering"))
	finishBoth(t, client, server)
	if r := <-res; r.Reason != ReasonClosed {
		t.Errorf("%+v", r)
	}
	for _, p := range paths() {
		if p != PathSockmap {
			t.Errorf("a direction used %s", p)
		}
	}
}

// TestSockmapHoldResumeStress runs flows on the sockmap path for a few
// seconds with writers and readers that pause at random (now and then for
// long enough that a direction falls behind and is held), both ways at
// once, and checks every byte and count: directions are held and handed
// back many times, at any point in the stream.
func TestSockmapHoldResumeStress(t *testing.T) {
	needSockmap(t)
	s0 := ReadStats()
	deadline := time.Now().Add(6 * time.Second)
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for iter := 0; time.Now().Before(deadline); iter++ {
				seed := uint64(w*1000 + iter)
				r := rand.New(rand.NewPCG(seed, 9))
				client, server, res, _ := sockmapped(t, Options{Idle: time.Minute})
				exchange(t, client, server, []byte{1}, []byte{2})
				up, down := payload(seed, r.IntN(6<<20)), payload(seed+7, r.IntN(6<<20))
				var gotUp, gotDown []byte
				var errUp, errDown error
				var w2 sync.WaitGroup
				w2.Add(4)
				go func() { defer w2.Done(); jerkyWrite(client, up, rand.New(rand.NewPCG(seed, 1))) }()
				go func() { defer w2.Done(); jerkyWrite(server, down, rand.New(rand.NewPCG(seed, 2))) }()
				go func() { defer w2.Done(); gotUp, errUp = jerkyRead(server, rand.New(rand.NewPCG(seed, 3))) }()
				go func() { defer w2.Done(); gotDown, errDown = jerkyRead(client, rand.New(rand.NewPCG(seed, 4))) }()
				w2.Wait()
				var rr Result
				select {
				case rr = <-res:
				case <-time.After(30 * time.Second):
					t.Errorf("seed %d: the flow did not end", seed)
				}
				if !bytes.Equal(gotUp, up) || !bytes.Equal(gotDown, down) || errUp != nil || errDown != nil {
					t.Errorf("seed %d: up %d of %d bytes (%v), down %d of %d (%v), intact %v/%v", seed, len(gotUp), len(up), errUp, len(gotDown), len(down), errDown, bytes.Equal(gotUp, up), bytes.Equal(gotDown, down))
				}
				if rr.Reason != ReasonClosed || rr.Up != int64(len(up)+1) || rr.Down != int64(len(down)+1) {
					t.Errorf("seed %d: %+v, want closed with %d up and %d down", seed, rr, len(up)+1, len(down)+1)
				}
			}
		}()
	}
	wg.Wait()
	s := ReadStats()
	t.Logf("%d flows, %d takeovers, %d resumes", s.SockmapFlows-s0.SockmapFlows, s.SockmapTakeovers-s0.SockmapTakeovers, s.SockmapResumes-s0.SockmapResumes)
	if s.SockmapResumes == s0.SockmapResumes {
		t.Error("no held direction was handed back to the kernel")
	}
}

// jerkyWrite writes data in chunks of random size with random pauses,
// then half-closes.
func jerkyWrite(c *net.TCPConn, data []byte, r *rand.Rand) {
	for off := 0; off < len(data); {
		n := min(len(data)-off, 1+r.IntN(1<<r.IntN(21)))
		c.SetWriteDeadline(time.Now().Add(30 * time.Second))
		m, err := c.Write(data[off : off+n])
		off += m
		if err != nil {
			return
		}
		if r.IntN(4) == 0 {
			time.Sleep(time.Duration(r.IntN(20)) * time.Millisecond)
		}
	}
	c.CloseWrite()
}

// jerkyRead reads until EOF into buffers of random size with random
// pauses, now and then a long one, so that the direction into c falls
// behind and is held.
func jerkyRead(c *net.TCPConn, r *rand.Rand) ([]byte, error) {
	var out []byte
	buf := make([]byte, 1<<20)
	for {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		n, err := c.Read(buf[:1+r.IntN(1<<r.IntN(21))])
		out = append(out, buf[:n]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		if r.IntN(8) == 0 {
			p := r.IntN(30)
			if r.IntN(20) == 0 {
				p = 300 + r.IntN(500)
			}
			time.Sleep(time.Duration(p) * time.Millisecond)
		}
	}
}

// TestSockmapIneligible: a flow whose sockets cannot enter the sockmap
// (MPTCP) runs on splice, byte-exact, and says so.
func TestSockmapIneligible(t *testing.T) {
	needSockmap(t)
	lc := net.ListenConfig{}
	lc.SetMultipathTCP(true)
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := net.Dialer{}
	d.SetMultipathTCP(true)
	client, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	relayIn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := relayIn.(*net.TCPConn).MultipathTCP(); !ok {
		t.Skip("MPTCP is not available here")
	}
	relayOut, server := tcpPair(t)
	var mu sync.Mutex
	var paths []Path
	ch := make(chan Result, 1)
	s0 := ReadStats()
	go New(relayIn.(*net.TCPConn), relayOut, Options{Sockmap: true, OnPath: func(_ bool, p Path) { mu.Lock(); paths = append(paths, p); mu.Unlock() }},
		func(r Result) { ch <- r }).Run()
	for i := range 5 {
		exchange(t, client.(*net.TCPConn), server, payload(uint64(i), 5000), payload(uint64(i+9), 7000))
	}
	client.(*net.TCPConn).CloseWrite()
	server.CloseWrite()
	if r := <-ch; r.Reason != ReasonClosed || r.Up != 25000 || r.Down != 35000 {
		t.Errorf("%+v", r)
	}
	mu.Lock()
	defer mu.Unlock()
	// (Messages of a few KB: through a buffer, the splice path's way.)
	if len(paths) != 2 || paths[0] != PathBuffer || paths[1] != PathBuffer {
		t.Errorf("paths %v, want the splice path's buffered messages both ways", paths)
	}
	if n := ReadStats().SockmapFlows - s0.SockmapFlows; n != 0 {
		t.Errorf("%d flows entered the sockmap", n)
	}
}

// TestSockmapResetAfterResume: a client's reset on a direction that went
// back to the kernel after a hold reaches the server as a reset, and the
// flow ends as reset-client, where the peek's error went unread and the
// server got a FIN, with the relay waking in a loop on the closed source.
func TestSockmapResetAfterResume(t *testing.T) {
	needSockmap(t)
	s0 := ReadStats()
	client, server, res, _ := sockmapped(t, Options{})
	exchange(t, client, server, []byte{1}, []byte{2})
	const total = 16 << 20
	data := payload(8, total)
	go client.Write(data)
	time.Sleep(300 * time.Millisecond) // the server reads nothing yet: the direction is held
	got := make([]byte, total)
	server.SetReadDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.ReadFull(server, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the server read %v, equal %v", err, bytes.Equal(got, data))
	}
	for i := 0; ReadStats().SockmapResumes == s0.SockmapResumes; i++ {
		if i > 50 {
			t.Fatal("the held direction never went back to the kernel")
		}
		exchange(t, client, server, payload(uint64(i), 100), nil)
		time.Sleep(20 * time.Millisecond)
	}
	client.SetLinger(0)
	client.Close()
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := server.Read(make([]byte, 1)); !isReset(err) {
		t.Errorf("the server read %v after the client's reset, want a reset", err)
	}
	select {
	case r := <-res:
		if r.Reason != ReasonResetClient {
			t.Errorf("result %+v, want reason %s", r, ReasonResetClient)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the flow did not end")
	}
}

// TestSockmapEnterMidSegment: a flow enters the sockmap as its up
// direction parks after a splice that stopped at the pipe's 16 slots in
// the middle of a segment (one of many small fragments, as a corked
// writer's small writes make). The program reads whole segments, so the
// part of that segment already spliced must not reach the server twice.
func TestSockmapEnterMidSegment(t *testing.T) {
	needSockmap(t)
	client, relayIn := tcpPair(t)
	relayOut, server := tcpPair(t)
	other, _ := tcpPair(t)
	// A buffer's worth first (the direction is a stream from then on: it
	// splices), then small writes, each a fragment of its own: between
	// them the same thread writes a byte to another socket, so that no
	// two are contiguous in the thread's page. Corked, they go out as few
	// segments of 17 fragments each, more than the pipe's 16 slots.
	const small, smalls = 100, 40
	data := payload(11, 32<<10+small*smalls)
	rc, err := client.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	orc, err := other.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var werr error
	runtime.LockOSThread()
	err = rc.Control(func(cfd uintptr) {
		werr = orc.Control(func(ofd uintptr) {
			fd := int(cfd)
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 1<<20); err != nil {
				werr = err
				return
			}
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_CORK, 1); err != nil {
				werr = err
				return
			}
			chunks := [][]byte{data[:32<<10]}
			for off := 32 << 10; off < len(data); off += small {
				chunks = append(chunks, data[off:off+small])
			}
			for i, c := range chunks {
				if i == 1 {
					// The buffer's worth goes out alone; the small writes
					// after it are corked.
					unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_CORK, 0)
					unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_CORK, 1)
				}
				if n, err := unix.Write(fd, c); err != nil || n != len(c) {
					werr = fmt.Errorf("write %d bytes: %d, %v", len(c), n, err)
					return
				}
				if _, err := unix.Write(int(ofd), []byte{0}); err != nil {
					werr = err
					return
				}
			}
			werr = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_CORK, 0)
		})
	})
	runtime.UnlockOSThread()
	if err != nil || werr != nil {
		t.Fatal(err, werr)
	}
	// Every byte waits in the relay's receive queue before the flow starts.
	waitInq(t, relayIn, len(data))
	s0 := ReadStats()
	ch := make(chan Result, 1)
	go New(relayIn, relayOut, Options{Sockmap: true}, func(r Result) { ch <- r }).Run()
	got := make([]byte, len(data))
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(server, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the server read %v, equal %v", err, bytes.Equal(got, data))
	}
	server.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := server.Read(make([]byte, 4096)); n > 0 {
		t.Fatalf("the server read %d bytes more than the client sent (%v)", n, err)
	}
	// The flow enters once the rest is read, and moves bytes there.
	exchange(t, client, server, []byte("after"), []byte("entering"))
	if ReadStats().SockmapFlows == s0.SockmapFlows {
		t.Error("the flow never entered the sockmap")
	}
	client.Close()
	server.Close()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("the flow did not end")
	}
}

// waitInq waits until c's receive queue holds n bytes.
func waitInq(t *testing.T, c *net.TCPConn, n int) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		var inq int
		rc.Control(func(fd uintptr) { inq, err = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
		if err != nil {
			t.Fatal(err)
		}
		if inq >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the relay's receive queue holds %d bytes, want %d", inq, n)
		}
	}
}

// TestSockmapFINThenResetWhileHeld: a client that reads nothing, so that
// the server's bytes redirected to it wait on the relay's socket, sends
// bulk to a server that reads nothing yet (its direction is held: the
// program passes its segments to user space, and they queue behind the
// server's), then its FIN, then a reset. The reset fails the pending
// send to the client, which strands the passed bytes, and reads of the
// source say EOF (its FIN came first). The server must get a reset, and
// the flow must end as reset-client, rather than user space waiting for
// the stranded bytes for ever while the server waits for the rest. A
// few flows at once: the sweep takes the reset's error, and ends the
// flow, if it happens to look while user space still waits for the
// server to take the redirected bytes.
func TestSockmapFINThenResetWhileHeld(t *testing.T) {
	needSockmap(t)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if msg := finThenResetWhileHeld(t, uint64(i)); msg != "" {
				t.Errorf("flow %d: %s", i, msg)
			}
		}()
	}
	wg.Wait()
}

func finThenResetWhileHeld(t *testing.T, seed uint64) string {
	client, relayIn := tcpPair(t)
	relayOut, server := tcpPair(t)
	// Small buffers both ways, so that each direction is held (more than
	// the 256 KB backlog redirected and not yet taken) with room left for
	// the client's FIN to arrive.
	for _, c := range []*net.TCPConn{client, server} {
		c.SetReadBuffer(64 << 10)
	}
	for _, c := range []*net.TCPConn{relayIn, relayOut} {
		c.SetWriteBuffer(64 << 10)
	}
	res := make(chan Result, 1)
	f := New(relayIn, relayOut, Options{Sockmap: true}, func(r Result) { res <- r })
	go f.Run()
	exchange(t, client, server, []byte{1}, []byte{2})
	for i := 0; f.sm.Load() == nil; i++ {
		if i > 500 {
			return "the flow never entered the sockmap"
		}
		time.Sleep(10 * time.Millisecond)
	}
	x := f.sm.Load()
	held := func(i int) bool {
		st, err := loadedSockmap().state(x.socks[i].cookie)
		return err == nil && st.Passed > 0
	}
	go func() {
		server.SetWriteDeadline(time.Now().Add(20 * time.Second))
		server.Write(payload(seed+100, 1<<20))
	}()
	for i := 0; !held(0); i++ {
		if i > 1000 {
			return "the down direction was not held"
		}
		time.Sleep(5 * time.Millisecond)
	}
	data := payload(seed, 600<<10)
	client.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := client.Write(data); err != nil {
		return fmt.Sprintf("the client's write: %v", err)
	}
	client.CloseWrite()
	// Every byte is at the relay, the FIN too, and the up direction is held.
	for i := 0; !held(1) || tcpState(client) != unix.BPF_TCP_FIN_WAIT2; i++ {
		if i > 1000 {
			return fmt.Sprintf("the up direction was not held with the FIN in (client state %d)", tcpState(client))
		}
		time.Sleep(5 * time.Millisecond)
	}
	client.SetLinger(0)
	client.Close()
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, server)
	if !isReset(err) {
		return fmt.Sprintf("the server read %d of %d bytes, then %v; want a reset", n, len(data), err)
	}
	select {
	case r := <-res:
		if r.Reason != ReasonResetClient {
			return fmt.Sprintf("result %+v, want %s", r, ReasonResetClient)
		}
	case <-time.After(10 * time.Second):
		f.Abort()
		return "the flow did not end"
	}
	server.Close()
	return ""
}
