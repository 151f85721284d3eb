package datapath

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxSplice bounds one splice call; the pipe's capacity bounds it anyway.
const maxSplice = 1 << 20

var (
	errSpliceUnsupported = errors.New("splice not supported on these sockets")
	errNoPipe            = errors.New("no pipe")
)

// spliceCopy moves src → dst through a pipe until EOF (nil error). The pipe
// is taken only when bytes are waiting and given back before waiting again,
// so an idle flow holds no pipe.
//
// A message costs three splices: in, out, and in again to learn that the
// socket is empty (EAGAIN) before waiting. Stopping after a short read
// instead would miss a FIN that came with the data: its readiness event
// was spent on the wake-up that read the data.
func spliceCopy(dst, src *net.TCPConn, cnt *atomic.Int64, f *flow) (int64, error) {
	srcRC, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	dstRC, err := dst.SyscallConn()
	if err != nil {
		return 0, err
	}
	var (
		p     *pipe
		total int64
		n     int
		serr  error
	)
	defer func() {
		if p != nil {
			pipes.put(p)
		}
	}()
	readFn := func(fd uintptr) bool {
		// No peek first: a splice that finds nothing says EAGAIN for the
		// same one syscall, and one that finds bytes has moved them.
		if p == nil {
			if p, serr = pipes.get(); serr != nil {
				serr = errNoPipe
				return true
			}
		}
		var moved int64
		moved, serr = unix.Splice(int(fd), nil, p.w, nil, maxSplice, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		n = int(moved)
		if serr == unix.EAGAIN {
			pipes.put(p)
			p = nil
			return false
		}
		return true
	}
	var m int
	var werr error
	writeFn := func(fd uintptr) bool {
		moved, e := unix.Splice(p.r, nil, int(fd), nil, n, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		m, werr = int(moved), e
		return werr != unix.EAGAIN
	}
	f.armIdle(src)
	for {
		n, serr = 0, nil
		if err := srcRC.Read(readFn); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && !f.idleExpired(src) {
				continue
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return total, errIdle
			}
			return total, sideErr{read: true, err: err}
		}
		if serr == nil && n == 0 {
			return total, nil // EOF
		}
		if serr != nil {
			if serr == errNoPipe {
				// Out of descriptors: this direction goes on by copying
				// rather than failing a flow that did nothing wrong.
				return total, errSpliceUnsupported
			}
			if total == 0 && (serr == unix.EINVAL || serr == unix.ENOSYS) {
				return 0, errSpliceUnsupported
			}
			return total, sideErr{read: true, reset: isReset(serr), err: os.NewSyscallError("splice", serr)}
		}
		for n > 0 {
			if err := dstRC.Write(writeFn); err != nil {
				p.dirty = true
				return total, sideErr{read: false, err: err}
			}
			if werr != nil {
				p.dirty = true
				return total, sideErr{read: false, reset: isReset(werr), err: os.NewSyscallError("splice", werr)}
			}
			n -= m
			total += int64(m)
			if cnt != nil {
				cnt.Add(int64(m))
			}
			f.touch()
		}
		f.armIdle(src)
	}
}

// watchReset waits, on a socket that has sent its FIN, until it fails
// (returning the error: a reset, a user timeout), the flow is idle (errIdle:
// the other direction may be stuck writing to a peer that stopped reading,
// which no read deadline of its own would notice) or the socket is closed
// (nil).
func watchReset(src *net.TCPConn, f *flow) error {
	rc, err := src.SyscallConn()
	if err != nil {
		return nil
	}
	f.armIdle(src)
	var rerr error
	watch := func(fd uintptr) bool {
		// recv reports EOF before a later reset, so ask the socket for its
		// pending error: a reset sets one (EPIPE in CLOSE_WAIT), while an
		// orderly close that completes (LAST_ACK to CLOSE) does not.
		if e, _ := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); e != 0 {
			rerr = os.NewSyscallError("connection", syscall.Errno(e))
			return true
		}
		return false // still half-closed: wait for the next event
	}
	for {
		err = rc.Read(watch)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if f.idleExpired(src) {
				return errIdle
			}
			continue
		}
		if err != nil {
			return nil // closed: the flow is over
		}
		return rerr
	}
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// pipe is a kernel pipe used as splice's buffer.
type pipe struct {
	r, w  int
	dirty bool // may hold bytes: close, never reuse
}

// pipePool keeps a bounded number of empty pipes for reuse: creating one is
// two syscalls and two descriptors.
type pipePool struct{ free chan *pipe }

var pipes = pipePool{free: make(chan *pipe, 256)}

func (pp *pipePool) get() (*pipe, error) {
	select {
	case p := <-pp.free:
		return p, nil
	default:
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	return &pipe{r: fds[0], w: fds[1]}, nil
}

func (pp *pipePool) put(p *pipe) {
	if !p.dirty {
		select {
		case pp.free <- p:
			return
		default:
		}
	}
	unix.Close(p.r)
	unix.Close(p.w)
}

// Drain closes the pooled pipes (for leak checks and shutdown).
func Drain() {
	for {
		select {
		case p := <-pipes.free:
			unix.Close(p.r)
			unix.Close(p.w)
		default:
			return
		}
	}
}

// writePrefix writes prefix to dst before anything of src's: corked
// (MSG_MORE) when src has bytes within wait, so the next write carries
// both in one segment; plain once wait has passed.
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
		_ = rc.Read(func(fd uintptr) bool {
			var b byte
			_, _, e := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b)), 1, unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
			readable = e != unix.EAGAIN // bytes, EOF or an error: the copy finds out
			return readable
		})
		_ = src.SetReadDeadline(time.Time{})
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
