package relay

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"halfway/netlab"
	"halfway/netlab/labtest"
)

// TestTurboRoutesRepair: a turbo route that goes away comes back on
// refresh, follows a change of the route it copies, and an operator's own
// host route to a peer is refused, not replaced.
func TestTurboRoutesRepair(t *testing.T) {
	lab := labtest.Start(t, `
name: turbo
nodes: [a, b, c]
links: [{a: a, b: b}, {a: b, b: c}]`)
	a, b, c := lab.Host("a"), lab.Host("b"), lab.Host("c")
	peer := b.Ifaces()[0].Addr4.Addr()
	far := c.Addr() // reached through b
	run := func(h *netlab.Host, args ...string) {
		t.Helper()
		if out, err := h.Command(t.Context(), args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
	}
	route := func(dst netip.Addr) *netlink.Route {
		t.Helper()
		var found *netlink.Route
		a.Do(func() error {
			filter := &netlink.Route{Dst: &net.IPNet{IP: net.IP(dst.AsSlice()), Mask: net.CIDRMask(32, 32)}, Protocol: routeProto}
			list, err := netlink.RouteListFiltered(netlink.FAMILY_V4, filter, netlink.RT_FILTER_DST|netlink.RT_FILTER_PROTOCOL)
			if err == nil && len(list) == 1 {
				found = &list[0]
			}
			return err
		})
		return found
	}
	var tr turboRoutes
	peers := []PeerConfig{{Address: peer.String(), Turbo: &TurboConfig{InitCwnd: 200, InitRwnd: 300}},
		{Address: far.String(), Turbo: &TurboConfig{InitCwnd: 50, InitRwnd: 50}}}
	do := func(f func() error) error {
		var err error
		a.Do(func() error { err = f(); return nil })
		return err
	}
	if err := do(func() error { return tr.apply(peers) }); err != nil {
		t.Fatal(err)
	}
	defer do(func() error { return tr.apply(nil) })
	if r := route(peer); r == nil || r.InitCwnd != 200 || r.InitRwnd != 300 {
		t.Fatalf("turbo route to %s: %+v", peer, r)
	}

	// Flushed by someone: refresh puts it back.
	run(a, "ip", "route", "del", peer.String()+"/32", "proto", "104")
	if route(peer) != nil {
		t.Fatal("route still there after ip route del")
	}
	if err := do(tr.refresh); err != nil {
		t.Fatal(err)
	}
	if r := route(peer); r == nil || r.InitCwnd != 200 {
		t.Fatalf("after refresh: %+v", r)
	}

	// The route it copies changes (a new metric on the route to c's
	// network): the copy follows.
	cNet := c.Ifaces()[0].Addr4.Masked().String()
	before := route(far)
	if before == nil {
		t.Fatal("no turbo route to the far peer")
	}
	run(a, "ip", "route", "replace", cNet, "via", peer.String(), "mtu", "1400")
	if err := do(tr.refresh); err != nil {
		t.Fatal(err)
	}
	if r := route(far); r == nil || r.MTU != 1400 || r.InitCwnd != 50 {
		t.Fatalf("after the covering route changed: %+v", r)
	}

	// The covering route moves to another metric (a failover): one copy
	// follows it, none stays behind at the old metric.
	run(a, "ip", "route", "del", cNet)
	run(a, "ip", "route", "add", cNet, "via", peer.String(), "metric", "700")
	if err := do(tr.refresh); err != nil {
		t.Fatal(err)
	}
	if r := route(far); r == nil || r.Priority != 700 {
		t.Fatalf("after the metric changed: %+v (want one route, metric 700)", r)
	}

	// An operator's host route: not replaced, and the status says why.
	run(a, "ip", "route", "del", far.String()+"/32", "proto", "104")
	run(a, "ip", "route", "add", far.String()+"/32", "via", peer.String())
	err := do(tr.refresh)
	if err == nil || !strings.Contains(err.Error(), "exists already") {
		t.Fatalf("refresh with a foreign host route: %v", err)
	}
	st := tr.status()
	sawErr := false
	for _, s := range st {
		sawErr = sawErr || s.Peer == far.String() && strings.Contains(s.Error, "exists already")
	}
	if !sawErr {
		t.Errorf("status does not say why: %+v", st)
	}
	if out, _ := a.Command(t.Context(), "ip", "route", "show", far.String()+"/32").CombinedOutput(); strings.Contains(string(out), "initcwnd") {
		t.Errorf("the operator's route was changed: %s", out)
	}
}
