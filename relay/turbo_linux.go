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
	dumps     int // route dumps made so far
}

type turboRoute struct {
	cfg   TurboConfig
	route netlink.Route // as installed
	err   error         // why the route is not in place, if it is not
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
	var added []netip.Addr
	for a := range want {
		if t.installed[a] == nil {
			added = append(added, a)
		}
	}
	if len(added) == 0 {
		return errors.Join(errs...)
	}
	view := readMainRoutes(added)
	for _, a := range added {
		r := &turboRoute{cfg: want[a]}
		if err := r.sync(a, view); err != nil {
			errs = append(errs, fmt.Errorf("turbo route to %s: %w", a, err))
		}
		t.installed[a] = r
	}
	t.dumps += view.dumps
	return errors.Join(errs...)
}

// refresh puts back routes that went away (a link flap, a flush) and
// follows changes of the routes they copy (a new gateway); it returns what
// it could not fix.
func (t *turboRoutes) refresh() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.installed) == 0 {
		return nil
	}
	peers := make([]netip.Addr, 0, len(t.installed))
	for a := range t.installed {
		peers = append(peers, a)
	}
	view := readMainRoutes(peers)
	var errs []error
	for a, r := range t.installed {
		if err := r.sync(a, view); err != nil {
			errs = append(errs, fmt.Errorf("turbo route to %s: %w", a, err))
		}
	}
	t.dumps += view.dumps
	return errors.Join(errs...)
}

// sync makes the host route to peer what it should be: a copy of the
// route that covers the peer without it, with cfg's windows. A host route
// to the peer that is not halfway's is left alone: the relay does not
// take over an operator's or a routing daemon's route.
//
// view is the main table as read for this round of syncs.
func (r *turboRoute) sync(peer netip.Addr, view *mainRoutes) error {
	r.err = r.syncRoute(peer, view)
	return r.err
}

func (r *turboRoute) syncRoute(peer netip.Addr, view *mainRoutes) error {
	family, bits := netlink.FAMILY_V4, 32
	if peer.Is6() {
		family, bits = netlink.FAMILY_V6, 128
	}
	oif := 0 // a link-local peer's zone: the link it is on
	if z := peer.Zone(); z != "" {
		id, err := zoneID(z)
		if err != nil {
			return err
		}
		oif = int(id)
	}
	routes, err := view.covering(peer)
	if err != nil {
		return err // the route in place, if any, stays until a dump succeeds
	}
	ip := net.IP(peer.AsSlice())
	var best *netlink.Route
	var ours []*netlink.Route // ours to the peer: one, or more after a metric change
	dropOurs := func(keep *netlink.Route) {
		gone := true
		for _, o := range ours {
			if o != keep {
				if err := netlink.RouteDel(o); err != nil && !errors.Is(err, unix.ESRCH) {
					gone = false
				}
			}
		}
		if keep == nil && gone {
			r.route = netlink.Route{} // none of ours in place
		}
	}
	bestLen := -1
	for i := range routes {
		rt := &routes[i]
		if oif != 0 && !onLink(rt, oif) {
			continue // another link's: every link has its fe80::/64
		}
		n := 0 // a nil Dst is the default route
		if rt.Dst != nil {
			n, _ = rt.Dst.Mask.Size()
		}
		if n == bits && rt.Protocol == routeProto && rt.Type == unix.RTN_UNICAST {
			ours = append(ours, rt)
			continue
		}
		if n == bits {
			// Ours would only shadow the operator's (a blackhole too).
			defer dropOurs(nil)
			return fmt.Errorf("a host route to the peer exists already (%s, type %d, proto %d): not replaced; add initcwnd %d initrwnd %d to it, or remove it",
				rt.Dst, rt.Type, rt.Protocol, r.cfg.InitCwnd, r.cfg.InitRwnd)
		}
		if n > bestLen || n == bestLen && rt.Priority < best.Priority {
			best, bestLen = rt, n
		}
	}
	if best == nil {
		// What it copied is gone: a stale copy would keep the flows on a
		// path the host no longer has.
		dropOurs(nil)
		return errors.New("no route to the peer in the main table")
	}
	if best.Type != unix.RTN_UNICAST {
		// A blackhole, unreachable or prohibit route: a copy with a
		// gateway would open a path the host refuses.
		dropOurs(nil)
		return fmt.Errorf("the route covering the peer (%s) is of type %d, not unicast: no turbo route", best.Dst, best.Type)
	}
	if locks, err := view.locked(family, best); err != nil {
		return err
	} else if locks != 0 && locks != 1<<unix.RTAX_MTU && locks != 1<<unix.RTAX_RTO_MIN {
		// A copy would run without them: a clamp (cwnd, window), a
		// congctl the connections may not change, a fixed ssthresh.
		dropOurs(nil)
		return fmt.Errorf("the route covering the peer (%s) locks %s, which a copy would lose: no turbo route; add initcwnd %d initrwnd %d to it",
			best.Dst, lockNames(locks), r.cfg.InitCwnd, r.cfg.InitRwnd)
	}
	if err := resolvesVia(ip, oif, best, ours); err != nil {
		// Policy routing sends the peer elsewhere than the main table's
		// route (a tunnel's table, say): a host route in main would
		// take it off that path.
		dropOurs(nil)
		return err
	}
	nr := *best
	nr.Dst = &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, bits)}
	nr.Protocol = routeProto
	// The kernel lists the state of a nexthop's link in its flags
	// (linkdown, dead, offload) and refuses a route that carries them.
	nr.Flags &= settableFlags
	if len(best.MultiPath) > 0 {
		nr.MultiPath = make([]*netlink.NexthopInfo, len(best.MultiPath))
		for i, nh := range best.MultiPath {
			cp := *nh
			cp.Flags &= settableFlags
			nr.MultiPath[i] = &cp
		}
	}
	nr.InitCwnd, nr.InitRwnd = r.cfg.InitCwnd, r.cfg.InitRwnd
	for _, o := range ours {
		if sameRoute(o, &nr) {
			dropOurs(o)
			r.route = *o
			return nil
		}
	}
	install, verb := netlink.RouteReplace, "replace"
	if oif != 0 {
		// A replace takes the first route of the prefix and metric on
		// any link: another link's route to the same link-local address
		// (fe80::1 is many links' router), another peer's or an
		// operator's. Ours on this link goes, and the copy is added
		// beside the others.
		for _, o := range ours {
			if o.Priority == nr.Priority {
				_ = netlink.RouteDel(o)
			}
		}
		install, verb = netlink.RouteAppend, "append"
	}
	if err := install(&nr); err != nil {
		return fmt.Errorf("ip route %s %s initcwnd %d initrwnd %d: %w", verb, nr.Dst, r.cfg.InitCwnd, r.cfg.InitRwnd, err)
	}
	// Replace changed ours of the same metric in place; one of another
	// metric (the covering route's changed) would stay beside it.
	for _, o := range ours {
		if o.Priority != nr.Priority {
			_ = netlink.RouteDel(o)
		}
	}
	r.route = nr
	return nil
}

// resolvesVia checks that the kernel sends packets to ip (out of link
// oif, if not 0) the way the main table's route best (or ours, a copy of
// it) does: through the main table, by one of its nexthops.
func resolvesVia(ip net.IP, oif int, best *netlink.Route, ours []*netlink.Route) error {
	got, err := netlink.RouteGetWithOptions(ip, &netlink.RouteGetOptions{OifIndex: oif})
	if err != nil || len(got) == 0 {
		return fmt.Errorf("the kernel has no route to the peer (%v): no turbo route", err)
	}
	g := got[0]
	if g.Table != unix.RT_TABLE_MAIN {
		return fmt.Errorf("the kernel routes the peer through table %d (policy routing), not the main table: no turbo route", g.Table)
	}
	for _, rt := range append([]*netlink.Route{best}, ours...) {
		for _, nh := range nexthops(rt) {
			if nh.LinkIndex == g.LinkIndex && nh.Gw.Equal(g.Gw) {
				return nil
			}
		}
	}
	return fmt.Errorf("the kernel routes the peer via %s (link %d), not by the main table's route %s: no turbo route", g.Gw, g.LinkIndex, best.Dst)
}

// onLink tells whether all of a route's nexthops are on link index.
func onLink(r *netlink.Route, index int) bool {
	for _, nh := range nexthops(r) {
		if nh.LinkIndex != index {
			return false
		}
	}
	return true
}

// settableFlags are the nexthop flags a route may be given (onlink,
// pervasive); the kernel sets the others itself.
const settableFlags = unix.RTNH_F_ONLINK | unix.RTNH_F_PERVASIVE

// nexthops are a route's: its own, or those of a multipath route.
func nexthops(r *netlink.Route) []netlink.NexthopInfo {
	if len(r.MultiPath) == 0 {
		return []netlink.NexthopInfo{{LinkIndex: r.LinkIndex, Gw: r.Gw}}
	}
	out := make([]netlink.NexthopInfo, len(r.MultiPath))
	for i, nh := range r.MultiPath {
		out[i] = *nh
	}
	return out
}

// sameRoute compares what forwarding and the connections' start depend
// on: the nexthops (all of a multipath route's, with their weights and
// onlink), the scope, and the metrics with the locks a copy keeps.
func sameRoute(a, b *netlink.Route) bool {
	na, nb := nexthops(a), nexthops(b)
	if len(na) != len(nb) {
		return false
	}
	for i := range na {
		if na[i].LinkIndex != nb[i].LinkIndex || !na[i].Gw.Equal(nb[i].Gw) || na[i].Hops != nb[i].Hops ||
			na[i].Flags&settableFlags != nb[i].Flags&settableFlags {
			return false
		}
	}
	return a.Src.Equal(b.Src) && a.Priority == b.Priority && a.Scope == b.Scope && a.Flags&settableFlags == b.Flags&settableFlags &&
		a.InitCwnd == b.InitCwnd && a.InitRwnd == b.InitRwnd &&
		a.MTU == b.MTU && a.MTULock == b.MTULock && a.RtoMinLock == b.RtoMinLock && a.Window == b.Window && a.AdvMSS == b.AdvMSS && a.Reordering == b.Reordering &&
		a.Hoplimit == b.Hoplimit && a.Features == b.Features && a.RtoMin == b.RtoMin && a.QuickACK == b.QuickACK &&
		a.Congctl == b.Congctl && a.FastOpenNoCookie == b.FastOpenNoCookie && a.Ssthresh == b.Ssthresh
}

func (r *turboRoute) remove() error {
	if r.route.Dst == nil {
		return nil // never installed
	}
	if err := netlink.RouteDel(&r.route); err != nil && !errors.Is(err, unix.ESRCH) {
		return err
	}
	return nil
}

// TurboStatus is one installed turbo route, for /api/status.
type TurboStatus struct {
	Peer     string `json:"peer"`
	Route    string `json:"route,omitempty"`
	InitCwnd int    `json:"initcwnd"`
	InitRwnd int    `json:"initrwnd"`
	Error    string `json:"error,omitempty"` // why the route is not (or may no longer be) what it should
}

func (t *turboRoutes) status() []TurboStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := []TurboStatus{} // [] in /api/status, not null
	for a, r := range t.installed {
		st := TurboStatus{Peer: a.String(), InitCwnd: r.cfg.InitCwnd, InitRwnd: r.cfg.InitRwnd}
		if r.err != nil {
			st.Error = r.err.Error()
		}
		if r.route.Dst != nil {
			// With an error too: a round that could not read the table
			// leaves the route in place.
			st.Route = r.route.String()
		}
		out = append(out, st)
	}
	return out
}
