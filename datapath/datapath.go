// Package datapath moves the bytes of a relayed flow between its two TCP
// connections: zero-copy with splice(2) through a pipe taken from a pool only
// while bytes are moving, half-close carried across (a FIN becomes
// shutdown(SHUT_WR) on the other leg), resets carried across (an RST on one
// leg aborts the other with SO_LINGER 0), and an idle timeout.
//
//	res := datapath.Join(ctx, client, server, datapath.Options{Idle: 10 * time.Minute})
//	log.Printf("%d bytes up, %d down, %s", res.Up, res.Down, res.Reason)
//
// Counters are updated as bytes move, so a flow's progress is visible while
// it runs, and the connections are used as *net.TCPConn throughout: nothing
// wraps them.
package datapath

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Path names the mechanism that moved a direction's bytes.
type Path string

const (
	PathSplice Path = "splice" // socket → pipe → socket in the kernel
	PathCopy   Path = "copy"   // read and write through a user-space buffer
)

// Reason says why a flow ended.
type Reason string

const (
	ReasonClosed      Reason = "closed"       // both sides finished with FIN
	ReasonResetClient Reason = "reset-client" // the client leg was reset
	ReasonResetServer Reason = "reset-server" // the server leg was reset
	ReasonIdle        Reason = "idle"         // no byte either way for Options.Idle
	ReasonCanceled    Reason = "canceled"     // ctx ended
	ReasonError       Reason = "error"        // another socket error
)

// Options tune Join.
type Options struct {
	// Idle ends the flow after this long without a byte either way; 0 means never.
	Idle time.Duration
	// Up and Down, if set, count bytes client→server and server→client as they move.
	Up, Down *atomic.Int64
	// OnPath, if set, is told which mechanism each direction used (up is
	// true for client→server). It is the seam that proves splice runs.
	OnPath func(up bool, p Path)
	// ForceCopy disables splice (for comparison and as the fallback path).
	ForceCopy bool
	// DownPrefix, if set, goes to the client before the server's first
	// byte, in the same segment when the server sends within PrefixWait
	// (the prefix is corked with MSG_MORE until then); otherwise alone once
	// PrefixWait has passed. A relay answers a pipelining peer this way
	// without spending a packet of its initial window on the answer.
	DownPrefix []byte
	PrefixWait time.Duration
}

// Result describes a finished flow.
type Result struct {
	Up, Down int64 // bytes client→server, server→client
	Reason   Reason
	Err      error // the error behind ReasonError, else nil
}

// Join relays between client and server until both directions have
// finished or one leg fails, then closes both connections.
//
// It costs one goroutine besides the caller's, which moves the upstream
// direction itself: goroutine stacks are most of a flow's memory.
func Join(ctx context.Context, client, server *net.TCPConn, opt Options) Result {
	f := &flow{client: client, server: server, opt: opt, done: make(chan struct{})}
	f.touch()
	stop := context.AfterFunc(ctx, func() { f.abort(ReasonCanceled, nil, true, true) })
	defer stop()
	var down dirResult
	downDone := make(chan struct{})
	go func() { down = f.proxyCopy(false); close(downDone) }()
	up := f.proxyCopy(true)
	<-downDone
	client.Close()
	server.Close()
	res := Result{Up: up.n, Down: down.n, Reason: ReasonClosed}
	if r, err := f.end(); r != "" {
		res.Reason, res.Err = r, err
	}
	return res
}

type flow struct {
	client, server *net.TCPConn
	opt            Options
	last           atomic.Int64 // unix nanos of the last byte either way
	eofs           atomic.Int32 // directions that ended with EOF

	mu     sync.Mutex
	reason Reason
	err    error
	done   chan struct{}
}

type dirResult struct{ n int64 }

func (f *flow) touch() { f.last.Store(time.Now().UnixNano()) }

// abort records why the flow ends (the first reason wins) and tears both
// legs down: resetting the named ones, closing the others.
func (f *flow) abort(r Reason, err error, resetClient, resetServer bool) {
	f.mu.Lock()
	first := f.reason == ""
	if first {
		f.reason, f.err = r, err
		close(f.done)
	}
	f.mu.Unlock()
	if !first {
		return
	}
	for _, c := range []struct {
		conn  *net.TCPConn
		reset bool
	}{{f.client, resetClient}, {f.server, resetServer}} {
		if c.reset {
			_ = c.conn.SetLinger(0) // close sends RST
		}
		c.conn.Close()
	}
}

func (f *flow) end() (Reason, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reason, f.err
}

func (f *flow) aborted() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

// proxyCopy moves one direction until EOF, then half-closes the other leg.
func (f *flow) proxyCopy(up bool) dirResult {
	src, dst, cnt := f.server, f.client, f.opt.Down
	if up {
		src, dst, cnt = f.client, f.server, f.opt.Up
	}
	var n int64
	var err error
	if !up && len(f.opt.DownPrefix) > 0 {
		if err := writePrefix(dst, src, f.opt.DownPrefix, f.opt.PrefixWait); err != nil {
			if !f.aborted() {
				f.fail(up, sideErr{reset: isReset(err), err: err})
			}
			return dirResult{}
		}
	}
	path := PathSplice
	if !f.opt.ForceCopy {
		n, err = spliceCopy(dst, src, cnt, f)
		if errors.Is(err, errSpliceUnsupported) {
			path = PathCopy // from where splice stopped: nothing was lost
		}
	} else {
		path = PathCopy
	}
	if path == PathCopy {
		var m int64
		m, err = bufCopy(dst, src, cnt, f)
		n += m
	}
	if f.opt.OnPath != nil {
		f.opt.OnPath(up, path)
	}
	if err == nil {
		// EOF from src: pass the FIN on, keep the other direction going.
		if cerr := dst.CloseWrite(); cerr != nil && !f.aborted() {
			f.abort(ReasonError, cerr, false, false)
			return dirResult{n}
		}
		if f.eofs.Add(1) == 2 {
			// Both sides have finished: wake the other direction's watch.
			f.client.Close()
			f.server.Close()
			return dirResult{n}
		}
		// src may still reset while the other direction flows; that must
		// reach the other leg now, not at the idle timeout.
		if rerr := watchReset(src, f); rerr != nil && !f.aborted() {
			f.fail(up, sideErr{read: true, reset: isReset(rerr), err: rerr})
		}
		return dirResult{n}
	}
	if f.aborted() {
		return dirResult{n}
	}
	f.fail(up, err)
	return dirResult{n}
}

// fail classifies a direction's error and aborts the flow accordingly.
func (f *flow) fail(up bool, err error) {
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
	if errors.Is(err, errIdle) {
		f.abort(ReasonIdle, nil, false, false)
		return
	}
	f.abort(ReasonError, err, true, true)
}

var errIdle = errors.New("idle timeout")

// sideErr tells which end of a direction failed and whether it was reset.
type sideErr struct {
	read  bool // the read side (src) failed, else the write side (dst)
	reset bool
	err   error
}

func (e sideErr) Error() string { return e.err.Error() }
func (e sideErr) Unwrap() error { return e.err }

// waitDeadline arms the read deadline of src for the idle timeout, counted
// from the last byte in either direction.
func (f *flow) armIdle(src *net.TCPConn) {
	if f.opt.Idle > 0 {
		_ = src.SetReadDeadline(time.Unix(0, f.last.Load()).Add(f.opt.Idle))
	}
}

// idleExpired tells, after a read deadline fired, whether the whole flow has
// been idle; if the other direction moved bytes meanwhile, it re-arms.
func (f *flow) idleExpired(src *net.TCPConn) bool {
	if time.Since(time.Unix(0, f.last.Load())) >= f.opt.Idle {
		return true
	}
	f.armIdle(src)
	return false
}
