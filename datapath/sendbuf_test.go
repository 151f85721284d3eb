package datapath

import (
	"context"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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
			client, relayIn := tcpPair(t)
			relayOut, server := tcpPair(t)
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
