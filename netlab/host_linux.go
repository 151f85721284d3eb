package netlab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
)

// Do runs f on a thread inside the host's network namespace and returns its
// error. Sockets f creates belong to the host; goroutines f starts run
// elsewhere, so they must not create sockets.
func (h *Host) Do(f func() error) error { return inNS(h.ns, f) }

// Listen listens inside the host.
func (h *Host) Listen(network, addr string) (ln net.Listener, err error) {
	err = h.Do(func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// ListenPacket opens a packet socket inside the host.
func (h *Host) ListenPacket(network, addr string) (pc net.PacketConn, err error) {
	err = h.Do(func() (err error) {
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// Dial connects from inside the host. Use addresses, not names: the Go
// resolver reads the root /etc/hosts, not the lab's.
func (h *Host) Dial(ctx context.Context, network, addr string) (c net.Conn, err error) {
	return h.DialWith(ctx, &net.Dialer{}, network, addr)
}

// DialWith connects from inside the host with a dialer of the caller's.
func (h *Host) DialWith(ctx context.Context, d *net.Dialer, network, addr string) (c net.Conn, err error) {
	err = h.Do(func() (err error) {
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Command prepares a command to run inside the host with `ip netns exec`,
// which also shows it the lab's /etc/hosts.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Addr is the host's primary IPv4 address (that of its first link).
func (h *Host) Addr() netip.Addr { return h.plan.Addr4() }

// Addr6 is the host's primary IPv6 address, invalid without IPv6.
func (h *Host) Addr6() netip.Addr { return h.plan.Addr6() }

// Ifaces are the host's link ends.
func (h *Host) Ifaces() []Iface { return h.plan.Ifaces }

// AddrPort joins the host's primary address and a port, for dialing.
func (h *Host) AddrPort(port uint16) string { return netip.AddrPortFrom(h.Addr(), port).String() }

func (h *Host) String() string { return fmt.Sprintf("%s (%s)", h.Name, h.NS) }
