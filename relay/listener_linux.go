package relay

import (
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// listensMPTCP tells whether a listening socket is MPTCP's.
func listensMPTCP(ln *net.TCPListener) bool {
	rc, err := ln.SyscallConn()
	if err != nil {
		return false
	}
	proto := 0
	_ = rc.Control(func(fd uintptr) { proto, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL) })
	return proto == unix.IPPROTO_MPTCP
}

// setNoDelay sets TCP_NODELAY on a listening socket, for the connections
// it accepts to inherit.
func setNoDelay(ln *net.TCPListener) error {
	rc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return os.NewSyscallError("setsockopt TCP_NODELAY", serr)
	}
	return nil
}
