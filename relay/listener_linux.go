package relay

import (
	"net"

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
