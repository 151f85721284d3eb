package datapath

import (
	"bytes"
	"context"
	"crypto/sha256"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"halfway/netlab/labtest"
	"halfway/sockopt"
)

func sendOpts(t *testing.T, c *net.TCPConn) (sndbuf, lowat int) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var e1, e2 error
	rc.Control(func(fd uintptr) {
		sndbuf, e1 = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF)
		lowat, e2 = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT)
	})
	if e1 != nil || e2 != nil {
		t.Fatal(e1, e2)
	}
	return sndbuf, lowat
}

// freshPairs makes the relay's two legs, each a TCP pair on loopback, in
// a network namespace of their own. A new socket's first send buffer is
// sized from its path's congestion window and reordering, which the
// kernel caches per destination (ip tcp_metrics): after a bulk run on the
// host's loopback (a benchmark, an experiment) it starts at tcp_wmem's
// maximum already, so priming would have nothing to do and these tests
// would fail for a reason that is not the relay's. The namespace (which
// takes the host's tcp_wmem and congestion control) goes away with the
// last of its sockets.
func freshPairs(t *testing.T) (client, relayIn, relayOut, server *net.TCPConn) {
	t.Helper()
	labtest.InNetns(t, func() {
		client, relayIn = tcpPair(t)
		relayOut, server = tcpPair(t)
	})
	return client, relayIn, relayOut, server
}

// TestPrimeSend: once a direction has moved 32 KiB, its destination's
// send buffer is fixed at tcp_wmem's maximum with its unsent bytes bounded;
// the other direction's, which moved a few bytes, a leg not asked for and
// one whose round trip is short (loopback, at the default threshold) keep
// theirs.
func TestPrimeSend(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SO_SNDBUFFORCE needs CAP_NET_ADMIN: run as root")
	}
	if sendCeiling() <= 0 {
		t.Skip("net.ipv4.tcp_wmem cannot be read")
	}
	defer primeMinRTT.Store(primeMinRTT.Load())
	both := Options{PrimeClientSend: true, PrimeServerSend: true}
	for _, tc := range []struct {
		name   string
		opt    Options
		minRTT uint32 // µs; loopback's is far below the default
		primed bool
	}{
		{"splice", both, 0, true},
		{"copy", Options{ForceCopy: true, PrimeClientSend: true, PrimeServerSend: true}, 0, true},
		{"not asked", Options{PrimeServerSend: true}, 0, false},
		{"short path", both, primeMinRTT.Load(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			primeMinRTT.Store(tc.minRTT)
			client, relayIn, relayOut, server := freshPairs(t)
			res := make(chan Result, 1)
			go func() { res <- Join(context.Background(), relayIn, relayOut, tc.opt) }()
			deadline := time.Now().Add(10 * time.Second)
			client.SetDeadline(deadline)
			server.SetDeadline(deadline)
			exchange(t, client, server, []byte("GET"), payload(5, 200_000))
			sndbuf, lowat := sendOpts(t, relayIn)
			if tc.primed && (sndbuf != sendCeiling() || lowat != notsentLowat) {
				t.Errorf("client leg: SO_SNDBUF %d, TCP_NOTSENT_LOWAT %d; want %d and %d", sndbuf, lowat, sendCeiling(), notsentLowat)
			}
			// Autotuning may have grown the buffer meanwhile: the unsent
			// bound says whether the data path touched it.
			if !tc.primed && lowat == notsentLowat {
				t.Errorf("client leg not to be primed: TCP_NOTSENT_LOWAT %d", lowat)
			}
			if _, lowat := sendOpts(t, relayOut); lowat == notsentLowat {
				t.Error("the server leg, sent 3 bytes, was primed")
			}
			// Bulk still flows both ways through primed legs.
			exchange(t, client, server, payload(6, 1<<20), payload(7, 3<<20))
			finishBoth(t, client, server)
			if r := <-res; r.Reason != ReasonClosed {
				t.Errorf("%+v", r)
			}
		})
	}
}

// TestPrimedSlowReader: through a primed leg, a reader that takes its
// bytes slowly gets every one of them, and the relay's socket toward it
// holds no more than about TCP_NOTSENT_LOWAT unsent (one socket buffer's
// worth of a few MB without the bound).
func TestPrimedSlowReader(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SO_SNDBUFFORCE needs CAP_NET_ADMIN: run as root")
	}
	defer primeMinRTT.Store(primeMinRTT.Load())
	primeMinRTT.Store(0) // loopback
	client, relayIn, relayOut, server := freshPairs(t)
	if err := client.SetReadBuffer(64 << 10); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res := make(chan Result, 1)
	go func() {
		res <- Join(ctx, relayIn, relayOut, Options{PrimeClientSend: true, PrimeServerSend: true})
	}()
	const size = 8 << 20
	want := payload(30, size)
	go func() {
		server.Write(want)
		server.CloseWrite()
	}()
	h := sha256.New()
	buf := make([]byte, 32<<10)
	client.SetReadDeadline(time.Now().Add(50 * time.Second))
	most, got := uint32(0), 0
	for got < size {
		if info, err := sockopt.Info(relayIn); err == nil {
			most = max(most, info.Notsent_bytes)
		}
		n, err := client.Read(buf)
		h.Write(buf[:n])
		got += n
		if err != nil {
			break
		}
		time.Sleep(time.Millisecond) // a slow reader: about 30 MB/s
	}
	if got != size || !bytes.Equal(h.Sum(nil), sha(want)) {
		t.Fatalf("%d of %d bytes, digest match %v", got, size, bytes.Equal(h.Sum(nil), sha(want)))
	}
	if _, lowat := sendOpts(t, relayIn); lowat != notsentLowat {
		t.Fatalf("the client leg was not primed (TCP_NOTSENT_LOWAT %d)", lowat)
	}
	// A write may pass the bound by one segment buffer (64 KiB here).
	if most > 2*notsentLowat {
		t.Errorf("up to %d bytes waited unsent toward a slow reader, want about %d at most", most, notsentLowat)
	}
	client.CloseWrite()
	if r := <-res; r.Reason != ReasonClosed || r.Down != size {
		t.Errorf("%+v", r)
	}
}
