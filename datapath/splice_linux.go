package datapath

import (
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// maxSplice bounds one splice call; the pipe's capacity bounds it anyway.
const maxSplice = 1 << 20

// A pipe starts with the kernel's default 16 slots. A slot holds a page, or
// one fragment of a received segment, so a splice in moves at most 64 KiB
// and, from a real NIC, as little as 16 segments. A direction whose splice
// in moves growAt or more is carrying bulk: its pipe grows to bigPipe (256
// slots) and it takes big pipes from then on, so one pair of splices moves
// up to a megabyte: on loopback, 0.17 rather than 0.31 CPU s/GB relayed.
//
// Big pipes are bounded (see bigPipeBudget): bytes waiting in one are no
// longer counted in either socket's buffer, and the kernel charges a pipe's
// slots to its user, whose new pipes it cuts to 2 slots past
// fs.pipe-user-pages-soft unless the process is privileged.
//
// While its destination has lately been full (fewer than cleanOuts splices
// out in a row each emptied the pipe at once), a direction splices in at most
// smallPipe at a time: a slow receiver then leaves no more waiting in the
// pipe than a default one would hold, as the bytes are better left in the
// source's buffer, which the kernel bounds and TCP's window reflects.
const (
	bigPipe   = 1 << 20
	smallPipe = 64 << 10
	growAt    = 16 << 10
	cleanOuts = 4
)

// streamAt: a direction that has moved this much is a stream, however
// small its reads: from then on it splices (zero-copy) rather than reading
// through a buffer.
const streamAt = 64 << 10

// shortSplice: a splice in that moved fewer bytes took all the source had
// (a request, an answer) rather than stopping at the pipe's 16 slots,
// unless the bytes came in segments of under 512 bytes each, which costs
// only an extra wake.
const shortSplice = 8 << 10

var errNoPipe = errors.New("no pipe")

// errHandoff: an inline direction found its destination full (see runInline).
var errHandoff = errors.New("destination full: hand off")

// spliceStep moves src → dst through a pipe until src is empty, has sent
// its FIN or fails. The pipe is taken only when bytes are waiting and given
// back when src is found empty, so an idle direction holds no pipe. Until
// the direction is a stream (a read fills the buffer, or it has moved
// streamAt), it reads and sends through a buffer instead (writeBuf), taken
// the same way: a splice of a message copies its bytes into a page anyway,
// and costs the pipe's work on top.
//
// A read that took less than a pipe's worth (a message) parks the
// direction at once, rather than reading again to learn that the socket
// is empty (EAGAIN): arming the epoll set reports what came meanwhile. A
// wake that said the FIN had come reads on to it, as its readiness event
// was spent on this wake.
func (d *dir) spliceStep() (step, error) {
	fds, held := d.rawHeld()
	if held {
		defer d.f.rawRelease(fds)
	}
	short := false // the last splice in took a message, not a pipe's worth
	piped := false // and it was a splice, not a read into the buffer
	d.midSegment = false
	for {
		if d.inline && d.budget <= 0 {
			return stepHandoff, nil
		}
		if short && d.parksAtOnce() && !(d.inline && d.finIn) {
			// The source is most likely empty now: park without the
			// splice that would say so. Arming the set reports bytes
			// (or a FIN) that came meanwhile at once. A wake that said
			// the FIN is in reads on to it instead.
			d.putPipe()
			// A splice in stops once the pipe's 16 slots are full,
			// which may be inside a segment of small fragments.
			d.midSegment = piped
			return stepPark, nil
		}
		// A direction handed off from its wait loop has bytes in its
		// buffer or its pipe.
		if d.buf != nil {
			if s, err := d.writeBuf(fds, held); s != stepAgain {
				return s, err
			}
			continue
		}
		if d.pn == 0 && !d.stream {
			// Until a direction is a stream, it reads and sends
			// through a buffer: for a message, two copies cost less
			// than splice's pages and pipe.
			d.cn, d.err, d.block, d.op = 0, nil, false, opReadIn
			if read, s, err := d.afterRead(d.move(fds, held, true)); !read {
				return s, err
			}
			if d.cn == 0 {
				return stepEOF, nil
			}
			// A full buffer (more was likely waiting), or a long stream
			// that arrives a few segments at a time: splice from now on.
			d.stream = int(d.cn) == len(*d.buf) || d.n+int64(d.cn) >= streamAt
			short, piped, d.m = !d.stream, false, 0
			if s, err := d.writeBuf(fds, held); s != stepAgain {
				return s, err
			}
			continue
		}
		if d.pn == 0 {
			d.err, d.block, d.op = nil, false, opSpliceIn
			if err := d.move(fds, held, true); err != nil {
				return d.readErr(err)
			}
			if d.block {
				return stepPark, nil
			}
			if d.err == nil && d.pn == 0 {
				d.putPipe() // empty: a half-closed direction holds none
				return stepEOF, nil
			}
			if d.err != nil {
				if d.err == errNoPipe {
					// Out of descriptors: this direction goes on by copying
					// rather than failing a flow that did nothing wrong.
					return stepFallback, nil
				}
				if !d.spliced && (d.err == unix.EINVAL || d.err == unix.ENOSYS) {
					d.putPipe() // empty, and copying needs none
					return stepFallback, nil
				}
				return stepErr, sideErr{read: true, reset: isReset(d.err), err: os.NewSyscallError("splice", d.err)}
			}
			short, piped = d.pn < shortSplice, true
		}
		d.op = opSpliceOut
		for d.pn > 0 {
			handoff, err := d.wrote(d.move(fds, held, false), "splice")
			if handoff {
				return stepHandoff, nil // the goroutine waits for dst
			}
			if err != nil {
				d.p.dirty = true
				pipes.put(d.p)
				d.p = nil
				return stepErr, err
			}
			d.pn -= d.m
			d.moved(d.m)
		}
	}
}

// putPipe gives the direction's pipe, if it holds one, back to the pool;
// the pipe must be empty.
func (d *dir) putPipe() {
	if d.p != nil {
		pipes.put(d.p)
		d.p = nil
	}
}

// writeBuf sends what a read took into the direction's buffer
// (buf[m:cn]) to dst, and gives the buffer back once it is all sent. It
// returns stepAgain when done, else what the step came to.
func (d *dir) writeBuf(fds [2]int32, held bool) (step, error) {
	m0 := d.m
	d.err, d.op = nil, opWriteOut
	err := d.move(fds, held, false)
	if d.m > m0 {
		d.moved(d.m - m0)
	}
	handoff, err := d.wrote(err, "write")
	if handoff {
		return stepHandoff, nil // the goroutine waits for dst
	}
	if err != nil {
		return stepErr, err
	}
	bufPool.Put(d.buf)
	d.buf = nil
	return stepAgain, nil
}

func (d *dir) spliceIn(fd uintptr) bool {
	// No peek first: a splice that finds nothing says EAGAIN for the same
	// one syscall, and one that finds bytes has moved them.
	if d.p == nil {
		var err error
		if d.p, err = pipes.get(d.bulk); err != nil {
			d.err = errNoPipe
			return true
		}
	}
	most := maxSplice
	if d.clean < cleanOuts {
		most = smallPipe
	}
	if d.inline {
		most = min(most, int(d.budget)) // the wait loop's other flows wait
	}
	moved, err := rawSplice(int(fd), d.p.w, most)
	if err == unix.EAGAIN {
		d.putPipe()
		return d.empty()
	}
	d.pn, d.err = int32(moved), err
	d.spliced = d.spliced || moved > 0
	if moved >= growAt {
		d.bulk = true
		if !d.p.big {
			pipes.grow(d.p)
		}
	}
	if d.waitSince.Load() != 0 {
		d.waitSince.Store(0)
	}
	return true
}

func (d *dir) spliceOut(fd uintptr) bool {
	moved, err := rawSplice(d.p.r, int(fd), int(d.pn))
	d.m, d.err = int32(moved), err
	d.prime(fd, moved)
	if err == nil && d.m == d.pn {
		d.clean = min(d.clean+1, cleanOuts)
	} else {
		d.clean = 0 // the destination took only part, or none
	}
	if err == unix.EAGAIN {
		if d.inline {
			d.m, d.err = 0, errHandoff
			return true
		}
		d.writeWait(true) // dst is full: the sweep watches src meanwhile
		return false
	}
	return true
}

// pipe is a kernel pipe used as splice's buffer.
type pipe struct {
	r, w  int
	dirty bool // may hold bytes: close, never reuse
	big   bool // grown to bigPipe
}

// pipePool keeps a bounded number of empty pipes for reuse: creating one is
// two syscalls and two descriptors. Big pipes are pooled apart, for the
// directions that carry bulk.
type pipePool struct {
	free chan *pipe

	bigOnce  sync.Once
	bigFree  chan *pipe // capacity: the budget
	bigAlive atomic.Int32
	// bigOff: growing failed (a lowered fs.pipe-max-size, the user's pipe
	// limits); not tried again before this time (unix nanos).
	bigOff atomic.Int64
}

var pipes = pipePool{free: make(chan *pipe, 256)}

// noPipes makes new pipes fail as if the process were out of descriptors
// (tests of the copy fallback set it).
var noPipes atomic.Bool

func (pp *pipePool) initBig() {
	pp.bigOnce.Do(func() { pp.bigFree = make(chan *pipe, bigPipeBudget()) })
}

// get takes a pooled pipe, a big one first if big, or makes one.
func (pp *pipePool) get(big bool) (*pipe, error) {
	if big {
		pp.initBig()
		select {
		case p := <-pp.bigFree:
			return p, nil
		default:
		}
	}
	select {
	case p := <-pp.free:
		return p, nil
	default:
	}
	var fds [2]int
	if noPipes.Load() {
		return nil, os.NewSyscallError("pipe2", unix.EMFILE)
	}
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	return &pipe{r: fds[0], w: fds[1]}, nil
}

// grow makes p a big pipe if the budget allows; bytes in it stay.
func (pp *pipePool) grow(p *pipe) {
	pp.initBig()
	budget := int32(cap(pp.bigFree))
	if pp.bigAlive.Load() >= budget {
		return // the common case once the budget is spent: no clock read
	}
	now := time.Now().UnixNano()
	if now < pp.bigOff.Load() {
		return
	}
	if pp.bigAlive.Add(1) > budget {
		pp.bigAlive.Add(-1)
		return
	}
	if _, err := unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, bigPipe); err != nil {
		pp.bigAlive.Add(-1)
		pp.bigOff.Store(now + int64(10*time.Second))
		return
	}
	p.big = true
}

func (pp *pipePool) put(p *pipe) {
	if !p.dirty {
		free := pp.free
		if p.big {
			free = pp.bigFree
		}
		select {
		case free <- p:
			return
		default:
		}
	}
	pp.close(p)
}

func (pp *pipePool) close(p *pipe) {
	if p.big {
		pp.bigAlive.Add(-1)
	}
	unix.Close(p.r)
	unix.Close(p.w)
}

// Drain closes the pooled pipes (for leak checks and shutdown).
func Drain() {
	pipes.initBig()
	for {
		select {
		case p := <-pipes.free:
			pipes.close(p)
		case p := <-pipes.bigFree:
			pipes.close(p)
		default:
			return
		}
	}
}

// bigPipeBudget is how many big pipes the process keeps at most: 256 (a
// quarter of a gigabyte of slots) when it may exceed the kernel's per-user
// pipe limits (CAP_SYS_RESOURCE or CAP_SYS_ADMIN) or there are none, else
// what half of fs.pipe-user-pages-soft holds (32 with the default 16384
// pages), leaving the rest to small pipes and the user's other processes.
func bigPipeBudget() int32 {
	const most = 256
	if pipePrivileged() {
		return most
	}
	b, err := os.ReadFile("/proc/sys/fs/pipe-user-pages-soft")
	if err != nil {
		return 0
	}
	soft, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	if soft == 0 {
		return most
	}
	return int32(min(most, soft/2/(bigPipe/os.Getpagesize())))
}

// pipePrivileged reports whether the process may exceed the per-user pipe
// limits.
func pipePrivileged() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if unix.Capget(&hdr, &data[0]) != nil {
		return false
	}
	has := func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	return has(unix.CAP_SYS_RESOURCE) || has(unix.CAP_SYS_ADMIN)
}

// writePrefix writes prefix to dst before anything of src's: corked
// (MSG_MORE) when src has bytes within wait, so the next write carries
// both in one segment; plain once wait has passed. An error of src's that
// the wait's peek took (a reset) comes back as a sideErr of src's, and
// the prefix is not written: reads of src after the peek find only EOF.
func writePrefix(dst, src *net.TCPConn, prefix []byte, wait time.Duration) error {
	readable := false
	if wait > 0 {
		rc, err := src.SyscallConn()
		if err != nil {
			return err
		}
		_ = src.SetReadDeadline(time.Now().Add(wait))
		// RawRead clears the readiness it knew before calling the check,
		// so bytes arriving after the peek still wake the wait.
		var perr error
		_ = rc.Read(func(fd uintptr) bool {
			_, err := peek(fd)
			readable = err != unix.EAGAIN // bytes, EOF or an error
			if readable && err != nil {
				perr = err
			}
			return readable
		})
		_ = src.SetReadDeadline(time.Time{})
		if perr != nil {
			return sideErr{read: true, reset: isReset(perr), err: os.NewSyscallError("recv", perr)}
		}
	}
	flags := 0
	if readable {
		flags = unix.MSG_MORE
	}
	rc, err := dst.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	for len(prefix) > 0 && serr == nil {
		werr := rc.Write(func(fd uintptr) bool {
			n, err := unix.SendmsgN(int(fd), prefix, nil, nil, flags|unix.MSG_NOSIGNAL)
			if err == unix.EAGAIN {
				return false
			}
			if err != nil {
				serr = err
				return true
			}
			prefix = prefix[n:]
			return true
		})
		if werr != nil {
			return werr
		}
	}
	return serr
}

// peek looks at a socket without taking a byte: n is 1 (bytes waiting) or
// 0 (EOF), else the error (EAGAIN: nothing yet).
func peek(fd uintptr) (int, error) {
	var b [1]byte
	for {
		n, err := rawRecv(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if err != unix.EINTR {
			return n, err
		}
	}
}
