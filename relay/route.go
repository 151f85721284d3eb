package relay

import (
	"net/netip"
)

// route is a compiled RouteConfig.
type route struct {
	name     string // for metrics and logs: "direct" or "via A,B"
	listener string
	dst      []netip.Prefix
	ports    portSet
	via      []netip.AddrPort
	mptcp    bool // the next leg (to the server or the first relay) is MPTCP
}

var directRoute = &route{name: "direct"}

func compileRoutes(rcs []RouteConfig) ([]route, error) {
	var out []route
	for _, rc := range rcs {
		r := route{listener: rc.Listener, name: "direct", mptcp: rc.MPTCP}
		for _, s := range rc.Dst {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, err
			}
			r.dst = append(r.dst, p.Masked())
		}
		if rc.Ports != "" {
			ps, err := parsePorts(rc.Ports)
			if err != nil {
				return nil, err
			}
			r.ports = ps
		}
		for i, v := range rc.Via {
			ap, err := netip.ParseAddrPort(v)
			if err != nil {
				return nil, err
			}
			// As peers are keyed: an IPv4-mapped hop finds its pool.
			r.via = append(r.via, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
			if i == 0 {
				r.name = "via " + v
			} else {
				r.name += "," + v
			}
		}
		out = append(out, r)
	}
	return out, nil
}

// match returns the first route for a flow of listener to dst.
func (rt *runtime) match(listener string, dst netip.AddrPort) *route {
	a := dst.Addr().Unmap()
	for i := range rt.routes {
		r := &rt.routes[i]
		if r.listener != "" && r.listener != listener {
			continue
		}
		if !r.ports.has(dst.Port()) {
			continue
		}
		if len(r.dst) > 0 {
			hit := false
			for _, p := range r.dst {
				if p.Contains(a) {
					hit = true
					break
				}
			}
			if !hit {
				continue
			}
		}
		return r
	}
	return directRoute
}
