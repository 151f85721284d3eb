package relay

import (
	"fmt"
	"net"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"

	"halfway/sockopt"
)

// An inherited socket is a listening socket a service manager opened and
// passed to the relay (systemd socket activation: a .socket unit with
// ListenStream=). The manager keeps it open across restarts of the
// relay, so connections that arrive while the relay restarts wait in its
// accept queue instead of being refused.
type inherited struct {
	file  *os.File
	mptcp bool
}

// Inherit hands the relay listening sockets that a service manager
// opened: the listener configured at a socket's address (its listen, as
// bound: 0.0.0.0:1080 is not 10.0.0.1:1080) takes it instead of opening
// its own, at start and on every reload that replaces the listener's
// socket. Call it before Run. A socket that is not a listening TCP or
// MPTCP stream, or an IPv6 one that takes IPv4 too (BindIPv6Only=both),
// is an error; one at an address where no listener is configured stays
// unused (and each start and reload says so) until a reload adds one.
func (s *Server) Inherit(files []*os.File) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inherited == nil {
		s.inherited = map[netip.AddrPort]inherited{}
		s.inheritedFixed = map[netip.AddrPort]bool{}
		s.inheritedSubflows = map[netip.AddrPort]*sockopt.SubflowOptions{}
	}
	for _, f := range files {
		ap, in, err := inspectListening(f)
		if err != nil {
			return fmt.Errorf("socket %q passed by the service manager (fd %d): %w", f.Name(), f.Fd(), err)
		}
		if _, dup := s.inherited[ap]; dup {
			return fmt.Errorf("socket %q passed by the service manager (fd %d): a second socket at %s", f.Name(), f.Fd(), ap)
		}
		s.inherited[ap] = in
	}
	return nil
}

// warnUnusedInherited says which inherited sockets no listener of cfg
// takes: their clients wait in the queue until they give up, as the
// manager keeps the sockets open. Under s.mu.
func (s *Server) warnUnusedInherited(cfg *Config) {
	for ap, in := range s.inherited {
		used := false
		for _, lc := range cfg.Listeners {
			if lap, _ := netip.ParseAddrPort(lc.Listen); lap == ap {
				used = true
			}
		}
		if !used {
			s.log.Warn("a socket passed by the service manager matches no listener's listen address: its clients wait unserved until a listener listens there", "addr", ap.String(), "name", in.file.Name())
		}
	}
}

// inspectListening checks that f is a listening stream socket of IPv4 or
// IPv6 only, and returns its address.
func inspectListening(f *os.File) (netip.AddrPort, inherited, error) {
	fd := int(f.Fd())
	get := func(level, opt int, name string) (int, error) {
		v, err := unix.GetsockoptInt(fd, level, opt)
		if err != nil {
			return 0, fmt.Errorf("getsockopt %s: %w", name, err)
		}
		return v, nil
	}
	typ, err := get(unix.SOL_SOCKET, unix.SO_TYPE, "SO_TYPE")
	if err != nil {
		return netip.AddrPort{}, inherited{}, err
	}
	listening, err := get(unix.SOL_SOCKET, unix.SO_ACCEPTCONN, "SO_ACCEPTCONN")
	if err != nil {
		return netip.AddrPort{}, inherited{}, err
	}
	if typ != unix.SOCK_STREAM || listening == 0 {
		return netip.AddrPort{}, inherited{}, fmt.Errorf("not a listening stream socket: use ListenStream= in the .socket unit, without Accept=yes")
	}
	proto, err := get(unix.SOL_SOCKET, unix.SO_PROTOCOL, "SO_PROTOCOL")
	if err != nil {
		return netip.AddrPort{}, inherited{}, err
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return netip.AddrPort{}, inherited{}, fmt.Errorf("getsockname: %w", err)
	}
	var ap netip.AddrPort
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		ap = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		only, err := get(unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, "IPV6_V6ONLY")
		if err != nil {
			return netip.AddrPort{}, inherited{}, err
		}
		if only == 0 {
			// A relay's tcp6 listener takes IPv6 only; IPv4 clients would
			// come as ::ffff:a.b.c.d, past IPv4 allow lists and capture.
			return netip.AddrPort{}, inherited{}, fmt.Errorf("[%s]:%d takes IPv4 too: set BindIPv6Only=ipv6-only in the .socket unit, and a socket of its own for IPv4", net.IP(sa.Addr[:]), sa.Port)
		}
		a := netip.AddrFrom16(sa.Addr)
		if sa.ZoneId != 0 {
			if ifi, err := net.InterfaceByIndex(int(sa.ZoneId)); err == nil {
				a = a.WithZone(ifi.Name)
			}
		}
		ap = netip.AddrPortFrom(a, uint16(sa.Port))
	default:
		return netip.AddrPort{}, inherited{}, fmt.Errorf("not an IPv4 or IPv6 socket (%T)", sa)
	}
	if proto != unix.IPPROTO_TCP && proto != unix.IPPROTO_MPTCP {
		return netip.AddrPort{}, inherited{}, fmt.Errorf("%s: protocol %d, neither TCP nor MPTCP", ap, proto)
	}
	return ap, inherited{file: f, mptcp: proto == unix.IPPROTO_MPTCP}, nil
}

// listenInherited returns a listener on a duplicate of the inherited
// socket at ap, set up as opts says (what a socket of the listener's own
// would have been given before its bind), or nil when none was inherited
// there. The same socket serves every configuration a reload gives the
// listener: IP_TRANSPARENT and the Fast Open queue are cleared when no
// longer asked for, but a receive buffer once fixed stays fixed (the
// kernel has no way back to autotuning). The options an MPTCP socket's
// listening subflow was given pass to the next listener on it (reset when
// that one wants none); those a relay that ran before gave it stay.
func (s *Server) listenInherited(lc *ListenerConfig, ap netip.AddrPort, transparent bool, fastOpenQueue, rcvbuf int) (*net.TCPListener, error) {
	in, ok := s.inherited[ap]
	if !ok {
		return nil, nil
	}
	if in.mptcp != lc.MPTCP {
		want, got := "TCP (SocketProtocol= unset)", "MPTCP"
		if lc.MPTCP {
			want, got = "MPTCP (SocketProtocol=mptcp)", "TCP"
		}
		return nil, fmt.Errorf("the socket passed by the service manager at %s is %s; this listener's mptcp setting needs %s", ap, got, want)
	}
	fl, err := net.FileListener(in.file)
	if err != nil {
		return nil, fmt.Errorf("the socket passed by the service manager at %s: %w", ap, err)
	}
	ln := fl.(*net.TCPListener)
	rc, err := ln.SyscallConn()
	if err != nil {
		ln.Close()
		return nil, err
	}
	var serr error
	set := func(fd, level, opt, val int, name string) {
		if serr == nil {
			if err := unix.SetsockoptInt(fd, level, opt, val); err != nil {
				serr = fmt.Errorf("setsockopt %s: %w", name, err)
			}
		}
	}
	err = rc.Control(func(fd uintptr) {
		on := 0
		if transparent {
			on = 1
		}
		if ap.Addr().Is6() {
			set(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, on, "IPV6_TRANSPARENT")
		} else {
			set(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, on, "IP_TRANSPARENT")
		}
		// Only a change: kernels before 6.2 refuse TCP_FASTOPEN on MPTCP
		// sockets (both ways), which take no Fast Open queue anyway.
		if q, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_FASTOPEN); err == nil && q != fastOpenQueue || err != nil && fastOpenQueue > 0 {
			set(int(fd), unix.IPPROTO_TCP, unix.TCP_FASTOPEN, fastOpenQueue, "TCP_FASTOPEN")
		}
		if serr == nil && rcvbuf > 0 {
			serr = sockopt.TuneFD(int(fd), "", 0, rcvbuf, false)
			s.inheritedFixed[ap] = true
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("the socket passed by the service manager at %s: %w", ap, err)
	}
	if rcvbuf == 0 && s.inheritedFixed[ap] {
		s.log.Warn("the socket passed by the service manager keeps the fixed receive buffer set before, and its connections theirs: restart its .socket unit for autotuning", "listener", lc.Name, "addr", ap.String())
	}
	return ln, nil
}
