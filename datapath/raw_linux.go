package datapath

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// The system calls a flow makes for every message — splice on
// non-blocking sockets and pipes, the copy path's read and send, a peek,
// epoll_wait with no timeout, epoll_ctl — never block, so they are made
// raw: without entering and leaving the Go scheduler's syscall state. That
// state is what wakes the runtime's monitor thread whenever a process that
// was idle makes its first system call: twice per relayed request for a
// quiet relay on one core, a context switch on the request's path each
// time. (unix.Splice and friends go through that state: they may block.)

// raw makes a non-blocking system call and returns its result as a count.
func raw(trap, a1, a2, a3, a4, a5, a6 uintptr) (int, error) {
	r, _, e := unix.RawSyscall6(trap, a1, a2, a3, a4, a5, a6)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// rawSplice moves up to n bytes from in to out without blocking.
func rawSplice(in, out, n int) (int, error) {
	return raw(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
}

// rawEpollPoll returns the events ready in an epoll set now, without waiting.
func rawEpollPoll(epfd int, evs []unix.EpollEvent) (int, error) {
	return raw(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&evs[0])), uintptr(len(evs)), 0, 0, 0)
}

// rawEpollCtl changes an epoll set's interest in fd.
func rawEpollCtl(epfd, op, fd int, ev *unix.EpollEvent) error {
	_, err := raw(unix.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	return err
}

// rawRead reads from a non-blocking descriptor.
func rawRead(fd int, b []byte) (int, error) {
	return raw(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0, 0, 0)
}

// rawRecv receives from a socket with flags that include MSG_DONTWAIT.
func rawRecv(fd int, b []byte, flags int) (int, error) {
	return raw(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(flags), 0, 0)
}

// rawSend sends on a non-blocking socket; a reset peer gives EPIPE, not
// SIGPIPE.
func rawSend(fd int, b []byte) (int, error) {
	return raw(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_NOSIGNAL, 0, 0)
}
