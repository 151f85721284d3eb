// Package sockopt sets the TCP socket options a relay needs — TCP Fast
// Open on both sides, transparent sockets, keepalive and user timeouts —
// and reads what the kernel knows about a connection: the original
// destination of a redirected flow, TCP_INFO, establishment of a Fast Open
// connect. Options apply through net.Dialer.Control and
// net.ListenConfig.Control, so connections stay plain *net.TCPConn.
// Subflows gives the subflows of Multipath TCP connections the options
// their MPTCP sockets refuse, set on the listening subflow by a BPF TCP
// socket iterator.
//
//	d := net.Dialer{Control: sockopt.Options{FastOpenConnect: true}.Control}
//	c, err := d.DialContext(ctx, "tcp", next)
package sockopt

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
	"unsafe"

	"golang.org/x/sys/unix"
)

// Options are set on a socket before it connects or listens.
type Options struct {
	// FastOpenConnect defers the SYN to the first write, which it carries
	// (TCP_FASTOPEN_CONNECT): 0-RTT to a peer whose cookie is cached.
	FastOpenConnect bool
	// FastOpenQueue > 0 accepts Fast Open SYNs on a listener (TCP_FASTOPEN);
	// the namespace's net.ipv4.tcp_fastopen must have the server bit (2).
	FastOpenQueue int
	// Transparent lets a socket accept or originate flows for addresses the
	// host does not own (IP_TRANSPARENT, for TPROXY).
	Transparent bool
	// UserTimeout bounds how long sent data may stay unacknowledged.
	UserTimeout time.Duration
	// RTOMin lowers the minimum retransmission timeout (TCP_RTO_MIN_US,
	// Linux 6.15), 0 keeps the namespace's net.ipv4.tcp_rto_min_us. It
	// also shortens the tail-loss probe of a lone unacknowledged segment:
	// a lost one waits about a round trip plus this minimum.
	RTOMin time.Duration
	// ThinTimeouts keeps the retransmission timeout from doubling while a
	// stream is thin, fewer than 4 segments in flight
	// (TCP_THIN_LINEAR_TIMEOUTS, for its first 6 retransmissions): a lost
	// retransmission of an interactive message costs one more timeout,
	// not two.
	ThinTimeouts bool
	// Mark sets SO_MARK (0: unset), for policy routing of the relay's own legs.
	Mark int
	// Congestion sets the congestion control (TCP_CONGESTION) before the
	// SYN, so the handshake already runs it; empty keeps the default. A
	// route that names one (ip route … congctl) replaces it as the SYN
	// goes: Tune sets it again once connected.
	Congestion string
	// SendBuffer and ReceiveBuffer > 0 fix the socket buffers, beyond
	// net.core.[rw]mem_max (SO_SNDBUFFORCE, SO_RCVBUFFORCE: CAP_NET_ADMIN).
	// Set before connect, the receive buffer also sizes the window scale.
	SendBuffer, ReceiveBuffer int
	// Pacing turns on TCP's own pacing: each window goes out spread over the
	// round trip instead of in one burst (it sets SO_MAX_PACING_RATE, which
	// the kernel paces by itself when no fq qdisc does).
	Pacing bool
}

// Control applies the options; it fits net.Dialer.Control and
// net.ListenConfig.Control.
func (o Options) Control(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = o.ApplyFD(int(fd), network)
	})
	if err != nil {
		return err
	}
	return serr
}

// ApplyFD applies the options to a socket descriptor of network (tcp4 or
// tcp6) before its connect.
func (o Options) ApplyFD(fd int, network string) error {
	set := func(level, opt, val int, name string) error {
		if err := unix.SetsockoptInt(fd, level, opt, val); err != nil {
			return fmt.Errorf("setsockopt %s: %w", name, err)
		}
		return nil
	}
	if o.FastOpenConnect {
		if err := set(unix.IPPROTO_TCP, unix.TCP_FASTOPEN_CONNECT, 1, "TCP_FASTOPEN_CONNECT"); err != nil {
			return err
		}
	}
	if o.FastOpenQueue > 0 {
		if err := set(unix.IPPROTO_TCP, unix.TCP_FASTOPEN, o.FastOpenQueue, "TCP_FASTOPEN"); err != nil {
			return err
		}
	}
	if o.Transparent {
		if network == "tcp6" {
			if err := set(unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1, "IPV6_TRANSPARENT"); err != nil {
				return err
			}
		}
		// A dual-stack tcp6 socket serves IPv4 too, which needs the IPv4 flag.
		if err := set(unix.SOL_IP, unix.IP_TRANSPARENT, 1, "IP_TRANSPARENT"); err != nil && network != "tcp6" {
			return err
		}
	}
	if o.UserTimeout > 0 {
		if err := set(unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(o.UserTimeout/time.Millisecond), "TCP_USER_TIMEOUT"); err != nil {
			return err
		}
	}
	if o.RTOMin > 0 {
		if err := SetRTOMinFD(fd, o.RTOMin); err != nil {
			return err
		}
	}
	if o.ThinTimeouts {
		if err := set(unix.IPPROTO_TCP, unix.TCP_THIN_LINEAR_TIMEOUTS, 1, "TCP_THIN_LINEAR_TIMEOUTS"); err != nil {
			return err
		}
	}
	if o.Mark != 0 {
		if err := set(unix.SOL_SOCKET, unix.SO_MARK, o.Mark, "SO_MARK"); err != nil {
			return err
		}
	}
	return TuneFD(fd, o.Congestion, o.SendBuffer, o.ReceiveBuffer, o.Pacing)
}

// Tune sets congestion control, buffer sizes and pacing on a connected
// (or listening) socket, as Options does before a connect; empty, 0 or
// false leaves a setting alone.
func Tune(c syscall.Conn, congestion string, sendBuf, recvBuf int, pacing bool) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = TuneFD(int(fd), congestion, sendBuf, recvBuf, pacing) }); err != nil {
		return err
	}
	return serr
}

// pacingCap is the SO_MAX_PACING_RATE that turns pacing on without
// limiting it: 1 TB/s (the "unlimited" value, ~0, would leave it off).
const pacingCap = 1 << 40

// TuneFD is Tune for a socket descriptor. It tries every setting and
// reports all that failed: an MPTCP socket refuses SO_MAX_PACING_RATE but
// takes the rest.
func TuneFD(fd int, congestion string, sendBuf, recvBuf int, pacing bool) error {
	var errs []error
	if pacing {
		if err := unix.SetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_MAX_PACING_RATE, pacingCap); err != nil {
			errs = append(errs, fmt.Errorf("setsockopt SO_MAX_PACING_RATE: %w", err))
		}
	}
	if congestion != "" {
		if err := unix.SetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION, congestion); err != nil {
			errs = append(errs, fmt.Errorf("setsockopt TCP_CONGESTION %s: %w", congestion, err))
		}
	}
	for _, b := range []struct {
		opt, size int
		name      string
	}{{unix.SO_SNDBUFFORCE, sendBuf, "SO_SNDBUFFORCE"}, {unix.SO_RCVBUFFORCE, recvBuf, "SO_RCVBUFFORCE"}} {
		if b.size > 0 {
			// The kernel doubles the value for its bookkeeping.
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, b.opt, b.size/2); err != nil {
				errs = append(errs, fmt.Errorf("setsockopt %s: %w", b.name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// Congestion reads a socket's congestion control.
func Congestion(c *net.TCPConn) (string, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return "", err
	}
	var name string
	var serr error
	if err := rc.Control(func(fd uintptr) { name, serr = unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION) }); err != nil {
		return "", err
	}
	return name, serr
}

// CongestionUsable's answers: a congestion control the kernel does not
// have, nor a module of that name, and one it has but this process may
// not choose.
var (
	ErrCongestionNotAvailable = errors.New("not available here (see net.ipv4.tcp_available_congestion_control)")
	ErrCongestionNotAllowed   = errors.New("not in net.ipv4.tcp_allowed_congestion_control, and the process lacks CAP_NET_ADMIN")
)

// CongestionUsable tells whether this process's sockets may run a
// congestion control, by setting it on a socket of its own: the kernel
// loads its module when the process has CAP_NET_ADMIN, and without that
// capability takes only those of net.ipv4.tcp_allowed_congestion_control
// (ErrCongestionNotAllowed). A name the kernel does not know is
// ErrCongestionNotAvailable.
func CongestionUsable(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	switch err := unix.SetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION, name); {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENOENT):
		return ErrCongestionNotAvailable
	case errors.Is(err, unix.EPERM):
		return ErrCongestionNotAllowed
	default:
		return fmt.Errorf("setsockopt TCP_CONGESTION %s: %w", name, err)
	}
}

// SetRTOMinFD sets a socket's minimum retransmission timeout
// (TCP_RTO_MIN_US). The kernel takes 2 clock ticks to 200 ms; an accepted
// socket inherits its listener's.
func SetRTOMinFD(fd int, d time.Duration) error {
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_RTO_MIN_US, int(d/time.Microsecond)); err != nil {
		return fmt.Errorf("setsockopt TCP_RTO_MIN_US %v: %w", d, err)
	}
	return nil
}

// NamespaceRTOMin reads the calling thread's network namespace's
// net.ipv4.tcp_rto_min_us, the minimum RTO its new sockets take; 0 when
// it cannot be read (before Linux 6.11).
func NamespaceRTOMin() time.Duration {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_rto_min_us")
	if err != nil {
		return 0
	}
	us, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || us <= 0 {
		return 0
	}
	return time.Duration(us) * time.Microsecond
}

// RTOMinFD reads a socket's minimum retransmission timeout.
func RTOMinFD(fd int) (time.Duration, error) {
	us, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_RTO_MIN_US)
	if err != nil {
		return 0, fmt.Errorf("getsockopt TCP_RTO_MIN_US: %w", err)
	}
	return time.Duration(us) * time.Microsecond, nil
}

// Refused lists which of the options o a new socket of this kernel
// refuses, a Multipath TCP socket if mptcp, as "OPTION: error". MPTCP
// sockets take fewer options than TCP ones: in Linux 6.18 they refuse
// TCP_USER_TIMEOUT, SO_MAX_PACING_RATE, TCP_RTO_MIN_US and
// TCP_THIN_LINEAR_TIMEOUTS (Subflows sets them on the subflows). Options that
// need privileges or other sockets (transparency, Fast Open) are not
// tried; an error making the socket is returned as such.
func Refused(o Options, mptcp bool) ([]string, error) {
	proto := unix.IPPROTO_TCP
	if mptcp {
		proto = unix.IPPROTO_MPTCP
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	var refused []string
	try := func(name string, err error) {
		if err != nil {
			refused = append(refused, name+": "+err.Error())
		}
	}
	if o.UserTimeout > 0 {
		try("TCP_USER_TIMEOUT", unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(o.UserTimeout/time.Millisecond)))
	}
	if o.RTOMin > 0 {
		try("TCP_RTO_MIN_US", unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_RTO_MIN_US, int(o.RTOMin/time.Microsecond)))
	}
	if o.ThinTimeouts {
		try("TCP_THIN_LINEAR_TIMEOUTS", unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_THIN_LINEAR_TIMEOUTS, 1))
	}
	if o.Pacing {
		try("SO_MAX_PACING_RATE", unix.SetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_MAX_PACING_RATE, pacingCap))
	}
	return refused, nil
}

// ForceBuffers tells whether this process may fix socket buffers beyond
// net.core.[rw]mem_max (SO_SNDBUFFORCE, SO_RCVBUFFORCE), which takes
// CAP_NET_ADMIN: without it every socket given a buffer fails.
func ForceBuffers() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	for _, b := range []struct {
		opt  int
		name string
	}{{unix.SO_SNDBUFFORCE, "SO_SNDBUFFORCE"}, {unix.SO_RCVBUFFORCE, "SO_RCVBUFFORCE"}} {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, b.opt, 64<<10); err != nil {
			return fmt.Errorf("%s: %w", b.name, err)
		}
	}
	return nil
}

// SetUserTimeout sets TCP_USER_TIMEOUT on a connected socket.
func SetUserTimeout(c *net.TCPConn, d time.Duration) error {
	return setInt(c, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d/time.Millisecond), "TCP_USER_TIMEOUT")
}

func setInt(c *net.TCPConn, level, opt, val int, name string) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), level, opt, val) }); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("setsockopt %s: %w", name, serr)
	}
	return nil
}

// OriginalDst is where a flow redirected by iptables/nftables REDIRECT was
// going (SO_ORIGINAL_DST).
func OriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	la, _ := c.LocalAddr().(*net.TCPAddr)
	var ap netip.AddrPort
	var serr error
	if err := rc.Control(func(fd uintptr) { ap, serr = OriginalDstFD(int(fd), la != nil && la.IP.To4() == nil) }); err != nil {
		return netip.AddrPort{}, err
	}
	return ap, serr
}

// OriginalDstFD is OriginalDst for a socket descriptor; v6 says its
// local address is IPv6 (not IPv4-mapped).
func OriginalDstFD(fd int, v6 bool) (netip.AddrPort, error) {
	var e unix.Errno
	var ap netip.AddrPort
	if v6 {
		var sa unix.RawSockaddrInet6
		l := uint32(unsafe.Sizeof(sa))
		// IP6T_SO_ORIGINAL_DST has the same value, 80, at level SOL_IPV6.
		_, _, e = unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_IPV6, 80, uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l)), 0)
		ap = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port>>8|sa.Port<<8))
	} else {
		var sa unix.RawSockaddrInet4
		l := uint32(unsafe.Sizeof(sa))
		_, _, e = unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_IP, 80, uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l)), 0)
		ap = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port>>8|sa.Port<<8))
	}
	if e != 0 {
		return netip.AddrPort{}, fmt.Errorf("getsockopt SO_ORIGINAL_DST: %w", e)
	}
	return ap, nil
}

// Info reads TCP_INFO.
func Info(c *net.TCPConn) (*unix.TCPInfo, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var info *unix.TCPInfo
	var serr error
	if err := rc.Control(func(fd uintptr) { info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
		return nil, err
	}
	return info, serr
}

// tcpiOptSynData is TCPI_OPT_SYN_DATA (linux/tcp.h), which x/sys lacks.
const tcpiOptSynData = 0x20

// SYNData tells whether an accepted connection's SYN carried data (Fast
// Open). On a connection that dialed with Fast Open it says the server
// acknowledged that data.
func SYNData(c *net.TCPConn) bool {
	info, err := Info(c)
	return err == nil && info.Options&tcpiOptSynData != 0
}

// ErrNotEstablished is returned when a connect ends in another state.
var ErrNotEstablished = errors.New("connection not established")

// WaitEstablished waits until a Fast Open connect, whose Dial returned
// before the handshake, is established or has failed. It returns the
// connect's error (e.g. ECONNREFUSED) when it failed.
func WaitEstablished(ctx context.Context, c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetWriteDeadline(dl)
		defer c.SetWriteDeadline(time.Time{})
	}
	var serr error
	err = rc.Write(func(fd uintptr) bool {
		if e, gerr := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); gerr == nil && e != 0 {
			serr = syscall.Errno(e)
			return true
		}
		info, gerr := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if gerr != nil {
			serr = gerr
			return true
		}
		switch info.State {
		case unix.BPF_TCP_SYN_SENT:
			return false // writable only once the handshake ends
		case unix.BPF_TCP_ESTABLISHED, unix.BPF_TCP_CLOSE_WAIT:
			return true
		}
		serr = fmt.Errorf("%w (state %d)", ErrNotEstablished, info.State)
		return true
	})
	if err != nil {
		return err
	}
	return serr
}

// MPTCPState is what the kernel says of a connection's Multipath TCP.
type MPTCPState struct {
	Requested bool // the socket is an MPTCP socket
	Active    bool // MPTCP was negotiated; false after a fallback to TCP
	Subflows  int  // subflows up, the first included (0 when not active)
}

const (
	solMPTCP  = 284 // SOL_MPTCP
	mptcpInfo = 1   // MPTCP_INFO
	// struct mptcp_info: its size in Linux 6.10 and later, and the
	// offset of mptcpi_subflows_total (Linux 6.8).
	mptcpInfoSize    = 96
	subflowsTotalOff = 80
)

// MPTCP reads a connection's MPTCP state (MPTCP_INFO).
func MPTCP(c *net.TCPConn) (MPTCPState, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return MPTCPState{}, err
	}
	var st MPTCPState
	var serr error
	err = rc.Control(func(fd uintptr) {
		proto, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL)
		if err != nil {
			serr = err
			return
		}
		if st.Requested = proto == unix.IPPROTO_MPTCP; !st.Requested {
			return
		}
		var info [mptcpInfoSize]byte
		l := uint32(len(info))
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, solMPTCP, mptcpInfo, uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&l)), 0)
		switch e {
		case 0:
			st.Active = true
			// mptcpi_subflows counts the extra subflows the path manager
			// made or accepted, and nothing else: not the first subflow,
			// which it keeps counting once that has closed (its path
			// gone) while the others carry the connection.
			// mptcpi_subflows_total (Linux 6.8) counts the first only
			// while it is open.
			if l > subflowsTotalOff {
				st.Subflows = int(info[subflowsTotalOff])
			} else {
				st.Subflows = int(info[0]) + 1
			}
		case unix.EOPNOTSUPP, unix.ENOPROTOOPT: // fallen back to TCP
		default:
			serr = fmt.Errorf("getsockopt MPTCP_INFO: %w", e)
		}
	})
	if err != nil {
		return MPTCPState{}, err
	}
	return st, serr
}

// SetListenerKeepalive sets keepalive (idle time and interval d, count
// probes; d == 0 turns it off) on a listening socket. Linux copies it to
// every connection the socket accepts, so they need no setsockopt of their
// own. (TCP_USER_TIMEOUT cannot be set on a listening socket here.)
func SetListenerKeepalive(ln *net.TCPListener, d time.Duration, count int) error {
	rc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = SetKeepaliveFD(int(fd), net.KeepAliveConfig{Enable: d > 0, Idle: d, Interval: d, Count: count})
	}); err != nil {
		return err
	}
	return serr
}

// SetKeepaliveFD is net.TCPConn.SetKeepAliveConfig for a socket
// descriptor: times are rounded up to whole seconds, as Go does, and a
// value of 0 or less leaves that setting alone.
func SetKeepaliveFD(fd int, ka net.KeepAliveConfig) error {
	set := func(level, opt, v int, name string) error {
		if err := unix.SetsockoptInt(fd, level, opt, v); err != nil {
			return fmt.Errorf("setsockopt %s: %w", name, err)
		}
		return nil
	}
	secs := func(d time.Duration) int { return int((d + time.Second - 1) / time.Second) }
	if ka.Enable {
		for _, o := range [...]struct {
			opt, v int
			name   string
		}{
			{unix.TCP_KEEPIDLE, secs(ka.Idle), "TCP_KEEPIDLE"},
			{unix.TCP_KEEPINTVL, secs(ka.Interval), "TCP_KEEPINTVL"},
			{unix.TCP_KEEPCNT, ka.Count, "TCP_KEEPCNT"},
		} {
			if o.v > 0 {
				if err := set(unix.IPPROTO_TCP, o.opt, o.v, o.name); err != nil {
					return err
				}
			}
		}
	}
	on := 0
	if ka.Enable {
		on = 1
	}
	return set(unix.SOL_SOCKET, unix.SO_KEEPALIVE, on, "SO_KEEPALIVE")
}

// Keepalive reads a connection's keepalive settings: whether on, idle
// and interval (seconds), probes, and TCP_USER_TIMEOUT (ms).
func Keepalive(c *net.TCPConn) (on bool, idle, intvl, count, userTimeoutMS int, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	cerr := rc.Control(func(fd uintptr) {
		var v int
		if v, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE); err != nil {
			return
		}
		on = v != 0
		if idle, err = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE); err != nil {
			return
		}
		if intvl, err = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPINTVL); err != nil {
			return
		}
		if count, err = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPCNT); err != nil {
			return
		}
		userTimeoutMS, err = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
	})
	if err == nil {
		err = cerr
	}
	return
}
