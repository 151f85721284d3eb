package relay

import (
	"encoding/binary"
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// lockedMetrics reads which metrics the main table's route r locks
// (RTAX_LOCK, as in "cwnd lock 50"). netlink.Route keeps a lock only when
// mtu, or rto_min, is the one locked; a copy made from it loses the rest.
func lockedMetrics(family int, r *netlink.Route) (uint32, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETROUTE, unix.NLM_F_DUMP)
	msg := &nl.RtMsg{}
	msg.Family = uint8(family)
	req.AddData(msg)
	wantLen := 0
	var wantDst net.IP
	if r.Dst != nil {
		wantLen, _ = r.Dst.Mask.Size()
		wantDst = r.Dst.IP.Mask(r.Dst.Mask)
	}
	var locks uint32
	var perr error
	err := req.ExecuteIter(unix.NETLINK_ROUTE, unix.RTM_NEWROUTE, func(m []byte) bool {
		rm := nl.DeserializeRtMsg(m)
		if int(rm.Dst_len) != wantLen || int(rm.Tos) != r.Tos || rm.Flags&unix.RTM_F_CLONED != 0 {
			return true
		}
		attrs, err := nl.ParseRouteAttr(m[rm.Len():])
		if err != nil {
			perr = err
			return false
		}
		table, priority, lock, oif := uint32(rm.Table), 0, uint32(0), 0
		dst, gw := net.IP(nil), net.IP(nil)
		for _, a := range attrs {
			switch a.Attr.Type {
			case unix.RTA_TABLE:
				table = binary.NativeEndian.Uint32(a.Value)
			case unix.RTA_DST:
				dst = net.IP(a.Value)
			case unix.RTA_OIF:
				oif = int(binary.NativeEndian.Uint32(a.Value))
			case unix.RTA_GATEWAY:
				gw = net.IP(a.Value)
			case unix.RTA_PRIORITY:
				priority = int(binary.NativeEndian.Uint32(a.Value))
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
		// A prefix may be routed on several links at one metric (every
		// IPv6 link's fe80::/64, or ip route append): r's link and gateway
		// tell its route apart.
		if table != unix.RT_TABLE_MAIN || priority != r.Priority || wantLen > 0 && !dst.Equal(wantDst) ||
			oif != r.LinkIndex || !gw.Equal(r.Gw) {
			return true
		}
		locks = lock
		return false
	})
	if err != nil {
		return 0, fmt.Errorf("listing routes: %w", err)
	}
	return locks, perr
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
