package netlab

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

const ktcpYAML = `
name: ktcp
nodes: [client, rc, rs, server]
links:
  - {a: client, b: rc, delay: 16.35ms, rate: 100mbit}
  - {a: rc, b: rs, delay: 107.5ms, rate: 1gbit, loss: 0.1%}
  - {a: rs, b: server, delay: {ab: 13ms, ba: 12ms}, rate: 100mbit, queue: 256KB}
`

func TestParseTopology(t *testing.T) {
	topo, err := ParseTopology([]byte(ktcpYAML))
	if err != nil {
		t.Fatal(err)
	}
	if topo.Name != "ktcp" || len(topo.Nodes) != 4 || len(topo.Links) != 3 {
		t.Fatalf("parsed %+v", topo)
	}
	ab, ba := topo.Links[1].Params()
	if ab.Delay != 107500*time.Microsecond || ab.Rate != 1e9 || ab.Loss != 0.001 || ba.Loss != 0.001 {
		t.Errorf("link 1: ab %+v", ab)
	}
	ab, ba = topo.Links[2].Params()
	if ab.Delay != 13*time.Millisecond || ba.Delay != 12*time.Millisecond {
		t.Errorf("per-direction delay: ab %v ba %v", ab.Delay, ba.Delay)
	}
	if ab.QueueBytes != 256000 || ba.QueueBytes != 256000 {
		t.Errorf("queue: %d %d", ab.QueueBytes, ba.QueueBytes)
	}
}

func TestParseTopologyErrors(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string // substrings of the error, each must appear
	}{
		{"bad duration", `
name: x
nodes: [a, b]
links:
  - {a: a, b: b, delay: 10ms}
  - {a: a, b: b, delay: 10 ms}
`, []string{`links[1].delay: "10 ms": want a duration like 10ms (line 6)`}},
		{"unknown field", `
name: x
nodes: [a, b]
links: [{a: a, b: b, colour: red}]
`, []string{`links[0].colour: unknown field`}},
		{"bad per-direction key", `
name: x
nodes: [a, b]
links: [{a: a, b: b, delay: {ab: 1ms, up: 2ms}}]
`, []string{`links[0].delay: "up": unknown direction: want ab or ba`}},
		{"bad rate and loss", `
name: x
nodes: [a, b]
links: [{a: a, b: b, rate: fast, loss: {ab: 1%, ba: 150%}}]
`, []string{`links[0].rate: "fast": want a rate like 100mbit`, `links[0].loss.ba: "150%": want a percentage like 0.1%`}},
		{"NaN rate and loss", `
name: x
nodes: [a, b]
links: [{a: a, b: b, rate: NaNmbit, loss: NaN%}]
`, []string{`links[0].rate: "NaNmbit": want a rate like 100mbit`, `links[0].loss: "NaN%": want a percentage like 0.1%`}},
		{"a delay past an hour", `
name: x
nodes: [a, b]
links: [{a: a, b: b, delay: 2562047h}]
`, []string{`links[0].delay: 2562047h0m0s (ab): want at most 1h0m0s`}},
		{"unknown node", `
name: x
nodes: [a, b]
links: [{a: a, b: c}]
`, []string{`links[0].b: "c": unknown node`}},
		{"self link and duplicate node", `
name: x
nodes: [a, a, b]
links: [{a: b, b: b}]
`, []string{`nodes[1]: "a": duplicate node`, `links[0]: a and b are both "b"`}},
		{"bad names", `
name: "Bad Name"
nodes: [a, "B!"]
links: [{a: a, b: "B!"}]
`, []string{`name: "Bad Name"`, `nodes[1]: "B!"`}},
		{"jitter above delay", `
name: x
nodes: [a, b]
links: [{a: a, b: b, delay: 1ms, jitter: 2ms}]
`, []string{`links[0].jitter: 2ms (ab) exceeds the delay 1ms (line 4)`}},
		{"non-network sysctl", `
name: x
nodes: [a, {name: b, sysctl: {kernel.panic: "1"}}]
links: [{a: a, b: b}]
`, []string{`nodes[1].sysctl.kernel.panic: want a network sysctl`}},
		{"mptcp limits and endpoints", `
name: x
nodes: [{name: a, mptcp: {subflows: 9, add_addr_accepted: -1, endpoints: all}}, b]
links: [{a: a, b: b}]
`, []string{`nodes[0].mptcp.subflows: 9: want 0 to 8`, `nodes[0].mptcp.add_addr_accepted: -1: want 0 to 8`, `nodes[0].mptcp.endpoints: "all"`}},
		{"subnet too small", `
name: x
subnet: 10.1.2.0/25
nodes: [a, b]
links: [{a: a, b: b}]
`, []string{`subnet: "10.1.2.0/25"`}},
		{"no links", `
name: x
nodes: [a, b]
`, []string{`links: want at least one link`}},
		{"disconnected", `
name: x
nodes: [a, b, c, d]
links: [{a: a, b: b}, {a: c, b: d}]
`, []string{`links: node "a" cannot reach node "c"`}},
		{"queue without rate", `
name: x
nodes: [a, b]
links: [{a: a, b: b, queue: 64KB}]
`, []string{`links[0].queue: 64000B (ab): a queue needs a rate`}},
		{"duplicate direction", `
name: x
nodes: [a, b]
links: [{a: a, b: b, delay: {ab: 1ms, ab: 2ms}}]
`, []string{`duplicate`}},
		{"public subnet", `
name: x
subnet: 8.8.0.0/16
nodes: [a, b]
links: [{a: a, b: b}]
`, []string{`subnet: "8.8.0.0/16": want a private range`}},
		{"bad mtu", `
name: x
nodes: [a, b]
links: [{a: a, b: b, mtu: 100}]
`, []string{`links[0].mtu: 100: want 1280 to 9000 (line 4)`}},
		{"a queue past an hour", `
name: x
nodes: [a, b]
links: [{a: a, b: b, rate: 1000gbit, queue: 30000h}]
`, []string{`links[0].queue: 30000h0m0s (ab): want at most 1h0m0s`}},
		{"a node named like a link end", `
name: x
nodes: [a, b, a-b]
links: [{a: a, b: b}, {a: b, b: a-b}]
`, []string{`links[0]: "a-b" would name both node "a-b" and a's address on links[0] in the hosts file`}},
		{"two link ends of one name", `
name: x
nodes: [x, y-z, x-y, z]
links: [{a: x, b: y-z}, {a: x-y, b: z}, {a: y-z, b: z}]
`, []string{`links[1]: "x-y-z" would name both x's address on links[0] and x-y's address on links[1] in the hosts file`}},
		{"a node named localhost", `
name: x
nodes: [localhost, b]
links: [{a: localhost, b: b}]
`, []string{`nodes[0]: "localhost": the hosts file names the loopback address so`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseTopology([]byte(tt.yaml))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

func TestUnits(t *testing.T) {
	rates := map[string]Rate{"100mbit": 100e6, "1gbit": 1e9, "1.5Mbit/s": 1.5e6, "512kbit": 512e3, "8000bit": 8000, "10mbps": 10e6, "unlimited": 0}
	for in, want := range rates {
		var r Rate
		if err := r.UnmarshalText([]byte(in)); err != nil || r != want {
			t.Errorf("rate %q: %v, %v; want %v", in, r, err, want)
		}
	}
	for _, in := range []string{"", "fast", "-1mbit", "10", "1bit", "2000gbit"} {
		var r Rate
		if err := r.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("rate %q: no error", in)
		}
	}
	queues := map[string]QueueLimit{"256KB": {Bytes: 256000}, "1MiB": {Bytes: 1 << 20}, "1500b": {Bytes: 1500}, "50ms": {Time: 50 * time.Millisecond}, "default": {}}
	for in, want := range queues {
		var q QueueLimit
		if err := q.UnmarshalText([]byte(in)); err != nil || q != want {
			t.Errorf("queue %q: %v, %v; want %v", in, q, err, want)
		}
	}
	for _, in := range []string{"x", "-5KB", "0.1b"} {
		var q QueueLimit
		if err := q.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("queue %q: no error", in)
		}
	}
	var d Duration
	if err := d.UnmarshalText([]byte("250µs")); err != nil || time.Duration(d) != 250*time.Microsecond {
		t.Errorf("duration 250µs: %v %v", d, err)
	}
	var p Percent
	if err := p.UnmarshalText([]byte("0.1%")); err != nil || p != 0.001 {
		t.Errorf("percent 0.1%%: %v %v", p, err)
	}
	for _, in := range []string{"0.1", "101%", "x%"} {
		if err := p.UnmarshalText([]byte(in)); err == nil {
			t.Errorf("percent %q: no error", in)
		}
	}
}

// TestTopologyRoundTrip checks that a topology survives the YAML a lab
// stores for its daemon and for status.
func TestTopologyRoundTrip(t *testing.T) {
	topo, err := ParseTopology([]byte(ktcpYAML))
	if err != nil {
		t.Fatal(err)
	}
	topo.Links[0].Jitter = PerDir[Duration]{AB: Duration(time.Millisecond)}
	topo.Links[0].Queue = Both(QueueLimit{Time: 20 * time.Millisecond})
	topo.Nodes[1].Sysctl = map[string]string{"net.ipv4.tcp_fastopen": "3"}
	b, err := yamlMarshal(topo)
	if err != nil {
		t.Fatal(err)
	}
	again, err := ParseTopology(b)
	if err != nil {
		t.Fatalf("reparse: %v\n%s", err, b)
	}
	for i := range topo.Links {
		a1, b1 := topo.Links[i].Params()
		a2, b2 := again.Links[i].Params()
		if a1 != a2 || b1 != b2 {
			t.Errorf("link %d: %+v/%+v became %+v/%+v", i, a1, b1, a2, b2)
		}
	}
	if again.Nodes[1].Sysctl["net.ipv4.tcp_fastopen"] != "3" {
		t.Errorf("node sysctl lost: %+v", again.Nodes[1])
	}
}

func TestPlanLine(t *testing.T) {
	topo, err := ParseTopology([]byte(ktcpYAML))
	if err != nil {
		t.Fatal(err)
	}
	p := topo.Plan()
	client, rc, server := p.Host("client"), p.Host("rc"), p.Host("server")
	if client.NS != "hwl.ktcp.client" {
		t.Errorf("namespace %q", client.NS)
	}
	if got := client.Addr4(); got != netip.MustParseAddr("10.77.1.1") {
		t.Errorf("client address %v", got)
	}
	if got := server.Addr4(); got != netip.MustParseAddr("10.77.3.2") {
		t.Errorf("server address %v", got)
	}
	if len(rc.Ifaces) != 2 || rc.Ifaces[1].Name != "eth1" || rc.Ifaces[1].Peer != "rs" {
		t.Errorf("rc interfaces %+v", rc.Ifaces)
	}
	// client reaches the two far links through rc's address on link 0.
	want := []Route{
		{netip.MustParsePrefix("10.77.2.0/24"), netip.MustParseAddr("10.77.1.2"), "eth0"},
		{netip.MustParsePrefix("10.77.3.0/24"), netip.MustParseAddr("10.77.1.2"), "eth0"},
	}
	if len(client.Routes) != len(want) {
		t.Fatalf("client routes %+v", client.Routes)
	}
	for i := range want {
		if client.Routes[i] != want[i] {
			t.Errorf("client route %d: %+v, want %+v", i, client.Routes[i], want[i])
		}
	}
	// rc: link 2 via rs (10.77.2.2 on eth1); nothing for its own links.
	if len(rc.Routes) != 1 || rc.Routes[0].Via != netip.MustParseAddr("10.77.2.2") || rc.Routes[0].Dev != "eth1" {
		t.Errorf("rc routes %+v", rc.Routes)
	}
	hosts := string(p.HostsFile())
	for _, line := range []string{"10.77.1.1\tclient\n", "10.77.3.2\tserver\n", "10.77.2.1\trc-rs\n"} {
		if !strings.Contains(hosts, line) {
			t.Errorf("hosts file lacks %q:\n%s", line, hosts)
		}
	}
}

func TestPlanDiamondIPv6(t *testing.T) {
	topo, err := ParseTopology([]byte(`
name: diamond
ipv6: true
nodes: [a, b, c, d]
links:
  - {a: a, b: b}
  - {a: a, b: c}
  - {a: b, b: d}
  - {a: c, b: d}
  - {a: a, b: b}
`))
	if err != nil {
		t.Fatal(err)
	}
	p := topo.Plan()
	a := p.Host("a")
	if len(a.Ifaces) != 3 {
		t.Fatalf("a has %d interfaces", len(a.Ifaces))
	}
	if got := a.Addr6(); got != netip.MustParseAddr("fd00:77:1::1") {
		t.Errorf("a's IPv6 address %v", got)
	}
	// Routes from a: link 2 (b-d) via b, link 3 (c-d) via c, each v4 and v6.
	got := map[string]string{}
	for _, r := range a.Routes {
		got[r.Dst.String()] = r.Dev
	}
	want := map[string]string{
		"10.77.3.0/24": "eth0", "fd00:77:3::/64": "eth0",
		"10.77.4.0/24": "eth1", "fd00:77:4::/64": "eth1",
	}
	for dst, dev := range want {
		if got[dst] != dev {
			t.Errorf("route to %s via %q, want %q (all: %v)", dst, got[dst], dev, got)
		}
	}
	if len(a.Routes) != len(want) {
		t.Errorf("a has %d routes, want %d: %+v", len(a.Routes), len(want), a.Routes)
	}
}

// TestSeedBA: every seed gives the b→a direction a fixed seed of its own,
// 0xba too (whose XOR is 0, the "random" seed).
func TestSeedBA(t *testing.T) {
	for _, seed := range []uint64{1, 0xba, 0xbaba} {
		l := Link{Seed: seed}
		ab, ba := l.Params()
		if ab.Seed != seed || ba.Seed == 0 || ba.Seed == ab.Seed {
			t.Errorf("seed %#x: a→b %#x, b→a %#x; want the seed, and another fixed one", seed, ab.Seed, ba.Seed)
		}
	}
}

func TestPathBetween(t *testing.T) {
	tests := []struct {
		name, yaml, from, to string
		want                 string // the legs, From>To@Forward/Back, or the error's words
	}{
		{"chain", ktcpYAML, "client", "server", "client>rc@16.35ms/16.35ms rc>rs@107.5ms/107.5ms rs>server@13ms/12ms"},
		{"chain backwards", ktcpYAML, "server", "rc", "server>rs@12ms/13ms rs>rc@107.5ms/107.5ms"},
		{"parallel links: the first", `
name: two
nodes: [client, rc, server]
links:
  - {a: client, b: rc, delay: 10ms}
  - {a: client, b: rc, delay: 40ms}
  - {a: rc, b: server, delay: 5ms}
`, "client", "server", "client>rc@10ms/10ms rc>server@5ms/5ms"},
		// The server's name is its address on its link to b. The client
		// sends by its link to b, so its packets come from its address
		// there (the kernel's choice), not from its name's, on its link
		// to a: the answers come back through b as well (a lab pings
		// 100 ms, not 20+30+2+1).
		{"ring, answered to the source address", `
name: ring
nodes: [client, a, b, server]
links:
  - {a: server, b: b, delay: 30ms}
  - {a: client, b: a, delay: 1ms}
  - {a: client, b: b, delay: 20ms}
  - {a: a, b: server, delay: 2ms}
`, "client", "server", "client>b@20ms/20ms b>server@30ms/30ms"},
		// b is as near to the ends of the server's link (to c) as to
		// each other and sends toward c; the server answers through b
		// (a lab pings 41 ms: 12+10+6 there, 1+12 back).
		{"asymmetric", `
name: asym
nodes: [client, b, c, server]
links:
  - {a: client, b: b, delay: 12ms}
  - {a: c, b: b, delay: 10ms}
  - {a: c, b: server, delay: 6ms}
  - {a: server, b: b, delay: 1ms}
`, "client", "server", "the lab's routes go client→b→c→server and come back server→b→client"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			topo, err := ParseTopology([]byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			legs, err := topo.PathBetween(tt.from, tt.to)
			var got []string
			for _, l := range legs {
				got = append(got, fmt.Sprintf("%s>%s@%v/%v", l.From, l.To, l.Forward, l.Back))
			}
			s := strings.Join(got, " ")
			if err != nil {
				s = err.Error()
			}
			if !strings.Contains(s, tt.want) {
				t.Errorf("PathBetween(%s, %s) = %q, want %q", tt.from, tt.to, s, tt.want)
			}
		})
	}
}
