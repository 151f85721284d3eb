package relay

import (
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
)

// policy decides which clients a listener serves and where they may go.
type policy struct {
	clients []netip.Prefix
	dests   []destRule
	own     *ownSet // the relay's own addresses, when ownRef is nil
	// ownRef, when set, holds the server's current view of its addresses,
	// refreshed while it runs (addresses come and go: DHCP, SLAAC).
	ownRef *atomic.Pointer[ownSet]
}

// ownSet is what this host delivers locally: its interfaces' addresses,
// and the prefixes of its local routes (an address on lo makes its whole
// prefix local; AnyIP routes do the same).
type ownSet struct {
	addrs map[netip.Addr]bool
	local []netip.Prefix
}

func (o *ownSet) has(a netip.Addr) bool {
	if o == nil {
		return false
	}
	if o.addrs[a] {
		return true
	}
	for _, p := range o.local {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func newPolicy(ln *ListenerConfig, ownRef *atomic.Pointer[ownSet]) (*policy, error) {
	p := &policy{ownRef: ownRef}
	if ownRef == nil {
		var err error
		if p.own, err = ownAddrs(); err != nil {
			return nil, err
		}
	}
	for _, s := range ln.AllowClients {
		pr, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, err
		}
		p.clients = append(p.clients, pr.Masked())
	}
	for _, s := range ln.AllowDestinations {
		r, err := parseDestRule(s)
		if err != nil {
			return nil, err
		}
		p.dests = append(p.dests, r)
	}
	return p, nil
}

func (p *policy) clientAllowed(a netip.Addr) bool {
	a = a.Unmap()
	a = a.WithZone("") // a link-local client: its zone is the interface it came by
	for _, pr := range p.clients {
		if pr.Contains(a) {
			return true
		}
	}
	return false
}

// specialNets are refused unless an allow rule names them exactly or more
// narrowly: a relay must never become a way into its own host, the cloud
// metadata service or a link-local segment.
var specialNets = withNAT64([]netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("::/128"),
	netip.MustParsePrefix("169.254.0.0/16"), // link-local
	netip.MustParsePrefix("fe80::/10"),
	// Cloud metadata and host services, each to be named exactly.
	netip.MustParsePrefix("169.254.169.254/32"),
	netip.MustParsePrefix("fd00:ec2::254/128"),
	netip.MustParsePrefix("100.100.100.200/32"),
	netip.MustParsePrefix("168.63.129.16/32"),
	netip.MustParsePrefix("64:ff9b::/96"),   // NAT64 reaches 127/8 and 169.254/16 too
	netip.MustParsePrefix("64:ff9b:1::/48"), // and the local-use NAT64 prefix (RFC 8215)
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("ff00::/8"),
	netip.MustParsePrefix("255.255.255.255/32"),
})

// nat64 is the well-known NAT64 prefix (RFC 6052): its addresses carry an
// IPv4 address in their last 32 bits, which a translator reaches. A rule
// naming the prefix opens the IPv4 internet through it, not the special
// IPv4 addresses: they stay special in that form too, so 64:ff9b::/96
// opens 64:ff9b::a9fe:a9fe (169.254.169.254) no more than 0.0.0.0/0 opens
// the address itself. (The local-use prefix, 64:ff9b:1::/48, places the
// IPv4 address where the operator's translator does: it stays special
// whole.)
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// withNAT64 adds to nets the NAT64 form of each of its IPv4 prefixes.
func withNAT64(nets []netip.Prefix) []netip.Prefix {
	for _, p := range nets {
		if p.Addr().Is4() {
			nets = append(nets, netip.PrefixFrom(nat64Of(p.Addr()), nat64.Bits()+p.Bits()))
		}
	}
	return nets
}

// nat64Of is a's address in the well-known NAT64 prefix.
func nat64Of(a netip.Addr) netip.Addr {
	b, v4 := nat64.Addr().As16(), a.As4()
	copy(b[12:], v4[:])
	return netip.AddrFrom16(b)
}

// fromNAT64 is the IPv4 address a, of the well-known NAT64 prefix,
// reaches through a translator; false for any other address.
func fromNAT64(a netip.Addr) (netip.Addr, bool) {
	if !nat64.Contains(a) {
		return netip.Addr{}, false
	}
	b := a.As16()
	return netip.AddrFrom4([4]byte(b[12:])), true
}

// destAllowed tells whether a flow may go to dst.
func (p *policy) destAllowed(dst netip.AddrPort) bool {
	a := dst.Addr().Unmap().WithZone("") // a link-local destination: judged by its address (see special)
	for _, r := range p.dests {
		if !r.prefix.Contains(a) || !r.ports.has(dst.Port()) {
			continue
		}
		if p.special(a) && !r.narrowEnough(a, p) {
			continue
		}
		return true
	}
	return false
}

// isOwn tells whether a is one of the relay's addresses. A zone (a
// TPROXY flow's link-local destination carries its interface's) does not
// hide one, nor the NAT64 prefix, through which an IPv4 one is reached.
func (p *policy) isOwn(a netip.Addr) bool {
	a = a.WithZone("")
	own := p.own
	if p.ownRef != nil {
		if o := p.ownRef.Load(); o != nil {
			own = o
		}
	}
	if v4, ok := fromNAT64(a); ok && own.has(v4) {
		return true
	}
	return own.has(a)
}

func (p *policy) special(a netip.Addr) bool {
	// A zone makes every prefix miss the address (Prefix.Contains): a
	// TPROXY flow's link-local destination carries the interface's.
	a = a.WithZone("")
	if p.isOwn(a) {
		return true
	}
	for _, s := range specialNets {
		if s.Contains(a) {
			return true
		}
	}
	return false
}

// narrowEnough: a rule may open a special address only by naming it (for
// the relay's own addresses) or a prefix inside every special range that
// holds it (so 169.254.0.0/16 opens link-local but not the metadata address).
func (r destRule) narrowEnough(a netip.Addr, p *policy) bool {
	if p.isOwn(a) {
		return r.prefix.Bits() == a.BitLen()
	}
	for _, s := range specialNets {
		if s.Contains(a) && !(s.Bits() <= r.prefix.Bits() && s.Contains(r.prefix.Addr())) {
			return false
		}
	}
	return true
}

// ownAddrs lists the addresses of this host's interfaces and the
// prefixes of its local routes (localPrefixes), those of one address
// among the addresses. It fails rather than list fewer: a set missing an
// address would let catch-all rules reach it.
func ownAddrs() (*ownSet, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("list interface addresses: %w", err)
	}
	local, err := localPrefixes()
	if err != nil {
		return nil, err
	}
	own := &ownSet{addrs: map[netip.Addr]bool{}}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				own.addrs[ip.Unmap()] = true
			}
		}
	}
	for _, p := range local {
		if p.IsSingleIP() {
			own.addrs[p.Addr()] = true // a lookup, not a scan of local
		} else {
			own.local = append(own.local, p)
		}
	}
	return own, nil
}
