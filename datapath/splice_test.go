package datapath

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestBulkPipes: directions carrying bulk grow their pipes in the kernel,
// the process never keeps more big pipes than its budget (one here, with
// two bulk flows at once), and every byte arrives intact.
func TestBulkPipes(t *testing.T) {
	time.Sleep(200 * time.Millisecond) // earlier tests' flows give their pipes back
	Drain()
	if n := pipes.bigAlive.Load(); n != 0 {
		t.Fatalf("%d big pipes alive before the test", n)
	}
	saved := pipes.bigFree
	pipes.bigFree = make(chan *pipe, 1)
	t.Cleanup(func() { Drain(); pipes.bigFree = saved })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var most int32
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			most = max(most, pipes.bigAlive.Load())
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Microsecond):
			}
		}
	}()
	const size = 16 << 20
	var wg sync.WaitGroup
	// The servers read only once both flows have filled their buffers, so
	// both directions hold their pipes at once, each having spliced bulk.
	read := make(chan struct{})
	for i := range 2 {
		client, server, res := relayed(t, ctx, Options{})
		want := payload(uint64(10+i), size)
		wg.Add(1)
		go func() {
			defer wg.Done()
			go func() {
				client.Write(want)
				client.CloseWrite()
			}()
			<-read
			h := sha256.New()
			n, err := io.Copy(h, server)
			if err != nil || n != size || !bytes.Equal(h.Sum(nil), sha(want)) {
				t.Errorf("flow %d: %d of %d bytes, err %v, digest match %v", i, n, size, err, bytes.Equal(h.Sum(nil), sha(want)))
			}
			server.Close()
			if r := <-res; r.Up != size {
				t.Errorf("flow %d: result %+v", i, r)
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	close(read)
	wg.Wait()
	close(stop)
	<-sampled
	if most > 1 {
		t.Errorf("%d big pipes at once; the budget is 1", most)
	}
	if n := ReadStats().BigPipes; n != 1 {
		t.Fatalf("BigPipes %d after two 16 MB flows, want the 1 the budget allows", n)
	}
	select {
	case p := <-pipes.bigFree:
		defer pipes.put(p)
		sz, err := unix.FcntlInt(uintptr(p.w), unix.F_GETPIPE_SZ, 0)
		if err != nil || sz != bigPipe {
			t.Errorf("pooled big pipe: %d bytes (err %v), want %d", sz, err, bigPipe)
		}
	default:
		t.Error("no big pipe pooled after the flows ended")
	}
}

func sha(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

// TestSlowDestinationPipe: a direction carrying bulk to a destination that
// takes bytes slowly leaves no more than a default pipe's worth waiting in
// its (grown) pipe: the rest stays in the source's buffer.
func TestSlowDestinationPipe(t *testing.T) {
	client, relayIn := tcpPair(t)
	relayOut, server := tcpPair(t)
	// Small fixed buffers toward the server, so it is the bottleneck at once.
	if err := relayOut.SetWriteBuffer(32 << 10); err != nil {
		t.Fatal(err)
	}
	if err := server.SetReadBuffer(32 << 10); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res := make(chan Result, 1)
	go func() { res <- Join(ctx, relayIn, relayOut, Options{}) }()
	const size = 2 << 20
	want := payload(20, size)
	go func() {
		client.Write(want)
		client.CloseWrite()
	}()
	stop := make(chan struct{})
	most := make(chan int, 1)
	go func() {
		m := 0
		defer func() { most <- m }()
		for {
			m = max(m, pipeBytes())
			select {
			case <-stop:
				return
			case <-time.After(500 * time.Microsecond):
			}
		}
	}()
	// The destination is full before the direction has had four clean
	// splices out, so it never moves more than a default pipe at a time.
	time.Sleep(100 * time.Millisecond)
	h := sha256.New()
	buf := make([]byte, 16<<10)
	var got int
	for got < size {
		n, err := server.Read(buf)
		h.Write(buf[:n])
		got += n
		if err != nil {
			break
		}
		time.Sleep(time.Millisecond) // a slow reader
	}
	close(stop)
	if m := <-most; m > smallPipe {
		t.Errorf("up to %d bytes waited in a pipe for a slow destination, want at most %d", m, smallPipe)
	}
	if got != size || !bytes.Equal(h.Sum(nil), sha(want)) {
		t.Errorf("%d of %d bytes, digest match %v", got, size, bytes.Equal(h.Sum(nil), sha(want)))
	}
	server.Close()
	<-res
}

// pipeBytes is the most bytes any pipe of the process holds now.
func pipeBytes() int {
	most := 0
	for fd, name := range pipeFDs() {
		n, err := unix.IoctlGetInt(fd, unix.TIOCINQ) // FIONREAD
		// The descriptor may have been closed and reused meanwhile.
		if again, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd)); err == nil && again == name {
			most = max(most, n)
		}
	}
	return most
}

// pipeFDs maps the process's pipe descriptors (either end) to their names.
func pipeFDs() map[int]string {
	ents, _ := os.ReadDir("/proc/self/fd")
	fds := map[int]string{}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if name, _ := os.Readlink("/proc/self/fd/" + e.Name()); strings.HasPrefix(name, "pipe:") {
			fds[fd] = name
		}
	}
	return fds
}

// TestPipeBackAtFIN: a direction that splices bulk to its FIN gives its
// pipe back there, while the flow lives on (the server has yet to
// answer): a half-closed direction holds no pipe, nor the big pipes'
// budget.
func TestPipeBackAtFIN(t *testing.T) {
	time.Sleep(200 * time.Millisecond) // earlier tests' flows give their pipes back
	Drain()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, server, res := relayed(t, ctx, Options{})
	want := payload(3, 4<<20)
	go func() {
		client.Write(want)
		client.CloseWrite()
	}()
	server.SetReadDeadline(time.Now().Add(20 * time.Second))
	if got, err := io.ReadAll(server); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("server read %d of %d bytes, %v", len(got), len(want), err)
	}
	if pipes.bigAlive.Load() == 0 {
		t.Skip("skipped: the upload grew no pipe (no big pipes allowed here)")
	}
	held := func() int32 { return pipes.bigAlive.Load() - int32(len(pipes.bigFree)) }
	for i := 0; held() != 0; i++ {
		if i > 200 {
			t.Fatalf("the direction past its FIN holds %d big pipe(s)", held())
		}
		time.Sleep(10 * time.Millisecond)
	}
	server.Write([]byte("answer"))
	server.Close()
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(client); err != nil || string(got) != "answer" {
		t.Errorf("client read %q, %v", got, err)
	}
	if r := <-res; r.Up != int64(len(want)) || r.Down != 6 {
		t.Errorf("result %+v", r)
	}
}
