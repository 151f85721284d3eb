package datapath

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// A direction is running (on a goroutine), parked (its source in the
// epoll set, no goroutine) or done. Whoever moves it from parked to
// running starts the goroutine that runs it; one goroutine at a time owns
// the fields below the atomics.
const (
	dirRunning int32 = iota
	dirParked
	dirDone
)

// dir is one direction of a flow: bytes from src to dst.
type dir struct {
	f *Flow
	// waitSince is when the goroutine began waiting on an empty source
	// (unix nanos; 0: not waiting). The sweep parks it after ParkAfter.
	// Negative, it is when the goroutine began waiting for its destination
	// to take bytes (-unix nanos): the sweep then watches the source for a
	// reset, which nothing else would see while the goroutine waits.
	waitSince atomic.Int64

	// Owned by the goroutine running the direction.
	n   int64 // bytes moved
	p   *pipe
	buf *[]byte
	err error // the last read's or write's error

	state      atomic.Int32
	peeking    atomic.Bool // the other direction peeks at src (finWaits), which may take a reset's error
	peekable   atomic.Bool // parked where the other direction may peek at src (finWaits): set by park
	pn, m, cn  int32       // bytes in the pipe; bytes the last write moved; bytes in buf
	budget     int32       // inline, the bytes it may still move before handing off
	up         bool
	copy       bool  // through a user-space buffer (else splice)
	started    bool  // the prefix, if any, has been written
	watching   bool  // src has sent its FIN: only a reset is awaited
	registered bool  // src is in the flow's epoll set (maybe disarmed), if regGen is the flow's gen
	noPark     bool  // the epoll set refused src: wait on the goroutine
	block      bool  // the last read found the source empty
	kernel     bool  // the sockmap program moves the bytes (see kernelStep)
	usedKernel bool  // it did, and user space has taken over
	held       bool  // taken over from the sockmap while held: may resume
	midSegment bool  // parked after a short splice in, which may have stopped inside a segment (see drained)
	inline     bool  // running as on its shard's wait loop (there, or where Run started a NewFDs flow): never waits
	finIn      bool  // inline: the wake's events say the source has its FIN (or failed)
	bulk       bool  // a splice in moved growAt or more: it takes big pipes
	stream     bool  // a read filled its buffer, or it has moved streamAt: it splices from now on
	spliced    bool  // a splice in has moved bytes
	primed     bool  // dst's send buffer is primed, or is not to be (see primeSend)
	clean      uint8 // splices out in a row that emptied the pipe (at most cleanOuts)
	op         uint8
	regGen     uint8 // the flow's gen when src was registered
	// fn is the callback for RawConn, made once rather than at every
	// wake; op says what it does.
	fn func(uintptr) bool
}

// What dir.fn does.
const (
	opSpliceIn uint8 = iota
	opSpliceOut
	opReadIn
	opWriteOut
	opWatch
	opPeek
)

func (d *dir) call(fd uintptr) bool {
	switch d.op {
	case opSpliceIn:
		return d.spliceIn(fd)
	case opSpliceOut:
		return d.spliceOut(fd)
	case opReadIn:
		return d.readIn(fd)
	case opWriteOut:
		return d.writeOut(fd)
	case opPeek:
		return d.peekIn(fd)
	}
	return d.watchIn(fd)
}

func (d *dir) path() Path {
	switch {
	case d.kernel || d.usedKernel:
		return PathSockmap
	case d.copy:
		return PathCopy
	case d.n > 0 && !d.spliced:
		return PathBuffer // messages only
	}
	return PathSplice
}

func (d *dir) counter() *atomic.Int64 {
	if d.up {
		return d.f.opt.Up
	}
	return d.f.opt.Down
}

// step is what a pass of a direction's loop came to.
type step int

const (
	stepPark     step = iota // the source is empty
	stepAgain                // a read deadline fired early: read again
	stepEOF                  // the source sent its FIN, all bytes forwarded
	stepFallback             // splice cannot serve these sockets: copy
	stepErr                  // a leg failed
	stepDone                 // the flow closed the legs
	stepHandoff              // inline: continue on a goroutine of its own
)

func (d *dir) init(f *Flow, up bool) {
	d.f, d.up, d.copy = f, up, f.opt.ForceCopy
	d.primed = up && !f.opt.PrimeServerSend || !up && !f.opt.PrimeClientSend
	d.fn = d.call
}

// src and dst are the legs the direction reads from and writes to.
func (d *dir) src() *net.TCPConn { return d.f.legs[b2u(!d.up)].Load() }
func (d *dir) dst() *net.TCPConn { return d.f.legs[b2u(d.up)].Load() }

// run moves bytes until the source is empty (then parks and returns) or
// the direction ends.
func (d *dir) run() {
	f := d.f
	if f.detached() && !d.inline {
		f.attach(d) // to wait, if need be, in Go's poller
	}
	if !d.started {
		d.started = true
		if f.aborted() {
			d.finish()
			return
		}
		if !d.up && len(f.opt.DownPrefix) > 0 {
			if err := writePrefix(d.dst(), d.src(), f.opt.DownPrefix, f.opt.PrefixWait); err != nil {
				if !f.aborted() {
					if _, ok := err.(sideErr); !ok {
						err = sideErr{reset: isReset(err), err: err} // dst's
					}
					f.fail(d.up, err)
				}
				d.finish()
				return
			}
		}
	}
	for {
		var s step
		var err error
		switch {
		case d.kernel:
			s, err = d.kernelStep()
		case d.watching:
			s, err = d.watchStep()
		case d.copy:
			s, err = d.copyStep()
		default:
			s, err = d.spliceStep()
		}
		switch s {
		case stepPark:
			if d.held {
				d.resumeKernel()
			}
			d.tryKernel()
			if d.parkOrHandOff() {
				return
			}
		case stepAgain:
		case stepFallback:
			d.copy = true // from where splice stopped: nothing was lost
			if d.inline {
				// Copying writes block: not on the wait loop.
				d.handOff()
				return
			}
		case stepEOF:
			if d.resetAtEOF() {
				// The reset's error went to another call on the socket
				// (the other direction's send, a peek): pass the reset
				// on, not a FIN.
				if !f.aborted() {
					f.fail(d.up, sideErr{read: true, reset: true, err: os.NewSyscallError("read", unix.ECONNRESET)})
				}
				d.finish()
				return
			}
			if f.eofs.Add(1) == 2 {
				// Both sides have finished: closing dst sends its FIN
				// after the bytes queued (its receive queue is empty: the
				// other direction read it to EOF), so no shutdown first.
				// The other direction, parked and watching, ends here
				// rather than on a goroutine started to find the legs closed.
				f.closeLegs(false, false)
				if o := &f.dirs[b2u(!d.up)]; o.unpark() {
					o.run()
				}
				d.finish()
				return
			}
			if o := &f.dirs[b2u(!d.up)]; o.finWaits() && o.unpark() {
				// The other side has sent its FIN too (an HTTP client
				// that closes once it has its answer): the other
				// direction reads it and closes both legs, which sends
				// this direction's FIN after its bytes, with no
				// shutdown first.
				o.inline, o.budget = d.inline, inlineBudget
				o.run()
				d.finish()
				return
			}
			// EOF from src: pass the FIN on, keep the other direction
			// going. The other direction may end meanwhile and close the
			// legs, which sends the FIN as well.
			if cerr := d.closeWrite(); cerr != nil && !f.aborted() && f.eofs.Load() < 2 {
				f.fail(d.up, closeWriteErr(cerr))
				d.finish()
				return
			}
			// src may still reset while the other direction flows; that
			// must reach the other leg now, not at the idle timeout.
			d.watching = true
			// A reset already pending is reported as the set arms.
			if !d.held && d.parksAtOnce() && d.parkOrHandOff() {
				return
			}
		case stepErr:
			if !f.aborted() && f.eofs.Load() < 2 {
				f.fail(d.up, err)
			}
			d.finish()
			return
		case stepDone:
			d.finish()
			return
		case stepHandoff:
			d.handOff()
			return
		}
	}
}

// resetAtEOF says whether a source that has just read as ended was reset
// rather than closed with a FIN. A socket reports a reset's error once,
// to whichever call comes first (the other direction's send to it, a
// peek, SO_ERROR), and reads after that find EOF; but a reset leaves the
// socket hung up (closed both ways: POLLHUP, for TCP and MPTCP sockets
// alike), a FIN only closed for reading. Only while neither direction has
// ended: once the other has shut the source's write side down, a FIN
// hangs it up as well. (The poll comes before eofs is read: the other
// direction counts its EOF before it shuts down.) And while the other
// direction, which has ended, peeks at the source (finWaits): it shuts
// nothing down before its peek is done, and the peek may have taken the
// reset's error, which it reports only after this direction may have
// passed the end of stream on as a FIN.
func (d *dir) resetAtEOF() bool {
	if d.f.eofs.Load() != 0 && !d.peeking.Load() {
		return false // the second end of stream of a flow needs no poll
	}
	hup := false
	get := func(fd uintptr) {
		p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(p, 0); err == nil && n == 1 {
			hup = p[0].Revents&unix.POLLHUP != 0
		}
	}
	if fds, ok := d.f.rawAcquire(); ok {
		get(uintptr(fds[b2u(!d.up)]))
		d.f.rawRelease(fds)
	} else if rc, err := d.src().SyscallConn(); err == nil {
		rc.Control(get)
	}
	return hup && (d.f.eofs.Load() == 0 || d.peeking.Load())
}

// finWaits says whether d is parked on a source that has sent its FIN
// and no byte before it (it looks without taking the direction).
func (d *dir) finWaits() bool {
	// peekable, not the fields it sums up: once parked, d may be taken
	// and run by another goroutine while this one looks.
	if d.state.Load() != dirParked || !d.peekable.Load() {
		return false
	}
	n, err := -1, error(nil)
	// Until the peek's error, if any, has failed the flow, d (woken by
	// the same reset, it may be running already) checks its end of stream
	// for a reset (see resetAtEOF).
	d.peeking.Store(true)
	defer d.peeking.Store(false)
	if fds, ok := d.f.rawAcquire(); ok {
		n, err = peek(uintptr(fds[b2u(!d.up)]))
		d.f.rawRelease(fds)
	} else if rc, rerr := d.src().SyscallConn(); rerr == nil {
		rc.Control(func(fd uintptr) { n, err = peek(fd) })
	}
	if err != nil && err != unix.EAGAIN {
		// The peek took the socket's pending error (a reset): d's next
		// read would find only EOF, so it ends the flow here.
		d.f.fail(d.up, sideErr{read: true, reset: isReset(err), err: os.NewSyscallError("recv", err)})
	}
	return n == 0 && err == nil
}

// parkOrHandOff parks d, or, if the epoll set refused an inline
// direction's socket, hands it to a goroutine: waiting for the socket
// would hold up the wait loop. It reports false if the caller still owns
// d and must go on.
func (d *dir) parkOrHandOff() bool {
	inline := d.inline
	if d.park() {
		return true
	}
	if d.inline = inline; inline && d.noPark {
		d.handOff()
		return true
	}
	return false
}

// handOff moves an inline direction to a goroutine of its own.
func (d *dir) handOff() {
	d.inline = false
	d.f.shard.handoffs.Add(1)
	go d.run()
}

// inlineBudget is how many bytes a direction woken by its shard's wait
// loop moves there before it goes on on a goroutine of its own, so that a
// bulk stream does not hold up the other flows of the shard.
const inlineBudget = 256 << 10

// runInline runs a woken direction on the calling wait loop, which saves
// starting a goroutine (and growing its stack) for every message: the
// direction moves what its source holds and parks again, or hands itself
// to a goroutine where it would wait (a full destination) or has moved
// inlineBudget bytes. Directions that may wait elsewhere (copying, the
// sockmap, ParkAfter) get a goroutine at once.
func (d *dir) runInline() {
	if d.copy || d.kernel || d.usedKernel || d.held || d.f.opt.Sockmap || !d.started || !d.parksAtOnce() {
		d.handOff()
		return
	}
	d.inline, d.budget = true, inlineBudget
	d.run()
}

func (d *dir) finish() {
	if d.p != nil {
		d.p.dirty = d.p.dirty || d.pn > 0 // never pool a pipe holding bytes
		pipes.put(d.p)
		d.p = nil
	}
	if d.buf != nil {
		bufPool.Put(d.buf)
		d.buf = nil
	}
	d.state.Store(dirDone)
	if d.started && d.f.opt.OnPath != nil {
		d.f.opt.OnPath(d.up, d.path())
	}
	d.f.dirDone()
}

// empty is what a read callback returns on EAGAIN: true (stop, the
// direction parks) or false (wait on this goroutine for more).
func (d *dir) empty() bool {
	if d.noPark || d.f.epfd < 0 {
		return false
	}
	if d.f.opt.ParkAfter > 0 && !d.kernel {
		if d.waitSince.Load() == 0 {
			d.waitSince.Store(time.Now().UnixNano())
		}
		return false
	}
	d.block = true
	return true
}

// parksAtOnce says whether an empty source parks the direction at once
// (rather than waiting on the goroutine; see empty).
func (d *dir) parksAtOnce() bool {
	return !d.noPark && d.f.epfd >= 0 && d.f.opt.ParkAfter == 0 && !d.kernel
}

// readErr handles an error from waiting on the source. A deadline is the
// sweep's nudge to park; anything else ends the direction.
func (d *dir) readErr(err error) (step, error) {
	if err == errDetached {
		return stepHandoff, nil // wait on a goroutine, attached
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return stepErr, sideErr{read: true, err: err}
	}
	_ = d.src().SetReadDeadline(time.Time{})
	ws := d.waitSince.Load()
	if ws > 0 && time.Since(time.Unix(0, ws)) >= d.f.opt.ParkAfter {
		return stepPark, nil
	}
	return stepAgain, nil
}

// park puts src in the flow's epoll set and gives the goroutine back. It
// reports false if the caller still owns the direction and must go on
// (inline no longer set: see parkOrHandOff).
func (d *dir) park() bool {
	f := d.f
	d.block, d.inline = false, false
	d.waitSince.Store(0)
	key := f.id<<1 | b2u(d.up)
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(key), Pad: int32(key >> 32)}
	if d.watching {
		// A half-closed source stays readable (EOF): wait for the error
		// or hang-up a reset brings, which epoll always reports.
		ev.Events = unix.EPOLLONESHOT
	}
	epfd, sh := int(f.epfd), f.shard
	// f.mu: the legs' descriptors stay open and do not change while the
	// set is armed (a detach or an attach takes the registration out first).
	f.mu.Lock()
	op := unix.EPOLL_CTL_ADD
	if d.registered && d.regGen == f.gen {
		op = unix.EPOLL_CTL_MOD
	}
	d.registered, d.regGen = true, f.gen
	sh.parked.Add(1)
	d.peekable.Store(!d.watching && !d.copy && !d.kernel && !d.held)
	d.state.Store(dirParked)
	// From here on another goroutine may own d: only locals.
	closed := f.closed
	var err error
	if !closed {
		fd := int(f.fd[b2u(!d.up)])
		err = rawEpollCtl(epfd, op, fd, &ev)
		switch {
		case err == unix.ENOENT && op == unix.EPOLL_CTL_MOD:
			err = rawEpollCtl(epfd, unix.EPOLL_CTL_ADD, fd, &ev)
		case err == unix.EEXIST && op == unix.EPOLL_CTL_ADD:
			err = rawEpollCtl(epfd, unix.EPOLL_CTL_MOD, fd, &ev)
		}
	}
	f.mu.Unlock()
	if !closed && err == nil {
		return true
	}
	if !d.unpark() {
		return true // woken meanwhile (the legs were closed): not ours now
	}
	if !closed {
		d.noPark = true // the set refused the socket: wait on the goroutine
	}
	return false // closed legs: the next read finds out
}

// unpark moves a parked direction to running; true if this call did.
func (d *dir) unpark() bool {
	if d.state.CompareAndSwap(dirParked, dirRunning) {
		d.f.shard.parked.Add(-1)
		return true
	}
	return false
}

// wake runs a parked direction on a new goroutine.
func (d *dir) wake() {
	if d.unpark() {
		go d.run()
	}
}

// writeWait marks the direction as waiting for its destination to take
// bytes (on is true) or done with it.
func (d *dir) writeWait(on bool) {
	switch ws := d.waitSince.Load(); {
	case on && ws == 0:
		d.waitSince.Store(-time.Now().UnixNano())
	case !on && ws < 0:
		d.waitSince.Store(0)
	}
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// afterRead says what a read into the direction's buffer came to, given
// the error of waiting for it: read, if buf holds d.cn bytes (0: EOF);
// else the step to return, which may be stepAgain (a read deadline fired
// early: read again, the buffer holds nothing).
func (d *dir) afterRead(werr error) (read bool, s step, err error) {
	switch {
	case werr != nil:
		s, err = d.readErr(werr)
		return false, s, err
	case d.block:
		return false, stepPark, nil
	case d.err != nil:
		return false, stepErr, sideErr{read: true, reset: isReset(d.err), err: os.NewSyscallError("read", d.err)}
	}
	return true, stepAgain, nil
}

// wrote sorts out a write to dst (call names it), given the error of
// waiting for it: the direction hands off (inline, dst is full), or the
// write failed (a sideErr), or neither.
func (d *dir) wrote(err error, call string) (handoff bool, _ error) {
	if d.err == errHandoff || err == errDetached {
		d.err = nil
		return true, nil
	}
	d.writeWait(false)
	switch {
	case err == nil && d.err != nil:
		return false, sideErr{read: false, reset: isReset(d.err), err: os.NewSyscallError(call, d.err)}
	case err != nil:
		return false, sideErr{read: false, err: err}
	}
	return false, nil
}

// moved counts n bytes written to dst.
func (d *dir) moved(n int32) {
	d.n += int64(n)
	d.budget -= n
	if cnt := d.counter(); cnt != nil {
		cnt.Add(int64(n))
	}
	d.f.touch()
}

// watchStep waits, on a source that has sent its FIN, until it fails
// (a reset, a user timeout) or the flow closes it.
func (d *dir) watchStep() (step, error) {
	d.err, d.block, d.op = nil, false, opWatch
	fds, held := d.rawHeld()
	if held {
		defer d.f.rawRelease(fds)
	}
	err := d.move(fds, held, true)
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) || err == errDetached {
			return d.readErr(err)
		}
		return stepDone, nil // closed: the flow is over
	}
	if d.err != nil {
		return stepErr, sideErr{read: true, reset: isReset(d.err), err: d.err}
	}
	if d.block {
		return stepPark, nil
	}
	return stepDone, nil // both directions have ended
}

func (d *dir) watchIn(fd uintptr) bool {
	// recv reports EOF before a later reset, so ask the socket for its
	// pending error: a reset sets one (EPIPE in CLOSE_WAIT), while an
	// orderly close that completes (LAST_ACK to CLOSE) does not.
	if e := fdError(fd); e != nil {
		d.err = os.NewSyscallError("connection", e)
		return true
	}
	if d.f.eofs.Load() == 2 {
		return true
	}
	return d.empty()
}
