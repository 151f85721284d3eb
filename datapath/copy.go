package datapath

import (
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyStep is the user-space fallback: src → dst through a pooled buffer,
// taken only once src has bytes, so an idle direction holds none.
func (d *dir) copyStep() (step, error) {
	srcRC, err := d.src().SyscallConn()
	if err != nil {
		return stepErr, sideErr{read: true, err: err}
	}
	dstRC, err := d.dst().SyscallConn()
	if err != nil {
		return stepErr, sideErr{read: false, err: err}
	}
	d.midSegment = false // it parks only on an empty source
	for {
		d.cn, d.err, d.block, d.op = 0, nil, false, opReadIn
		if read, s, err := d.afterRead(srcRC.Read(d.fn)); !read {
			return s, err
		}
		if d.cn == 0 {
			if d.usedKernel && d.eofPending() {
				// Passed bytes are still on their way to the socket,
				// unless the source was reset: they queue in the
				// socket's sockmap backlog with the other direction's
				// redirected bytes, whose send fails once the socket is
				// reset, which stops that backlog for good. Reads say
				// EOF (the FIN came first) and the sweep watches only
				// a direction waiting for its destination: only the
				// socket's pending error tells.
				// (A closed source is an aborted flow: flushWait ends it.)
				if err := soError(d.src()); err != nil {
					return stepErr, sideErr{read: true, reset: isReset(err), err: os.NewSyscallError("connection", err)}
				}
				_, ds := d.smState()
				if !d.f.flushWait(&ds.waitN) {
					return stepDone, nil
				}
				continue
			}
			return stepEOF, nil
		}
		// Raw while dst takes bytes; while it is full, Go's poller waits
		// for room and the sweep watches src (writeOut).
		d.m, d.err, d.op = 0, nil, opWriteOut
		werr := dstRC.Write(d.fn)
		d.writeWait(false)
		if werr == nil && d.err != nil {
			werr = os.NewSyscallError("write", d.err)
		}
		m := d.m
		bufPool.Put(d.buf)
		d.buf = nil
		d.n += int64(m)
		if cnt := d.counter(); cnt != nil {
			cnt.Add(int64(m))
		}
		d.f.touch()
		if werr != nil {
			return stepErr, sideErr{read: false, reset: isReset(werr), err: werr}
		}
	}
}

func (d *dir) readIn(fd uintptr) bool {
	if d.buf == nil {
		d.buf = bufPool.Get().(*[]byte)
	}
	n, err := rawRead(int(fd), *d.buf)
	for err == unix.EINTR {
		n, err = rawRead(int(fd), *d.buf)
	}
	if err == unix.EAGAIN || err != nil || n == 0 {
		bufPool.Put(d.buf)
		d.buf = nil
	}
	if !d.took(n, err, &d.cn) {
		return d.empty()
	}
	if d.waitSince.Load() != 0 {
		d.waitSince.Store(0)
	}
	return true
}

// writeOut sends what buf holds from d.m on, without blocking; when dst
// is full it returns false, so that the caller waits for room in Go's
// poller, and marks the wait for the sweep (inline, it says errHandoff).
func (d *dir) writeOut(fd uintptr) bool {
	for d.m < d.cn {
		n, err := rawSend(int(fd), (*d.buf)[d.m:d.cn])
		switch err {
		case nil:
			d.m += int32(n)
			d.prime(fd, int(d.m))
		case unix.EINTR:
		case unix.EAGAIN:
			if d.inline {
				d.err = errHandoff // the wait loop's other flows wait
				return true
			}
			d.writeWait(true)
			return false
		default:
			d.err = err
			return true
		}
	}
	return true
}

// took records what a non-blocking read (or peek) of n bytes came to: the
// error, or n in *into. It reports false if the source was empty.
func (d *dir) took(n int, err error, into *int32) bool {
	switch {
	case err == unix.EAGAIN:
		return false
	case err != nil:
		d.err = err
	default:
		*into = int32(n)
	}
	return true
}
