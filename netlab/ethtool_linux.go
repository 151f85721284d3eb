package netlab

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// setGRO turns generic receive offload on for an interface of the calling
// thread's namespace. A veth with GRO receives through NAPI and coalesces
// the MTU-sized packets a shaped wire delivers, as a real NIC would, so the
// receiving host does not spend a core on per-packet TCP processing.
func setGRO(ifname string, on bool) error {
	const ethtoolSGRO = 0x2c
	val := struct{ cmd, data uint32 }{ethtoolSGRO, 0}
	if on {
		val.data = 1
	}
	var ifr struct {
		name [unix.IFNAMSIZ]byte
		data unsafe.Pointer
		_    [16]byte
	}
	copy(ifr.name[:], ifname)
	ifr.data = unsafe.Pointer(&val)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("gro %s: %w", ifname, err)
	}
	defer unix.Close(fd)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return fmt.Errorf("gro %s: %w", ifname, errno)
	}
	return nil
}
