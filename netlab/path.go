package netlab

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// PathLeg is one hop of a path through a topology, in the path's direction.
type PathLeg struct {
	From, To   string
	Forward    time.Duration // one-way delay From→To
	Back       time.Duration // one-way delay To→From
	RateToward Rate          // rate To→From: the direction a download flows
	MTU        int           // the link's, 1500 where it sets none
}

// PathBetween returns the legs that packets from node from to node to's
// address (its first link's, the one its name resolves to in the lab)
// cross, hop by hop along the routes the lab installs (Plan). The answers,
// sent to from's address on the link it sends by (the source address the
// kernel picks), must come back over the same links: where the lab's
// routes send them another way, one path cannot describe the connection
// and PathBetween says so.
func (t *Topology) PathBetween(from, to string) ([]PathLeg, error) {
	p := t.Plan()
	src, dst := p.Host(from), p.Host(to)
	if src == nil || dst == nil {
		return nil, fmt.Errorf("topology %s: no node %q or %q", t.Name, from, to)
	}
	if from == to {
		return nil, nil
	}
	fwd, err := p.hops(from, dst.Addr4())
	if err != nil {
		return nil, fmt.Errorf("topology %s: path from %s to %s: %w", t.Name, from, to, err)
	}
	// The answers go to the address the connection comes from: without a
	// bind, the kernel's choice, the client's address on the link its
	// packets leave by, not the one its name resolves to.
	back, err := p.hops(to, src.toward(dst.Addr4()).Addr4.Addr())
	if err != nil {
		return nil, fmt.Errorf("topology %s: path from %s to %s: %w", t.Name, to, from, err)
	}
	symmetric := len(back) == len(fwd)
	for i := 0; symmetric && i < len(fwd); i++ {
		symmetric = fwd[i] == back[len(back)-1-i]
	}
	if !symmetric {
		return nil, fmt.Errorf("topology %s: the lab's routes go %s and come back %s: no one path describes the connection",
			t.Name, p.describe(from, fwd), p.describe(to, back))
	}
	var legs []PathLeg
	n := from
	for _, i := range fwd {
		l := t.Links[i]
		leg := PathLeg{From: l.A, To: l.B, Forward: time.Duration(l.Delay.AB), Back: time.Duration(l.Delay.BA), RateToward: l.Rate.BA}
		if l.B == n { // the link runs against the path
			leg = PathLeg{From: l.B, To: l.A, Forward: time.Duration(l.Delay.BA), Back: time.Duration(l.Delay.AB), RateToward: l.Rate.AB}
		}
		leg.MTU = l.MTU
		if leg.MTU == 0 {
			leg.MTU = 1500
		}
		legs = append(legs, leg)
		n = leg.To
	}
	return legs, nil
}

// hops follows the plan's routes from host from to the host that has addr,
// and returns the indexes of the links crossed.
func (p *Plan) hops(from string, addr netip.Addr) ([]int, error) {
	var links []int
	cur := p.Host(from)
	for range len(p.Hosts) {
		if cur.has(addr) {
			return links, nil
		}
		ifc := cur.toward(addr)
		if ifc == nil {
			return nil, fmt.Errorf("%s has no route to %s", cur.Name, addr)
		}
		links = append(links, ifc.Link)
		cur = p.Host(ifc.Peer)
	}
	return nil, fmt.Errorf("the routes to %s loop", addr)
}

// has says whether addr is one of the host's addresses.
func (h *HostPlan) has(addr netip.Addr) bool {
	for _, ifc := range h.Ifaces {
		if ifc.Addr4.Addr() == addr || ifc.Addr6.IsValid() && ifc.Addr6.Addr() == addr {
			return true
		}
	}
	return false
}

// toward is the interface the host sends packets for addr through: the one
// on addr's link, or its route's.
func (h *HostPlan) toward(addr netip.Addr) *Iface {
	for i := range h.Ifaces {
		if h.Ifaces[i].Addr4.Contains(addr) || h.Ifaces[i].Addr6.IsValid() && h.Ifaces[i].Addr6.Contains(addr) {
			return &h.Ifaces[i]
		}
	}
	for _, r := range h.Routes {
		if !r.Dst.Contains(addr) {
			continue
		}
		for i := range h.Ifaces {
			if h.Ifaces[i].Name == r.Dev {
				return &h.Ifaces[i]
			}
		}
	}
	return nil
}

// describe writes a route as the hosts it crosses, a→b→c.
func (p *Plan) describe(from string, links []int) string {
	names := []string{from}
	n := from
	for _, i := range links {
		l := p.Links[i]
		if l.A == n {
			n = l.B
		} else {
			n = l.A
		}
		names = append(names, n)
	}
	return strings.Join(names, "→")
}
