package relay

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// localPrefixes lists the prefixes of the namespace's local routes in its
// local table, where the kernel puts those of addresses on lo and ip
// route puts AnyIP routes, of one address too (ip route add local
// 192.0.2.9 dev lo: no interface has it). Only that table: a router's main
// table may hold a million routes, and other tables serve policy rules.
func localPrefixes() ([]netip.Prefix, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_LOCAL, Type: unix.RTN_LOCAL}, netlink.RT_FILTER_TYPE|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list local routes: %w", err)
	}
	var out []netip.Prefix
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		if !ok || ones == 0 {
			continue // a default route is a policy's
		}
		if p, err := ip.Unmap().Prefix(ones); err == nil {
			out = append(out, p)
		}
	}
	return out, nil
}

// countRules counts the policy rules of the family (IPv6 or IPv4) that
// send packets with mark to routing table; with a mark below 0, those that
// look the table up at all.
func countRules(ipv6 bool, mark, table int) (int, error) {
	family := unix.AF_INET
	if ipv6 {
		family = unix.AF_INET6
	}
	rules, err := netlink.RuleList(family)
	if err != nil {
		return 0, fmt.Errorf("list policy rules: %w", err)
	}
	n := 0
	for _, r := range rules {
		if r.Table == table && (mark < 0 || r.Mark == uint32(mark) && (r.Mask == nil || *r.Mask == 0xffffffff)) {
			n++
		}
	}
	return n, nil
}
