package datapath

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"halfway/sockopt"
)

// The sockmap program, compiled from bpf/sockmap.c by `make bpf` (clang
// 14); `make test` compiles it again and fails if the result differs, so
// the committed object is the source's.
//
//go:embed sockmap_bpfel.o
var sockmapObj []byte

// States of a direction in the dirs map (bpf/sockmap.c).
const (
	smRun   = 0
	smHeld  = 1
	smStart = 2
)

// smDir is a dirs map value.
type smDir struct {
	Redirected, Passed, Mark uint64
	Base, State              uint32
}

// sockmap is the loaded program with its maps, shared by all flows.
type sockmap struct {
	socks, dirs, resume *ebpf.Map
	prog                *ebpf.Program
}

var (
	smMu     sync.Mutex
	smLoaded *sockmap
	// Flows that entered the sockmap, and directions user space took over
	// from it (held for backpressure, or at their FIN).
	smFlows, smTakeovers, smResumes atomic.Int64
)

// DefaultSockmapBacklog is the most bytes a sockmap direction may have
// moved in the kernel and not yet seen written to its destination before
// user space takes the direction over.
const DefaultSockmapBacklog = 4 << 20

// MaxSockmapFlows is the most flows EnableSockmap sizes its maps for.
const MaxSockmapFlows = 1 << 20

// EnableSockmap loads the sockmap data path for up to flows flows at a
// time, so that flows run with Options.Sockmap move their bytes in the
// kernel without waking the relay. backlog bounds the bytes a direction
// may have in flight inside the kernel (0: DefaultSockmapBacklog). Once
// it has succeeded, later calls do nothing; after a failure, a later call
// tries again.
func EnableSockmap(flows, backlog int) error {
	smMu.Lock()
	defer smMu.Unlock()
	if smLoaded != nil {
		return nil
	}
	if flows <= 0 || flows > MaxSockmapFlows {
		return fmt.Errorf("sockmap: %d flows: want 1 to %d", flows, MaxSockmapFlows)
	}
	if backlog <= 0 {
		backlog = DefaultSockmapBacklog
	}
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(sockmapObj))
	if err != nil {
		return fmt.Errorf("sockmap: load object: %w", err)
	}
	if err := spec.Variables["backlog_max"].Set(uint32(backlog)); err != nil {
		return fmt.Errorf("sockmap: set backlog: %w", err)
	}
	for _, m := range []string{"socks", "dirs", "resume"} {
		spec.Maps[m].MaxEntries = uint32(2 * flows)
	}
	var objs struct {
		Socks  *ebpf.Map     `ebpf:"socks"`
		Dirs   *ebpf.Map     `ebpf:"dirs"`
		Resume *ebpf.Map     `ebpf:"resume"`
		Prog   *ebpf.Program `ebpf:"halfway_redirect"`
	}
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return fmt.Errorf("sockmap: load program: %w%s", err, capsHint())
	}
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target: objs.Socks.FD(), Program: objs.Prog, Attach: ebpf.AttachSkSKBVerdict,
	}); err != nil {
		objs.Socks.Close()
		objs.Dirs.Close()
		objs.Resume.Close()
		objs.Prog.Close()
		return fmt.Errorf("sockmap: attach verdict: %w%s", err, capsHint())
	}
	smLoaded = &sockmap{socks: objs.Socks, dirs: objs.Dirs, resume: objs.Resume, prog: objs.Prog}
	// Loading parsed the kernel's BTF (megabytes) to relocate the program;
	// give that memory back now rather than at some later collection.
	debug.FreeOSMemory()
	return nil
}

// capsHint names the capabilities a failed load lacked, if any: the
// kernel's own error (EPERM, with the library's guess at MEMLOCK, or a
// verifier message about a helper) does not.
func capsHint() string {
	if m := sockopt.BPFCapsMissing(true); len(m) > 0 {
		return "; the relay lacks " + strings.Join(m, ", ") + " (data_path: sockmap needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)"
	}
	return ""
}

func loadedSockmap() *sockmap {
	smMu.Lock()
	defer smMu.Unlock()
	return smLoaded
}

// smFlow is what the sockmap path keeps of a flow that entered it, apart
// from the flow so that other flows pay nothing for it. Its arrays are
// indexed like Flow.dirs: [0] the server socket and the down direction,
// [1] the client socket and the up direction (b2u(up)).
type smFlow struct {
	socks [2]smSock
	dirs  [2]smDirState
	seen  uint64 // bytes the program moved, at the last idle check (sweep only)
}

// smSock is what the sockmap path knows of one of a flow's sockets.
type smSock struct {
	cookie  uint64
	written uint64 // bytes written to it when the flow entered the sockmap
}

// smDirState is a direction's sockmap bookkeeping, owned by the goroutine
// running the direction.
type smDirState struct {
	nIn     int64  // the direction's n when the flow entered the sockmap
	kseen   uint64 // bytes the program redirected, counted in n
	waitN   int    // looks at a flushing direction so far
	resumed bool   // has an entry in the resume map
}

// smState is the direction's sockmap bookkeeping.
func (d *dir) smState() (*smFlow, *smDirState) {
	x := d.f.sm.Load()
	return x, &x.dirs[b2u(d.up)]
}

// errNoSockmap means a flow's sockets cannot enter the sockmap (MPTCP, a
// socket no longer established, a full map); the flow uses splice.
var errNoSockmap = errors.New("sockmap: sockets not eligible")

// errSockmapBusy means a source may hold the rest of a segment user space
// has read part of: the flow enters at a later idle moment.
var errSockmapBusy = errors.New("sockmap: a source holds part of a segment")

// enter puts a flow's two sockets into the sockmap. On an error before
// the first socket went in, nothing changed (errNoSockmap or the cause);
// partial reports that the client socket went in and the server socket
// did not: its segments are then passed to user space, and the up
// direction must read them from there.
func (sm *sockmap) enter(f *Flow, x *smFlow) (partial bool, err error) {
	// The descriptors stay valid, and theirs, only inside Control: a flow
	// aborted meanwhile must not put a reused descriptor in the map.
	var ferr error
	if err := withFDs(f.client(), f.server(), func(cfd, sfd int) {
		if f.dirs[1].midSegment && !drained(cfd) || f.dirs[0].midSegment && !drained(sfd) {
			ferr = errSockmapBusy
			return
		}
		partial, ferr = sm.enterFDs(x, cfd, sfd)
	}); err != nil {
		return false, err
	}
	return partial, ferr
}

// drained reports whether a socket has no byte left to read. The program
// takes whole segments from a socket's receive queue, so one that user
// space has read part of (a splice in stops when the pipe's slots are
// full) would have its read part moved again, the bytes duplicated. A
// socket found empty holds none: bytes that come after are new segments.
func drained(fd int) bool {
	n, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
	return err == nil && n == 0
}

// withFDs runs fn with the descriptors of two connections, held open.
func withFDs(a, b *net.TCPConn, fn func(fa, fb int)) error {
	ra, err := a.SyscallConn()
	if err != nil {
		return err
	}
	rb, err := b.SyscallConn()
	if err != nil {
		return err
	}
	var inner error
	err = ra.Control(func(fa uintptr) {
		inner = rb.Control(func(fb uintptr) { fn(int(fa), int(fb)) })
	})
	if err != nil {
		return err
	}
	return inner
}

func (sm *sockmap) enterFDs(x *smFlow, cfd, sfd int) (partial bool, err error) {
	c, s := &x.socks[1], &x.socks[0]
	for _, sock := range []struct {
		fd int
		s  *smSock
	}{{cfd, c}, {sfd, s}} {
		if p, err := unix.GetsockoptInt(sock.fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil || p != unix.IPPROTO_TCP {
			return false, errNoSockmap // MPTCP sockets cannot enter a sockmap
		}
		if sock.s.cookie, err = unix.GetsockoptUint64(sock.fd, unix.SOL_SOCKET, unix.SO_COOKIE); err != nil {
			return false, fmt.Errorf("sockmap: SO_COOKIE: %w", err)
		}
		if sock.s.written, err = written(sock.fd); err != nil {
			return false, err
		}
	}
	// The directions' entries first: a socket's segments are passed to
	// user space until its direction has one.
	start := smDir{State: smStart}
	if err := sm.dirs.Update(c.cookie, &start, ebpf.UpdateNoExist); err != nil {
		return false, errNoSockmap
	}
	if err := sm.dirs.Update(s.cookie, &start, ebpf.UpdateNoExist); err != nil {
		sm.dirs.Delete(c.cookie)
		return false, errNoSockmap
	}
	// The client goes in under the server's cookie: from here its segments
	// meet the program, which holds the up direction while the server is
	// not in yet.
	if err := sm.socks.Update(s.cookie, uint64(cfd), ebpf.UpdateNoExist); err != nil {
		sm.forget(x)
		return false, errNoSockmap
	}
	if err := sm.socks.Update(c.cookie, uint64(sfd), ebpf.UpdateNoExist); err != nil {
		sm.dirs.Delete(s.cookie)
		return true, nil
	}
	// Bytes that arrived before a socket went in wait in its receive queue
	// until the next segment: setting SO_RCVLOWAT runs the socket's
	// data-ready hook, and with it the program, now.
	for _, fd := range []int{cfd, sfd} {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1); err != nil {
			return true, fmt.Errorf("sockmap: SO_RCVLOWAT: %w", err)
		}
	}
	return false, nil
}

// forget deletes a flow's direction entries; its sockets leave the
// sockmap by themselves as they close.
func (sm *sockmap) forget(x *smFlow) {
	for i := range x.socks {
		sm.dirs.Delete(x.socks[i].cookie)
		if x.dirs[i].resumed {
			sm.resume.Delete(x.socks[i].cookie)
		}
	}
}

// state reads a direction's entry, keyed by its source's cookie.
func (sm *sockmap) state(cookie uint64) (smDir, error) {
	var d smDir
	err := sm.dirs.Lookup(cookie, &d)
	return d, err
}

// written is the number of bytes ever written to a socket: those acked
// plus those still queued. The two come from two calls, so it reads the
// acked count on both sides of the queue's and keeps a reading only if
// no ack came in between: the sum is then exact, which a baseline needs
// (too low, a later flush would pass early; too high, never).
func written(fd int) (uint64, error) {
	acked := func() (uint64, error) {
		info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return 0, fmt.Errorf("sockmap: TCP_INFO: %w", err)
		}
		return info.Bytes_acked, nil
	}
	a0, err := acked()
	if err != nil {
		return 0, err
	}
	for range 1000 {
		outq, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
		if err != nil {
			return 0, fmt.Errorf("sockmap: SIOCOUTQ: %w", err)
		}
		a1, err := acked()
		if err != nil {
			return 0, err
		}
		if a1 == a0 {
			return a0 + uint64(outq), nil
		}
		a0 = a1
	}
	return 0, errors.New("sockmap: written: acks kept coming")
}

// kernelStep runs when a direction that moves its bytes in the kernel
// finds its source ready: the program has held it (backpressure), the
// source has sent its FIN, or it failed. Once every byte the kernel took
// from the source has been written to the destination, the direction goes
// on in user space (by copying: the held bytes wait on the source's
// sockmap side, which splice does not read).
func (d *dir) kernelStep() (step, error) {
	f := d.f
	sm := loadedSockmap()
	x, ds := d.smState()
	me, other := &x.socks[b2u(d.up)], &x.socks[1-b2u(d.up)]
	// Peek first: it takes the source's lock, so the softirq that woke us
	// (a FIN wakes before the program runs over the segment it came with)
	// has finished, and the state read after it is final for what the
	// source has received.
	rc, err := d.src().SyscallConn()
	if err != nil {
		return stepDone, nil
	}
	d.pn, d.err, d.block, d.op = 0, nil, false, opPeek
	if err := rc.Read(d.fn); err != nil {
		return d.readErr(err)
	}
	st, err := sm.state(me.cookie)
	// The lookup copies the entry while the program may be updating it
	// in place for segments that arrive meanwhile, so one copy can hold
	// "held" next to the redirected count from before the redirects
	// just ahead of the hold: too low a count would let user space
	// write passed bytes ahead of redirected ones still on their way.
	// Once held, the count stays until user space resumes the
	// direction (a resume it asked for earlier may still be pending:
	// the program redirects again from the next segment), so it copies
	// the entry again until a copy agrees with the one before it: the
	// later copy was made after the hold was seen, and the count only
	// grows.
	for i := 0; err == nil && st.State == smHeld && i < 8; i++ {
		again, aerr := sm.state(me.cookie)
		if aerr == nil && again.State == smHeld && again.Redirected == st.Redirected {
			break
		}
		st, err = again, aerr
	}
	if err != nil {
		return stepErr, sideErr{read: true, err: fmt.Errorf("sockmap: read direction: %w", err)}
	}
	if d.err != nil {
		// A reset (or another error), held or not: the peek took the
		// socket's pending error, so no later read would see it, and the
		// other side must get a reset, not a FIN.
		return stepErr, sideErr{read: true, reset: isReset(d.err), err: os.NewSyscallError("recv", d.err)}
	}
	if st.State != smHeld {
		// Not held: an end of stream, or nothing.
		switch {
		case d.block:
			return stepPark, nil
		case d.pn > 0:
			// Bytes for user space while the program redirects: only a
			// segment the program is handling right now. Look again.
			if ds.waitN++; ds.waitN > 1000 {
				return stepErr, sideErr{read: true, err: errors.New("sockmap: bytes stuck on a redirecting socket")}
			}
			time.Sleep(time.Millisecond)
			return stepAgain, nil
		}
		// EOF: the count of bytes redirected is final.
	}
	// Every byte redirected must be written to dst before user space
	// writes another: dst has then taken all it was given, by the kernel
	// and by user space.
	want := st.Redirected + d.userBytes()
	d.writeWait(true)
	defer d.writeWait(false)
	for {
		w, err := connWritten(d.dst())
		if err != nil {
			return stepErr, sideErr{read: false, reset: isReset(err), err: err}
		}
		if w-other.written >= want {
			break
		}
		if !f.flushWait(&ds.waitN) {
			return stepDone, nil
		}
	}
	ds.waitN = 0
	smTakeovers.Add(1)
	d.countKernel(st.Redirected)
	d.kernel, d.copy, d.usedKernel, d.pn = false, true, true, 0
	d.held = st.State == smHeld
	return stepAgain, nil
}

// connWritten is written for a connection, its descriptor held open.
func connWritten(c *net.TCPConn) (uint64, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var w uint64
	var werr error
	if err := rc.Control(func(fd uintptr) { w, werr = written(int(fd)) }); err != nil {
		return 0, err
	}
	return w, werr
}

// eofPending reports, for a direction taken over from the sockmap whose
// source has just read as ended, whether bytes the program passed to user
// space have not been read yet. They can wait in the socket's kernel
// backlog, behind segments redirected to it, while a read already says
// EOF.
func (d *dir) eofPending() bool {
	x, _ := d.smState()
	st, err := loadedSockmap().state(x.socks[b2u(d.up)].cookie)
	return err == nil && st.Passed > d.userBytes()
}

// userBytes is how many bytes user space has moved in the direction since
// the flow entered the sockmap.
func (d *dir) userBytes() uint64 {
	_, ds := d.smState()
	return uint64(d.n-ds.nIn) - ds.kseen
}

// countKernel adds the bytes the program has redirected, in all, to the
// direction's count.
func (d *dir) countKernel(redirected uint64) {
	_, ds := d.smState()
	delta := int64(redirected - ds.kseen)
	ds.kseen = redirected
	d.n += delta
	if cnt := d.counter(); cnt != nil && delta != 0 {
		cnt.Add(delta)
	}
}

// resumeKernel runs when a held direction has written on every byte it
// read and found its source empty: it asks the program to redirect again
// from the next segment, if no byte was passed to user space meanwhile,
// and parks the direction in kernel mode. A byte passed meanwhile makes
// the source readable, and the next takeover reads it.
func (d *dir) resumeKernel() {
	if d.watching {
		d.held = false // its source has ended: nothing to resume
		return
	}
	sm := loadedSockmap()
	x, ds := d.smState()
	if err := sm.resume.Update(x.socks[b2u(d.up)].cookie, d.userBytes(), ebpf.UpdateAny); err != nil {
		return // stays in user space
	}
	ds.resumed = true
	smResumes.Add(1)
	d.held, d.copy, d.kernel = false, false, true
}

// flushWait sleeps before looking at a flushing direction again: briefly
// at first, longer as the wait goes on. It reports false once the flow
// has ended.
func (f *Flow) flushWait(n *int) bool {
	if f.aborted() {
		return false
	}
	time.Sleep(min(time.Duration(1<<min(*n, 16))*10*time.Microsecond, 50*time.Millisecond))
	*n++
	return !f.aborted()
}

// smMaxTries bounds the attempts a flow makes to enter the sockmap.
const smMaxTries = 3

// tryKernel runs as a direction is about to park: if the flow is to use
// the sockmap and has not tried yet, and the other direction is parked
// too, it takes the other direction over (so neither moves a byte while
// the sockets go in) and puts the flow in the sockmap, then parks the
// other direction again, in kernel mode if the sockets went in; the
// caller parks its own. A flow whose other direction is running tries
// when that one parks, so a relay's answer to a pipelining peer, written
// first by the down direction, is out before the flow enters.
func (d *dir) tryKernel() {
	f := d.f
	if !f.opt.Sockmap || f.opt.ForceCopy || f.smTries.Load() >= smMaxTries || f.eofs.Load() > 0 || d.watching {
		return
	}
	sm := loadedSockmap()
	if sm == nil {
		return
	}
	other := &f.dirs[1-b2u(d.up)]
	if !other.unpark() {
		return // running (it tries when it parks), or done
	}
	if f.smTries.Add(1) > smMaxTries || other.watching {
		if !other.park() {
			go other.run()
		}
		return
	}
	up, down := &f.dirs[1], &f.dirs[0]
	x := new(smFlow)
	partial, err := sm.enter(f, x)
	switch {
	case partial:
		// The client's segments go to its socket's sockmap side, which
		// only a read reaches.
		f.smTries.Store(smMaxTries)
		f.sm.Store(x)
		up.copy = true
		if err != nil {
			f.abort(ReasonError, err, true, true)
		}
	case errors.Is(err, errSockmapBusy):
		// Not a try: the direction reads the rest and parks again.
		f.smTries.Add(-1)
	case errors.Is(err, errNoSockmap):
		// Nothing went in; a socket may not be established yet (a Fast
		// Open connection is accepted before the handshake ends): a
		// later idle moment tries again.
	case err == nil:
		f.smTries.Store(smMaxTries)
		smFlows.Add(1)
		x.dirs[1].nIn, x.dirs[0].nIn = up.n, down.n
		f.sm.Store(x)
		up.kernel, down.kernel = true, true
	default:
		f.smTries.Store(smMaxTries) // a closed socket: the flow is ending
	}
	if !other.park() {
		go other.run()
	}
}

// smDone counts what the sockmap moved for directions still in the
// kernel and deletes the flow's entries.
func (f *Flow) smDone(x *smFlow) {
	sm := loadedSockmap()
	for i := range f.dirs {
		d := &f.dirs[i]
		if !d.kernel {
			continue
		}
		if st, err := sm.state(x.socks[i].cookie); err == nil {
			d.countKernel(st.Redirected)
		}
	}
	sm.forget(x)
}

// smActive reports whether the flow has moved bytes through the sockmap
// since the last call: the program's counts, or the bytes its sockets
// have had written (which the kernel goes on sending from its backlog
// after the program has run). The idle sweep asks before ending a flow
// whose directions have not been seen moving bytes in user space.
func (f *Flow) smActive(x *smFlow) bool {
	sm := loadedSockmap()
	var sum uint64
	for i := range x.socks {
		if st, err := sm.state(x.socks[i].cookie); err == nil {
			sum += st.Redirected + st.Passed
		}
	}
	for _, c := range []*net.TCPConn{f.client(), f.server()} {
		if w, err := connWritten(c); err == nil {
			sum += w
		}
	}
	moved := sum != x.seen
	x.seen = sum
	return moved
}

// peekIn looks at the source of a sockmap direction without taking a byte.
func (d *dir) peekIn(fd uintptr) bool {
	n, err := peek(fd)
	if !d.took(n, err, &d.pn) {
		return d.empty()
	}
	return true
}
