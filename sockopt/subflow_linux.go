package sockopt

import (
	"bufio"
	"bytes"
	_ "embed"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// The sock_ops program, compiled from bpf/subflow.c by `make bpf` (clang
// 14); `make test` compiles it again and fails if the result differs.
//
//go:embed subflow_bpfel.o
var subflowObj []byte

// subflowKey and subflowOpts are bpf/subflow.c's map key and value.
type subflowKey struct {
	Netns uint64
	Port  uint32
	_     uint32
}

type subflowOpts struct {
	Pacing        uint32
	RTOMinUs      uint32
	UserTimeoutMs uint32
	Thin          uint32
}

// subflowPacingCap is Options.Pacing's cap for a subflow, which a BPF
// program sets as an int: 4.29 GB/s (34 Gbit/s), the largest value
// short of ~0U, which would leave pacing off.
const subflowPacingCap = 1<<32 - 2

// Subflows gives the connections that registered listeners accept — the
// TCP subflows of Multipath TCP connections, joins included — the options
// an MPTCP socket refuses: TCP_RTO_MIN_US, TCP_USER_TIMEOUT,
// TCP_THIN_LINEAR_TIMEOUTS and SO_MAX_PACING_RATE. A BPF sock_ops program,
// attached to the process's cgroup (v2), sets them on each connection as
// its handshake ends, before data moves; a TCP socket iterator sets them
// on the listening socket when it is registered and when its options
// change, so that connections inherit them from their first packet. It is
// detached on Close, or when the process exits.
type Subflows struct {
	mu        sync.Mutex
	listeners *ebpf.Map
	counts    *ebpf.Map
	target    *ebpf.Map
	prog      *ebpf.Program
	iterProg  *ebpf.Program // nil: a kernel without TCP iterators that set options
	iter      *link.Iter
	link      link.Link
	refs      map[subflowKey]int
}

// subflowTarget is bpf/subflow.c's iter_target value.
type subflowTarget struct {
	Port uint32
	_    uint32
	Opts subflowOpts
}

// OpenSubflows loads the programs and attaches them: the sock_ops one to
// the cgroup the process runs in.
func OpenSubflows() (*Subflows, error) {
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(subflowObj))
	if err != nil {
		return nil, fmt.Errorf("subflow options: load object: %w", err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		// Without the iterator, connections still get their options as
		// their handshake ends.
		delete(spec.Programs, "set_listener")
		var err2 error
		if coll, err2 = ebpf.NewCollection(spec); err2 != nil {
			return nil, fmt.Errorf("subflow options: load programs: %w", err)
		}
	}
	s := &Subflows{listeners: coll.DetachMap("listeners"), counts: coll.DetachMap("counts"), target: coll.DetachMap("iter_target"),
		prog: coll.DetachProgram("subflow_opts"), iterProg: coll.DetachProgram("set_listener"), refs: map[subflowKey]int{}}
	coll.Close()
	if s.iterProg != nil {
		if s.iter, err = link.AttachIter(link.IterOptions{Program: s.iterProg}); err != nil {
			s.Close()
			return nil, fmt.Errorf("subflow options: TCP iterator: %w", err)
		}
	}
	cg, err := openCgroup()
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("subflow options: %w", err)
	}
	defer cg.Close()
	s.link, err = link.AttachCgroup(link.CgroupOptions{Path: fmt.Sprintf("/proc/self/fd/%d", cg.Fd()), Attach: ebpf.AttachCGroupSockOps, Program: s.prog})
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("subflow options: attach to the cgroup: %w", err)
	}
	return s, nil
}

// openCgroup opens the process's cgroup v2 directory: through a mount of
// cgroup2 when the mount namespace has one, else through a mount of its
// own that is never attached anywhere (fsopen), so that a relay started
// with `ip netns exec`, which hides the host's /sys, finds it too.
func openCgroup() (*os.File, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	var rel string
	found := false
	for line := range strings.Lines(string(b)) {
		if p, ok := strings.CutPrefix(strings.TrimSpace(line), "0::"); ok {
			rel, found = strings.TrimPrefix(p, "/"), true
		}
	}
	if !found {
		return nil, errors.New("no cgroup v2 in /proc/self/cgroup")
	}
	if rel == "" {
		rel = "."
	}
	if mnt := cgroup2Mount(); mnt != "" {
		if f, err := os.Open(mnt + "/" + rel); err == nil {
			return f, nil
		}
	}
	fsfd, err := unix.Fsopen("cgroup2", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("fsopen cgroup2: %w", err)
	}
	defer unix.Close(fsfd)
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return nil, fmt.Errorf("fsconfig cgroup2: %w", err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("fsmount cgroup2: %w", err)
	}
	defer unix.Close(mfd)
	fd, err := unix.Openat(mfd, rel, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open cgroup %s: %w", rel, err)
	}
	return os.NewFile(uintptr(fd), "cgroup"), nil
}

// cgroup2Mount is where the mount namespace has cgroup2 mounted, or "".
func cgroup2Mount() string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fs, pf := strings.Fields(post), strings.Fields(pre)
		if len(fs) > 0 && fs[0] == "cgroup2" && len(pf) >= 5 && pf[3] == "/" {
			return pf[4]
		}
	}
	return ""
}

// subflowKeyOf is a listener's key: its network namespace and port.
func subflowKeyOf(fd int) (subflowKey, error) {
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return subflowKey{}, fmt.Errorf("getsockopt SO_NETNS_COOKIE: %w", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return subflowKey{}, fmt.Errorf("getsockname: %w", err)
	}
	var port int
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		port = a.Port
	case *unix.SockaddrInet6:
		port = a.Port
	default:
		return subflowKey{}, fmt.Errorf("getsockname: %T is no TCP address", sa)
	}
	return subflowKey{Netns: cookie, Port: uint32(port)}, nil
}

// SubflowOptions are the options Subflows sets; zero means the kernel's.
type SubflowOptions struct {
	RTOMin       time.Duration // TCP_RTO_MIN_US's value, 1 to 200 ms
	UserTimeout  time.Duration // TCP_USER_TIMEOUT
	ThinTimeouts bool          // TCP_THIN_LINEAR_TIMEOUTS
	Pacing       bool          // Options.Pacing, capped at 34 Gbit/s
}

// Zero tells whether o sets nothing.
func (o SubflowOptions) Zero() bool { return o == SubflowOptions{} }

// values are o as the program sets them: every option explicit, the
// kernel's defaults where o has none, so that a connection never keeps
// what its listening socket was given under an earlier configuration.
// The minimum RTO's default is the namespace's net.ipv4.tcp_rto_min_us,
// left alone when above the 200 ms that TCP_BPF_RTO_MIN takes.
func (o SubflowOptions) values() subflowOpts {
	v := subflowOpts{RTOMinUs: uint32(o.RTOMin / time.Microsecond), UserTimeoutMs: uint32(o.UserTimeout / time.Millisecond), Pacing: ^uint32(0)}
	if o.RTOMin == 0 {
		if b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_rto_min_us"); err == nil {
			if us, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && us > 0 && us <= 200000 {
				v.RTOMinUs = uint32(us)
			}
		}
	}
	if o.ThinTimeouts {
		v.Thin = 1
	}
	if o.Pacing {
		v.Pacing = subflowPacingCap
	}
	return v
}

// SubflowListener is a listener registered with Subflows.
type SubflowListener struct {
	s *Subflows
	k subflowKey
}

// Add registers a listening socket: it and the connections it accepts
// get o. The calling thread must be in the socket's network namespace,
// whose TCP sockets the iterator walks. Listeners on one port and
// namespace share their options: the last Set of any applies.
func (s *Subflows) Add(fd int, o SubflowOptions) (*SubflowListener, error) {
	k, err := subflowKeyOf(fd)
	if err != nil {
		return nil, fmt.Errorf("subflow options: %w", err)
	}
	return s.add(k, o)
}

func (s *Subflows) add(k subflowKey, o SubflowOptions) (*SubflowListener, error) {
	s.mu.Lock()
	s.refs[k]++
	s.mu.Unlock()
	r := &SubflowListener{s: s, k: k}
	if err := r.Set(o); err != nil {
		r.Remove()
		return nil, err
	}
	return r, nil
}

// Set changes the options of the listening socket and of the
// connections it accepts from now on.
func (r *SubflowListener) Set(o SubflowOptions) error {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	v := o.values()
	if err := r.s.listeners.Put(r.k, v); err != nil {
		return fmt.Errorf("subflow options: port %d: %w", r.k.Port, err)
	}
	if r.s.iter == nil {
		return nil
	}
	if err := r.s.target.Put(uint32(0), subflowTarget{Port: r.k.Port, Opts: v}); err != nil {
		return fmt.Errorf("subflow options: port %d: %w", r.k.Port, err)
	}
	// Reading the iterator runs the program over the namespace's TCP
	// sockets.
	rd, err := r.s.iter.Open()
	if err != nil {
		return fmt.Errorf("subflow options: port %d: TCP iterator: %w", r.k.Port, err)
	}
	defer rd.Close()
	if _, err := io.Copy(io.Discard, rd); err != nil {
		return fmt.Errorf("subflow options: port %d: TCP iterator: %w", r.k.Port, err)
	}
	return nil
}

// Remove unregisters the listener; its port's entry goes with the last
// listener of that port and namespace.
func (r *SubflowListener) Remove() error {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	if r.s.refs[r.k]--; r.s.refs[r.k] > 0 {
		return nil
	}
	delete(r.s.refs, r.k)
	if err := r.s.listeners.Delete(r.k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("subflow options: port %d: %w", r.k.Port, err)
	}
	return nil
}

// SubflowCounts count the sockets Subflows gave their options.
type SubflowCounts struct {
	Set, Failed uint64 // connections (subflows); Failed: one option or more refused
	// Listeners, ListenersFailed: listening sockets, at Add and Set.
	Listeners, ListenersFailed uint64
}

// Counts reads the counts.
func (s *Subflows) Counts() (SubflowCounts, error) {
	var c SubflowCounts
	for i, n := range []*uint64{&c.Set, &c.Failed, &c.Listeners, &c.ListenersFailed} {
		var per []uint64
		if err := s.counts.Lookup(uint32(i), &per); err != nil {
			return SubflowCounts{}, fmt.Errorf("subflow options: counts: %w", err)
		}
		for _, v := range per {
			*n += v
		}
	}
	return c, nil
}

// Close detaches the programs and frees them.
func (s *Subflows) Close() error {
	var errs []error
	if s.link != nil {
		errs = append(errs, s.link.Close())
	}
	if s.iter != nil {
		errs = append(errs, s.iter.Close())
	}
	// Close takes nil programs and maps.
	errs = append(errs, s.prog.Close(), s.iterProg.Close(), s.listeners.Close(), s.counts.Close(), s.target.Close())
	return errors.Join(errs...)
}

// mptcpTCPInfo is MPTCP_TCPINFO (linux/mptcp.h): getsockopt(SOL_MPTCP)
// fills a struct mptcp_subflow_data with the tcp_info of each subflow.
const mptcpTCPInfo = 2

// SubflowTCPInfo reads the TCP_INFO of each subflow of a Multipath TCP
// socket, up to 8.
func SubflowTCPInfo(fd int) ([]unix.TCPInfo, error) {
	// struct mptcp_subflow_data: size_subflow_data, num_subflows,
	// size_kernel, size_user; then the array.
	const hdr, most = 16, 8
	size := int(unsafe.Sizeof(unix.TCPInfo{}))
	buf := make([]byte, hdr+most*size)
	binary.NativeEndian.PutUint32(buf[0:], hdr)
	binary.NativeEndian.PutUint32(buf[12:], uint32(size))
	l := uint32(len(buf))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_MPTCP, mptcpTCPInfo, uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0); e != 0 {
		return nil, fmt.Errorf("getsockopt MPTCP_TCPINFO: %w", e)
	}
	n := int(min(binary.NativeEndian.Uint32(buf[4:]), most))
	stride := int(binary.NativeEndian.Uint32(buf[12:]))
	infos := make([]unix.TCPInfo, 0, n)
	for i := range n {
		var ti unix.TCPInfo
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&ti)), size), buf[hdr+i*stride:hdr+i*stride+min(stride, size)])
		infos = append(infos, ti)
	}
	return infos, nil
}
