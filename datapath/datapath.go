// Package datapath moves the bytes of a relayed flow between its two TCP
// connections: zero-copy with splice(2) through a pipe taken from a pool only
// while bytes are moving (grown to a megabyte for a direction that carries
// bulk, within a budget; until a direction carries bulk, its messages go
// through a buffer taken for each, which costs less), half-close carried across (a FIN becomes
// shutdown(SHUT_WR) on the other leg), resets carried across (an RST on one
// leg aborts the other with SO_LINGER 0), and an idle timeout.
//
// A flow costs no goroutine while it is idle: a direction runs on a
// goroutine only while its source has bytes (or, with Options.ParkAfter,
// for that long after the last), then parks its socket in an epoll set
// shared by many flows and gives the goroutine back. When the socket is
// readable again, the set's wait loop moves the direction's bytes itself
// and parks it again, as an event loop would; a direction whose
// destination is full, or that has more than a burst to move, goes on on a
// goroutine of its own. An idle flow is its two sockets and a few hundred
// bytes of state, as in an event-driven proxy; after Options.DetachAfter
// its sockets leave the Go runtime's poller too, so that the kernel
// watches each once, in the epoll set (see detach_linux.go).
//
//	fl := datapath.New(client, server, datapath.Options{Idle: 10 * time.Minute},
//		func(res datapath.Result) { log.Printf("%d up, %d down, %s", res.Up, res.Down, res.Reason) })
//	fl.Run()   // returns once the client's waiting bytes have moved on
//	...
//	fl.Abort() // on shutdown
//
// With Options.Sockmap (after EnableSockmap) a flow's sockets go into a
// sockhash whose eBPF sk_skb program redirects every segment to the other
// socket in the kernel; user space takes a direction over only at its FIN,
// or while its destination has fallen behind (the redirect itself has no
// backpressure), and hands it back once caught up (see bpf/sockmap.c).
//
// The system calls a message costs (splice, or read and send on the copy
// path, epoll_wait with no timeout, epoll_ctl) are made raw, outside the Go scheduler's syscall state: on
// non-blocking descriptors they never block, and that state would wake the
// runtime's monitor thread on the first call after every idle spell, a
// context switch on each message's path (see raw_linux.go).
//
// NewFDs takes two socket descriptors that the Go runtime's poller does not
// watch (accepted and dialed with raw system calls) instead of connections:
// such a flow is detached from the start, as in an event-driven proxy.
//
// Counters are updated as bytes move, so a flow's progress is visible while
// it runs (on the sockmap path, when user space takes a direction over and
// at the end), and the connections are used as *net.TCPConn throughout:
// nothing wraps them.
package datapath

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Path names the mechanism that moved a direction's bytes.
type Path string

const (
	PathSplice Path = "splice" // socket → pipe → socket in the kernel
	PathCopy   Path = "copy"   // read and write through a user-space buffer
	// PathBuffer: on the splice path, a direction that never became a
	// stream (see streamAt): its messages went through a buffer.
	PathBuffer Path = "buffer"
	// PathSockmap: an eBPF sk_skb program redirects each segment to the
	// other socket, without waking the relay (see EnableSockmap).
	PathSockmap Path = "sockmap"
)

// Reason says why a flow ended.
type Reason string

const (
	ReasonClosed      Reason = "closed"       // both sides finished with FIN
	ReasonResetClient Reason = "reset-client" // the client leg was reset
	ReasonResetServer Reason = "reset-server" // the server leg was reset
	ReasonIdle        Reason = "idle"         // no byte either way for Options.Idle
	ReasonCanceled    Reason = "canceled"     // ctx ended, or Abort
	ReasonError       Reason = "error"        // another socket error
)

// Options tune a flow.
type Options struct {
	// Idle ends the flow after this long without a byte either way; 0 means
	// never. It is checked a few times a second (by the shard's sweep), so a
	// flow ends up to that much later.
	Idle time.Duration
	// ParkAfter is how long a direction waits for bytes on its goroutine
	// before it parks; 0 parks as soon as the source is empty. Waiting
	// saves a park and an unpark per message on a chatty flow; parking
	// saves a goroutine stack per idle direction.
	ParkAfter time.Duration
	// Up and Down, if set, count bytes client→server and server→client as they move.
	Up, Down *atomic.Int64
	// OnPath, if set, is told which mechanism each direction used (up is
	// true for client→server). It is the seam that proves splice runs.
	OnPath func(up bool, p Path)
	// ForceCopy disables splice (for comparison and as the fallback path).
	ForceCopy bool
	// Sockmap moves the flow's bytes with the sockmap program once
	// EnableSockmap has loaded it, from the first time both directions
	// are idle. Flows it cannot take (MPTCP sockets, a full map, a flow
	// that never falls idle before a FIN) use splice; ForceCopy wins.
	Sockmap bool
	// BeforeClose, if set, is called once, just before the flow closes
	// its legs, with its connections as Conns gives them (legs detached
	// from Go's poller then stand as such: see Detached). It runs on a
	// data path goroutine, under the flow's lock, and must not block.
	BeforeClose func(client, server *net.TCPConn)
	// ServerFirst says the server has likely sent bytes already (a chain
	// of relays answered with the server's first bytes): Run starts the
	// server-to-client direction on a goroutine at once rather than
	// parking it, which would cost a trip through the epoll set before
	// those bytes move.
	ServerFirst bool
	// PrimeClientSend and PrimeServerSend take that leg's send buffer out
	// of the kernel's autotuning once the direction toward it has moved 32
	// KiB: it is fixed at net.ipv4.tcp_wmem's maximum, and its unsent bytes
	// are bounded by TCP_NOTSENT_LOWAT (256 KiB) instead. Autotuning grows
	// the buffer only after a write has blocked, too late for a relay's
	// slow start (see sendbuf_linux.go). Only paths of 1 ms or more, and
	// only bytes user space moves (not the sockmap program's). Leave them
	// off for a leg whose buffer the caller fixed.
	PrimeClientSend, PrimeServerSend bool
	// DownPrefix, if set, goes to the client before the server's first
	// byte, in the same segment when the server sends within PrefixWait
	// (the prefix is corked with MSG_MORE until then); otherwise alone once
	// PrefixWait has passed. A relay answers a pipelining peer this way
	// without spending a packet of its initial window on the answer.
	DownPrefix []byte
	PrefixWait time.Duration
	// DetachAfter takes a flow whose two directions are parked, and that
	// has moved no byte for this long, out of the Go runtime's poller: its
	// sockets then sit in the data path's epoll set alone, as in an event
	// loop, which saves each an epoll entry in the kernel and a
	// descriptor record in Go's heap (see detach_linux.go). The next byte
	// either way puts them back, a dozen system calls per socket. 0 keeps
	// every flow in the poller. Flows on the sockmap path, and MPTCP
	// sockets, stay.
	DetachAfter time.Duration
	// ServerKeepalive, if set, is put on the server connection once the
	// flow has lasted about a second, by the shard's sweep: most
	// flows end sooner, and keepalive matters only after an idle spell
	// (its Idle) far longer than that, so they are spared its four
	// setsockopts. The caller dials without keepalive.
	ServerKeepalive *net.KeepAliveConfig
}

// Result describes a finished flow.
type Result struct {
	Up, Down int64 // bytes client→server, server→client
	Reason   Reason
	Err      error // the error behind ReasonError, else nil
}

// Flow is a flow handed to the data path, made by New.
type Flow struct {
	legs    [2]atomic.Pointer[net.TCPConn] // client, server
	opt     Options
	id      uint64
	shard   *parkShard
	epfd    int32        // the shard's epoll set, or -1
	smTries atomic.Int32 // attempts to enter the sockmap (smMaxTries: done)
	last    atomic.Int64 // unix nanos of the last byte either way
	eofs    atomic.Int32 // directions that ended with EOF
	left    atomic.Int32 // directions still running or parked
	ending  atomic.Pointer[ending]
	onDone  func(Result)
	dirs    [2]dir                 // down, up
	sm      atomic.Pointer[smFlow] // set once the flow has entries in the sockmap
	sweeps  uint8                  // sweeps that saw it, up to keepaliveSweeps (the sweep's own)
	// Under mu (see detach_linux.go):
	gen      uint8   // bumped whenever the legs' descriptors change
	rawRefs  uint8   // steps using the detached descriptors now
	closed   bool    // the legs are closed
	rawDrop  bool    // the last step using the detached descriptors closes them
	rawReset [2]bool // and resets them (SO_LINGER 0)
	// mu orders taking the legs out of Go's poller and putting them back
	// with arming the epoll set and with closing the legs.
	mu    sync.Mutex
	fd    [2]int32      // the legs' descriptors (client, server): the connections', or while detached their duplicates
	flags atomic.Uint32 // flagDetached, flagNoDetach
}

// ending is why a flow ends; the first one set wins.
type ending struct {
	reason Reason
	err    error
}

// New takes over client and server as a flow that runs once Run is
// called. When both directions have finished, or one leg fails, it
// closes both connections and calls done, if set, on the goroutine of the
// direction that finished last, which may be a shard's wait loop: done must
// not block.
func New(client, server *net.TCPConn, opt Options, done func(Result)) *Flow {
	return newFlow(client, server, [2]int32{sysfd(client), sysfd(server)}, opt, done)
}

// NewFDs is New for two connected, non-blocking TCP socket descriptors
// that no Go poller watches (accepted and dialed with raw system calls),
// which the flow takes over. It starts detached (see
// Options.DetachAfter): its sockets sit in the data path's epoll set
// alone, as in an event loop, and a direction that has to wait puts them
// into Go's poller first. Options.Sockmap is ignored.
func NewFDs(client, server int, opt Options, done func(Result)) *Flow {
	opt.Sockmap = false
	return newFlow(detachedConn, detachedConn, [2]int32{int32(client), int32(server)}, opt, done)
}

// newFlow makes a flow of its legs and their descriptors: detached
// stand-ins (detachedConn) make it detached from the start.
func newFlow(client, server *net.TCPConn, fds [2]int32, opt Options, done func(Result)) *Flow {
	f := &Flow{opt: opt, onDone: done}
	f.legs[0].Store(client)
	f.legs[1].Store(server)
	f.fd = fds
	detached := client == detachedConn
	if detached {
		f.flags.Store(flagDetached)
	}
	f.touch()
	f.left.Store(2)
	f.dirs[0].init(f, false)
	f.dirs[1].init(f, true)
	parker.add(f)
	if detached {
		f.shard.detached.Add(1)
	}
	return f
}

// Run starts the flow: it moves the client's waiting bytes, if any, on
// the calling goroutine, and returns once the client's socket is empty.
// From then on the flow runs on goroutines of its own only while bytes
// move, and costs none while it is idle.
func (f *Flow) Run() {
	down := &f.dirs[0]
	if len(f.opt.DownPrefix) > 0 || f.opt.ServerFirst || f.aborted() {
		go down.run() // the prefix waits on its goroutine; the server's bytes go now
	} else {
		// The server has usually sent nothing yet: wait for it in the
		// epoll set rather than on a goroutine.
		down.started = true
		if !down.park() {
			go down.run()
		}
	}
	up := &f.dirs[1]
	if f.detached() {
		// A flow made by NewFDs: the client's bytes move as the wait
		// loop would move them, on the raw descriptors, and a wait
		// hands the direction to a goroutine (see runInline).
		up.started = true
		up.runInline()
		return
	}
	up.run()
}

// Join runs the flow on the calling goroutine and waits for its result;
// it ends the flow with ReasonCanceled if ctx ends first.
func Join(ctx context.Context, client, server *net.TCPConn, opt Options) Result {
	ch := make(chan Result, 1)
	f := New(client, server, opt, func(r Result) { ch <- r })
	stop := context.AfterFunc(ctx, f.Abort)
	defer stop()
	f.Run()
	return <-ch
}

// Abort ends the flow now, closing both legs (ReasonCanceled), unless it
// has already ended.
func (f *Flow) Abort() { f.abort(ReasonCanceled, nil, true, true) }

// Conns returns the flow's client and server connections. While the flow
// is detached from Go's poller (Options.DetachAfter) they are closed
// stand-ins: their sockets live on as raw descriptors until the next byte.
func (f *Flow) Conns() (client, server *net.TCPConn) { return f.client(), f.server() }

func (f *Flow) client() *net.TCPConn { return f.legs[0].Load() }
func (f *Flow) server() *net.TCPConn { return f.legs[1].Load() }

func (f *Flow) touch() { f.last.Store(time.Now().UnixNano()) }

// abort records why the flow ends (the first reason wins) and tears both
// legs down: resetting the named ones, closing the others.
func (f *Flow) abort(r Reason, err error, resetClient, resetServer bool) {
	if !f.ending.CompareAndSwap(nil, &ending{r, err}) {
		return
	}
	f.closeLegs(resetClient, resetServer)
	// Closing a socket takes it out of the epoll set silently: wake the
	// parked directions so they find the legs closed.
	for i := range f.dirs {
		f.dirs[i].wake()
	}
}

// closeLegs closes both legs once, resetting the named ones (SO_LINGER 0:
// close sends RST), whether they are in Go's poller or detached from it.
func (f *Flow) closeLegs(resetClient, resetServer bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	f.closed = true
	if f.opt.BeforeClose != nil {
		f.opt.BeforeClose(f.Conns())
	}
	reset := [2]bool{resetClient, resetServer}
	if f.detached() {
		f.flags.And(^uint32(flagDetached))
		f.shard.detached.Add(-1)
		f.rawReset = reset
		if f.rawRefs > 0 {
			f.rawDrop = true // the last step using them closes them
		} else {
			f.closeRaw(f.fd)
		}
		return
	}
	// (Detached descriptors an attach left to a step close with it; a
	// reset set here is the socket's, so their close sends it.)
	for i := range f.legs {
		c := f.legs[i].Load()
		if reset[i] {
			_ = c.SetLinger(0)
		}
		c.Close()
	}
}

func (f *Flow) aborted() bool { return f.ending.Load() != nil }

// dirDone is called once by each direction as it finishes; the last one
// closes the legs and reports.
func (f *Flow) dirDone() {
	if f.left.Add(-1) != 0 {
		return
	}
	if x := f.sm.Load(); x != nil {
		f.smDone(x)
	}
	// Both EOFs: the direction that saw the second closed the legs
	// before it finished.
	f.closeLegs(false, false)
	parker.remove(f)
	res := Result{Up: f.dirs[1].n, Down: f.dirs[0].n, Reason: ReasonClosed}
	if e := f.ending.Load(); e != nil {
		res.Reason, res.Err = e.reason, e.err
	}
	if f.onDone != nil {
		f.onDone(res)
	}
}

// fail classifies a direction's error and aborts the flow accordingly.
func (f *Flow) fail(up bool, err error) {
	var side sideErr
	if errors.As(err, &side) {
		// side.read: the error came from the leg we read from.
		fromClient := side.read == up
		switch {
		case side.reset && fromClient:
			f.abort(ReasonResetClient, nil, false, true)
			return
		case side.reset:
			f.abort(ReasonResetServer, nil, true, false)
			return
		}
		err = side.err
	}
	f.abort(ReasonError, err, true, true)
}

// sideErr tells which end of a direction failed and whether it was reset.
type sideErr struct {
	read  bool // the read side (src) failed, else the write side (dst)
	reset bool
	err   error
}

func (e sideErr) Error() string { return e.err.Error() }
func (e sideErr) Unwrap() error { return e.err }

// closeWriteErr is how a failed half-close of a direction's destination
// ends the flow. Shutdown fails on a connected socket only once its
// connection is gone (ENOTCONN): the peer reset it, most likely in the
// same instant as the source's FIN, and the reset must reach the other
// leg as one, not as the FIN an orderly close would send.
func closeWriteErr(err error) sideErr {
	return sideErr{read: false, reset: isReset(err) || errors.Is(err, syscall.ENOTCONN), err: err}
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
