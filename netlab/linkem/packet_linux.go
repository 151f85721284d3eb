package linkem

import (
	"fmt"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sockBufBytes sizes the kernel buffers of each wire socket: a burst from a
// fast sender must wait in the shaper's queue, not be dropped by the kernel.
var sockBufBytes = 64 << 20 // a variable for the tests

// packetSock is an AF_PACKET socket bound to one veth end, carrying frames
// with their virtio_net_hdr so GSO super-frames and partial checksums pass
// through unchanged.
type packetSock struct {
	name string
	f    *os.File
	rc   syscall.RawConn

	// recvmsg and write state, and the callbacks that use it, made once so
	// that a packet allocates nothing.
	iov    unix.Iovec
	msg    unix.Msghdr
	oob    []byte
	n      int
	rerrno syscall.Errno // the reader's
	// wake is the wire's eventfd, readable once it closes; the reader
	// waits in ppoll on it and the socket (see readFn).
	wake   int32
	pfds   [2]unix.PollFd
	werrno syscall.Errno // the writer's: another goroutine
	wbuf   []byte
	readFn func(fd uintptr) bool
	sendFn func(fd uintptr) bool
}

func openPacketSock(ifname string) (*packetSock, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("wire %s: %w", ifname, err)
	}
	// Protocol 0 receives nothing until bind, so no frame of another
	// interface slips in between socket and bind.
	// A blocking socket: os.NewFile keeps it out of the runtime's poller,
	// which would otherwise wake for every frame with nobody waiting (the
	// reader waits in ppoll, see readFn), and the writer, on a thread of
	// its own, may block.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("wire %s: socket: %w", ifname, err)
	}
	opts := []struct {
		level, opt, val int
		name            string
	}{
		{unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1, "PACKET_VNET_HDR"},
		// Our own writes on this end must not be read back as arrivals.
		{unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1, "PACKET_IGNORE_OUTGOING"},
		{unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, sockBufBytes, "SO_RCVBUFFORCE"},
		{unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sockBufBytes, "SO_SNDBUFFORCE"},
		// Arrival time is taken by the kernel, so a late reader does not add delay.
		{unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1, "SO_TIMESTAMPNS"},
	}
	for _, o := range opts {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.val); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("wire %s: setsockopt %s: %w", ifname, o.name, err)
		}
	}
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("wire %s: bind: %w", ifname, err)
	}
	mreq := &unix.PacketMreq{Ifindex: int32(ifi.Index), Type: unix.PACKET_MR_PROMISC}
	if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, mreq); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("wire %s: promiscuous: %w", ifname, err)
	}
	f := os.NewFile(uintptr(fd), "wire-"+ifname)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("wire %s: %w", ifname, err)
	}
	s := &packetSock{name: ifname, f: f, rc: rc, oob: make([]byte, unix.CmsgSpace(int(unsafe.Sizeof(unix.Timespec{}))))}
	s.msg.Iov = &s.iov
	s.msg.Iovlen = 1
	// The reader waits for frames in ppoll on its own thread, not in the
	// runtime's poller: woken there, it would run only once a thread of
	// the runtime's (an ordinary one) got to it, and on a machine busy with
	// its realtime writers that took tens of milliseconds. It runs inside
	// rc.Read, which holds the descriptor open until it has seen wake.
	s.readFn = func(fd uintptr) bool {
		for {
			r, _, e := unix.Syscall(unix.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&s.msg)), unix.MSG_TRUNC|unix.MSG_DONTWAIT)
			if e != unix.EAGAIN {
				s.n, s.rerrno = int(r), e
				return true
			}
			s.pfds = [2]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}, {Fd: s.wake, Events: unix.POLLIN}}
			if _, err := unix.Ppoll(s.pfds[:], nil, nil); err != nil && err != unix.EINTR {
				s.n, s.rerrno = 0, unix.EIO
				if en, ok := err.(syscall.Errno); ok {
					s.rerrno = en
				}
				return true
			}
			if s.pfds[1].Revents != 0 {
				s.n, s.rerrno = 0, unix.ESHUTDOWN // closing: the reader returns
				return true
			}
		}
	}
	s.sendFn = func(fd uintptr) bool {
		_, _, e := unix.Syscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&s.wbuf[0])), uintptr(len(s.wbuf)))
		s.werrno = e
		return e != unix.EAGAIN
	}
	return s, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// recv reads one frame (with its vnet header) into buf. It returns the
// frame's length, which exceeds len(buf) if it was truncated, and the
// kernel's receive time in CLOCK_REALTIME nanoseconds (0 if absent).
func (s *packetSock) recv(buf []byte) (n int, rtime int64, err error) {
	s.iov.Base = &buf[0]
	s.iov.SetLen(len(buf))
	s.msg.Control = &s.oob[0]
	s.msg.SetControllen(len(s.oob))
	if err := s.rc.Read(s.readFn); err != nil {
		return 0, 0, err
	}
	if s.rerrno != 0 {
		return 0, 0, fmt.Errorf("wire %s: recvmsg: %w", s.name, s.rerrno)
	}
	n = s.n
	if int(s.msg.Controllen) >= unix.CmsgSpace(int(unsafe.Sizeof(unix.Timespec{}))) {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&s.oob[0]))
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SO_TIMESTAMPNS {
			ts := (*unix.Timespec)(unsafe.Pointer(&s.oob[unix.CmsgLen(0)]))
			rtime = ts.Nano()
		}
	}
	return n, rtime, nil
}

// send writes one frame (with its vnet header). Only the writer of the
// other direction calls it, so wbuf is not shared.
func (s *packetSock) send(b []byte) error {
	s.wbuf = b
	err := s.rc.Write(s.sendFn)
	s.wbuf = nil
	if err != nil {
		return err
	}
	if s.werrno != 0 {
		return fmt.Errorf("wire %s: write: %w", s.name, s.werrno)
	}
	return nil
}

func (s *packetSock) close() error { return s.f.Close() }

// kernelDrops is how many frames the kernel dropped for want of room in
// the socket's receive buffer since it was last asked (PACKET_STATISTICS
// resets as it is read).
func (p *packetSock) kernelDrops() uint64 {
	var drops uint64
	_ = p.rc.Control(func(fd uintptr) {
		if st, err := unix.GetsockoptTpacketStats(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
			drops = uint64(st.Drops)
		}
	})
	return drops
}
