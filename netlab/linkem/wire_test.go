package linkem

import (
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestWireCountsSocketDrops: frames the kernel drops because the wire's
// reader fell behind (its socket's buffer full) are counted, so a lab's
// report can say the emulator, not a configured link, lost them.
func TestWireCountsSocketDrops(t *testing.T) {
	saved := sockBufBytes
	sockBufBytes = 64 << 10
	defer func() { sockBufBytes = saved }()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root for a network namespace")
	}
	inNetns(t, func() {
		for _, pair := range [][2]string{{"a0", "a1"}, {"b0", "b1"}} {
			veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: pair[0]}, PeerName: pair[1]}
			if err := netlink.LinkAdd(veth); err != nil {
				t.Error(err)
				return
			}
			for _, n := range pair {
				l, err := netlink.LinkByName(n)
				if err != nil {
					t.Error(err)
					return
				}
				if err := netlink.LinkSetUp(l); err != nil {
					t.Error(err)
					return
				}
			}
		}
		w, err := Open("a1", "b1", Params{}, Params{}, Options{})
		if err != nil {
			t.Error(err)
			return
		}
		defer w.Close()
		// Not running: nobody reads what arrives at a1.
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer unix.Close(fd)
		a0, _ := netlink.LinkByName("a0")
		to := &unix.SockaddrLinklayer{Ifindex: a0.Attrs().Index, Protocol: 0x88b5, Halen: 6, Addr: [8]byte{2, 0, 0, 0, 0, 1}}
		frame := make([]byte, 200)
		copy(frame, []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x88, 0xb5}) // local experimental ethertype
		const sent = 4000
		for range sent {
			if err := unix.Sendto(fd, frame, 0, to); err != nil {
				t.Error(err)
				return
			}
		}
		ab, _ := w.Stats()
		if ab.DropSocket == 0 || ab.DropSocket >= sent {
			t.Errorf("%d frames into an unread wire of 64 KiB: %d counted as dropped by its socket, want some but not all", sent, ab.DropSocket)
		}
		again, _ := w.Stats()
		if again.DropSocket != ab.DropSocket {
			t.Errorf("the count moved from %d to %d with nothing sent", ab.DropSocket, again.DropSocket)
		}
	})
}

// inNetns runs f on a thread of its own in a new network namespace; the
// thread, and with it the namespace, ends with f. f reports with t.Error:
// t.Fatal would not stop the test from another goroutine.
func inNetns(t *testing.T, f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread exits with this goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		f()
	}()
	<-done
}
