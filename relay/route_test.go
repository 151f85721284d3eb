package relay

import (
	"net/netip"
	"reflect"
	"testing"
)

func TestRouteCompile(t *testing.T) {
	for _, tc := range []struct {
		name string
		rc   RouteConfig
		want route
	}{
		{"empty", RouteConfig{}, route{name: "direct"}},
		{"direct with filters", RouteConfig{Listener: "socks", Dst: []string{"10.1.2.3/16"}, Ports: "80,443"},
			route{name: "direct", listener: "socks", dst: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")},
				ports: portSet{{80, 80}, {443, 443}}}},
		{"one relay", RouteConfig{Via: []string{"10.0.0.2:7100"}},
			route{name: "via 10.0.0.2:7100", via: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.2:7100")}}},
		{"two relays", RouteConfig{Via: []string{"10.0.0.2:7100", "10.0.0.3:7100"}},
			route{name: "via 10.0.0.2:7100,10.0.0.3:7100", via: []netip.AddrPort{
				netip.MustParseAddrPort("10.0.0.2:7100"), netip.MustParseAddrPort("10.0.0.3:7100")}}},
		{"three relays, v6", RouteConfig{Dst: []string{"2001:db8::/32"}, Via: []string{"10.0.0.2:1", "[2001:db8::2]:2", "10.0.0.4:3"}},
			route{name: "via 10.0.0.2:1,[2001:db8::2]:2,10.0.0.4:3",
				dst: []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")},
				via: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.2:1"), netip.MustParseAddrPort("[2001:db8::2]:2"),
					netip.MustParseAddrPort("10.0.0.4:3")}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := compileRoutes([]RouteConfig{tc.rc})
			if err != nil {
				t.Fatalf("compileRoutes: %v", err)
			}
			if len(got) != 1 || !reflect.DeepEqual(got[0], tc.want) {
				t.Fatalf("compileRoutes(%+v) = %+v, want %+v", tc.rc, got, tc.want)
			}
		})
	}
	if got, err := compileRoutes(nil); err != nil || len(got) != 0 {
		t.Errorf("compileRoutes(nil) = %v, %v", got, err)
	}
}

func TestRouteCompileErrors(t *testing.T) {
	for _, rc := range []RouteConfig{
		{Dst: []string{"10.0.0.0"}},
		{Dst: []string{"10.0.0.0/8", "300.0.0.0/8"}},
		{Ports: "0"},
		{Ports: "90-80"},
		{Ports: "x"},
		{Via: []string{"10.0.0.2"}},
		{Via: []string{"10.0.0.2:7100", "relay:7100"}},
	} {
		if got, err := compileRoutes([]RouteConfig{{}, rc}); err == nil {
			t.Errorf("compileRoutes(%+v) = %+v; want an error", rc, got)
		}
	}
}

func TestRouteMatch(t *testing.T) {
	rcs := []RouteConfig{
		0: {Listener: "socks", Dst: []string{"10.1.0.0/16"}, Via: []string{"10.0.0.2:7100"}},
		1: {Dst: []string{"10.1.0.0/16"}, Ports: "443", Via: []string{"10.0.0.3:7100", "10.0.0.4:7100"}},
		2: {Dst: []string{"10.0.0.0/8", "2001:db8::/32"}, Ports: "80,8000-8100"},
		3: {Listener: "tp", Via: []string{"10.0.0.5:7100"}},
		4: {Dst: []string{"192.0.2.0/24"}, Via: []string{"10.0.0.6:7100"}},
		5: {Dst: []string{"192.0.2.0/24"}, Via: []string{"10.0.0.7:7100"}}, // shadowed by 4
	}
	routes, err := compileRoutes(rcs)
	if err != nil {
		t.Fatal(err)
	}
	rt := &runtime{routes: routes}
	const direct = -1
	for _, tc := range []struct {
		name     string
		listener string
		dst      string
		want     int // index into rcs, or direct
		wantName string
	}{
		{"listener filter hit", "socks", "10.1.2.3:22", 0, "via 10.0.0.2:7100"},
		{"listener filter hit, any port", "socks", "10.1.2.3:443", 0, "via 10.0.0.2:7100"},
		{"listener filter miss falls through", "http", "10.1.2.3:443", 1, "via 10.0.0.3:7100,10.0.0.4:7100"},
		{"ports filter miss falls through", "http", "10.1.2.3:80", 2, "direct"},
		{"ports range", "http", "10.1.2.3:8050", 2, "direct"},
		{"ports filter miss everywhere", "http", "10.1.2.3:22", direct, "direct"},
		{"second dst CIDR", "http", "[2001:db8::1]:80", 2, "direct"},
		{"dst CIDR miss", "http", "11.0.0.1:80", direct, "direct"},
		{"listener-only route", "tp", "198.51.100.1:22", 3, "via 10.0.0.5:7100"},
		{"earlier route beats listener-only", "tp", "10.2.0.1:80", 2, "direct"},
		{"first matching route wins", "http", "192.0.2.9:443", 4, "via 10.0.0.6:7100"},
		{"IPv4-mapped dst", "socks", "[::ffff:10.1.2.3]:22", 0, "via 10.0.0.2:7100"},
		{"no match: direct", "http", "198.51.100.1:443", direct, "direct"},
		{"unknown listener, no match", "", "198.51.100.1:443", direct, "direct"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := rt.match(tc.listener, netip.MustParseAddrPort(tc.dst))
			want := directRoute
			if tc.want != direct {
				want = &rt.routes[tc.want]
			}
			if got != want {
				t.Fatalf("match(%q, %s) = %q %+v, want route %d %q", tc.listener, tc.dst, got.name, got, tc.want, want.name)
			}
			if got.name != tc.wantName {
				t.Errorf("route name %q, want %q", got.name, tc.wantName)
			}
			if tc.want == direct && len(got.via) != 0 {
				t.Errorf("direct route has relays %v", got.via)
			}
		})
	}
}

func TestRouteMatchNoRoutes(t *testing.T) {
	rt := &runtime{}
	for _, d := range []string{"10.0.0.1:80", "[2001:db8::1]:443"} {
		if got := rt.match("any", netip.MustParseAddrPort(d)); got != directRoute || got.name != "direct" || got.via != nil {
			t.Errorf("match(%s) with no routes = %+v, want direct", d, got)
		}
	}
}

// A catch-all route (no filters) matches everything, so later routes never do.
func TestRouteMatchCatchAll(t *testing.T) {
	routes, err := compileRoutes([]RouteConfig{
		{Via: []string{"10.0.0.2:7100"}},
		{Dst: []string{"10.0.0.0/8"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	rt := &runtime{routes: routes}
	for _, d := range []string{"10.0.0.1:80", "[2001:db8::1]:443", "198.51.100.1:1"} {
		if got := rt.match("x", netip.MustParseAddrPort(d)); got != &rt.routes[0] {
			t.Errorf("match(%s) = %q, want the catch-all", d, got.name)
		}
	}
}
