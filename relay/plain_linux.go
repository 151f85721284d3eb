package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"halfway/datapath"
	"halfway/sockopt"
)

// Plain flows: accepted and dialed with raw system calls.
//
// A *net.TCPConn costs a flow more than its socket: Go adds it to the
// runtime's poller and takes it out again (two epoll_ctl), reads both its
// addresses (getsockname, getpeername), and keeps a descriptor record; a
// dial formats and parses its address and parks the goroutine until the
// poller reports the connect done. A flow that needs nothing of package
// net's, a plain one, skips all of that: the relay accepts it with
// accept4, connects with socket and connect, and hands the two
// descriptors to the data path, whose epoll set is then the only one
// watching them (datapath.NewFDs), as in an event-driven proxy. A
// direction that has to wait puts them into Go's poller then, as for any
// flow detached from it.
//
// A flow is plain when its listener is a forward, tproxy or redirect one
// without early SYN, PROXY header, source spoofing or MPTCP
// (listenerState.plain), its route is direct and not MPTCP, and the data
// path is splice, parking at once and detaching (park_after 0,
// detach_after above 0). Every other flow takes the general path, with
// the same behaviour.

// plainListener says whether lc's flows can be plain, as far as the
// listener goes.
func plainListener(lc *ListenerConfig) bool {
	return (lc.Mode == "forward" || lc.Mode == "tproxy" || lc.Mode == "redirect") &&
		!lc.EarlySYN && !lc.ProxyProtocol && !lc.SpoofSource && !lc.MPTCP
}

// plainData says whether rt's data path takes plain flows.
func plainData(rt *runtime) bool {
	return (rt.cfg.DataPath == "" || rt.cfg.DataPath == "splice") && rt.cfg.ParkAfter.D() == 0 && rt.cfg.Detach() > 0
}

func plainRoute(r *route) bool { return len(r.via) == 0 && !r.mptcp }

// plainFlow says whether a flow of listener to dst is plain under rt,
// given a listener whose flows can be.
func plainFlow(rt *runtime, listener string, dst netip.AddrPort) bool {
	return plainData(rt) && plainRoute(rt.match(listener, dst))
}

// plain says whether l's next flow is plain, under the configuration in
// force now: a forward listener's goes to one destination; a transparent
// one's may take any route of the listener, all of which must be plain
// (else its flows would pay for a connection made of the descriptor).
func (s *Server) plain(l *listener) bool {
	st := l.cur.Load()
	if !st.plain {
		return false
	}
	rt := s.state.Load()
	if st.cfg.Mode == "forward" {
		return plainFlow(rt, l.cfg.Name, st.forward)
	}
	if !plainData(rt) {
		return false
	}
	for i := range rt.routes {
		if r := &rt.routes[i]; (r.listener == "" || r.listener == l.cfg.Name) && !plainRoute(r) {
			return false
		}
	}
	return true
}

// plainDst is where a plain flow on fd goes, and the socket's own
// address (for a transparent listener, the packet's destination).
func plainDst(st *listenerState, fd int) (dst, self netip.AddrPort, err error) {
	if st.cfg.Mode == "forward" {
		return st.forward, netip.AddrPort{}, nil
	}
	sa, err := syscall.Getsockname(fd) // (see acceptFD)
	if err != nil {
		return dst, self, os.NewSyscallError("getsockname", err)
	}
	self = sockaddrAddrPort(sa)
	if st.cfg.Mode == "tproxy" {
		return self, self, nil // TPROXY: the socket has the original destination
	}
	_, v6 := sa.(*syscall.SockaddrInet6)
	if dst, err = sockopt.OriginalDstFD(fd, v6 && !self.Addr().Is4()); err != nil {
		return dst, self, errorf("original destination", err)
	}
	return dst, self, nil
}

// acceptFileOf duplicates ln's descriptor as a file in Go's poller, whose
// raw connection can wait for connections to accept (a listener's cannot).
func acceptFileOf(ln *net.TCPListener) (*os.File, error) {
	rc, err := ln.SyscallConn()
	if err != nil {
		return nil, err
	}
	dup := -1
	var derr error
	if err := rc.Control(func(fd uintptr) { dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, os.NewSyscallError("fcntl", derr)
	}
	// Non-blocking, as the listener's: NewFile puts it into the poller.
	return os.NewFile(uintptr(dup), "listener"), nil
}

// acceptFD accepts a connection from a listener's raw connection as a
// non-blocking descriptor, with its peer's address. (It calls package
// syscall's accept4: x/sys/unix's reads SO_PROTOCOL of every IPv4 peer's
// socket, in case it is L2TP, a system call per accept.)
func acceptFD(rc syscall.RawConn) (int, netip.AddrPort, error) {
	nfd := -1
	var sa syscall.Sockaddr
	var aerr error
	err := rc.Read(func(fd uintptr) bool {
		for {
			nfd, sa, aerr = syscall.Accept4(int(fd), syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC)
			switch aerr {
			case syscall.EINTR, syscall.ECONNABORTED:
				continue // as Go's accept: the next one
			case syscall.EAGAIN:
				return false // wait for one
			}
			return true
		}
	})
	if err == nil && aerr != nil {
		err = os.NewSyscallError("accept4", aerr)
	}
	if err != nil {
		return -1, netip.AddrPort{}, err
	}
	return nfd, sockaddrAddrPort(sa), nil
}

// sockaddrAddrPort is sa as an address and port, unmapped; a link-local
// IPv6 address keeps its zone, the interface's name, as package net's
// addresses do: a TPROXY flow's destination needs it to be connected to.
func sockaddrAddrPort(sa syscall.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *syscall.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *syscall.SockaddrInet6:
		ip := netip.AddrFrom16(a.Addr).Unmap()
		if a.ZoneId != 0 && ip.Is6() {
			ip = ip.WithZone(zoneName(a.ZoneId))
		}
		return netip.AddrPortFrom(ip, uint16(a.Port))
	}
	return netip.AddrPort{}
}

// zoneName is an interface index as a zone: its name, or the number.
func zoneName(id uint32) string {
	if ifi, err := net.InterfaceByIndex(int(id)); err == nil {
		return ifi.Name
	}
	return strconv.FormatUint(uint64(id), 10)
}

// servePlain handles one plain flow (see above) from start to end, as
// serve and transparent do another; fd is its accepted socket, from
// client.
func (s *Server) servePlain(l *listener, fd int, client netip.AddrPort) {
	st := l.cur.Load()
	rt := s.state.Load()
	dst, self, err := plainDst(st, fd)
	if err != nil || !st.plain || !plainFlow(rt, l.cfg.Name, dst) {
		// A reload since the accept, or no destination to be read: the
		// general path takes the flow (and says why it fails).
		c, err := datapath.ConnOf(fd)
		if err != nil {
			s.metrics.errors.With("accept").Inc()
			s.log.Warn("accepted socket", "listener", l.cfg.Name, "client", client, "err", err)
			return
		}
		s.serve(l, c)
		return
	}
	// An early-SYN listener's capture may take dst too: the dial its SYN
	// started, if any, goes now, whatever becomes of the flow (as
	// transparent and refuseEarly do on the general path).
	s.dropEarly(l, st, client, dst)
	if len(st.policy.clients) > 0 && !st.policy.clientAllowed(client.Addr()) {
		s.metrics.refused.With(l.cfg.Name, "client_not_allowed").Inc()
		s.log.Debug("client not allowed", "listener", l.cfg.Name, "client", client)
		resetFD(fd)
		return
	}
	if reason := s.admit(client.Addr(), st.perClientExempt()); reason != "" {
		s.metrics.refused.With(l.cfg.Name, reason).Inc()
		resetFD(fd)
		return
	}
	s.metrics.plain.With(l.cfg.Name).Inc()
	f := &flow{listener: l.cfg.Name, l: l, client: client, start: time.Now().UnixNano(), endHandshake: noop}
	f.proto.Store(&st.cfg.Mode)
	s.register(f)
	if !l.flowStarted() {
		resetFD(fd)
		s.endFlow(f, datapath.Result{Reason: datapath.ReasonError, Err: errListenerClosed})
		s.flowDone(f)
		return
	}
	setLegFD(l, fd, rt.cfg.Legs.Client)
	if !l.nodelay {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1) // as Go's accept
	}
	f.dst.Store(&dst)
	if reason := refuseTransparent(l, st, self, dst); reason != "" {
		s.metrics.refused.With(f.listener, reason).Inc()
		resetFD(fd)
		s.endFlow(f, datapath.Result{Reason: datapath.ReasonError, Err: refusedError(reason)})
		s.flowDone(f)
		return
	}
	r := rt.match(f.listener, dst)
	f.route.Store(&r.name)
	server, err := s.connectFD(rt, dst, fd)
	if err != nil {
		// The client's handshake is done, so the only honest answer is a reset.
		resetFD(fd)
		reason := datapath.ReasonError
		if errors.Is(err, errClientGone) {
			reason = datapath.ReasonResetClient
		}
		s.endFlow(f, datapath.Result{Reason: reason, Err: err})
		s.flowDone(f)
		return
	}
	opt, done := s.flowOptions(f, rt)
	s.runFlow(f, datapath.NewFDs(fd, server, opt, done))
}

func noop() {}

// connectFD opens a plain flow's leg to dst, as connectLeg does a direct
// one's; the reset of client, the flow's accepted socket, ends it.
func (s *Server) connectFD(rt *runtime, dst netip.AddrPort, client int) (int, error) {
	if !s.beginConnect() {
		return -1, &connectError{kind: "resource", err: errors.New("too many connects in progress")}
	}
	defer s.endConnect()
	start := time.Now()
	fd, err := s.dialFD(rt, dst, rt.cfg.Legs.Server, client)
	s.countConnect("server", start, err)
	return fd, err
}

// dialFD connects a non-blocking socket to addr with leg's options, as
// dial does without early bytes. A connect the kernel has not finished
// when connect(2) returns (anything beyond the local host) waits in Go's
// poller, up to the connect timeout, or until the reset of client, the
// flow's accepted socket (-1: none) (waitConnect).
func (s *Server) dialFD(rt *runtime, addr netip.AddrPort, leg LegConfig, client int) (int, error) {
	family, network := unix.AF_INET, "tcp4"
	var sa unix.Sockaddr
	if addr.Addr().Is4() {
		sa = &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}
	} else {
		family, network = unix.AF_INET6, "tcp6"
		sa6 := &unix.SockaddrInet6{Port: int(addr.Port()), Addr: addr.Addr().As16()}
		if z := addr.Addr().Zone(); z != "" { // a link-local forward_to, [fe80::1%eth0]:80
			id, err := zoneID(z)
			if err != nil {
				return -1, classify(err)
			}
			sa6.ZoneId = id
		}
		sa = sa6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, classify(os.NewSyscallError("socket", err))
	}
	if o := leg.socketOptions(); o != (sockopt.Options{}) {
		if err := o.ApplyFD(fd, network); err != nil {
			unix.Close(fd)
			return -1, classify(err)
		}
	}
	switch err := unix.Connect(fd, sa); err {
	case nil:
	case unix.EINPROGRESS, unix.EINTR:
		if err := s.waitConnect(rt, fd, client); err != nil {
			unix.Close(fd)
			if errors.Is(err, errClientGone) {
				return -1, fmt.Errorf("connect to %s: %w", addr, err)
			}
			return -1, err
		}
	default:
		unix.Close(fd)
		return -1, classify(os.NewSyscallError("connect", err))
	}
	if s.selfConnected(fd, addr) {
		resetFD(fd) // no TIME_WAIT holding the port
		return -1, classify(os.NewSyscallError("connect", unix.ECONNREFUSED))
	}
	if leg.Congestion != "" {
		_ = sockopt.TuneFD(fd, leg.Congestion, 0, 0, false) // over the route's congctl, as dial does
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1) // as Go's dial
	return fd, nil
}

// selfConnected tells whether a connect to addr ended on the socket itself:
// a simultaneous open with itself, which the kernel completes when addr
// is one of the host's, nothing listens on its port, and that port, in
// the ephemeral range, is the one it picked as the source. The flow would
// then read back what it writes. Go's dialer checks every dial for it;
// the plain path checks only such destinations, with one getsockname.
func (s *Server) selfConnected(fd int, addr netip.AddrPort) bool {
	r, p := s.ephemeral.Load(), uint32(addr.Port())
	if p < r>>16 || p > r&0xffff {
		return false
	}
	a := addr.Addr().Unmap().WithZone("")
	if !a.IsLoopback() && !s.own.Load().has(a) {
		return false
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return false
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return sa.Port == int(p) && netip.AddrFrom4(sa.Addr) == a
	case *unix.SockaddrInet6:
		return sa.Port == int(p) && netip.AddrFrom16(sa.Addr).Unmap() == a
	}
	return false
}

// ephemeralRange reads net.ipv4.ip_local_port_range (IPv6 sockets take
// it too) as low<<16 | high; the kernel's default when unreadable.
func ephemeralRange() uint32 {
	lo, hi := 32768, 60999
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			l, err1 := strconv.Atoi(f[0])
			h, err2 := strconv.Atoi(f[1])
			if err1 == nil && err2 == nil && 0 < l && l <= h && h <= 65535 {
				lo, hi = l, h
			}
		}
	}
	return uint32(lo)<<16 | uint32(hi)
}

// zoneID is an IPv6 zone's interface index: a name (eth0) or a number.
func zoneID(zone string) (uint32, error) {
	if ifi, err := net.InterfaceByName(zone); err == nil {
		return uint32(ifi.Index), nil
	}
	n, err := strconv.ParseUint(zone, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("IPv6 zone %q: no such interface", zone)
	}
	return uint32(n), nil
}

// connected says whether a connect on fd has finished: done, with err
// set if it failed.
func connected(fd int) (done bool, err error) {
	// (syscall's getpeername: see acceptFD.)
	if _, err := syscall.Getpeername(fd); err == nil {
		return true, nil
	}
	if e, gerr := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); gerr != nil {
		return true, os.NewSyscallError("getsockopt", gerr)
	} else if e != 0 {
		return true, os.NewSyscallError("connect", syscall.Errno(e))
	}
	return false, nil
}

// waitConnect waits for a connect in progress on fd to finish, and says
// how it did; the caller closes fd on error. On loopback the kernel has
// finished the handshake by the time connect returns, so most local
// connects never wait.
//
// One wait in Go's poller watches the connect and client, the flow's
// accepted socket (when not -1), alike: an epoll set of the two, which
// the poller watches in turn. The client is in it for its errors and
// hang-ups only, which epoll always reports: its reset (both ways ended,
// or an error pending, as watchClient has it) ends the connect with
// errClientGone, while its bytes and a FIN alone wake nothing. Neither
// socket enters Go's poller, which the data path would have to take it
// out of again, and no goroutine watches the client.
func (s *Server) waitConnect(rt *runtime, fd, client int) error {
	if done, err := connected(fd); done {
		if err != nil {
			return classify(err)
		}
		return nil
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return classify(os.NewSyscallError("epoll_create1", err))
	}
	// Non-blocking, so that NewFile puts it into the poller; f owns ep.
	_, err = unix.FcntlInt(uintptr(ep), unix.F_SETFL, unix.O_NONBLOCK)
	f := os.NewFile(uintptr(ep), "connect")
	defer f.Close()
	if err != nil {
		return classify(os.NewSyscallError("fcntl", err))
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLOUT, Fd: int32(fd)}); err != nil {
		return classify(os.NewSyscallError("epoll_ctl", err))
	}
	if client >= 0 {
		// No events asked: EPOLLERR and EPOLLHUP come all the same.
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, client, &unix.EpollEvent{Fd: int32(client)}); err != nil {
			return classify(os.NewSyscallError("epoll_ctl", err))
		}
	}
	ctx, cancel := context.WithTimeout(s.flowCtx, rt.tunables.ConnectTimeout)
	defer cancel()
	dl, _ := ctx.Deadline()
	_ = f.SetReadDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = f.SetReadDeadline(longAgo) })
	defer stop()
	rc, err := f.SyscallConn()
	if err != nil {
		return classify(err)
	}
	var done, gone bool
	var cerr error
	err = rc.Read(func(uintptr) bool {
		var evs [2]unix.EpollEvent
		n, err := unix.EpollWait(ep, evs[:], 0)
		for err == unix.EINTR {
			n, err = unix.EpollWait(ep, evs[:], 0)
		}
		for _, ev := range evs[:max(n, 0)] {
			if int(ev.Fd) == client {
				gone = true
			} else {
				done, cerr = connected(fd)
			}
		}
		return done || gone
	})
	switch {
	case done && cerr == nil:
		return nil // a reset that came with it ends the flow in the data path
	case gone:
		return errClientGone // no verdict on the destination
	case done:
		return classify(cerr)
	case ctx.Err() != nil:
		return classify(context.Cause(ctx))
	}
	return classify(err)
}

// setLegFD applies a leg's settings to an accepted socket of l, as
// setLeg does to a connection.
func setLegFD(l *listener, fd int, leg LegConfig) {
	if leg.Congestion != "" || leg.SendBuffer > 0 || leg.ReceiveBuffer > 0 || leg.Pacing {
		_ = sockopt.TuneFD(fd, leg.Congestion, int(leg.SendBuffer), int(leg.ReceiveBuffer), leg.Pacing)
	}
	if int64(leg.Keepalive.D()) != l.keepalive.Load() {
		_ = sockopt.SetKeepaliveFD(fd, leg.keepaliveConfig())
	}
	if leg.UserTimeout > 0 {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(leg.UserTimeout.D()/time.Millisecond))
	}
	if leg.RTOMin > 0 {
		_ = sockopt.SetRTOMinFD(fd, leg.RTOMin.D()) // an MPTCP socket refuses it: subflows get it (Subflows)
	}
	if leg.ThinTimeouts {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_THIN_LINEAR_TIMEOUTS, 1) // as RTOMin
	}
}

// resetFD aborts a connection with RST.
func resetFD(fd int) {
	_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
	unix.Close(fd)
}
