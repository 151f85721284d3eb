package bench

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"halfway/netlab"
)

// The RTT probes use blocking syscalls on the host's locked thread rather
// than Go's network poller: a poller wake-up and goroutine hand-off add
// tens to hundreds of microseconds on a busy VM, which is noise next to a
// 1 ms RTT and not part of the network being measured.

func sockaddr(ap netip.AddrPort) (unix.Sockaddr, int) {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}, unix.AF_INET
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}, unix.AF_INET6
}

// rawEcho is a one-connection-at-a-time echo server on blocking sockets,
// served by one thread inside the host.
type rawEcho struct {
	fd   int
	done chan error
}

func startRawEcho(h *netlab.Host, port int) (*rawEcho, error) {
	e := &rawEcho{done: make(chan error, 1)}
	ready := make(chan error, 1)
	go func() {
		e.done <- h.Do(func() error {
			fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				ready <- err
				return nil
			}
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
			if err := unix.Bind(fd, &unix.SockaddrInet6{Port: port}); err != nil {
				unix.Close(fd)
				ready <- fmt.Errorf("echo bind :%d: %w", port, err)
				return nil
			}
			if err := unix.Listen(fd, 64); err != nil {
				unix.Close(fd)
				ready <- err
				return nil
			}
			e.fd = fd
			ready <- nil
			buf := make([]byte, 4096)
			for {
				c, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
				if err != nil {
					if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
						continue
					}
					return nil // shut down by close
				}
				_ = unix.SetsockoptInt(c, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
				_ = unix.SetsockoptTimeval(c, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 10})
				for {
					n, err := retryEINTR(func() (int, error) { return unix.Read(c, buf) })
					if err != nil || n <= 0 {
						break
					}
					if _, err := retryEINTR(func() (int, error) { return unix.Write(c, buf[:n]) }); err != nil {
						break
					}
				}
				unix.Close(c)
			}
		})
	}()
	if err := <-ready; err != nil {
		return nil, err
	}
	return e, nil
}

func (e *rawEcho) Close() error {
	// shutdown wakes the blocked accept; close alone would not.
	_ = unix.Shutdown(e.fd, unix.SHUT_RDWR)
	err := <-e.done
	unix.Close(e.fd)
	return err
}

// rawRTT opens a connection from h to dst, timing the handshake, then times
// n one-byte request/response exchanges after one warm-up exchange.
func rawRTT(h *netlab.Host, dst netip.AddrPort, n int) (connect time.Duration, rr []time.Duration, err error) {
	err = h.Do(func() error {
		sa, family := sockaddr(dst)
		fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		// No send timeout before connect: without one the kernel restarts
		// an interrupted connect instead of failing it with EINTR.
		start := time.Now()
		if err := unix.Connect(fd, sa); err != nil {
			return fmt.Errorf("connect %s: %w", dst, err)
		}
		connect = time.Since(start)
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 10})
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &unix.Timeval{Sec: 10})
		b := []byte{1}
		for i := 0; i <= n; i++ {
			start := time.Now()
			if _, err := retryEINTR(func() (int, error) { return unix.Write(fd, b) }); err != nil {
				return fmt.Errorf("write %s: %w", dst, err)
			}
			if m, err := retryEINTR(func() (int, error) { return unix.Read(fd, b) }); err != nil || m != 1 {
				return fmt.Errorf("read %s: %d bytes, %v", dst, m, err)
			}
			if i > 0 { // the first exchange leaves quick-ack mode behind
				rr = append(rr, time.Since(start))
			}
		}
		return nil
	})
	return connect, rr, err
}

// retryEINTR repeats a socket call that a signal interrupted: with a
// timeout set, the kernel returns EINTR even for SA_RESTART handlers.
func retryEINTR(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if !errors.Is(err, unix.EINTR) {
			return n, err
		}
	}
}
