package linkem

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Options tune how a wire runs, not what it emulates.
type Options struct {
	// Realtime runs each direction's writer thread under SCHED_FIFO, which
	// keeps wake-up lateness low on a busy machine; a slower link's writer
	// gets the higher priority (see rtPriority). The readers run SCHED_FIFO
	// at priority 1, below every writer and above the lab's hosts.
	Realtime bool
}

// queueCap bounds the packets in flight per direction (a 1 Gbit/s link with
// 300 ms of delay holds ~25,000 full-size packets).
const queueCap = 1 << 16

const ethHdrLen = 14

// DirStats counts what one direction of a wire did.
type DirStats struct {
	RxFrames     uint64 `json:"rx_frames"`     // frames read, a GSO super-frame counting once
	RxBytes      uint64 `json:"rx_bytes"`      // Ethernet bytes read
	Packets      uint64 `json:"packets"`       // packets offered to the shaper, after segmentation
	TxPackets    uint64 `json:"tx_packets"`    // packets written to the far end
	TxIPBytes    uint64 `json:"tx_ip_bytes"`   // IP bytes written (what Rate counts)
	DropLoss     uint64 `json:"drop_loss"`     // lost by the emulated link
	DropQueue    uint64 `json:"drop_queue"`    // dropped by the full drop-tail queue
	DropOverflow uint64 `json:"drop_overflow"` // dropped because queueCap packets were in flight
	// DropSocket counts frames the kernel dropped before the emulator read
	// them (its socket's receive buffer was full: the reader fell behind).
	DropSocket    uint64 `json:"drop_socket"`
	Truncated     uint64 `json:"truncated"`      // frames larger than the read buffer
	SegmentErrors uint64 `json:"segment_errors"` // GSO frames forwarded whole because they could not be cut
	SendErrors    uint64 `json:"send_errors"`
	// Late1ms and Late4ms count packets written 1 ms and 4 ms or more after
	// they were due: the emulator fell behind (a busy machine). 4 ms is
	// the smallest RTT rise that makes cubic's HyStart leave slow start.
	Late1ms uint64 `json:"late_1ms"`
	Late4ms uint64 `json:"late_4ms"`
	// MaxLateNS is the largest lateness seen, in nanoseconds.
	MaxLateNS uint64 `json:"max_late_ns"`
}

type dirCounters struct {
	rxFrames, rxBytes, packets, txPackets, txIPBytes     atomic.Uint64
	dropLoss, dropQueue, dropOverflow, truncated, segErr atomic.Uint64
	sendErr, late1ms, late4ms, maxLate, dropSocket       atomic.Uint64
}

// lateness counts a packet written late ns after it was due.
func (c *dirCounters) lateness(late int64) {
	if late < int64(time.Millisecond) {
		return
	}
	c.late1ms.Add(1)
	if late >= int64(4*time.Millisecond) {
		c.late4ms.Add(1)
	}
	for {
		m := c.maxLate.Load()
		if uint64(late) <= m || c.maxLate.CompareAndSwap(m, uint64(late)) {
			return
		}
	}
}

func (c *dirCounters) snapshot() DirStats {
	return DirStats{
		RxFrames: c.rxFrames.Load(), RxBytes: c.rxBytes.Load(), Packets: c.packets.Load(),
		TxPackets: c.txPackets.Load(), TxIPBytes: c.txIPBytes.Load(),
		DropLoss: c.dropLoss.Load(), DropQueue: c.dropQueue.Load(), DropOverflow: c.dropOverflow.Load(), DropSocket: c.dropSocket.Load(),
		Truncated: c.truncated.Load(), SegmentErrors: c.segErr.Load(), SendErrors: c.sendErr.Load(),
		Late1ms: c.late1ms.Load(), Late4ms: c.late4ms.Load(), MaxLateNS: c.maxLate.Load(),
	}
}

// Wire joins two veth ends through an emulated link.
type Wire struct {
	a, b   *packetSock
	ab, ba *direction
	opt    Options

	closeOnce sync.Once
	stop      chan struct{}
	// wake is an eventfd that Close makes readable: writers sleep in ppoll
	// on it, so a long delay is one precise sleep, yet Close is seen at once.
	wake    int
	mu      sync.Mutex
	running bool
	closed  bool
}

// Open opens both ends of a wire in the calling thread's network namespace.
// ab shapes frames read on ifA and written to ifB; ba the reverse.
func Open(ifA, ifB string, ab, ba Params, opt Options) (*Wire, error) {
	for _, p := range []Params{ab, ba} {
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("wire %s-%s: %w", ifA, ifB, err)
		}
	}
	a, err := openPacketSock(ifA)
	if err != nil {
		return nil, err
	}
	b, err := openPacketSock(ifB)
	if err != nil {
		a.close()
		return nil, err
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		a.close()
		b.close()
		return nil, fmt.Errorf("wire %s-%s: eventfd: %w", ifA, ifB, err)
	}
	a.wake, b.wake = int32(wake), int32(wake)
	w := &Wire{a: a, b: b, opt: opt, stop: make(chan struct{}), wake: wake}
	w.ab = newDirection(ifA+">"+ifB, a, b, ab, w.stop, wake)
	w.ba = newDirection(ifB+">"+ifA, b, a, ba, w.stop, wake)
	return w, nil
}

// Run forwards frames both ways until ctx is done or Close is called. It
// returns the first socket error, or nil after an orderly stop.
func (w *Wire) Run(ctx context.Context) error {
	w.mu.Lock()
	if w.closed || w.running {
		w.mu.Unlock()
		return nil
	}
	w.running = true
	w.mu.Unlock()
	errc := make(chan error, 4)
	var wg sync.WaitGroup
	// The writers may sleep on wake until they return: close it after them.
	defer unix.Close(w.wake)
	for _, d := range []*direction{w.ab, w.ba} {
		wg.Add(2)
		go func() { defer wg.Done(); errc <- d.readLoop(w.opt) }()
		go func() { defer wg.Done(); errc <- d.writeLoop(w.opt) }()
	}
	var err error
	select {
	case <-ctx.Done():
	case <-w.stop:
	case err = <-errc:
	}
	w.Close()
	wg.Wait()
	return err
}

// Stats returns the counters of both directions.
func (w *Wire) Stats() (ab, ba DirStats) {
	// The kernel's count resets as it is read: it accumulates here.
	w.mu.Lock()
	if !w.closed {
		w.ab.c.dropSocket.Add(w.a.kernelDrops())
		w.ba.c.dropSocket.Add(w.b.kernelDrops())
	}
	w.mu.Unlock()
	return w.ab.c.snapshot(), w.ba.c.snapshot()
}

// Close stops the wire and closes its sockets; it is safe to call more than once.
func (w *Wire) Close() error {
	var err error
	w.closeOnce.Do(func() {
		close(w.stop)
		one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
		_, _ = unix.Write(w.wake, one)
		err = errors.Join(w.a.close(), w.b.close())
		w.mu.Lock()
		w.closed = true
		if !w.running {
			unix.Close(w.wake)
		}
		w.mu.Unlock()
	})
	return err
}

type direction struct {
	name    string
	in, out *packetSock
	p       Params
	sh      *Shaper
	q       chan *pkt
	stop    <-chan struct{}
	wake    int
	c       dirCounters

	// per-frame state for the Segment callbacks (reader goroutine only)
	cur     *pkt
	arrival int64
}

func newDirection(name string, in, out *packetSock, p Params, stop <-chan struct{}, wake int) *direction {
	return &direction{name: name, in: in, out: out, p: p, sh: NewShaper(p), q: make(chan *pkt, queueCap), stop: stop, wake: wake}
}

func (d *direction) readLoop(opt Options) error {
	// The reader sleeps in ppoll (see packetSock.readFn) on a thread of
	// its own, realtime below every writer: packets carry the kernel's
	// arrival time, so a reader has the link's delay to hand a packet on,
	// where a writer must be on time; yet one that waits behind the lab's
	// hosts (an ordinary thread) hands the writer packets already late.
	lockThread(opt, 1)
	scratch := make([]byte, maxFrame)
	alloc := func(n int) []byte { d.cur = getPkt(n); return d.cur.b[:n] }
	emit := func(seg []byte) { d.cur.n = len(seg); d.admit(d.cur, d.arrival); d.cur = nil }
	for {
		n, rtime, err := d.in.recv(scratch)
		if err != nil {
			if d.stopped() {
				return nil // Close closed the socket under us
			}
			return err
		}
		now := arrivalTime(rtime)
		if n > len(scratch) {
			d.c.truncated.Add(1)
			continue
		}
		if n < VnetHdrLen+ethHdrLen {
			continue
		}
		d.c.rxFrames.Add(1)
		d.c.rxBytes.Add(uint64(n - VnetHdrLen))
		if d.p.needsSegments() {
			h, _ := ParseVnetHdr(scratch[:n])
			if h.IsGSO() {
				d.arrival = now
				if err := Segment(h, scratch[VnetHdrLen:n], alloc, emit); err == nil {
					continue
				}
				// Carried whole: a frame we cannot cut is still delivered.
				if d.cur != nil {
					putPkt(d.cur)
					d.cur = nil
				}
				d.c.segErr.Add(1)
			}
		}
		p := getPkt(n)
		p.n = copy(p.b, scratch[:n])
		d.admit(p, now)
	}
}

func (d *direction) stopped() bool {
	select {
	case <-d.stop:
		return true
	default:
		return false
	}
}

func (d *direction) admit(p *pkt, now int64) {
	d.c.packets.Add(1)
	due, v := d.sh.Admit(now, p.n-VnetHdrLen-ethHdrLen)
	switch v {
	case DropLoss:
		d.c.dropLoss.Add(1)
		putPkt(p)
		return
	case DropQueue:
		d.c.dropQueue.Add(1)
		putPkt(p)
		return
	}
	p.due = due
	select {
	case d.q <- p:
	default:
		d.c.dropOverflow.Add(1)
		putPkt(p)
	}
}

// writeLoop delivers packets when due. It runs on a thread of its own so it
// can sleep in ppoll with 1 ns timer slack, whose wake-up is tens of
// microseconds late where the Go timer is about a millisecond late.
func (d *direction) writeLoop(opt Options) error {
	lockThread(opt, rtPriority(d.p.Rate))
	sl := sleeper{wake: d.wake}
	if d.p.Reorder && d.p.Jitter > 0 {
		return d.writeReordering(&sl)
	}
	for {
		var p *pkt
		select {
		case p = <-d.q:
		case <-d.stop:
			return nil
		}
		if !sl.until(p.due, d.stop) {
			putPkt(p)
			return nil
		}
		if err := d.deliver(p); err != nil {
			return err
		}
	}
}

// lockThread locks the calling goroutine to its thread, with 1 ns timer
// slack and, if opt says so, SCHED_FIFO at priority prio. The thread
// was changed, so it is never unlocked: the runtime discards it when the
// goroutine returns.
func lockThread(opt Options, prio uint32) {
	runtime.LockOSThread()
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
	if opt.Realtime {
		_ = unix.SchedSetAttr(0, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: prio}, 0)
	}
}

// writeReordering serves packets in due order rather than arrival order.
func (d *direction) writeReordering(sl *sleeper) error {
	var h pktHeap
	for {
		if len(h) == 0 {
			select {
			case p := <-d.q:
				h.push(p)
			case <-d.stop:
				return nil
			}
		}
		for drained := false; !drained; {
			select {
			case p := <-d.q:
				h.push(p)
			default:
				drained = true
			}
		}
		top := h[0]
		// A packet arriving during the sleep is due no sooner than
		// Delay-Jitter after now: sleep until then at most.
		if now := monoNow(); top.due-sl.late > now {
			horizon := now + max(int64(d.p.Delay-d.p.Jitter), int64(250*time.Microsecond)) + sl.late
			if !sl.until(min(top.due, horizon), d.stop) {
				return nil
			}
			continue
		}
		if err := d.deliver(h.pop()); err != nil {
			return err
		}
	}
}

func (d *direction) deliver(p *pkt) error {
	d.c.lateness(monoNow() - p.due)
	err := d.out.send(p.b[:p.n])
	ipBytes := p.n - VnetHdrLen - ethHdrLen
	putPkt(p)
	if err != nil {
		if d.stopped() {
			return nil
		}
		// A frame the far veth refuses (e.g. above its MTU) is counted, not fatal.
		d.c.sendErr.Add(1)
		return nil
	}
	d.c.txPackets.Add(1)
	d.c.txIPBytes.Add(uint64(ipBytes))
	return nil
}

// sleeper sleeps until absolute deadlines, waking early by its measured
// lateness so packets leave on time on average. One sleep per packet
// matters: every wake-up on a busy VM risks being milliseconds late, so a
// 150 ms delay is not cut into shorter sleeps.
type sleeper struct {
	late int64
	wake int // readable once the wire is closing
	fds  [1]unix.PollFd
}

const (
	initialLate = int64(50 * time.Microsecond)
	maxLate     = int64(500 * time.Microsecond)
)

// until sleeps toward due minus the expected lateness; it returns false
// if the wire is closing.
func (s *sleeper) until(due int64, stop <-chan struct{}) bool {
	if s.late == 0 {
		s.late = initialLate
	}
	target := due - s.late
	if target <= monoNow() {
		return true
	}
	s.fds[0] = unix.PollFd{Fd: int32(s.wake), Events: unix.POLLIN}
	for {
		rem := target - monoNow()
		if rem <= 0 {
			break
		}
		ts := unix.NsecToTimespec(rem)
		n, err := unix.Ppoll(s.fds[:], &ts, nil)
		if err == unix.EINTR {
			continue
		}
		if n > 0 || err != nil {
			return false // woken by Close
		}
		break
	}
	s.late += (monoNow() - target - s.late) / 8
	s.late = min(max(s.late, 0), maxLate)
	select {
	case <-stop:
		return false
	default:
		return true
	}
}

// The shaper and the writers run on CLOCK_MONOTONIC, the clock
// clock_nanosleep takes. unix.ClockGettime is a real system call; Go's own
// clock reads the same clock through the vDSO for a fraction of the cost, so
// it is anchored to CLOCK_MONOTONIC once and read through time.Since.
var (
	clockBase     = time.Now()
	clockBaseMono = func() int64 {
		var ts unix.Timespec
		_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
		return ts.Nano()
	}()
)

func monoNow() int64 { return clockBaseMono + int64(time.Since(clockBase)) }

// arrivalTime converts a kernel CLOCK_REALTIME receive stamp into the
// monotonic clock the shaper runs on, falling back to now.
func arrivalTime(rtime int64) int64 {
	now := monoNow()
	if rtime == 0 {
		return now
	}
	arr := rtime - (time.Now().UnixNano() - now)
	if arr > now || arr < now-int64(time.Second) {
		return now
	}
	return arr
}
