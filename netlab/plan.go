package netlab

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Prefix starts the name of every namespace and file a lab creates; nothing
// without it is ever touched.
const Prefix = "hwl."

// WireNS is the namespace holding a lab's link emulators.
func WireNS(lab string) string { return Prefix + lab }

// HostNS is the namespace of one host of a lab.
func HostNS(lab, node string) string { return Prefix + lab + "." + node }

// Plan is what a topology becomes: interfaces, addresses and routes.
// It is computed without touching the system, so it is unit-tested.
type Plan struct {
	Hosts []*HostPlan
	Links []LinkPlan
}

// HostPlan is one host's interfaces and routes.
type HostPlan struct {
	Name   string
	NS     string
	Ifaces []Iface
	Routes []Route
}

// Iface is a host's end of a link.
type Iface struct {
	Name      string // eth0, eth1, … in link order
	Link      int
	Peer      string
	Addr4     netip.Prefix
	Addr6     netip.Prefix // invalid when the topology has no IPv6
	PeerAddr4 netip.Addr
	PeerAddr6 netip.Addr
}

// Route sends a link's subnet via a neighbor.
type Route struct {
	Dst netip.Prefix
	Via netip.Addr
	Dev string
}

// LinkPlan names the interfaces of one link.
type LinkPlan struct {
	Index        int
	A, B         string // host names
	IfA, IfB     string // the hosts' interfaces
	WireA, WireB string // the wire's ends, in the wire namespace
	Net4, Net6   netip.Prefix
}

// Plan numbers links and computes shortest-path routes. t must be valid.
func (t *Topology) Plan() *Plan {
	base := netip.MustParsePrefix(t.subnet()).Masked().Addr().As4()
	hosts := map[string]*HostPlan{}
	p := &Plan{}
	for _, n := range t.Nodes {
		h := &HostPlan{Name: n.Name, NS: HostNS(t.Name, n.Name)}
		hosts[n.Name] = h
		p.Hosts = append(p.Hosts, h)
	}
	for i, l := range t.Links {
		// Link i gets the (i+1)th /24 of the subnet; the 0th is left for
		// the operator (e.g. for addresses added by hand).
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], binary.BigEndian.Uint32(base[:])+uint32(i+1)<<8)
		net4 := netip.PrefixFrom(netip.AddrFrom4(a), 24)
		a4, b4 := net4.Addr().Next(), net4.Addr().Next().Next()
		lp := LinkPlan{
			Index: i, A: l.A, B: l.B, Net4: net4,
			WireA: fmt.Sprintf("l%da", i), WireB: fmt.Sprintf("l%db", i),
		}
		var a6, b6 netip.Addr
		if t.IPv6 {
			var b [16]byte
			// fd00:77:LINK::/64, LINK counted from 1 as in the IPv4 plan.
			copy(b[:], []byte{0xfd, 0x00, 0x00, 0x77, byte((i + 1) >> 8), byte(i + 1)})
			lp.Net6 = netip.PrefixFrom(netip.AddrFrom16(b), 64)
			a6, b6 = lp.Net6.Addr().Next(), lp.Net6.Addr().Next().Next()
		}
		ha, hb := hosts[l.A], hosts[l.B]
		lp.IfA = fmt.Sprintf("eth%d", len(ha.Ifaces))
		ha.Ifaces = append(ha.Ifaces, Iface{Name: lp.IfA, Link: i, Peer: l.B,
			Addr4: netip.PrefixFrom(a4, 24), PeerAddr4: b4, Addr6: prefixOrZero(a6, 64), PeerAddr6: b6})
		lp.IfB = fmt.Sprintf("eth%d", len(hb.Ifaces))
		hb.Ifaces = append(hb.Ifaces, Iface{Name: lp.IfB, Link: i, Peer: l.A,
			Addr4: netip.PrefixFrom(b4, 24), PeerAddr4: a4, Addr6: prefixOrZero(b6, 64), PeerAddr6: a6})
		p.Links = append(p.Links, lp)
	}
	for _, h := range p.Hosts {
		h.Routes = routesFrom(h, hosts, p.Links)
	}
	return p
}

func prefixOrZero(a netip.Addr, bits int) netip.Prefix {
	if !a.IsValid() {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(a, bits)
}

// routesFrom finds, by breadth-first search, the first hop from h toward
// every link it is not on.
func routesFrom(h *HostPlan, hosts map[string]*HostPlan, links []LinkPlan) []Route {
	type hop struct {
		dist  int
		iface *Iface // h's interface toward the first hop
	}
	first := map[string]hop{h.Name: {0, nil}}
	queue := []string{h.Name}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		for i := range hosts[cur].Ifaces {
			nb := hosts[cur].Ifaces[i].Peer
			if _, ok := first[nb]; ok {
				continue
			}
			next := hop{first[cur].dist + 1, first[cur].iface}
			if cur == h.Name {
				next.iface = &h.Ifaces[i]
			}
			first[nb] = next
			queue = append(queue, nb)
		}
	}
	var routes []Route
	for _, l := range links {
		if l.A == h.Name || l.B == h.Name {
			continue
		}
		ha, okA := first[l.A]
		hb, okB := first[l.B]
		if !okA && !okB {
			continue // another component of the graph
		}
		via := ha
		if !okA || (okB && hb.dist < ha.dist) {
			via = hb
		}
		routes = append(routes, Route{Dst: l.Net4, Via: via.iface.PeerAddr4, Dev: via.iface.Name})
		if l.Net6.IsValid() {
			routes = append(routes, Route{Dst: l.Net6, Via: via.iface.PeerAddr6, Dev: via.iface.Name})
		}
	}
	return routes
}

// Host returns the plan of the named host, or nil.
func (p *Plan) Host(name string) *HostPlan {
	for _, h := range p.Hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// Addr4 is the host's primary IPv4 address: that of its first link.
func (h *HostPlan) Addr4() netip.Addr {
	if len(h.Ifaces) == 0 {
		return netip.Addr{}
	}
	return h.Ifaces[0].Addr4.Addr()
}

// Addr6 is the host's primary IPv6 address, invalid without IPv6.
func (h *HostPlan) Addr6() netip.Addr {
	if len(h.Ifaces) == 0 {
		return netip.Addr{}
	}
	return h.Ifaces[0].Addr6.Addr()
}

// HostsFile is the /etc/hosts each host of the lab sees: every node by name,
// and NODE-PEER for a node's address on its link to PEER.
func (p *Plan) HostsFile() []byte {
	b := []byte("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	for _, h := range p.Hosts {
		if a := h.Addr4(); a.IsValid() {
			b = fmt.Appendf(b, "%s\t%s\n", a, h.Name)
		}
		if a := h.Addr6(); a.IsValid() {
			b = fmt.Appendf(b, "%s\t%s\n", a, h.Name)
		}
		for _, ifc := range h.Ifaces {
			b = fmt.Appendf(b, "%s\t%s-%s\n", ifc.Addr4.Addr(), h.Name, ifc.Peer)
			if ifc.Addr6.IsValid() {
				b = fmt.Appendf(b, "%s\t%s-%s\n", ifc.Addr6.Addr(), h.Name, ifc.Peer)
			}
		}
	}
	return b
}
