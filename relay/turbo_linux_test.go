package relay

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

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

// turboChain is a lab of three hosts in a row, a - b - c, for the turbo
// routes a makes: peer is b's address toward a, far is c's (reached
// through b), cNet c's network.
type turboChain struct {
	t         *testing.T
	a         *netlab.Host
	peer, far netip.Addr
	cNet      string
}

func startTurboChain(t *testing.T, name string) *turboChain {
	lab := labtest.Start(t, `
name: `+name+`
nodes: [a, b, c]
links: [{a: a, b: b}, {a: b, b: c}]`)
	b, c := lab.Host("b"), lab.Host("c")
	return &turboChain{t: t, a: lab.Host("a"), peer: b.Ifaces()[0].Addr4.Addr(), far: c.Addr(), cNet: c.Ifaces()[0].Addr4.Masked().String()}
}

// run runs a command on a; a failure ends the test.
func (l *turboChain) run(args ...string) {
	l.t.Helper()
	if out, err := l.a.Command(l.t.Context(), args[0], args[1:]...).CombinedOutput(); err != nil {
		l.t.Fatalf("%v: %v %s", args, err, out)
	}
}

// show is what ip route args says on a.
func (l *turboChain) show(args ...string) string {
	out, _ := l.a.Command(l.t.Context(), "ip", append([]string{"route"}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out))
}

// ours is a's turbo route to dst, or "".
func (l *turboChain) ours(dst string) string { return l.show("show", dst+"/32", "proto", "104") }

// do runs f in a's namespace.
func (l *turboChain) do(f func() error) error {
	var err error
	l.a.Do(func() error { err = f(); return nil })
	return err
}

// turbo applies tr in a's namespace for peers at addrs, each a turboPeer;
// none takes every turbo route away.
func (l *turboChain) turbo(tr *turboRoutes, addrs ...string) error {
	var peers []PeerConfig
	for _, addr := range addrs {
		peers = append(peers, turboPeer(addr))
	}
	return l.do(func() error { return tr.apply(peers) })
}

// turboPeer is a peer at addr with a turbo route of initcwnd and initrwnd
// 100.
func turboPeer(addr string) PeerConfig {
	return PeerConfig{Address: addr, Turbo: &TurboConfig{InitCwnd: 100, InitRwnd: 100}}
}

// TestTurboRoutesRespect: a turbo route never changes where packets to a
// peer go. An operator's blackhole host route stays (and stays after the
// relay leaves); a peer behind an unreachable route or routed through
// another table by a rule gets no turbo route; a multipath route is
// copied whole and followed when its nexthops change.
func TestTurboRoutesRespect(t *testing.T) {
	l := startTurboChain(t, "turbo2")
	peer, far, cNet := l.peer, l.far, l.cNet
	var tr turboRoutes
	off := func() { l.turbo(&tr) }
	turbo := func(want string) {
		t.Helper()
		off() // a fresh start, as a relay's
		err := l.turbo(&tr, far.String())
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Fatalf("turbo to %s: %v, want %q", far, err, want)
		}
	}
	defer off()

	l.run("ip", "route", "add", "blackhole", far.String()+"/32")
	turbo("exists already")
	off()
	if got := l.show("show", far.String()+"/32"); !strings.Contains(got, "blackhole") {
		t.Errorf("the operator's blackhole route after the relay left: %q", got)
	}
	l.run("ip", "route", "del", far.String()+"/32")

	l.run("ip", "route", "replace", "unreachable", cNet)
	turbo("not unicast")
	if got := l.show("show", "proto", "104"); got != "" {
		t.Errorf("a turbo route past an unreachable one: %q", got)
	}
	l.run("ip", "route", "replace", cNet, "via", peer.String())

	l.run("ip", "route", "add", cNet, "via", peer.String(), "table", "200")
	l.run("ip", "rule", "add", "to", far.String(), "lookup", "200", "priority", "100")
	turbo("table 200")
	if got := l.show("show", "proto", "104"); got != "" {
		t.Errorf("a turbo route in main for a peer routed through table 200: %q", got)
	}
	l.run("ip", "rule", "del", "priority", "100")

	l.run("ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1") // a second way out
	l.run("ip", "addr", "add", "192.0.2.1/24", "dev", "d0")
	l.run("ip", "link", "set", "d1", "up")
	l.run("ip", "link", "set", "d0", "up")
	l.run("ip", "route", "replace", cNet, "nexthop", "via", peer.String(), "nexthop", "via", "192.0.2.254", "dev", "d0")
	turbo("")
	if got := l.show("show", far.String()+"/32"); strings.Count(got, "nexthop") != 2 || !strings.Contains(got, "initcwnd 100") {
		t.Errorf("turbo route for a multipath route: %q", got)
	}
	l.run("ip", "route", "replace", cNet, "nexthop", "via", peer.String(), "weight", "3", "nexthop", "via", "192.0.2.254", "dev", "d0")
	if err := l.do(tr.refresh); err != nil {
		t.Fatal(err)
	}
	if got := l.show("show", far.String()+"/32"); !strings.Contains(got, "weight 3") {
		t.Errorf("after the multipath route's weights changed: %q", got)
	}
}

// TestTurboRoutesLinkDown: a covering route whose link has lost its
// carrier (linkdown), alone or as one nexthop of a multipath route, still
// gets its copy. The kernel marks those flags on the routes it lists and
// refuses them on a route it is given.
func TestTurboRoutesLinkDown(t *testing.T) {
	l := startTurboChain(t, "turbo3")
	// d0 is up, its veth peer down: no carrier, its routes linkdown.
	l.run("ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
	l.run("ip", "addr", "add", "192.0.2.1/24", "dev", "d0")
	l.run("ip", "link", "set", "d0", "up")
	l.run("ip", "route", "replace", l.cNet, "nexthop", "via", l.peer.String(), "nexthop", "via", "192.0.2.254", "dev", "d0")
	var tr turboRoutes
	defer l.turbo(&tr)
	for _, tc := range []struct{ name, peer string }{
		{"on-link, linkdown", "192.0.2.7"},
		{"multipath, one nexthop linkdown", l.far.String()},
	} {
		err := l.turbo(&tr, tc.peer)
		if got := l.ours(tc.peer); err != nil || !strings.Contains(got, "initcwnd 100") {
			t.Errorf("%s: %v, route %q; want the copy in place", tc.name, err, got)
		}
	}
}

// TestTurboRoutesLinkLocal: a link-local peer's turbo route goes on the
// link its zone names. Every link has a route to fe80::/64; the copy of
// another link's would give the windows to whoever has that address there,
// and none to the peer.
func TestTurboRoutesLinkLocal(t *testing.T) {
	lab := labtest.Start(t, `
name: turbo4
ipv6: true
nodes: [a, b, c]
links: [{a: a, b: b}, {a: a, b: c}]`)
	a := lab.Host("a")
	routes := func(args ...string) string {
		out, _ := a.Command(t.Context(), "ip", append([]string{"-6", "route", "show"}, args...)...).CombinedOutput()
		return string(out)
	}
	for i := 0; strings.Count(routes("fe80::/64"), "dev") < 2; i++ {
		if i > 100 {
			t.Fatalf("a has not both links' fe80::/64: %s", routes("fe80::/64"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	var peers []PeerConfig
	dev := map[string]string{} // peer address: a's link toward it
	for _, i := range a.Ifaces() {
		out, err := lab.Host(i.Peer).Command(t.Context(), "ip", "-6", "-o", "addr", "show", "scope", "link").CombinedOutput()
		f := strings.Fields(string(out))
		j := slices.Index(f, "inet6")
		if err != nil || j < 0 {
			t.Fatalf("%s's link-local address: %v %s", i.Peer, err, out)
		}
		ll := strings.Split(f[j+1], "/")[0]
		peers = append(peers, turboPeer("["+ll+"%"+i.Name+"]:7100"))
		dev[ll] = i.Name
	}
	var tr turboRoutes
	defer a.Do(func() error { return tr.apply(nil) })
	var err error
	a.Do(func() error { err = tr.apply(peers); return nil })
	if err != nil {
		t.Fatal(err)
	}
	for ll, name := range dev {
		if got := routes(ll, "proto", "104"); !strings.Contains(got, "dev "+name+" ") {
			t.Errorf("turbo route to %s%%%s: %q, want it on %s", ll, name, got, name)
		}
	}
}

// TestTurboRoutesLocks: a covering route that locks metrics is copied only
// when the copy keeps the lock (mtu, or rto_min, alone); one that locks
// others (a cwnd clamp, a congctl the connections may not change, an
// ssthresh, which the kernel uses only when locked) gets no turbo route
// rather than a copy without them.
func TestTurboRoutesLocks(t *testing.T) {
	l := startTurboChain(t, "turbo5")
	var tr turboRoutes
	defer l.turbo(&tr)
	for _, tc := range []struct {
		metrics []string
		want    string // in the error; "" for a copy, which has copied
		copied  string
	}{
		{[]string{"mtu", "lock", "1400"}, "", "mtu lock 1400"},
		{[]string{"cwnd", "lock", "50"}, "locks cwnd", ""},
		{[]string{"mtu", "lock", "1400", "congctl", "lock", "reno"}, "locks mtu, congctl", ""},
		{[]string{"ssthresh", "lock", "50", "window", "30000"}, "locks ssthresh", ""},
	} {
		l.run(append([]string{"ip", "route", "replace", l.cNet, "via", l.peer.String()}, tc.metrics...)...)
		l.turbo(&tr) // a fresh start, as a relay's
		err := l.turbo(&tr, l.far.String())
		got := l.ours(l.far.String())
		switch {
		case tc.want == "" && (err != nil || !strings.Contains(got, tc.copied) || !strings.Contains(got, "initcwnd 100")):
			t.Errorf("%v: %v, copy %q; want one with %s", tc.metrics, err, got, tc.copied)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || got != ""):
			t.Errorf("%v: %v, copy %q; want no copy and an error saying %q", tc.metrics, err, got, tc.want)
		}
	}
}

// TestTurboRoutesFollowLock: a lock the copy can keep, added to the
// covering route later (its mtu locked at the same value), is followed on
// refresh like any other change of the route.
func TestTurboRoutesFollowLock(t *testing.T) {
	l := startTurboChain(t, "turbo6")
	var tr turboRoutes
	defer l.turbo(&tr)
	l.run("ip", "route", "replace", l.cNet, "via", l.peer.String(), "mtu", "1400")
	if err := l.turbo(&tr, l.far.String()); err != nil {
		t.Fatal(err)
	}
	l.run("ip", "route", "replace", l.cNet, "via", l.peer.String(), "mtu", "lock", "1400")
	err := l.do(tr.refresh)
	if got := l.ours(l.far.String()); err != nil || !strings.Contains(got, "mtu lock 1400") {
		t.Errorf("after the covering route locked its mtu: %v, copy %q; want mtu lock 1400", err, got)
	}
}

// TestLockedMetricsByLink: where one prefix is routed on several links at
// one metric (every IPv6 link's fe80::/64, or ip route append), the locks
// read are those of the route on the link asked for. They were the first
// listed route's: a peer on an unlocked link was refused its turbo route
// ("locks cwnd"), and one on a locked link got a copy without its locks.
func TestLockedMetricsByLink(t *testing.T) {
	labtest.InNetns(t, func() {
		idx := map[string]int{}
		for _, name := range []string{"lk0", "lk1"} {
			v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
			if err := netlink.LinkAdd(v); err != nil {
				t.Fatal(err)
			}
			if err := netlink.LinkSetUp(v); err != nil {
				t.Fatal(err)
			}
			idx[name] = v.Attrs().Index
		}
		// The locked route listed first, then second.
		for _, args := range [][]string{
			{"append", "192.0.2.0/24", "dev", "lk0", "metric", "10", "cwnd", "lock", "50"},
			{"append", "192.0.2.0/24", "dev", "lk1", "metric", "10"},
			{"append", "198.51.100.0/24", "dev", "lk0", "metric", "10"},
			{"append", "198.51.100.0/24", "dev", "lk1", "metric", "10", "cwnd", "lock", "50"},
		} {
			if out, err := exec.Command("ip", append([]string{"route"}, args...)...).CombinedOutput(); err != nil {
				t.Fatalf("ip route %v: %v: %s", args, err, out)
			}
		}
		for _, tc := range []struct {
			dst, dev string
			want     uint32
		}{
			{"192.0.2.0/24", "lk0", 1 << unix.RTAX_CWND},
			{"192.0.2.0/24", "lk1", 0},
			{"198.51.100.0/24", "lk0", 0},
			{"198.51.100.0/24", "lk1", 1 << unix.RTAX_CWND},
		} {
			_, dst, _ := net.ParseCIDR(tc.dst)
			r := &netlink.Route{Dst: dst, LinkIndex: idx[tc.dev], Priority: 10, Table: unix.RT_TABLE_MAIN}
			if got, err := readMainRoutes(nil).locked(unix.AF_INET, r); err != nil || got != tc.want {
				t.Errorf("%s dev %s: locks %#x, %v; want %#x", tc.dst, tc.dev, got, err, tc.want)
			}
		}
	})
}

// TestTurboRoutesDumps: a round of turbo syncs reads the main table once
// per address family (and its locks once), whatever the number of peers;
// it used to dump the table twice per peer, every 10 s.
func TestTurboRoutesDumps(t *testing.T) {
	labtest.InNetns(t, func() {
		d := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "td0"}, PeerName: "td1"}
		if err := netlink.LinkAdd(d); err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(d); err != nil {
			t.Fatal(err)
		}
		for _, a := range []string{"192.0.2.1/24", "2001:db8::1/64"} {
			addr, _ := netlink.ParseAddr(a)
			addr.Flags = unix.IFA_F_NODAD
			if err := netlink.AddrAdd(d, addr); err != nil {
				t.Fatal(err)
			}
		}
		var peers []PeerConfig
		for i := 10; i < 15; i++ {
			peers = append(peers, turboPeer(fmt.Sprintf("192.0.2.%d", i)), turboPeer(fmt.Sprintf("2001:db8::%d", i)))
		}
		var tr turboRoutes
		defer tr.apply(nil)
		if err := tr.apply(peers); err != nil {
			t.Fatal(err)
		}
		sts := tr.status()
		for _, st := range sts {
			if st.Error != "" {
				t.Errorf("%s: %s", st.Peer, st.Error)
			}
		}
		if len(sts) != len(peers) {
			t.Errorf("%d turbo routes, want %d", len(sts), len(peers))
		}
		if tr.dumps != 4 {
			t.Errorf("installing %d turbo routes took %d route dumps, want 4 (routes and locks, per family)", len(peers), tr.dumps)
		}
		before := tr.dumps
		if err := tr.refresh(); err != nil {
			t.Fatal(err)
		}
		if n := tr.dumps - before; n != 4 {
			t.Errorf("a refresh of %d turbo routes took %d route dumps, want 4", len(peers), n)
		}
	})
}

// TestTurboRoutesLinkLocalSameAddress: link-local peers at one address on
// two links (fe80::1 is every link's router, often) each get their turbo
// route on their own link. A replace (ip route replace) of the second
// took the first's route, of the same prefix and metric, on the other
// link: only one stayed, and each round of syncs traded it for the other
// while both peers' status said the route was in place.
func TestTurboRoutesLinkLocalSameAddress(t *testing.T) {
	labtest.InNetns(t, func() {
		var names []string
		for _, name := range []string{"ll0", "ll1"} {
			v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
			if err := netlink.LinkAdd(v); err != nil {
				t.Fatal(err)
			}
			for _, n := range []string{name, name + "p"} {
				l, err := netlink.LinkByName(n)
				if err == nil {
					err = netlink.LinkSetUp(l)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			names = append(names, name)
		}
		fe80 := func() int {
			out, _ := exec.Command("ip", "-6", "route", "show", "fe80::/64").CombinedOutput()
			return strings.Count(string(out), "dev ll")
		}
		for i := 0; fe80() < 2; i++ {
			if i > 100 {
				t.Fatal("no fe80::/64 route on both links")
			}
			time.Sleep(50 * time.Millisecond)
		}
		ours := func() string {
			out, _ := exec.Command("ip", "-6", "route", "show", "fe80::1/128", "proto", "104").CombinedOutput()
			return string(out)
		}
		check := func(when string, err error, tr *turboRoutes) {
			t.Helper()
			if err != nil {
				t.Errorf("%s: %v", when, err)
			}
			got := ours()
			for _, name := range names {
				if !strings.Contains(got, "dev "+name+" ") {
					t.Errorf("%s: turbo routes to fe80::1 %q, want one on %s", when, got, name)
				}
			}
			for _, st := range tr.status() {
				if st.Error != "" {
					t.Errorf("%s: %s: %s", when, st.Peer, st.Error)
				}
			}
		}
		var tr turboRoutes
		defer tr.apply(nil)
		peers := []PeerConfig{turboPeer("[fe80::1%ll0]:7100"), turboPeer("[fe80::1%ll1]:7100")}
		check("apply", tr.apply(peers), &tr)
		check("refresh", tr.refresh(), &tr)
		check("second refresh", tr.refresh(), &tr)
	})
}

// TestTurboStatusAfterDrop: a turbo route the relay takes away (what it
// copied became unreachable) is no longer shown as in place; the error
// says why.
func TestTurboStatusAfterDrop(t *testing.T) {
	l := startTurboChain(t, "turbo9")
	var tr turboRoutes
	defer l.turbo(&tr)
	if err := l.turbo(&tr, l.far.String()); err != nil {
		t.Fatal(err)
	}
	if st := tr.status(); len(st) != 1 || st[0].Route == "" || st[0].Error != "" {
		t.Fatalf("installed: %+v", st)
	}
	l.run("ip", "route", "replace", "unreachable", l.cNet)
	if err := l.do(tr.refresh); err == nil || !strings.Contains(err.Error(), "not unicast") {
		t.Fatalf("refresh past an unreachable route: %v", err)
	}
	if st := tr.status(); len(st) != 1 || st[0].Route != "" || st[0].Error == "" {
		t.Errorf("after the relay took its route away: %+v, want an error and no route", st)
	}
	if got := l.ours(l.far.String()); got != "" {
		t.Errorf("turbo route still in place: %q", got)
	}
}
