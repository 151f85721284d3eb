package relay

import (
	"net"
	"net/netip"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"

	"halfway/netlab/labtest"
)

// testPolicy builds a policy from allow lists with a fixed set of own
// addresses, so that results do not depend on the host's interfaces.
func testPolicy(t *testing.T, clients, dests []string, own ...string) *policy {
	t.Helper()
	p, err := newPolicy(&ListenerConfig{AllowClients: clients, AllowDestinations: dests}, nil)
	if err != nil {
		t.Fatalf("newPolicy(%v, %v, nil): %v", clients, dests, err)
	}
	p.own = &ownSet{addrs: map[netip.Addr]bool{}}
	for _, s := range own {
		p.own.addrs[netip.MustParseAddr(s)] = true
	}
	return p
}

func TestPolicyNewErrors(t *testing.T) {
	for _, ln := range []ListenerConfig{
		{AllowClients: []string{"10.0.0.1"}},
		{AllowClients: []string{"10.0.0.0/8"}, AllowDestinations: []string{"10.0.0.0/8:0"}},
		{AllowDestinations: []string{"300.0.0.0/8"}},
	} {
		if p, err := newPolicy(&ln, nil); err == nil {
			t.Errorf("newPolicy(%+v, nil) = %+v; want an error", ln, p)
		}
	}
	// The host's own addresses are collected: loopback at least.
	p, err := newPolicy(&ListenerConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.own == nil {
		t.Error("newPolicy left own nil")
	}
}

func TestPolicyClientAllowed(t *testing.T) {
	p := testPolicy(t, []string{"10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32", "172.16.5.9/12"}, nil)
	for _, tc := range []struct {
		client string
		want   bool
	}{
		{"10.1.2.3", true},
		{"10.255.255.255", true},
		{"11.0.0.1", false},
		{"9.255.255.255", false},
		{"192.168.1.7", true},
		{"192.168.1.8", false},
		{"172.31.0.1", true}, // rule 172.16.5.9/12 is masked to 172.16.0.0/12
		{"172.32.0.1", false},
		{"2001:db8::1", true},
		{"2001:db8:ffff::1", true},
		{"2001:db9::1", false},
		{"::1", false},
		{"::ffff:10.1.2.3", true}, // IPv4-mapped IPv6 from a dual-stack socket
		{"::ffff:192.168.1.7", true},
		{"::ffff:11.0.0.1", false},
		{"::ffff:192.168.1.8", false},
		{"127.0.0.1", false},
	} {
		t.Run(tc.client, func(t *testing.T) {
			if got := p.clientAllowed(netip.MustParseAddr(tc.client)); got != tc.want {
				t.Errorf("clientAllowed(%s) = %v, want %v", tc.client, got, tc.want)
			}
		})
	}
	if p.clientAllowed(netip.Addr{}) {
		t.Error("clientAllowed(zero Addr) = true")
	}
	none := testPolicy(t, nil, nil)
	for _, c := range []string{"10.1.2.3", "::1", "127.0.0.1"} {
		if none.clientAllowed(netip.MustParseAddr(c)) {
			t.Errorf("empty allow list: clientAllowed(%s) = true", c)
		}
	}
}

func TestPolicyDestAllowed(t *testing.T) {
	anyV4 := []string{"0.0.0.0/0"}
	anyV6 := []string{"::/0"}
	both := []string{"0.0.0.0/0", "::/0"}
	for _, tc := range []struct {
		name  string
		rules []string
		dst   string
		want  bool
	}{
		// Ports.
		{"any port", []string{"10.0.0.0/8"}, "10.1.2.3:22", true},
		{"listed port", []string{"10.0.0.0/8:80,443"}, "10.1.2.3:443", true},
		{"unlisted port", []string{"10.0.0.0/8:80,443"}, "10.1.2.3:22", false},
		{"port range low end", []string{"10.0.0.0/8:8000-8100"}, "10.1.2.3:8000", true},
		{"port range high end", []string{"10.0.0.0/8:8000-8100"}, "10.1.2.3:8100", true},
		{"port past range", []string{"10.0.0.0/8:8000-8100"}, "10.1.2.3:8101", false},
		{"second rule's ports", []string{"10.0.0.0/8:80", "10.1.0.0/16:22"}, "10.1.2.3:22", true},
		{"second rule's prefix", []string{"10.0.0.0/8:80", "10.1.0.0/16:22"}, "10.2.0.1:22", false},
		{"outside prefix", []string{"10.0.0.0/8"}, "11.0.0.1:80", false},
		{"no rules", nil, "10.1.2.3:80", false},
		{"v4 rule, v6 dst", anyV4, "[2001:db8::1]:80", false},
		{"v6 rule, v4 dst", anyV6, "10.1.2.3:80", false},
		{"v6 rule", anyV6, "[2001:db8::1]:443", true},
		{"IPv4-mapped dst under v4 rule", []string{"10.0.0.0/8"}, "[::ffff:10.1.2.3]:80", true},

		// Special addresses refused under catch-all rules.
		{"loopback v4", both, "127.0.0.1:80", false},
		{"loopback v4 elsewhere in /8", both, "127.1.2.3:80", false},
		{"loopback v6", both, "[::1]:80", false},
		{"loopback IPv4-mapped", both, "[::ffff:127.0.0.1]:80", false},
		{"metadata", both, "169.254.169.254:80", false},
		{"metadata IPv4-mapped", both, "[::ffff:169.254.169.254]:80", false},
		{"link-local v4", both, "169.254.1.1:80", false},
		{"link-local v6", both, "[fe80::1]:80", false},
		{"AWS v6 metadata", both, "[fd00:ec2::254]:80", false},
		{"unspecified v4", both, "0.0.0.0:80", false},
		{"this network", both, "0.1.2.3:80", false},
		{"unspecified v6", both, "[::]:80", false},
		{"multicast v4", both, "224.0.0.1:80", false},
		{"multicast v4 SSDP", both, "239.255.255.250:1900", false},
		{"multicast v6", both, "[ff02::1]:80", false},
		{"broadcast", both, "255.255.255.255:80", false},
		{"ordinary v4 under catch-all", both, "93.184.216.34:443", true},
		{"ordinary v6 under catch-all", both, "[2606:2800:220:1::1]:443", true},
		{"loopback under 96-bit v6 rule", []string{"::/96"}, "[::1]:80", false},
		{"loopback under wide v4 rule", []string{"64.0.0.0/2"}, "127.0.0.1:80", false},
		{"metadata under /8", []string{"169.0.0.0/8"}, "169.254.169.254:80", false},

		// Narrow rules open special addresses.
		{"127/8 rule opens loopback", []string{"127.0.0.0/8"}, "127.0.0.1:80", true},
		{"127.0.0.1/32 rule", []string{"127.0.0.1/32"}, "127.0.0.1:80", true},
		{"127.0.0.1/32 rule, other loopback", []string{"127.0.0.1/32"}, "127.0.0.2:80", false},
		{"127/8 rule with ports", []string{"127.0.0.0/8:8080"}, "127.0.0.1:8080", true},
		{"127/8 rule wrong port", []string{"127.0.0.0/8:8080"}, "127.0.0.1:80", false},
		{"catch-all plus narrow rule", []string{"0.0.0.0/0", "127.0.0.0/8:8080"}, "127.0.0.1:8080", true},
		{"catch-all plus narrow rule, other port", []string{"0.0.0.0/0", "127.0.0.0/8:8080"}, "127.0.0.1:80", false},
		{"::1/128 rule", []string{"::1/128"}, "[::1]:80", true},
		{"metadata /32 rule", []string{"169.254.169.254/32"}, "169.254.169.254:80", true},
		{"metadata /32 rule, other link-local", []string{"169.254.169.254/32"}, "169.254.1.1:80", false},
		{"link-local /16 rule opens link-local", []string{"169.254.0.0/16"}, "169.254.1.1:80", true},
		{"link-local /16 rule keeps metadata closed", []string{"169.254.0.0/16"}, "169.254.169.254:80", false},
		{"azure host service closed under 0/0", []string{"0.0.0.0/0"}, "168.63.129.16:80", false},
		{"nat64 closed under ::/0", []string{"::/0"}, "[64:ff9b::7f00:1]:80", false},
		{"local-use nat64 closed under ::/0", []string{"::/0"}, "[64:ff9b:1::a9fe:a9fe]:80", false},
		// The NAT64 prefix named, to reach the IPv4 internet through a
		// translator: the special IPv4 addresses stay closed in that form.
		{"nat64 rule opens ordinary v4", []string{"64:ff9b::/96"}, "[64:ff9b::5db8:d822]:443", true},
		{"nat64 rule keeps metadata closed", []string{"64:ff9b::/96"}, "[64:ff9b::a9fe:a9fe]:80", false},
		{"nat64 rule keeps loopback closed", []string{"64:ff9b::/96"}, "[64:ff9b::7f00:1]:9190", false},
		{"nat64 rule keeps link-local closed", []string{"64:ff9b::/96"}, "[64:ff9b::a9fe:101]:80", false},
		{"nat64 rule keeps this network closed", []string{"64:ff9b::/96"}, "[64:ff9b::1]:80", false},
		{"nat64 rule keeps multicast closed", []string{"64:ff9b::/96"}, "[64:ff9b::e000:1]:80", false},
		{"nat64 rule keeps azure host service closed", []string{"64:ff9b::/96"}, "[64:ff9b::a83f:8110]:80", false},
		{"nat64 link-local rule keeps metadata closed", []string{"64:ff9b::a9fe:0/112"}, "[64:ff9b::a9fe:a9fe]:80", false},
		{"nat64 link-local rule opens link-local", []string{"64:ff9b::a9fe:0/112"}, "[64:ff9b::a9fe:101]:80", true},
		{"nat64 metadata named exactly", []string{"64:ff9b::a9fe:a9fe/128"}, "[64:ff9b::a9fe:a9fe]:80", true},
		{"fe80::/10 rule", []string{"fe80::/10"}, "[fe80::1]:80", true},
		{"fe80::/64 rule", []string{"fe80::/64"}, "[fe80::1]:80", true},
		{"multicast /4 rule", []string{"224.0.0.0/4"}, "224.0.0.1:80", true},
		{"0.0.0.0/32 rule", []string{"0.0.0.0/32"}, "0.0.0.0:80", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := testPolicy(t, nil, tc.rules)
			dst := netip.MustParseAddrPort(tc.dst)
			if got := p.destAllowed(dst); got != tc.want {
				t.Errorf("rules %v: destAllowed(%s) = %v, want %v", tc.rules, dst, got, tc.want)
			}
		})
	}
}

func TestPolicyOwnAddrs(t *testing.T) {
	own := []string{"192.0.2.10", "2001:db8::10", "127.0.0.1"}
	for _, tc := range []struct {
		name  string
		rules []string
		dst   string
		want  bool
	}{
		{"own v4 under catch-all", []string{"0.0.0.0/0"}, "192.0.2.10:80", false},
		{"own v4 under its /24", []string{"192.0.2.0/24"}, "192.0.2.10:80", false},
		{"own v4 under /31", []string{"192.0.2.10/31"}, "192.0.2.10:80", false},
		{"neighbour under its /24", []string{"192.0.2.0/24"}, "192.0.2.11:80", true},
		{"own v4 named /32", []string{"192.0.2.10/32"}, "192.0.2.10:80", true},
		{"own v4 named /32 with ports", []string{"192.0.2.10/32:443"}, "192.0.2.10:443", true},
		{"own v4 named /32 wrong port", []string{"192.0.2.10/32:443"}, "192.0.2.10:80", false},
		{"own v4 IPv4-mapped dst", []string{"0.0.0.0/0"}, "[::ffff:192.0.2.10]:80", false},
		{"own v4 IPv4-mapped dst, /32 rule", []string{"192.0.2.10/32"}, "[::ffff:192.0.2.10]:80", true},
		{"own v6 under catch-all", []string{"::/0"}, "[2001:db8::10]:80", false},
		{"own v6 under /64", []string{"2001:db8::/64"}, "[2001:db8::10]:80", false},
		{"own v6 under /127", []string{"2001:db8::10/127"}, "[2001:db8::10]:80", false},
		{"own v6 named /128", []string{"2001:db8::10/128"}, "[2001:db8::10]:80", true},
		{"neighbour v6 under /64", []string{"2001:db8::/64"}, "[2001:db8::11]:80", true},
		// An own address inside a special range needs the exact address, not the range.
		{"own loopback under 127/8", []string{"127.0.0.0/8"}, "127.0.0.1:80", false},
		{"other loopback under 127/8", []string{"127.0.0.0/8"}, "127.0.0.2:80", true},
		{"own loopback named /32", []string{"127.0.0.1/32"}, "127.0.0.1:80", true},
		{"own v4 with broad and exact rules", []string{"0.0.0.0/0", "192.0.2.10/32:22"}, "192.0.2.10:22", true},
		{"own v4 with broad and exact rules, other port", []string{"0.0.0.0/0", "192.0.2.10/32:22"}, "192.0.2.10:80", false},
		// Through a NAT64 translator, an own IPv4 address leads here too.
		{"own v4 through nat64", []string{"64:ff9b::/96"}, "[64:ff9b::c000:20a]:80", false},
		{"own v4 through nat64, named /128", []string{"64:ff9b::c000:20a/128"}, "[64:ff9b::c000:20a]:80", true},
		{"neighbour through nat64", []string{"64:ff9b::/96"}, "[64:ff9b::c000:20b]:80", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := testPolicy(t, nil, tc.rules, own...)
			dst := netip.MustParseAddrPort(tc.dst)
			if got := p.destAllowed(dst); got != tc.want {
				t.Errorf("own %v, rules %v: destAllowed(%s) = %v, want %v", own, tc.rules, dst, got, tc.want)
			}
		})
	}
}

// The host's real addresses, as collected by newPolicy, are refused under a
// catch-all rule.
func TestPolicyOwnAddrsFromHost(t *testing.T) {
	p, err := newPolicy(&ListenerConfig{AllowDestinations: []string{"0.0.0.0/0", "::/0"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for a := range p.own.addrs {
		if a.Zone() != "" || a.Is4In6() {
			t.Errorf("own address %v: want unmapped and without zone", a)
		}
		if p.destAllowed(netip.AddrPortFrom(a, 80)) {
			t.Errorf("own address %v allowed under a catch-all rule", a)
		}
	}
}

// TestPolicyOwnLocalRoutes: an address on lo makes its whole prefix local,
// and an AnyIP route does the same: addresses in them are the relay's own,
// refused under a catch-all rule; TPROXY's local default route in a table
// of its own makes nothing own.
func TestPolicyOwnLocalRoutes(t *testing.T) {
	labtest.InNetns(t, func() {
		for _, args := range [][]string{
			{"link", "add", "hwown0", "type", "veth", "peer", "name", "hwown1"},
			{"addr", "add", "fe80::77/64", "dev", "hwown0", "nodad"},
			{"link", "set", "hwown0", "up"},
			{"addr", "add", "10.99.0.1/24", "dev", "lo"},
			{"route", "add", "local", "10.98.0.0/16", "dev", "lo"},
			{"route", "add", "local", "10.96.0.9/32", "dev", "lo"}, // AnyIP of one address
			{"-6", "route", "add", "local", "2001:db8:96::9/128", "dev", "lo"},
			{"route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100"},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Fatalf("ip %v: %v: %s", args, err, out)
			}
		}
		p, err := newPolicy(&ListenerConfig{AllowDestinations: []string{"0.0.0.0/0"}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			addr string
			own  bool
		}{{"10.99.0.1", true}, {"10.99.0.7", true}, {"10.98.3.4", true}, {"10.97.0.1", false}, {"192.0.2.1", false},
			{"10.96.0.9", true}, {"10.96.0.10", false}, {"2001:db8:96::9", true},
			// A TPROXY flow's link-local destination carries its zone.
			{"fe80::77%hwown0", true}, {"fe80::78%hwown0", false}} {
			a := netip.MustParseAddr(tc.addr)
			if got := p.isOwn(a); got != tc.own {
				t.Errorf("isOwn(%s) = %v, want %v (local prefixes %v)", a, got, tc.own, p.own.local)
			}
			if !a.Is4() {
				continue // 0.0.0.0/0 takes none of them
			}
			if got := p.destAllowed(netip.AddrPortFrom(a, 2222)); got == tc.own {
				t.Errorf("destAllowed(%s:2222) under 0.0.0.0/0 = %v, want %v", a, got, !tc.own)
			}
		}
	})
}

// TestPolicyZonedClient: a link-local client, whose address carries the
// zone it came by, is judged by its address.
func TestPolicyZonedClient(t *testing.T) {
	p := testPolicy(t, []string{"fe80::/10"}, nil)
	if !p.clientAllowed(netip.MustParseAddr("fe80::1%eth0")) {
		t.Errorf("%s refused under allow_clients fe80::/10", "fe80::1%eth0")
	}
	if p.clientAllowed(netip.MustParseAddr("2001:db8::1%eth0")) {
		t.Errorf("%s allowed under allow_clients fe80::/10", "2001:db8::1%eth0")
	}
}

// TestPolicyZonedDestination: a link-local destination whose address
// carries its zone (a TPROXY flow's, as the general path reads it from
// the socket's local address) is judged by its address: special, so
// refused unless allowed, and allowed by a rule that names its prefix.
// Before, the zone made every prefix miss it: refuseTransparent relayed
// such a flow with no allow_destinations, and refused it under one that
// named fe80::/10.
func TestPolicyZonedDestination(t *testing.T) {
	a := netip.MustParseAddr("fe80::1%eth0")
	if p := testPolicy(t, nil, nil); !p.special(a) {
		t.Errorf("%s is not special: relayed with no allow_destinations", a)
	}
	p := testPolicy(t, nil, []string{"fe80::/10"})
	if dst := netip.AddrPortFrom(a, 80); !p.destAllowed(dst) {
		t.Errorf("%s refused under allow_destinations fe80::/10", dst)
	}
	if dst := netip.AddrPortFrom(netip.MustParseAddr("2001:db8::1%eth0"), 80); p.destAllowed(dst) {
		t.Errorf("%s allowed under allow_destinations fe80::/10", dst)
	}
}

// TestPolicyOwnAdvertised: the addresses peers reach this relay at
// through NAT (auth.advertise) are its own too, and a reload updates them.
func TestPolicyOwnAdvertised(t *testing.T) {
	psk := writeTestFile(t, t.TempDir(), "psk", "0123456789abcdef\n")
	conf := func(adv string) string {
		return "admin: {listen: off}\nauth: {psk_file: " + psk + ", advertise: [\"" + adv + "\"]}\nlisteners:\n  - {name: s, listen: \"127.0.0.1:0\", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: [0.0.0.0/0]}\n"
	}
	s := startLoopback(t, conf("192.0.2.77:7100"))
	st := s.listeners["s"].cur.Load()
	if !st.policy.isOwn(netip.MustParseAddr("192.0.2.77")) || st.policy.destAllowed(netip.MustParseAddrPort("192.0.2.77:22")) {
		t.Error("the advertised address is not the relay's own: a catch-all rule reaches it")
	}
	if err := reloadYAML(t, s, conf("192.0.2.78:7100")); err != nil {
		t.Fatal(err)
	}
	if !st.policy.isOwn(netip.MustParseAddr("192.0.2.78")) || st.policy.isOwn(netip.MustParseAddr("192.0.2.77")) {
		t.Error("after the reload, the own addresses did not follow auth.advertise")
	}
}

// TestForwardToItself: a forward listener on every address whose
// forward_to is one of the host's own addresses on its port would dial
// itself, each flow another, until the limits ran out. The configuration
// cannot see every such address (they come and go), so the flow is
// refused; another address on that port is another host's.
func TestForwardToItself(t *testing.T) {
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4zero})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	l := &listener{ln: ln}
	for _, tc := range []struct {
		to   string
		want string
	}{
		{"192.0.2.10", "destination_is_relay"},
		{"127.0.0.1", "destination_is_relay"},
		{"192.0.2.11", ""},
	} {
		dst := netip.AddrPortFrom(netip.MustParseAddr(tc.to), port)
		st, err := newListenerState(ListenerConfig{Name: "f", Listen: "0.0.0.0:0", Mode: "forward", ForwardTo: dst.String()}, nil)
		if err != nil {
			t.Fatal(err)
		}
		st.policy.own = &ownSet{addrs: map[netip.Addr]bool{netip.MustParseAddr("192.0.2.10"): true}}
		if got := refuseTransparent(l, st, netip.AddrPort{}, dst); got != tc.want {
			t.Errorf("forward listener on %s, own 192.0.2.10, forward_to %s: refused %q, want %q", ln.Addr(), dst, got, tc.want)
		}
		// Another port of the host is another service.
		if other := netip.AddrPortFrom(dst.Addr(), port+1); refuseTransparent(l, st, netip.AddrPort{}, other) != "" {
			t.Errorf("forward_to %s refused: not the listener's port", other)
		}
	}
}

// TestPolicyOwnKeptWhenUnreadable: a refresh of the relay's own addresses
// that cannot read them (here: no descriptor left for the netlink socket,
// as under a flood of connections) keeps those it knew. An empty set would
// let a catch-all rule reach the relay's own services until the next
// refresh.
func TestPolicyOwnKeptWhenUnreadable(t *testing.T) {
	labtest.InNetns(t, func() {
		for _, args := range [][]string{
			{"link", "add", "hwown0", "type", "veth", "peer", "name", "hwown1"},
			{"addr", "add", "198.51.100.7/24", "dev", "hwown0"},
			{"link", "set", "hwown0", "up"},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Fatalf("ip %v: %v: %s", args, err, out)
			}
		}
		s := newServer(t, "admin: {listen: off}\nlisteners:\n  - {name: s, listen: \"127.0.0.1:0\", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: [0.0.0.0/0]}\n")
		p, err := newPolicy(&s.state.Load().cfg.Listeners[0], &s.own)
		if err != nil {
			t.Fatal(err)
		}
		own := netip.MustParseAddrPort("198.51.100.7:22")
		if p.destAllowed(own) {
			t.Fatal("the relay's own address is allowed under 0.0.0.0/0")
		}
		restore := exhaustFDs(t)
		err = s.refreshOwn()
		restore()
		if err == nil {
			t.Error("a refresh with no descriptor left reported no error")
		}
		if p.destAllowed(own) {
			t.Error("after a refresh that could not read the own addresses, 0.0.0.0/0 reaches the relay's own 198.51.100.7:22")
		}
	})
}

// exhaustFDs leaves the process no free descriptor until restore runs.
func exhaustFDs(t *testing.T) (restore func()) {
	t.Helper()
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	low := lim
	low.Cur = min(lim.Cur, 1024)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	var fds []int
	for range low.Cur {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			break
		}
		fds = append(fds, fd)
	}
	return func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			t.Error(err)
		}
	}
}
