package netlab

import (
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"

	"halfway/netlab/linkem"
	"halfway/strictyaml"
)

// Topology is a lab: hosts joined by emulated point-to-point links.
type Topology struct {
	// Name identifies the lab; its namespaces are named hwl.NAME.NODE.
	Name  string `yaml:"name"`
	Nodes []Node `yaml:"nodes"`
	Links []Link `yaml:"links"`
	// IPv6 adds an IPv6 address on every link besides the IPv4 one.
	IPv6 bool `yaml:"ipv6"`
	// Subnet is the IPv4 range links are numbered from, one /24 per link
	// (default 10.77.0.0/16: link i gets 10.77.i+1.0/24, a = .1, b = .2).
	Subnet string `yaml:"subnet"`
	// Congctl sets the congestion control of every route in every host
	// (RTAX_CC_ALGO), which works inside namespaces where the sysctl does not.
	Congctl string `yaml:"congctl"`
	// Sysctl is applied in every host, e.g. net.ipv4.tcp_fastopen: "3".
	Sysctl map[string]string `yaml:"sysctl"`
}

// Node is a host. In YAML it is a name, or {name: x, sysctl: {...}}.
type Node struct {
	Name   string            `yaml:"name"`
	Sysctl map[string]string `yaml:"sysctl"`
	// MPTCP sets the host's Multipath TCP path manager.
	MPTCP *NodeMPTCP `yaml:"mptcp"`
}

// NodeMPTCP is a host's MPTCP path manager, as `ip mptcp limits` and
// `ip mptcp endpoint` would set it. With endpoints "subflow", each of the
// host's addresses also gets a routing table of its own (ip rule from
// ADDR), so a subflow leaves by the link its address belongs to.
type NodeMPTCP struct {
	// Subflows and AddAddrAccepted are the limits (nil: 8, the most
	// the kernel allows; 0 is a limit too: no extra subflows, or no
	// announced address taken).
	Subflows        *int `yaml:"subflows"`
	AddAddrAccepted *int `yaml:"add_addr_accepted"`
	// Endpoints makes the addresses of the host's links after its first,
	// IPv4 and IPv6 ones, MPTCP endpoints: "subflow" (this host opens
	// extra subflows from them: a client), "signal" (announces them to
	// peers: a server), or "none" (default: the host only accepts
	// subflows).
	Endpoints string `yaml:"endpoints"`
}

func (nd *Node) UnmarshalYAMLNode(d *strictyaml.Decoder, n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		d.Decode(n, &nd.Name)
		return nil
	}
	type plain Node // without this method, so the decoder walks the fields
	d.Decode(n, (*plain)(nd))
	return nil
}

// Link is a point-to-point link between nodes A and B. Every setting may
// differ per direction.
type Link struct {
	A      string             `yaml:"a"`
	B      string             `yaml:"b"`
	Delay  PerDir[Duration]   `yaml:"delay"`
	Jitter PerDir[Duration]   `yaml:"jitter"`
	Rate   PerDir[Rate]       `yaml:"rate"`
	Loss   PerDir[Percent]    `yaml:"loss"`
	Queue  PerDir[QueueLimit] `yaml:"queue"`
	// Reorder lets jitter reorder packets, as on a multipath link.
	Reorder bool `yaml:"reorder"`
	// MTU of both ends (default 1500).
	MTU int `yaml:"mtu"`
	// Seed makes loss and jitter repeatable (0 = random).
	Seed uint64 `yaml:"seed"`
}

const defaultSubnet = "10.77.0.0/16"

// Params returns the emulator settings of the a→b and b→a directions.
func (l *Link) Params() (ab, ba linkem.Params) {
	mk := func(delay, jitter Duration, rate Rate, loss Percent, q QueueLimit, seed uint64) linkem.Params {
		return linkem.Params{
			Delay: time.Duration(delay), Jitter: time.Duration(jitter), Reorder: l.Reorder,
			Rate: uint64(rate), Loss: float64(loss), QueueBytes: q.Bytes, QueueTime: q.Time, Seed: seed,
		}
	}
	seedBA := l.Seed
	if seedBA != 0 {
		if seedBA ^= 0xba; seedBA == 0 { // seed 0xba: 0 would mean a random seed
			seedBA = 0xbaba
		}
	}
	return mk(l.Delay.AB, l.Jitter.AB, l.Rate.AB, l.Loss.AB, l.Queue.AB, l.Seed),
		mk(l.Delay.BA, l.Jitter.BA, l.Rate.BA, l.Loss.BA, l.Queue.BA, seedBA)
}

// ParseTopology decodes and validates a topology file's content.
func ParseTopology(data []byte) (*Topology, error) {
	var t Topology
	if err := strictyaml.Decode(data, &t); err != nil {
		return nil, err
	}
	if err := t.Validate(); err != nil {
		if errs, ok := err.(strictyaml.Errors); ok {
			strictyaml.Locate(data, errs) // as the relay's configuration errors
		}
		return nil, err
	}
	return &t, nil
}

// yamlMarshal encodes a topology so that ParseTopology reads it back: the
// form a lab stores for its daemon and for status.
func yamlMarshal(t *Topology) ([]byte, error) { return yaml.Marshal(t) }

// LoadTopology reads, decodes and validates a topology file.
func LoadTopology(path string) (*Topology, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	t, err := ParseTopology(data)
	if err != nil {
		return nil, fmt.Errorf("%s:\n%w", path, err)
	}
	return t, nil
}

// Compiled on first use, not at start-up: every command of the binary,
// the relay included, would pay for them otherwise.
var (
	topoNameRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,23}$`) })
	nodeNameRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`) })
	sysctlRE   = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^net\.[a-z0-9_.\-]+$`) })
)

// validName tells whether name can be a lab's name, and so whether files
// and namespaces derived from it are a lab's.
func validName(name string) bool { return topoNameRE().MatchString(name) }

// checkName refuses a name no lab can have before it is used in a path.
func checkName(name string) error {
	if !validName(name) {
		return fmt.Errorf("lab %q: not a lab name (1-24 of a-z, 0-9, _ and -): %w", name, ErrNotFound)
	}
	return nil
}

// Validate reports every problem with its field path.
func (t *Topology) Validate() error {
	var errs strictyaml.Errors
	add := func(path, format string, args ...any) {
		errs = append(errs, &strictyaml.Error{Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	if !topoNameRE().MatchString(t.Name) {
		add("name", "%q: want 1-24 of a-z, 0-9, _ and -, starting with a letter or digit", t.Name)
	}
	if len(t.Nodes) < 2 {
		add("nodes", "want at least 2 nodes")
	}
	seen := map[string]bool{}
	for i, n := range t.Nodes {
		p := fmt.Sprintf("nodes[%d]", i)
		if !nodeNameRE().MatchString(n.Name) {
			add(p, "%q: want a host name: a-z, 0-9 and -, starting with a letter, at most 32", n.Name)
		}
		if seen[n.Name] {
			add(p, "%q: duplicate node", n.Name)
		}
		seen[n.Name] = true
		validateSysctl(p+".sysctl", n.Sysctl, add)
		if m := n.MPTCP; m != nil {
			for _, l := range []struct {
				name string
				v    *int
			}{{"subflows", m.Subflows}, {"add_addr_accepted", m.AddAddrAccepted}} {
				if l.v != nil && (*l.v < 0 || *l.v > 8) {
					add(p+".mptcp."+l.name, "%d: want 0 to 8", *l.v)
				}
			}
			switch m.Endpoints {
			case "", "none", "subflow", "signal":
			default:
				add(p+".mptcp.endpoints", "%q: want subflow, signal or none", m.Endpoints)
			}
		}
	}
	validateSysctl("sysctl", t.Sysctl, add)
	if len(t.Links) == 0 {
		add("links", "want at least one link")
	}
	prefix, err := netip.ParsePrefix(t.subnet())
	switch {
	case err != nil || !prefix.Addr().Is4():
		add("subnet", "%q: want an IPv4 prefix like 10.77.0.0/16", t.Subnet)
	case !privateNet(prefix):
		add("subnet", "%q: want a private range (10/8, 172.16/12, 192.168/16 or 100.64/10)", t.Subnet)
	case prefix.Bits() > 24 || len(t.Links) > 1<<(24-prefix.Bits())-1:
		add("subnet", "%q: too small for %d links of a /24 each", t.Subnet, len(t.Links))
	}
	if t.Congctl != "" && !regexp.MustCompile(`^[a-z0-9_]{1,15}$`).MatchString(t.Congctl) {
		add("congctl", "%q: want a congestion control name like cubic", t.Congctl)
	}
	degree := map[string]int{}
	for i, l := range t.Links {
		p := fmt.Sprintf("links[%d]", i)
		for _, end := range []struct{ field, name string }{{"a", l.A}, {"b", l.B}} {
			if !seen[end.name] {
				add(p+"."+end.field, "%q: unknown node", end.name)
			}
			degree[end.name]++
		}
		if l.A == l.B && l.A != "" {
			add(p, "a and b are both %q: want two different nodes", l.A)
		}
		if l.MTU != 0 && (l.MTU < 1280 || l.MTU > 9000) {
			add(p+".mtu", "%d: want 1280 to 9000", l.MTU)
		}
		for _, d := range []struct {
			dir           string
			delay, jitter Duration
			rate          Rate
			queue         QueueLimit
		}{{"ab", l.Delay.AB, l.Jitter.AB, l.Rate.AB, l.Queue.AB}, {"ba", l.Delay.BA, l.Jitter.BA, l.Rate.BA, l.Queue.BA}} {
			if d.jitter > d.delay {
				add(p+".jitter", "%v (%s) exceeds the delay %v", d.jitter, d.dir, d.delay)
			}
			if time.Duration(d.delay) > linkem.MaxDelay {
				add(p+".delay", "%v (%s): want at most %v", d.delay, d.dir, linkem.MaxDelay)
			}
			if d.queue != (QueueLimit{}) && d.rate == 0 {
				add(p+".queue", "%v (%s): a queue needs a rate to fill it", d.queue, d.dir)
			}
			// Far past any real queue; in bytes at a fast rate it would
			// overflow the emulator's int64 (and become a 1-byte queue).
			if d.queue.Time > linkem.MaxDelay {
				add(p+".queue", "%v (%s): want at most %v", d.queue, d.dir, linkem.MaxDelay)
			}
		}
	}
	for name, n := range degree {
		if n > 9 {
			add("links", "node %q has %d links: at most 9", name, n)
		}
	}
	if len(errs) == 0 {
		t.checkHostsNames(add)
	}
	if len(errs) == 0 {
		if far := t.unreachable(); far != "" {
			add("links", "node %q cannot reach node %q: every node needs a path to every other", t.Nodes[0].Name, far)
		}
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// checkHostsNames refuses a name the lab's hosts file would give two hosts,
// which then resolves to whichever comes first: a node named like another
// node's link end (a-b beside nodes a and b), two link ends of different
// nodes (x to y-z and x-y to z are both x-y-z), or a loopback name. Link
// ends of one node may share a name: parallel links to one peer.
func (t *Topology) checkHostsNames(add func(string, string, ...any)) {
	type use struct{ host, what string }
	uses := map[string]use{}
	for i, n := range t.Nodes {
		switch n.Name {
		case "localhost", "ip6-localhost", "ip6-loopback":
			add(fmt.Sprintf("nodes[%d]", i), "%q: the hosts file names the loopback address so: pick another name", n.Name)
		}
		uses[n.Name] = use{n.Name, fmt.Sprintf("node %q", n.Name)}
	}
	for i, l := range t.Links {
		for _, end := range [][2]string{{l.A, l.B}, {l.B, l.A}} {
			name := end[0] + "-" + end[1]
			what := fmt.Sprintf("%s's address on links[%d]", end[0], i)
			u, ok := uses[name]
			switch {
			case !ok:
				uses[name] = use{end[0], what}
			case u.host != end[0]:
				add(fmt.Sprintf("links[%d]", i), "%q would name both %s and %s in the hosts file: rename a node", name, u.what, what)
			}
		}
	}
}

// unreachable returns a node with no path from the first node, or "".
func (t *Topology) unreachable() string {
	adj := map[string][]string{}
	for _, l := range t.Links {
		adj[l.A] = append(adj[l.A], l.B)
		adj[l.B] = append(adj[l.B], l.A)
	}
	seen := map[string]bool{t.Nodes[0].Name: true}
	queue := []string{t.Nodes[0].Name}
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		for _, m := range adj[n] {
			if !seen[m] {
				seen[m] = true
				queue = append(queue, m)
			}
		}
	}
	for _, n := range t.Nodes {
		if !seen[n.Name] {
			return n.Name
		}
	}
	return ""
}

func privateNet(p netip.Prefix) bool {
	for _, r := range []string{"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"} {
		pr := netip.MustParsePrefix(r)
		if pr.Bits() <= p.Bits() && pr.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

func validateSysctl(path string, m map[string]string, add func(string, string, ...any)) {
	for k, v := range m {
		if !sysctlRE().MatchString(k) || strings.Contains(k, "..") {
			add(path+"."+k, "want a network sysctl name like net.ipv4.tcp_fastopen")
		}
		if strings.ContainsAny(v, "\n") {
			add(path+"."+k, "value has a newline")
		}
	}
}

func (t *Topology) subnet() string {
	if t.Subnet == "" {
		return defaultSubnet
	}
	return t.Subnet
}

func (t *Topology) node(name string) *Node {
	for i := range t.Nodes {
		if t.Nodes[i].Name == name {
			return &t.Nodes[i]
		}
	}
	return nil
}
