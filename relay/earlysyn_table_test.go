package relay

import (
	"net/netip"
	"testing"
	"time"

	hm "halfway/metrics"
)

func newTestEarlyTable() *earlyTable {
	return &earlyTable{
		pending:   map[[2]netip.AddrPort]*earlyDial{},
		accepted:  map[[2]netip.AddrPort]time.Time{},
		perClient: map[netip.Addr]int{},
	}
}

// TestEarlyTable: pairing SYNs with accepts, per listener; late and
// duplicate SYNs start nothing; per-client and table bounds; expiry.
func TestEarlyTable(t *testing.T) {
	ap := netip.MustParseAddrPort
	lim := Limits{MaxEarly: 4, MaxEarlyPerClient: 2}
	dst := ap("192.0.2.10:80")
	c1, c2 := ap("10.0.0.1:40000"), ap("10.0.0.1:40001")

	tb := newTestEarlyTable()
	e, why := tb.reserve(t.Context(), "web", nil, c1, dst, &Config{Limits: lim}, true)
	if e == nil || why != "" {
		t.Fatalf("first SYN: %v %q", e, why)
	}
	close(e.done) // the dial "finished" with nothing to reset
	if _, why := tb.reserve(t.Context(), "web", nil, c1, dst, &Config{Limits: lim}, true); why != "retransmission" {
		t.Errorf("second SYN: %q, want retransmission", why)
	}
	if got := tb.claim("web", c1, dst, nil); got != e {
		t.Errorf("claim by its listener: %v, want the dial", got)
	}
	if _, why := tb.reserve(t.Context(), "web", nil, c1, dst, &Config{Limits: lim}, true); why != "late" {
		t.Errorf("SYN after the claim: %q, want late", why)
	}
	// An accept that found nothing (the sniffer lagging) marks the tuple
	// too: the SYN read afterwards starts nothing.
	if got := tb.claim("web", c2, dst, nil); got != nil {
		t.Errorf("claim with no SYN seen: %v", got)
	}
	if _, why := tb.reserve(t.Context(), "web", nil, c2, dst, &Config{Limits: lim}, true); why != "late" {
		t.Errorf("SYN read after its accept: %q, want late", why)
	}

	// Another listener's accept does not take the dial.
	c3 := ap("10.0.0.1:40002")
	e3, _ := tb.reserve(t.Context(), "web", nil, c3, dst, &Config{Limits: lim}, true)
	close(e3.done)
	var dropped hm.Counter
	if got := tb.claim("other", c3, dst, &dropped); got != nil || dropped.Value() != 1 {
		t.Errorf("claim by another listener: %v, %d dropped; want nil, 1 dropped", got, dropped.Value())
	}
	if len(tb.pending) != 0 || len(tb.perClient) != 0 {
		t.Fatalf("table after claims: %d pending, %v per client", len(tb.pending), tb.perClient)
	}

	// Per-client bound, IPv6 clients counted by /64; the table bound.
	v6a, v6b := ap("[2001:db8::1]:1000"), ap("[2001:db8::2]:1000")
	for i, tc := range []struct {
		client netip.AddrPort
		room   bool
		want   string
	}{
		{v6a, true, ""},
		{v6b, true, ""},
		{ap("[2001:db8::3]:1000"), true, "skipped"}, // the /64's share is taken
		{ap("10.9.9.9:1"), false, "skipped"},        // connects near max_pending
		{ap("10.9.9.9:2"), true, ""},
		{ap("10.9.9.8:3"), true, ""},
		{ap("10.9.9.7:4"), true, "skipped"}, // the table is full
	} {
		e, why := tb.reserve(t.Context(), "web", nil, tc.client, dst, &Config{Limits: lim}, tc.room)
		if why != tc.want || (e != nil) != (tc.want == "") {
			t.Errorf("%d: SYN from %s: %q, want %q", i, tc.client, why, tc.want)
		}
		if e != nil {
			close(e.done)
		}
	}

	// Expiry drops old dials and marks, and their clients' shares.
	var expired hm.Counter
	tb.expire(time.Time{}, &expired)
	if expired.Value() != 4 || len(tb.pending) != 0 || len(tb.accepted) != 0 || len(tb.perClient) != 0 {
		t.Errorf("after expiry: %d expired, %d pending, %d marks, %v", expired.Value(), len(tb.pending), len(tb.accepted), tb.perClient)
	}
	if e, why := tb.reserve(t.Context(), "web", nil, c1, dst, &Config{Limits: lim}, true); e == nil {
		t.Errorf("SYN after expiry: %q", why)
	} else {
		close(e.done)
	}

	// Stopped: nothing is entered or claimed.
	var stopped earlyTable
	if e, why := stopped.reserve(t.Context(), "web", nil, c1, dst, &Config{Limits: lim}, true); e != nil || why != "" {
		t.Errorf("stopped table took a SYN: %v %q", e, why)
	}
	if stopped.claim("web", c1, dst, nil) != nil {
		t.Error("stopped table claimed")
	}
}

// TestEarlyCaptures: a listener's capture takes the flows its rules take,
// which are of the listener's address family only (nftRules): with no dst,
// a SYN of the other family to a captured port is not the listener's, and
// starts no dial (before, an IPv4 listener's capture of every destination
// dialed each IPv6 SYN the host forwarded to its port: a connection to a
// server no flow would claim, reset after earlyExpiry).
func TestEarlyCaptures(t *testing.T) {
	for _, tc := range []struct {
		listen string
		dst    []string
		to     string
		want   bool
	}{
		{"0.0.0.0:7000", nil, "192.0.2.10:80", true},
		{"0.0.0.0:7000", nil, "192.0.2.10:22", false},
		{"0.0.0.0:7000", nil, "[2001:db8::10]:80", false},
		{"[::]:7000", nil, "[2001:db8::10]:80", true},
		{"[::]:7000", nil, "192.0.2.10:80", false},
		{"0.0.0.0:7000", []string{"192.0.2.0/24"}, "192.0.2.10:80", true},
		{"0.0.0.0:7000", []string{"192.0.2.0/24"}, "198.51.100.1:80", false},
		{"[::]:7000", []string{"2001:db8::/32"}, "[2001:db8::10]:80", true},
	} {
		lc := ListenerConfig{Name: "t", Listen: tc.listen, Mode: "tproxy", Capture: &CaptureConfig{Dst: tc.dst, Ports: "80"}}
		st, err := newListenerState(lc, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.captures(netip.MustParseAddrPort(tc.to)); got != tc.want {
			t.Errorf("listen %s, capture dst %v ports 80: captures(%s) = %v, want %v", tc.listen, tc.dst, tc.to, got, tc.want)
		}
	}
}
