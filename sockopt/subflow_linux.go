package sockopt

import (
	"bytes"
	_ "embed"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// The TCP socket iterator, compiled from bpf/subflow.c by `make bpf`
// (clang 14); `make test` compiles it again and fails if the result
// differs.
//
//go:embed subflow_bpfel.o
var subflowObj []byte

// subflowOpts and subflowTarget are bpf/subflow.c's target value.
type subflowOpts struct {
	Pacing        uint32
	RTOMinUs      uint32
	UserTimeoutMs uint32
	Thin          uint32
}

type subflowTarget struct {
	Family uint32
	Port   uint32
	Addr   [16]byte
	Opts   subflowOpts
}

// subflowPacingCap is Options.Pacing's cap for a subflow, which a BPF
// program sets as an int: 4.29 GB/s (34 Gbit/s), the largest value
// short of ~0U, which would mean none.
const subflowPacingCap = 1<<32 - 2

// Subflows gives the subflows of a Multipath TCP listener's connections
// the options an MPTCP socket refuses: TCP_RTO_MIN_US, TCP_USER_TIMEOUT,
// TCP_THIN_LINEAR_TIMEOUTS and SO_MAX_PACING_RATE. It sets them on the
// listener's TCP listening socket (its subflow, which user space cannot
// reach) with a BPF TCP socket iterator, and every subflow the listener
// accepts, the first and the joins, inherits them before its first packet
// is answered.
type Subflows struct {
	mu     sync.Mutex
	target *ebpf.Map
	counts *ebpf.Map
	prog   *ebpf.Program
	iter   *link.Iter
}

// OpenSubflows loads the iterator.
func OpenSubflows() (*Subflows, error) {
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(subflowObj))
	if err != nil {
		return nil, fmt.Errorf("subflow options: load object: %w", err)
	}
	var objs struct {
		Prog   *ebpf.Program `ebpf:"set_listener"`
		Target *ebpf.Map     `ebpf:"target"`
		Counts *ebpf.Map     `ebpf:"counts"`
	}
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		if m := BPFCapsMissing(false); len(m) > 0 {
			err = fmt.Errorf("%w; the relay lacks %s (the iterator needs CAP_BPF and CAP_PERFMON)", err, strings.Join(m, ", "))
		}
		return nil, fmt.Errorf("subflow options: load program: %w", err)
	}
	s := &Subflows{target: objs.Target, counts: objs.Counts, prog: objs.Prog}
	if s.iter, err = link.AttachIter(link.IterOptions{Program: s.prog}); err != nil {
		s.Close()
		return nil, fmt.Errorf("subflow options: TCP iterator: %w", err)
	}
	return s, nil
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
// kernel's defaults where o has none, so that a later Set undoes an
// earlier one. The minimum RTO's default is the namespace's
// net.ipv4.tcp_rto_min_us, left alone when above the 200 ms that
// TCP_BPF_RTO_MIN takes. Pacing, once on, stays on at no cap: the kernel
// does not turn a socket's pacing off.
func (o SubflowOptions) values() subflowOpts {
	v := subflowOpts{RTOMinUs: uint32(o.RTOMin / time.Microsecond), UserTimeoutMs: uint32(o.UserTimeout / time.Millisecond), Pacing: ^uint32(0)}
	if ns := NamespaceRTOMin(); o.RTOMin == 0 && ns <= 200*time.Millisecond {
		v.RTOMinUs = uint32(ns / time.Microsecond)
	}
	if o.ThinTimeouts {
		v.Thin = 1
	}
	if o.Pacing {
		v.Pacing = subflowPacingCap
	}
	return v
}

// Set gives a listening socket's TCP listening sockets at its address (an
// MPTCP listener's subflow) o, which the connections it accepts from now
// on inherit. The calling thread must be in the socket's network
// namespace, whose TCP sockets the iterator walks. It reports how many
// listening sockets took o.
func (s *Subflows) Set(fd int, o SubflowOptions) (int, error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return 0, fmt.Errorf("subflow options: getsockname: %w", err)
	}
	t := subflowTarget{Opts: o.values()}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		t.Family, t.Port = unix.AF_INET, uint32(a.Port)
		copy(t.Addr[:], a.Addr[:])
	case *unix.SockaddrInet6:
		t.Family, t.Port, t.Addr = unix.AF_INET6, uint32(a.Port), a.Addr
	default:
		return 0, fmt.Errorf("subflow options: getsockname: %T is no TCP address", sa)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.iter == nil {
		return 0, errors.New("subflow options: closed")
	}
	set0, failed0, err := s.counted()
	if err != nil {
		return 0, err
	}
	if err := s.target.Put(uint32(0), t); err != nil {
		return 0, fmt.Errorf("subflow options: port %d: %w", t.Port, err)
	}
	// Reading the iterator runs the program over the namespace's TCP
	// sockets.
	rd, err := s.iter.Open()
	if err != nil {
		return 0, fmt.Errorf("subflow options: port %d: TCP iterator: %w", t.Port, err)
	}
	_, err = io.Copy(io.Discard, rd)
	rd.Close()
	if err != nil {
		return 0, fmt.Errorf("subflow options: port %d: TCP iterator: %w", t.Port, err)
	}
	set1, failed1, err := s.counted()
	if err != nil {
		return 0, err
	}
	if failed1 > failed0 {
		return int(set1 - set0), fmt.Errorf("subflow options: port %d: the kernel refused one or more of them on %d listening sockets", t.Port, failed1-failed0)
	}
	return int(set1 - set0), nil
}

// Counts are the listening sockets given their options since Open, and
// those that refused one or more.
func (s *Subflows) Counts() (set, failed uint64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counted()
}

func (s *Subflows) counted() (set, failed uint64, err error) {
	if s.counts == nil {
		return 0, 0, errors.New("subflow options: closed")
	}
	for i, n := range []*uint64{&set, &failed} {
		if err := s.counts.Lookup(uint32(i), n); err != nil {
			return 0, 0, fmt.Errorf("subflow options: counts: %w", err)
		}
	}
	return set, failed, nil
}

// Close frees the iterator.
func (s *Subflows) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	if s.iter != nil {
		errs = append(errs, s.iter.Close())
	}
	// Close takes nil programs and maps.
	errs = append(errs, s.prog.Close(), s.target.Close(), s.counts.Close())
	s.iter, s.prog, s.target, s.counts = nil, nil, nil, nil
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
