package relay

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// mainRoutes is what one round of turbo syncs reads of the main table:
// the routes that cover each peer, and the locks of the locked routes.
// Each comes from one dump per address family, whatever the number of
// peers: a router's table may hold a million routes.
type mainRoutes struct {
	routes   map[netip.Addr][]netlink.Route // the routes covering each peer
	errs     map[int]error                  // why a family's dump failed
	locks    map[int]map[routeKey]uint32    // by family, read when first needed
	lockErrs map[int]error                  // why a family's locks could not be read
	dumps    int                            // dumps made, for tests
}

// dumpAttempts bounds the dumps of one table in one round: a dump the
// table changed under (NLM_F_DUMP_INTR) may miss routes or hold deleted
// ones, and is made again.
const dumpAttempts = 3

// errTableChanging is a table that changed during every dump of a round.
var errTableChanging = errors.New("the main table changed during each of 3 dumps; trying again in the next round")

// readMainRoutes reads the main table's routes that cover peers.
func readMainRoutes(peers []netip.Addr) *mainRoutes {
	v := &mainRoutes{routes: map[netip.Addr][]netlink.Route{}, errs: map[int]error{}, locks: map[int]map[routeKey]uint32{}, lockErrs: map[int]error{}}
	byFamily := map[int][]netip.Addr{}
	for _, p := range peers {
		f := unix.AF_INET
		if p.Is6() {
			f = unix.AF_INET6
		}
		byFamily[f] = append(byFamily[f], p)
	}
	for family, ps := range byFamily {
		v.errs[family] = v.read(family, ps)
	}
	return v
}

func (v *mainRoutes) read(family int, peers []netip.Addr) error {
	var err error
	for range dumpAttempts {
		for _, p := range peers {
			v.routes[p] = nil
		}
		v.dumps++
		err = netlink.RouteListFilteredIter(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE, func(rt netlink.Route) bool {
			for _, p := range peers {
				if rt.Dst == nil || rt.Dst.Contains(p.AsSlice()) {
					v.routes[p] = append(v.routes[p], rt)
				}
			}
			return true
		})
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	switch {
	case errors.Is(err, netlink.ErrDumpInterrupted):
		return errTableChanging
	case err != nil:
		return fmt.Errorf("listing routes: %w", err)
	}
	return nil
}

// covering returns the main table's routes that cover peer (its own host
// routes among them), or why they could not be read.
func (v *mainRoutes) covering(peer netip.Addr) ([]netlink.Route, error) {
	f := unix.AF_INET
	if peer.Is6() {
		f = unix.AF_INET6
	}
	if err := v.errs[f]; err != nil {
		return nil, err
	}
	return v.routes[peer], nil
}

// locked returns which metrics the main table's route r locks.
func (v *mainRoutes) locked(family int, r *netlink.Route) (uint32, error) {
	if err := v.lockErrs[family]; err != nil {
		return 0, err
	}
	if v.locks[family] == nil {
		var m map[routeKey]uint32
		var err error
		for range dumpAttempts {
			v.dumps++
			if m, err = lockedRoutes(family); !errors.Is(err, netlink.ErrDumpInterrupted) {
				break
			}
		}
		switch {
		case errors.Is(err, netlink.ErrDumpInterrupted):
			err = errTableChanging
		case err != nil:
			err = fmt.Errorf("listing routes: %w", err)
		}
		if err != nil {
			v.lockErrs[family] = err
			return 0, err
		}
		v.locks[family] = m
	}
	return v.locks[family][keyOf(r, family)], nil
}
