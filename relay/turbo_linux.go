package relay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Turbo-Start (KTCP): relay-to-relay legs skip most of slow start. The
// kernel takes a new connection's initial congestion window (initcwnd) and
// the receive window it first offers (initrwnd) from the route to the
// peer, so the relay installs a host route to each turbo peer: a copy of
// the route it would use anyway (gateway, device, source, metrics such as
// congctl) with the two windows set. Only connections to and from those
// peers see them; legs to clients and servers keep the kernel's defaults.
// Both directions need it: the sender's initcwnd and the receiver's
// initrwnd, so both relays of a pair name each other.

// routeProto marks the routes halfway installs ("proto 104" in ip route).
const routeProto = netlink.RouteProtocol(104)

type turboRoutes struct {
	mu        sync.Mutex
	installed map[netip.Addr]*turboRoute
}

type turboRoute struct {
	cfg   TurboConfig
	route netlink.Route  // as installed
	prev  *netlink.Route // a host route of someone else's it replaced, put back on removal
}

// apply makes the installed routes match peers' turbo settings; nil
// removes them all.
func (t *turboRoutes) apply(peers []PeerConfig) error {
	want := map[netip.Addr]TurboConfig{}
	for _, p := range peers {
		if p.Turbo == nil {
			continue
		}
		if a, err := parsePeer(p.Address); err == nil {
			want[a] = *p.Turbo
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.installed == nil {
		t.installed = map[netip.Addr]*turboRoute{}
	}
	var errs []error
	for a, r := range t.installed {
		if cfg, ok := want[a]; ok && cfg == r.cfg {
			continue
		}
		if err := r.remove(); err != nil {
			errs = append(errs, fmt.Errorf("turbo route to %s: %w", a, err))
		}
		delete(t.installed, a)
	}
	for a, cfg := range want {
		if t.installed[a] != nil {
			continue
		}
		r, err := installTurbo(a, cfg)
		if err != nil {
			errs = append(errs, fmt.Errorf("turbo route to %s: %w", a, err))
			continue
		}
		t.installed[a] = r
	}
	return errors.Join(errs...)
}

// installTurbo puts a host route to peer with cfg's windows in the main
// table, in front of the route that covers it now.
func installTurbo(peer netip.Addr, cfg TurboConfig) (*turboRoute, error) {
	family, bits := netlink.FAMILY_V4, 32
	if peer.Is6() {
		family, bits = netlink.FAMILY_V6, 128
	}
	routes, err := netlink.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	ip := net.IP(peer.AsSlice())
	var best *netlink.Route
	bestLen := -1
	for i := range routes {
		r := &routes[i]
		if r.Type != unix.RTN_UNICAST {
			continue
		}
		n := 0 // a nil Dst is the default route
		if r.Dst != nil {
			if !r.Dst.Contains(ip) {
				continue
			}
			n, _ = r.Dst.Mask.Size()
		}
		if n > bestLen || n == bestLen && r.Priority < best.Priority {
			best, bestLen = r, n
		}
	}
	if best == nil {
		return nil, errors.New("no route to the peer in the main table")
	}
	tr := &turboRoute{cfg: cfg}
	if bestLen == bits && best.Protocol != routeProto {
		prev := *best
		tr.prev = &prev
	}
	nr := *best
	nr.Dst = &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, bits)}
	nr.Protocol = routeProto
	nr.InitCwnd, nr.InitRwnd = cfg.InitCwnd, cfg.InitRwnd
	if err := netlink.RouteReplace(&nr); err != nil {
		return nil, fmt.Errorf("ip route replace %s initcwnd %d initrwnd %d: %w", nr.Dst, cfg.InitCwnd, cfg.InitRwnd, err)
	}
	tr.route = nr
	return tr, nil
}

func (r *turboRoute) remove() error {
	if r.prev != nil {
		return netlink.RouteReplace(r.prev)
	}
	if err := netlink.RouteDel(&r.route); err != nil && !errors.Is(err, unix.ESRCH) {
		return err
	}
	return nil
}

// TurboStatus is one installed turbo route, for /api/status.
type TurboStatus struct {
	Peer     string `json:"peer"`
	Route    string `json:"route"`
	InitCwnd int    `json:"initcwnd"`
	InitRwnd int    `json:"initrwnd"`
}

func (t *turboRoutes) status() []TurboStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []TurboStatus
	for a, r := range t.installed {
		out = append(out, TurboStatus{Peer: a.String(), Route: r.route.String(), InitCwnd: r.cfg.InitCwnd, InitRwnd: r.cfg.InitRwnd})
	}
	return out
}
