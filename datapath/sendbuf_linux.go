package datapath

import (
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// A relay forwards bytes as they arrive, so in slow start its writes do
// not block; and the kernel grows a socket's send buffer only on the
// acknowledgements that follow a write that blocked. So the buffer keeps
// its first size (tcp_wmem[1], or the truesize of two initial windows)
// while the unacknowledged bytes it holds double every round trip, until
// about the fourth round, when the window outgrows it and the rest of that
// round waits for the next (docs/relay.md: a 200 KB download through one
// relay took 353 ms instead of the model's 308). Once a direction has moved
// primeAt bytes, primeSend takes its destination out of that autotuning:
// the send buffer is fixed at autotuning's own ceiling (tcp_wmem[2]) and
// what the socket may hold unsent is bounded by TCP_NOTSENT_LOWAT instead,
// so the window grows as fast as the path allows, and a slow receiver still
// holds the relay back (on the sender behind it, through the pipe and the
// source's receive buffer) after notsentLowat bytes more than it has in
// flight.
//
// Only on paths of primeMinRTT or longer: on a shorter one a round costs
// little, and a bulk stream that fills the socket faster than it drains
// blocks at once anyway, which autotuning answers; there the bound on
// unsent bytes only cost wake-ups (loopback, one stream: 0.28 rather than
// 0.24 CPU s/GB).
const (
	primeAt      = 32 << 10
	notsentLowat = 256 << 10
)

// primeMinRTT is the smoothed RTT, in µs, from which a leg is primed
// (tests, on loopback, lower it).
var primeMinRTT atomic.Uint32

func init() { primeMinRTT.Store(1000) }

// ceiling caches tcp_wmem[2] for a second (an operator may change it
// while the relay runs), without a lock: two directions that find it stale
// at once both read it.
var ceiling struct{ n, at atomic.Int64 }

// sendCeiling is tcp_wmem[2] of the process's network namespace, or 0 if
// it cannot be read.
func sendCeiling() int {
	if now := time.Now().UnixNano(); now-ceiling.at.Load() >= int64(time.Second) {
		ceiling.n.Store(int64(readWmemMax()))
		ceiling.at.Store(now)
	}
	return int(ceiling.n.Load())
}

func readWmemMax() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_wmem")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) != 3 {
		return 0
	}
	n, err := strconv.Atoi(f[2])
	if err != nil {
		return 0
	}
	return n
}

// prime primes dst (fd) once the direction has moved primeAt bytes,
// counting the ones not yet in d.n.
func (d *dir) prime(fd uintptr, pending int) {
	if !d.primed && d.n+int64(pending) >= primeAt {
		d.primed = true
		primeSend(int(fd))
	}
}

// primeSend fixes fd's send buffer as described above. Best effort: a
// socket that refuses TCP_NOTSENT_LOWAT (MPTCP ones on older kernels) or
// SO_SNDBUFFORCE (a process without CAP_NET_ADMIN) keeps autotuning:
// bounding only one of the two would either change nothing or let a slow
// receiver's bytes pile up in the relay.
func primeSend(fd int) {
	ceiling := sendCeiling()
	if ceiling <= 0 {
		return
	}
	if cur, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF); err != nil || cur >= ceiling {
		return
	}
	if info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO); err != nil || info.Rtt < primeMinRTT.Load() {
		return
	}
	if unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, notsentLowat) != nil {
		return
	}
	// The kernel doubles the value for its bookkeeping.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, ceiling/2) != nil {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, -1) // back to none (UINT_MAX)
	}
}
