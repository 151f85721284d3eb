package netlab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"halfway/netlab/linkem"
)

// ErrExists is returned by Up when a live lab of that name is up.
var ErrExists = errors.New("lab is already up")

// ErrNotFound is returned for a lab that is not up.
var ErrNotFound = errors.New("no such lab")

// Options say how a lab's emulators run.
type Options struct {
	// Detach runs the link emulators in a daemon (`EXE lab emulate NAME`)
	// that outlives the caller; the lab then stays up until Down.
	// Otherwise they run in this process and Close removes the lab.
	Detach bool
	// Exe is the halfway binary for the daemon; default: this executable.
	Exe string
	// Realtime schedules the emulators' reader and writer threads SCHED_FIFO.
	Realtime bool
	// File is the topology file, recorded for status.
	File string
}

// Lab is a topology that is up.
type Lab struct {
	Topo *Topology
	Plan *Plan

	hosts map[string]*Host
	wire  netns.NsHandle

	id string // the state record's ID: Close removes only this lab

	mu      sync.Mutex
	wires   []*linkem.Wire // in-process emulators
	cancel  context.CancelFunc
	runErr  chan error // one result per wire
	errOnce sync.Once
	failed  chan error // the first wire failure, for Err
	daemon  int
	closed  bool
}

// Host is one host of a lab.
type Host struct {
	Name string
	NS   string
	plan *HostPlan
	ns   netns.NsHandle
}

// Up creates the lab: namespaces, links, addresses, routes, hosts files and
// the link emulators. Stale labs (whose owner died) are removed first. On
// error, everything created is removed again.
func Up(ctx context.Context, t *Topology, opt Options) (lab *Lab, err error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	topoYAML, err := yamlMarshal(t)
	if err != nil {
		return nil, fmt.Errorf("encode topology: %w", err)
	}
	unlock, err := lockLabs()
	if err != nil {
		return nil, err
	}
	defer unlock()
	// A stale lab that cannot be removed is reported by Sweep and Down; it
	// must not keep other labs from coming up.
	_ = sweepLocked()
	if s, err := readState(t.Name); err == nil && s.alive() {
		return nil, fmt.Errorf("lab %s (owner pid %d): %w", t.Name, s.Owner, ErrExists)
	}
	if err := teardownLocked(t.Name); err != nil {
		return nil, fmt.Errorf("lab %s: remove what is left of an earlier run: %w", t.Name, err)
	}
	st := &state{Name: t.Name, ID: newID(), Owner: os.Getpid(), OwnerStart: procStart(os.Getpid()),
		Created: time.Now().UTC(), File: opt.File, Topology: string(topoYAML)}
	if err := writeState(st); err != nil {
		return nil, fmt.Errorf("write lab state: %w", err)
	}
	// The named result is nil on every error return: clean up through l.
	l := &Lab{Topo: t, Plan: t.Plan(), hosts: map[string]*Host{}, id: st.ID, failed: make(chan error, 1), wire: netns.None()}
	lab = l
	defer func() {
		if err != nil {
			l.closeHandles()
			_ = teardownLocked(t.Name)
		}
	}()
	if err := lab.build(); err != nil {
		return nil, err
	}
	if opt.Detach {
		pid, err := startDaemon(ctx, lab, opt)
		if err != nil {
			return nil, err
		}
		lab.daemon = pid
		st.Owner, st.OwnerStart, st.Daemon = pid, procStart(pid), true
		if err := writeState(st); err != nil {
			return nil, fmt.Errorf("write lab state: %w", err)
		}
		return lab, nil
	}
	if err := lab.startWires(linkem.Options{Realtime: opt.Realtime}); err != nil {
		return nil, err
	}
	return lab, nil
}

func (l *Lab) build() error {
	t := l.Topo
	var err error
	if err := createNS(WireNS(t.Name)); err != nil {
		return err
	}
	if l.wire, err = netns.GetFromName(WireNS(t.Name)); err != nil {
		return fmt.Errorf("open namespace %s: %w", WireNS(t.Name), err)
	}
	// The wire carries frames; it must not send any of its own.
	for _, k := range []string{"net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"} {
		if err := setSysctl(l.wire, k, "1"); err != nil {
			return err
		}
	}
	for _, hp := range l.Plan.Hosts {
		if err := createNS(hp.NS); err != nil {
			return err
		}
		ns, err := netns.GetFromName(hp.NS)
		if err != nil {
			return fmt.Errorf("open namespace %s: %w", hp.NS, err)
		}
		h := &Host{Name: hp.Name, NS: hp.NS, plan: hp, ns: ns}
		l.hosts[hp.Name] = h
		if err := h.baseSysctls(t.IPv6); err != nil {
			return err
		}
		// The kernel copies ".default." settings into an interface when it
		// is made: after the links they would reach none of the lab's.
		if err := l.userSysctls(h, true); err != nil {
			return err
		}
	}
	wh, err := newHandle(l.wire)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", WireNS(t.Name), err)
	}
	defer wh.Close()
	for i, lp := range l.Plan.Links {
		mtu := t.Links[i].MTU
		if mtu == 0 {
			mtu = 1500
		}
		for _, end := range []struct {
			wire, host, ifname string
			side               byte
		}{{lp.WireA, lp.A, lp.IfA, 0xa}, {lp.WireB, lp.B, lp.IfB, 0xb}} {
			veth := &netlink.Veth{
				LinkAttrs:        netlink.LinkAttrs{Name: end.wire, MTU: mtu},
				PeerName:         end.ifname,
				PeerHardwareAddr: hostMAC(i, end.side),
				PeerNamespace:    netlink.NsFd(l.hosts[end.host].ns),
			}
			if err := wh.LinkAdd(veth); err != nil {
				return fmt.Errorf("link %d: add veth %s/%s: %w", i, end.wire, end.ifname, err)
			}
			if err := wh.LinkSetUp(veth); err != nil {
				return fmt.Errorf("link %d: up %s: %w", i, end.wire, err)
			}
			// The peer must see its MTU too (veth sets only one side).
			if err := l.hosts[end.host].setMTU(end.ifname, mtu); err != nil {
				return err
			}
		}
	}
	for _, h := range l.hosts {
		if err := h.configure(l.Plan, t.Congctl); err != nil {
			return err
		}
		if err := l.userSysctls(h, false); err != nil {
			return err
		}
		if m := t.node(h.Name).MPTCP; m != nil {
			if err := h.configureMPTCP(m, t.Congctl); err != nil {
				return fmt.Errorf("host %s: mptcp: %w", h.Name, err)
			}
		}
		dir := filepath.Join(etcNetns, h.NS)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "hosts"), l.Plan.HostsFile(), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// userSysctls sets the topology's and then the host's own sysctls: the
// ".default." ones (defaults) or the others.
func (l *Lab) userSysctls(h *Host, defaults bool) error {
	for _, m := range []map[string]string{l.Topo.Sysctl, l.Topo.node(h.Name).Sysctl} {
		for k, v := range m {
			if strings.Contains(k, ".default.") != defaults {
				continue
			}
			if err := setSysctl(h.ns, k, v); err != nil {
				return fmt.Errorf("host %s: %w", h.Name, err)
			}
		}
	}
	return nil
}

func newID() string { return fmt.Sprintf("%016x", rand.Uint64()) }

// newHandle opens a netlink handle inside ns. The socket stays bound to ns;
// the thread that entered it is discarded (see inNS).
func newHandle(ns netns.NsHandle) (h *netlink.Handle, err error) {
	err = inNS(ns, func() (err error) {
		h, err = netlink.NewHandle()
		return err
	})
	return h, err
}

// hostMAC is a locally administered address that names the link and side,
// so static neighbor entries can be written before the peer exists.
func hostMAC(link int, side byte) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0x77, 0, byte(link >> 8), byte(link), side}
}

func (h *Host) baseSysctls(ipv6 bool) error {
	v6off := "1"
	if ipv6 {
		v6off = "0"
	}
	for _, kv := range [][2]string{
		{"net.ipv4.ip_forward", "1"},
		{"net.ipv4.conf.all.rp_filter", "0"},
		{"net.ipv4.conf.default.rp_filter", "0"},
		// Repeats must not inherit ssthresh and RTT from earlier connections.
		{"net.ipv4.tcp_no_metrics_save", "1"},
		{"net.ipv6.conf.all.disable_ipv6", v6off},
		{"net.ipv6.conf.default.disable_ipv6", v6off},
		{"net.ipv6.conf.all.forwarding", "1"},
		{"net.ipv6.conf.default.accept_dad", "0"},
		{"net.ipv6.conf.default.router_solicitations", "0"},
	} {
		if err := setSysctl(h.ns, kv[0], kv[1]); err != nil {
			return fmt.Errorf("host %s: %w", h.Name, err)
		}
	}
	return nil
}

func (h *Host) setMTU(ifname string, mtu int) error {
	nh, err := newHandle(h.ns)
	if err != nil {
		return fmt.Errorf("host %s: netlink: %w", h.Name, err)
	}
	defer nh.Close()
	link, err := nh.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("host %s: %s: %w", h.Name, ifname, err)
	}
	if err := nh.LinkSetMTU(link, mtu); err != nil {
		return fmt.Errorf("host %s: mtu %s: %w", h.Name, ifname, err)
	}
	return nil
}

// configure brings the host's interfaces up with their addresses, static
// neighbors (so no ARP round trip distorts the first measured RTT) and routes.
func (h *Host) configure(p *Plan, congctl string) error {
	nh, err := newHandle(h.ns)
	if err != nil {
		return fmt.Errorf("host %s: netlink: %w", h.Name, err)
	}
	defer nh.Close()
	fail := func(what string, err error) error { return fmt.Errorf("host %s: %s: %w", h.Name, what, err) }
	lo, err := nh.LinkByName("lo")
	if err != nil {
		return fail("lo", err)
	}
	if err := nh.LinkSetUp(lo); err != nil {
		return fail("lo up", err)
	}
	devs := map[string]netlink.Link{}
	for _, ifc := range h.plan.Ifaces {
		link, err := nh.LinkByName(ifc.Name)
		if err != nil {
			return fail(ifc.Name, err)
		}
		devs[ifc.Name] = link
		lp := p.Links[ifc.Link]
		peerSide := byte(0xb)
		if lp.IfB == ifc.Name && lp.B == h.Name {
			peerSide = 0xa
		}
		for _, a := range []struct{ addr, peer netip.Prefix }{
			{ifc.Addr4, netip.PrefixFrom(ifc.PeerAddr4, 32)},
			{ifc.Addr6, netip.PrefixFrom(ifc.PeerAddr6, 128)},
		} {
			if !a.addr.IsValid() {
				continue
			}
			addr := &netlink.Addr{IPNet: prefixNet(a.addr)}
			if a.addr.Addr().Is6() {
				addr.Flags = syscall.IFA_F_NODAD
			}
			if err := nh.AddrAdd(link, addr); err != nil {
				return fail("address "+a.addr.String(), err)
			}
			neigh := &netlink.Neigh{LinkIndex: link.Attrs().Index, State: netlink.NUD_PERMANENT,
				IP: a.peer.Addr().AsSlice(), HardwareAddr: hostMAC(ifc.Link, peerSide)}
			if err := nh.NeighSet(neigh); err != nil {
				return fail("neighbor "+a.peer.Addr().String(), err)
			}
		}
		if err := nh.LinkSetUp(link); err != nil {
			return fail(ifc.Name+" up", err)
		}
		if err := h.Do(func() error { return setGRO(ifc.Name, true) }); err != nil {
			return fail("offloads", err)
		}
		if congctl != "" {
			for _, a := range []netip.Prefix{ifc.Addr4, ifc.Addr6} {
				if !a.IsValid() {
					continue
				}
				r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: prefixNet(a.Masked()),
					Scope: netlink.SCOPE_LINK, Protocol: 2 /* kernel */, Congctl: congctl}
				if a.Addr().Is4() {
					r.Src = a.Addr().AsSlice()
				}
				if err := nh.RouteReplace(r); err != nil {
					return fail("route "+a.Masked().String()+" congctl "+congctl, err)
				}
			}
		}
	}
	for _, r := range h.plan.Routes {
		route := &netlink.Route{LinkIndex: devs[r.Dev].Attrs().Index, Dst: prefixNet(r.Dst),
			Gw: r.Via.AsSlice(), Congctl: congctl}
		if err := nh.RouteAdd(route); err != nil {
			return fail(fmt.Sprintf("route %s via %s", r.Dst, r.Via), err)
		}
	}
	return nil
}

// configureMPTCP sets the host's path manager: limits, endpoints, and on a
// host that opens subflows a routing table per address, so each subflow
// leaves by its own link.
func (h *Host) configureMPTCP(m *NodeMPTCP, congctl string) error {
	if err := setSysctl(h.ns, "net.mptcp.enabled", "1"); err != nil {
		return err
	}
	nh, err := newHandle(h.ns)
	if err != nil {
		return err
	}
	defer nh.Close()
	for i, ifc := range h.plan.Ifaces {
		if m.Endpoints != "subflow" {
			break // a host that only accepts or announces answers by its main table
		}
		link, err := nh.LinkByName(ifc.Name)
		if err != nil {
			return err
		}
		table := 1000 + i
		// IPv4 and, in a topology with IPv6, IPv6: the path manager
		// opens a connection's subflows from addresses of its family.
		for _, a := range []struct {
			addr netip.Prefix
			peer netip.Addr
		}{{ifc.Addr4, ifc.PeerAddr4}, {ifc.Addr6, ifc.PeerAddr6}} {
			if !a.addr.IsValid() {
				continue
			}
			for _, r := range []*netlink.Route{
				// With the topology's congctl, as the main table's routes:
				// connects resolve their route through these tables.
				{LinkIndex: link.Attrs().Index, Dst: prefixNet(a.addr.Masked()), Scope: netlink.SCOPE_LINK, Table: table, Congctl: congctl},
				{LinkIndex: link.Attrs().Index, Gw: a.peer.AsSlice(), Table: table, Congctl: congctl}, // the family's default
			} {
				if err := nh.RouteReplace(r); err != nil {
					return fmt.Errorf("table %d: %w", table, err)
				}
			}
			rule := netlink.NewRule()
			rule.Src, rule.Table, rule.Priority = prefixNet(netip.PrefixFrom(a.addr.Addr(), a.addr.Addr().BitLen())), table, 100+i
			if a.addr.Addr().Is6() {
				rule.Family = netlink.FAMILY_V6
			}
			if err := nh.RuleAdd(rule); err != nil {
				return fmt.Errorf("rule from %s: %w", a.addr.Addr(), err)
			}
		}
	}
	limit := func(v *int) int {
		if v == nil {
			return 8
		}
		return *v
	}
	subflows, accepted := limit(m.Subflows), limit(m.AddAddrAccepted)
	ip := func(args ...string) error {
		if out, err := h.Command(context.Background(), "ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
		}
		return nil
	}
	if err := ip("mptcp", "limits", "set", "subflow", fmt.Sprint(subflows), "add_addr_accepted", fmt.Sprint(accepted)); err != nil {
		return err
	}
	if m.Endpoints == "subflow" || m.Endpoints == "signal" {
		for i, ifc := range h.plan.Ifaces {
			if i == 0 {
				continue // the address connections start from
			}
			for _, a := range []netip.Prefix{ifc.Addr4, ifc.Addr6} {
				if !a.IsValid() {
					continue
				}
				if err := ip("mptcp", "endpoint", "add", a.Addr().String(), "dev", ifc.Name, m.Endpoints); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// openWires opens every link's emulator; it must run in the wire namespace.
func openWires(p *Plan, t *Topology, opt linkem.Options) ([]*linkem.Wire, error) {
	var wires []*linkem.Wire
	for i, lp := range p.Links {
		ab, ba := t.Links[i].Params()
		w, err := linkem.Open(lp.WireA, lp.WireB, ab, ba, opt)
		if err != nil {
			for _, w := range wires {
				w.Close()
			}
			return nil, fmt.Errorf("link %d (%s-%s): %w", i, lp.A, lp.B, err)
		}
		wires = append(wires, w)
	}
	// Each direction's reader and writer run locked to threads of their
	// own and sleep in ppoll. Woken on time, such a thread still needs one
	// of the runtime's Ps to go on: with GOMAXPROCS at the CPU count it
	// waits behind the others, up to a scheduling quantum and more (the
	// counters showed writes 50 ms late). With a P for each of them the
	// kernel alone decides, and it honours their SCHED_FIFO.
	if n := runtime.NumCPU() + 4*len(wires); runtime.GOMAXPROCS(0) < n {
		runtime.GOMAXPROCS(n)
	}
	return wires, nil
}

func (l *Lab) startWires(opt linkem.Options) error {
	err := inNS(l.wire, func() (err error) {
		l.wires, err = openWires(l.Plan, l.Topo, opt)
		return err
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	l.runErr = make(chan error, len(l.wires))
	for _, w := range l.wires {
		go func() {
			err := w.Run(ctx)
			if err != nil {
				l.errOnce.Do(func() { l.failed <- err })
			}
			l.runErr <- err
		}()
	}
	return nil
}

// Err delivers the first failure of an in-process emulator: the lab's links
// no longer carry packets. It never delivers for a detached lab.
func (l *Lab) Err() <-chan error { return l.failed }

// startDaemon starts `EXE lab emulate NAME` inside the wire namespace and
// waits until it reports that its wires are open.
func startDaemon(ctx context.Context, l *Lab, opt Options) (int, error) {
	exe := opt.Exe
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return 0, err
		}
	}
	logf, err := os.OpenFile(logPath(l.Topo.Name), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	args := []string{"lab", "emulate"}
	if opt.Realtime {
		args = append(args, "--realtime")
	}
	cmd := exec.Command(exe, append(args, l.Topo.Name)...)
	// ps shows the daemon under the lab's prefix, like its namespaces.
	cmd.Args[0] = WireNS(l.Topo.Name) + ".emulator"
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	// The child inherits the network namespace of the thread that forks it.
	if err := inNS(l.wire, cmd.Start); err != nil {
		return 0, fmt.Errorf("start emulator: %w", err)
	}
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = fmt.Errorf("unexpected %q", line)
		}
		ready <- err
	}()
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	select {
	case err = <-ready:
	case <-timer.C:
		err = errors.New("not ready after 10s")
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		msg, _ := os.ReadFile(logPath(l.Topo.Name))
		return 0, fmt.Errorf("start emulator: %w: %s", err, strings.TrimSpace(string(msg)))
	}
	go cmd.Wait() // reap it if it dies while we still run
	return cmd.Process.Pid, nil
}

// Host returns the named host, or nil.
func (l *Lab) Host(name string) *Host { return l.hosts[name] }

// Hosts returns the hosts in topology order.
func (l *Lab) Hosts() []*Host {
	var hs []*Host
	for _, hp := range l.Plan.Hosts {
		hs = append(hs, l.hosts[hp.Name])
	}
	return hs
}

// DaemonPID is the pid of a detached lab's emulator daemon, or 0.
func (l *Lab) DaemonPID() int { return l.daemon }

// LinkStats returns the counters of each link's directions (a→b, b→a).
func (l *Lab) LinkStats() ([]LinkStats, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.daemon != 0 {
		return queryStats(l.Topo.Name)
	}
	out := make([]LinkStats, len(l.wires))
	for i, w := range l.wires {
		out[i].AB, out[i].BA = w.Stats()
	}
	return out, nil
}

// LinkStats are the emulator counters of one link.
type LinkStats struct {
	AB linkem.DirStats `json:"ab"`
	BA linkem.DirStats `json:"ba"`
}

// Close removes the lab: emulators, processes in its hosts, namespaces and
// files. For a detached lab it stops the daemon too.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	var errs []error
	if l.cancel != nil {
		l.cancel()
		for range l.wires {
			errs = append(errs, <-l.runErr)
		}
	}
	l.mu.Unlock()
	l.closeHandles()
	unlock, err := lockLabs()
	if err != nil {
		return err
	}
	defer unlock()
	// After `halfway lab down NAME` another lab may have taken the name:
	// remove the lab only if the record is still ours (or gone).
	if s, err := readState(l.Topo.Name); err == nil && s.ID != l.id {
		return errors.Join(errs...)
	}
	return errors.Join(append(errs, teardownLocked(l.Topo.Name))...)
}

func (l *Lab) closeHandles() {
	for _, h := range l.hosts {
		h.ns.Close()
	}
	if l.wire.IsOpen() {
		l.wire.Close()
	}
}

// Down removes the named lab, whether or not its owner is alive.
func Down(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	unlock, err := lockLabs()
	if err != nil {
		return err
	}
	defer unlock()
	names, err := labNamespaces(name)
	if err != nil {
		return err
	}
	if len(names) == 0 && len(etcNetnsDirs(name)) == 0 && len(Remains(name)) == 0 {
		return fmt.Errorf("lab %s: %w", name, ErrNotFound)
	}
	return teardownLocked(name)
}

// DownAll removes every lab on this machine.
func DownAll() error {
	unlock, err := lockLabs()
	if err != nil {
		return err
	}
	defer unlock()
	names, err := labNames()
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range names {
		errs = append(errs, teardownLocked(n))
	}
	return errors.Join(errs...)
}

// Sweep removes labs left behind by processes that died.
func Sweep() error {
	unlock, err := lockLabs()
	if err != nil {
		return err
	}
	defer unlock()
	return sweepLocked()
}

func sweepLocked() error {
	names, err := labNames()
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range names {
		if s, err := readState(n); err == nil && s.alive() {
			continue
		}
		errs = append(errs, teardownLocked(n))
	}
	return errors.Join(errs...)
}

// teardownLocked removes everything of a lab: processes in its namespaces
// (the emulator daemon among them), namespaces, /etc/netns entries and
// state files. It goes on past errors and reports them all.
func teardownLocked(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	var errs []error
	nss, err := labNamespaces(name)
	errs = append(errs, err)
	killAll(nss, 2*time.Second)
	for _, ns := range nss {
		errs = append(errs, deleteNS(ns))
	}
	for _, d := range etcNetnsDirs(name) {
		errs = append(errs, os.RemoveAll(filepath.Join(etcNetns, d)))
	}
	for _, f := range []string{statePath(name), stateTmpPath(name), logPath(name), socketPath(name)} {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
