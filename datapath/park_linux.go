package datapath

import (
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// sweepEvery is how often a shard checks its flows' idle timeouts and
// moves directions that have waited ParkAfter into the epoll set.
const sweepEvery = 250 * time.Millisecond

// keepaliveSweeps is how many sweeps see a flow before it gets
// Options.ServerKeepalive: it has lasted at least three intervals.
const keepaliveSweeps = 4

// parkShard is one epoll set with the flows that park in it, one goroutine
// waiting on it (through the runtime's poller: the set's descriptor is
// itself pollable, so no thread blocks in epoll_wait) and one sweeping.
// A flow takes its shard's lock only to start and to end. A shard with no
// flows for two sweeps closes its set and stops its goroutines.
type parkShard struct {
	mu     sync.Mutex
	nextID uint64
	flows  map[uint64]*Flow
	ep     *os.File // nil while stopped
	epfd   int
	empty  int // sweeps in a row that found no flow

	parked   atomic.Int64 // directions parked now
	detached atomic.Int64 // flows detached from Go's poller now
	attaches atomic.Int64 // detached flows put back into Go's poller
	wakes    atomic.Int64 // directions woken by their socket
	// handoffs: woken directions that went on on a goroutine of their own
	// (a full destination, or more than inlineBudget to move).
	handoffs atomic.Int64
	_        [64]byte // shards' locks on cache lines of their own
}

type parkSet struct {
	once   sync.Once
	shards []parkShard
}

var parker parkSet

func (ps *parkSet) init() {
	ps.once.Do(func() {
		n := min(max(runtime.GOMAXPROCS(0), 1), 16)
		ps.shards = make([]parkShard, n)
		for i := range ps.shards {
			ps.shards[i].flows = map[uint64]*Flow{}
			ps.shards[i].epfd = -1
		}
	})
}

// add enters f in a shard and gives it an id and an epoll set (epfd -1
// if none could be made: its directions then wait on their goroutines).
func (ps *parkSet) add(f *Flow) {
	ps.init()
	sh := &ps.shards[rand.IntN(len(ps.shards))]
	sh.mu.Lock()
	if sh.ep == nil {
		sh.start()
	}
	sh.nextID++
	f.id, f.shard, f.epfd = sh.nextID, sh, int32(sh.epfd)
	sh.flows[f.id] = f
	sh.empty = 0
	sh.mu.Unlock()
}

func (ps *parkSet) remove(f *Flow) {
	sh := f.shard
	sh.mu.Lock()
	delete(sh.flows, f.id)
	sh.mu.Unlock()
}

// start makes the shard's epoll set and its goroutines; on failure the
// shard runs without one and tries again for the next flow.
func (sh *parkShard) start() {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return
	}
	ep := os.NewFile(uintptr(fd), "datapath-park")
	rc, err := ep.SyscallConn()
	if err != nil {
		ep.Close()
		return
	}
	sh.ep, sh.epfd = ep, fd
	go sh.waitLoop(rc)
	go sh.sweepLoop(ep)
}

// waitLoop wakes parked directions whose sockets have become ready. It
// runs them from inside one RawRead on the set's descriptor, which the
// runtime's poller watches edge-triggered: each event the set gains raises
// an edge, and an edge raised while the loop was busy is kept for its next
// wait. So once a poll has returned fewer events than it had room for, the
// loop waits at once rather than polling again to find the set empty.
// (A new RawRead would forget such an edge: it resets the readiness.)
func (sh *parkShard) waitLoop(rc syscall.RawConn) {
	evs := make([]unix.EpollEvent, 256)
	type wake struct {
		d     *dir
		ended bool
	}
	ready := make([]wake, 0, len(evs))
	run := func(fd uintptr) bool {
		for {
			n, err := rawEpollPoll(int(fd), evs)
			switch {
			case err == unix.EINTR:
				continue
			case err != nil:
				return true // the set was closed: RawRead finds out
			case n == 0:
				return false
			}
			sh.mu.Lock()
			for _, ev := range evs[:n] {
				key := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
				if f := sh.flows[key>>1]; f != nil {
					ready = append(ready, wake{&f.dirs[key&1], ev.Events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0})
				}
			}
			sh.mu.Unlock()
			for i, w := range ready {
				ready[i] = wake{}
				if w.d.unpark() {
					sh.wakes.Add(1)
					w.d.finIn = w.ended
					w.d.runInline()
				}
			}
			ready = ready[:0]
			if n < len(evs) {
				return false // drained: wait for the next edge
			}
		}
	}
	for rc.Read(run) == nil {
	}
}

// sweepLoop ends idle flows and parks directions that have waited long
// enough, a few times a second, until the shard has been empty a while.
func (sh *parkShard) sweepLoop(ep *os.File) {
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	var idle []*Flow
	var kick, blocked []*dir
	var lasting, detach []*Flow
	for range t.C {
		now := time.Now().UnixNano()
		sh.mu.Lock()
		if len(sh.flows) == 0 {
			if sh.empty++; sh.empty >= 2 {
				sh.ep, sh.epfd, sh.empty = nil, -1, 0
				sh.mu.Unlock()
				ep.Close()
				return
			}
		}
		for _, f := range sh.flows {
			if f.aborted() {
				continue
			}
			if f.opt.Idle > 0 && now-f.last.Load() >= int64(f.opt.Idle) {
				idle = append(idle, f)
				continue
			}
			if f.sweeps < keepaliveSweeps {
				if f.sweeps++; f.sweeps == keepaliveSweeps && f.opt.ServerKeepalive != nil {
					lasting = append(lasting, f)
				}
			} else if len(detach) < maxDetachPerSweep && f.detachable(now) {
				detach = append(detach, f)
			}
			for i := range f.dirs {
				d := &f.dirs[i]
				switch ws := d.waitSince.Load(); {
				case ws < 0 && now+ws >= int64(sweepEvery):
					blocked = append(blocked, d)
				case ws > 0 && f.opt.ParkAfter > 0 && now-ws >= int64(f.opt.ParkAfter) && d.state.Load() == dirRunning:
					kick = append(kick, d)
				}
			}
		}
		sh.mu.Unlock()
		for i, f := range idle {
			// Asked outside the lock: system calls.
			if x := f.sm.Load(); x != nil && f.smActive(x) {
				f.touch() // bytes moved in the kernel
			} else {
				f.abort(ReasonIdle, nil, false, false)
			}
			idle[i] = nil
		}
		for i, f := range lasting {
			f.setServerKeepalive()
			lasting[i] = nil
		}
		for i, f := range detach {
			f.detach()
			detach[i] = nil
		}
		for i, d := range kick {
			// The waiting read returns os.ErrDeadlineExceeded and parks.
			_ = d.src().SetReadDeadline(longAgo)
			kick[i] = nil
		}
		for i, d := range blocked {
			// A direction waiting on its destination does not read its
			// source: a reset there would wait for the destination.
			if err := soError(d.src()); err != nil && !d.f.aborted() {
				d.f.fail(d.up, sideErr{read: true, reset: isReset(err), err: os.NewSyscallError("connection", err)})
			}
			blocked[i] = nil
		}
		idle, kick, blocked, lasting, detach = idle[:0], kick[:0], blocked[:0], lasting[:0], detach[:0]
	}
}

var longAgo = time.Unix(1, 0)

// soError takes a connection's pending socket error, if any.
func soError(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil // closed: the flow is ending anyway
	}
	var e error
	if rc.Control(func(fd uintptr) { e = fdError(fd) }) != nil {
		return nil
	}
	return e
}

// fdError takes a socket's pending error (SO_ERROR), if any.
func fdError(fd uintptr) error {
	if e, _ := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); e != 0 {
		return syscall.Errno(e)
	}
	return nil
}

// Stats counts what the data path's flows are doing, over all shards.
type Stats struct {
	Parked int64 // directions parked now (no goroutine)
	// Detached counts flows whose sockets are out of Go's poller now
	// (Options.DetachAfter); Attaches the detached flows put back into it,
	// in total.
	Detached, Attaches int64
	Wakes              int64 // directions woken by their socket, in total
	// Handoffs counts woken directions that the wait loop handed to a
	// goroutine of their own, mid-way (see runInline) or at once.
	Handoffs int64
	// SockmapFlows counts flows that entered the sockmap; SockmapTakeovers
	// their directions that user space took over (at a FIN, or held when
	// the destination fell behind); SockmapResumes the held ones handed
	// back to the kernel once user space had caught up.
	SockmapFlows, SockmapTakeovers, SockmapResumes int64
	// BigPipes counts the grown pipes that bulk directions splice through,
	// in use or pooled.
	BigPipes int64
}

// ReadStats sums the shards' counters.
func ReadStats() Stats {
	parker.init()
	s := Stats{SockmapFlows: smFlows.Load(), SockmapTakeovers: smTakeovers.Load(), SockmapResumes: smResumes.Load(),
		BigPipes: int64(pipes.bigAlive.Load())}
	for i := range parker.shards {
		sh := &parker.shards[i]
		s.Parked += sh.parked.Load()
		s.Detached += sh.detached.Load()
		s.Attaches += sh.attaches.Load()
		s.Wakes += sh.wakes.Load()
		s.Handoffs += sh.handoffs.Load()
	}
	return s
}
