package relay

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// routeKey tells the main table's routes apart as the kernel does: a
// prefix may be routed on several links at one metric (every IPv6 link's
// fe80::/64, or ip route append), where link and gateway tell them apart.
type routeKey struct {
	dst      netip.Prefix
	tos      int
	priority int
	oif      int
	gw       netip.Addr
}

func keyOf(r *netlink.Route, family int) routeKey {
	k := routeKey{tos: r.Tos, priority: r.Priority, oif: r.LinkIndex, gw: ipAddr(r.Gw)}
	if r.Dst != nil {
		n, _ := r.Dst.Mask.Size()
		k.dst = netip.PrefixFrom(ipAddr(r.Dst.IP), n).Masked()
	} else if family == unix.AF_INET6 {
		k.dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	} else {
		k.dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	return k
}

// ipAddr is ip as a netip.Addr (IPv4 unmapped); the zero Addr for nil.
func ipAddr(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// lockedRoutes reads which metrics each route of the main table locks
// (RTAX_LOCK, as in "cwnd lock 50"), for the routes that lock any, in one
// dump. netlink.Route keeps a lock only when mtu, or rto_min, is the one
// locked; a copy made from it loses the rest.
func lockedRoutes(family int) (map[routeKey]uint32, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETROUTE, unix.NLM_F_DUMP)
	msg := &nl.RtMsg{}
	msg.Family = uint8(family)
	req.AddData(msg)
	locked := map[routeKey]uint32{}
	var perr error
	err := req.ExecuteIter(unix.NETLINK_ROUTE, unix.RTM_NEWROUTE, func(m []byte) bool {
		rm := nl.DeserializeRtMsg(m)
		if int(rm.Family) != family || rm.Flags&unix.RTM_F_CLONED != 0 {
			return true
		}
		attrs, err := nl.ParseRouteAttr(m[rm.Len():])
		if err != nil {
			perr = err
			return false
		}
		table, lock := uint32(rm.Table), uint32(0)
		k := routeKey{tos: int(rm.Tos)}
		var dst net.IP
		for _, a := range attrs {
			switch a.Attr.Type {
			case unix.RTA_TABLE:
				table = binary.NativeEndian.Uint32(a.Value)
			case unix.RTA_DST:
				dst = net.IP(a.Value)
			case unix.RTA_OIF:
				k.oif = int(binary.NativeEndian.Uint32(a.Value))
			case unix.RTA_GATEWAY:
				k.gw = ipAddr(a.Value)
			case unix.RTA_PRIORITY:
				k.priority = int(binary.NativeEndian.Uint32(a.Value))
			case unix.RTA_METRICS:
				ms, err := nl.ParseRouteAttr(a.Value)
				if err != nil {
					perr = err
					return false
				}
				for _, m := range ms {
					if m.Attr.Type == unix.RTAX_LOCK && len(m.Value) >= 4 {
						lock = binary.NativeEndian.Uint32(m.Value)
					}
				}
			}
		}
		if table != unix.RT_TABLE_MAIN || lock == 0 {
			return true
		}
		if dst == nil {
			k.dst = keyOf(&netlink.Route{}, family).dst
		} else {
			k.dst = netip.PrefixFrom(ipAddr(dst), int(rm.Dst_len)).Masked()
		}
		locked[k] = lock
		return true
	})
	if err != nil {
		return nil, err
	}
	return locked, perr
}

// metricNames are the route metrics by RTAX_ number, as ip route writes them.
var metricNames = map[int]string{
	unix.RTAX_MTU: "mtu", unix.RTAX_WINDOW: "window", unix.RTAX_RTT: "rtt", unix.RTAX_RTTVAR: "rttvar",
	unix.RTAX_SSTHRESH: "ssthresh", unix.RTAX_CWND: "cwnd", unix.RTAX_ADVMSS: "advmss",
	unix.RTAX_REORDERING: "reordering", unix.RTAX_HOPLIMIT: "hoplimit", unix.RTAX_INITCWND: "initcwnd",
	unix.RTAX_FEATURES: "features", unix.RTAX_RTO_MIN: "rto_min", unix.RTAX_INITRWND: "initrwnd",
	unix.RTAX_QUICKACK: "quickack", unix.RTAX_CC_ALGO: "congctl", unix.RTAX_FASTOPEN_NO_COOKIE: "fastopen_no_cookie",
}

// lockNames names the metrics locked in mask.
func lockNames(mask uint32) string {
	var names []string
	for i := 1; i < 32; i++ {
		if mask&(1<<i) != 0 {
			n := metricNames[i]
			if n == "" {
				n = fmt.Sprint(i)
			}
			names = append(names, n)
		}
	}
	return strings.Join(names, ", ")
}
