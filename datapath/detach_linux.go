package datapath

import (
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"

	"halfway/sockopt"
)

// Detaching long-idle flows from Go's poller.
//
// Every *net.TCPConn sits in the Go runtime's epoll set from its first
// byte to its close, and a parked flow direction's socket sits in its
// shard's set as well: an idle flow costs four epoll entries in the
// kernel (an epitem and a wait-queue entry each) where an event-driven
// proxy pays two, and Go's heap keeps a descriptor record per socket.
// Go has no call that takes a live descriptor out of its poller, so a
// flow whose directions are both parked, and that has moved no byte for
// Options.DetachAfter, is detached by its shard's sweep: each leg's
// descriptor is duplicated and taken out of the shard's set, and the
// *net.TCPConn is closed, which takes it out of Go's poller and releases
// only that descriptor (the socket lives on in the duplicate). The
// directions are then armed in the shard's set on the duplicates.
//
// A detached direction woken on its shard's wait loop moves its bytes
// with system calls on the raw descriptors, as it would on the
// connections' (they never wait there), and parks again: a flow that
// sends a message now and then stays detached and costs what it did
// before. A direction that has to wait (its destination is full, it
// copies, or it has moved a burst) needs Go's poller: the goroutine it
// goes on attaches the flow first. net.FileConn makes each socket a
// *net.TCPConn again (it turns TCP_NODELAY and keepalive on with Go's
// defaults, so the socket's own settings are put back), and the other
// direction, if parked, is armed on its new descriptor. A flow that ends
// while detached closes the raw descriptors (closeLegs).
//
// The flow's mu orders all of this with arming the set (park) and with
// closing: the set's entries are keyed by descriptor, so a descriptor
// leaves the set before it is closed; the flow keeps its legs'
// descriptors (fd), which stay open while mu is held and the legs are not
// closed, so arming needs no reference to the connection; and a detached
// descriptor in use by a step (rawRefs) is closed only once that step is
// done with it.

// maxDetachPerSweep bounds one sweep's work (about ten system calls a
// flow): a shard detaches at most this many flows four times a second.
const maxDetachPerSweep = 4096

// Flow.flags.
const (
	flagDetached uint32 = 1 << iota // the legs are duplicates in fd, out of Go's poller
	flagNoDetach                    // a leg cannot be detached (MPTCP)
)

func (f *Flow) detached() bool { return f.flags.Load()&flagDetached != 0 }

// errDetached: a detached descriptor's operation would wait, which only
// Go's poller can do: the direction goes on on a goroutine, attached.
var errDetached = errors.New("detached from the poller: attach to wait")

// detachedConn stands for a detached leg: a connection with no
// descriptor, whose every method fails (EINVAL).
var detachedConn = &net.TCPConn{}

// Detached tells whether c, one of Conns' connections, stands for a leg
// detached from Go's poller. Such a leg is a TCP socket: the data path
// detaches no MPTCP one.
func Detached(c *net.TCPConn) bool { return c == detachedConn }

// sysfd is a connection's descriptor.
func sysfd(c *net.TCPConn) int32 {
	fd := int32(-1)
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(s uintptr) { fd = int32(s) })
	}
	return fd
}

// detachable says whether the sweep may try to detach f now; the caller
// holds the shard's lock.
func (f *Flow) detachable(now int64) bool {
	return f.opt.DetachAfter > 0 && !f.opt.Sockmap && f.flags.Load() == 0 &&
		f.sweeps >= keepaliveSweeps && now-f.last.Load() >= int64(f.opt.DetachAfter) &&
		f.dirs[0].state.Load() == dirParked && f.dirs[1].state.Load() == dirParked && !f.aborted()
}

// detach takes f's legs out of Go's poller if both its directions are
// still parked, and reports whether it did.
func (f *Flow) detach() bool {
	d0, d1 := &f.dirs[0], &f.dirs[1]
	if !d0.unpark() {
		return false
	}
	if !d1.unpark() {
		d0.repark()
		return false
	}
	// Both directions are this goroutine's now: nothing else arms their
	// registrations or touches their sockets.
	done := f.detachLegs()
	d0.repark()
	d1.repark()
	return done
}

// detachLegs swaps the legs for duplicates of their descriptors, both or
// neither.
func (f *Flow) detachLegs() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || f.flags.Load() != 0 || f.aborted() {
		return false
	}
	var dups [2]int
	n := 0
	for i, fd := range f.fd {
		if p, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil || p == unix.IPPROTO_MPTCP {
			f.flags.Or(flagNoDetach)
			break
		}
		// Out of the shard's set first: its entry is keyed by this
		// descriptor, which closing the connection ends.
		_ = rawEpollCtl(int(f.epfd), unix.EPOLL_CTL_DEL, int(fd), nil)
		d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			break
		}
		dups[i] = d
		n++
	}
	f.gen++ // taken out of the set (maybe): the directions arm with ADD
	if n < len(dups) {
		for _, fd := range dups[:n] {
			unix.Close(fd)
		}
		return false
	}
	for i := range f.legs {
		f.legs[i].Load().Close() // out of Go's poller; the socket stays
		// The closed connection would keep its record in the heap.
		f.legs[i].Store(detachedConn)
		f.fd[i] = int32(dups[i])
	}
	f.flags.Or(flagDetached)
	f.shard.detached.Add(1)
	return true
}

// rawAcquire hands out the detached legs' descriptors (client, server)
// for a step, which gives them back with rawRelease. ok is false if the
// flow is not detached (any more) or its legs are closed.
func (f *Flow) rawAcquire() (fds [2]int32, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.detached() || f.closed {
		return fds, false
	}
	f.rawRefs++
	return f.fd, true
}

// rawRelease gives back what rawAcquire handed out; the last step to do
// so after an attach or a close closes them.
func (f *Flow) rawRelease(fds [2]int32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rawRefs--; f.rawRefs == 0 && f.rawDrop {
		f.closeRaw(fds)
	}
}

// closeRaw closes detached descriptors (client, server), resetting those
// rawReset names; the caller holds mu and no step uses them.
func (f *Flow) closeRaw(fds [2]int32) {
	for i, fd := range fds {
		if f.rawReset[i] {
			_ = unix.SetsockoptLinger(int(fd), unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
		}
		unix.Close(int(fd))
	}
	f.rawDrop, f.rawReset = false, [2]bool{}
}

// rawHeld hands a step on the wait loop of a detached flow the detached
// descriptors (client, server), which it gives back with f.rawRelease if
// held.
func (d *dir) rawHeld() (fds [2]int32, held bool) {
	if d.inline && d.f.detached() {
		return d.f.rawAcquire()
	}
	return fds, false
}

// move runs d.fn on the source (read) or the destination: on its
// detached descriptor if held, where it never waits (errDetached), else
// through Go's poller.
func (d *dir) move(fds [2]int32, held, read bool) error {
	leg := b2u(read != d.up) // the source is the client's leg going up
	if held {
		if d.fn(uintptr(fds[leg])) {
			return nil
		}
		return errDetached
	}
	rc, err := d.f.legs[leg].Load().SyscallConn()
	if err != nil {
		return err
	}
	if read {
		return rc.Read(d.fn)
	}
	return rc.Write(d.fn)
}

// closeWrite sends d's destination a FIN, on the detached descriptor if
// the flow is detached.
func (d *dir) closeWrite() error {
	f := d.f
	if f.detached() {
		if fds, ok := f.rawAcquire(); ok {
			err := unix.Shutdown(int(fds[b2u(d.up)]), unix.SHUT_WR)
			f.rawRelease(fds)
			if err != nil {
				return os.NewSyscallError("shutdown", err)
			}
			return nil
		}
	}
	return d.dst().CloseWrite()
}

// attach puts a detached flow's legs back into Go's poller for d, a
// direction about to wait on a goroutine, which the caller owns. On
// failure the flow is aborted (ReasonError) and its directions find the
// legs closed.
func (f *Flow) attach(d *dir) {
	f.mu.Lock()
	if !f.detached() || f.closed {
		f.mu.Unlock()
		return
	}
	var conns [2]*net.TCPConn
	var fds [2]int32
	var err error
	for i := range conns {
		if conns[i], fds[i], err = fdConn(int(f.fd[i])); err != nil {
			break
		}
	}
	if err != nil {
		for _, c := range conns {
			if c != nil {
				c.Close() // its duplicate only: the detached descriptor stays
			}
		}
		f.mu.Unlock()
		f.abort(ReasonError, fmt.Errorf("attach a detached flow: %w", err), true, true)
		return
	}
	old := f.fd
	for i, c := range conns {
		_ = rawEpollCtl(int(f.epfd), unix.EPOLL_CTL_DEL, int(old[i]), nil)
		f.legs[i].Store(c)
	}
	f.fd = fds
	f.gen++
	f.flags.And(^uint32(flagDetached))
	f.shard.detached.Add(-1)
	f.shard.attaches.Add(1)
	if f.rawRefs > 0 {
		f.rawDrop = true // the step on the wait loop closes them
	} else {
		f.closeRaw(old)
	}
	// The other direction, if parked, waited on a descriptor that is gone:
	// arm it on the new one. If it runs, it arms the new one as it parks.
	o := &f.dirs[b2u(!d.up)]
	own := o.unpark()
	f.mu.Unlock()
	if own {
		o.repark()
	}
}

// repark parks a direction the caller took from the parked state without
// running it, or runs it if it cannot park (the legs closed).
func (d *dir) repark() {
	if !d.park() {
		go d.run()
	}
}

// setServerKeepalive puts Options.ServerKeepalive on the server leg: on
// its raw descriptor while the flow is detached. A flow that has ended
// meanwhile has closed the leg, which fails quietly.
func (f *Flow) setServerKeepalive() {
	ka := f.opt.ServerKeepalive
	if fds, ok := f.rawAcquire(); ok {
		_ = sockopt.SetKeepaliveFD(int(fds[1]), *ka)
		f.rawRelease(fds)
		return
	}
	_ = f.server().SetKeepAliveConfig(*ka)
}

// ConnOf makes a *net.TCPConn of a connected socket descriptor that no Go
// poller watches, with its socket options as they were, and closes fd
// (the connection has a duplicate).
func ConnOf(fd int) (*net.TCPConn, error) {
	c, _, err := fdConn(fd)
	unix.Close(fd)
	return c, err
}

// legOpts are the socket options net.FileConn sets with Go's defaults,
// which fdConn puts back as they were.
var legOpts = [...]struct{ level, opt int }{
	{unix.IPPROTO_TCP, unix.TCP_NODELAY},
	{unix.SOL_SOCKET, unix.SO_KEEPALIVE},
	{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE},
	{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL},
	{unix.IPPROTO_TCP, unix.TCP_KEEPCNT},
}

// fdConn makes a *net.TCPConn, in Go's poller, of a duplicate of a
// socket descriptor, which stays the caller's; nfd is the connection's
// descriptor.
func fdConn(fd int) (c *net.TCPConn, nfd int32, err error) {
	var vals [len(legOpts)]int
	for i, o := range legOpts {
		if vals[i], err = unix.GetsockoptInt(fd, o.level, o.opt); err != nil {
			return nil, -1, os.NewSyscallError("getsockopt", err)
		}
	}
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, -1, os.NewSyscallError("fcntl", err)
	}
	// The file owns dup (FileConn duplicates it again); the descriptor
	// stays non-blocking, shared with fd, which a step may be using.
	file := os.NewFile(uintptr(dup), "detached")
	nc, err := net.FileConn(file)
	file.Close()
	if err != nil {
		return nil, -1, err
	}
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		nc.Close()
		return nil, -1, fmt.Errorf("descriptor %d is not a TCP socket", fd)
	}
	nfd = sysfd(tc)
	for i, o := range legOpts {
		if e := unix.SetsockoptInt(int(nfd), o.level, o.opt, vals[i]); e != nil {
			tc.Close()
			return nil, -1, os.NewSyscallError("setsockopt", e)
		}
	}
	return tc, nfd, nil
}
