package datapath

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
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
