package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"halfway/convert"
	"halfway/sockopt"
)

// A pool keeps connections to a peer relay open before any flow needs
// them (KTCP's connection pool). Each was authenticated when it opened: it
// greeted the peer with a Convert message holding only a pool cookie, and
// the peer answered. A flow routed via the peer takes one and writes its
// Convert Connect (with its own hop cookie) and first bytes at once, so the
// peer connects onward without a handshake with this relay first: the
// flow saves the round trip to the peer. A connection serves one flow and
// is then gone; the pool opens another in the background.
//
// Liveness: a connection is checked when taken (a pending FIN, RST or
// stray byte disqualifies it) and every second while idle; TCP keepalive
// (legs.relay.keepalive) finds a peer that vanished. If one still dies
// between the check and the flow's first reply, the flow opens a fresh
// connection with the same bytes: nothing of the client's is lost.
//
// Slow start after idle does not apply: a pooled connection has sent only
// its greeting, so its congestion window is still the initial one, which
// is also the window RFC 2861 restarts to (with Turbo-Start, the route's).
type pool struct {
	s    *Server
	peer netip.AddrPort

	mu      sync.Mutex
	cfg     PoolConfig
	mptcp   bool         // connections are Multipath TCP
	leg     LegConfig    // legs.relay, which connections open with
	idle    []pooledConn // oldest first
	dialing int
	failing int       // consecutive failed opens
	notUtil time.Time // no opens before this (backoff after failures)

	kick   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}

	// Counters since start, for metrics and the admin API.
	taken, missed, dead, expired, opened, failed atomic.Int64
}

type pooledConn struct {
	c     *net.TCPConn
	since time.Time
}

// poolSweep is how often idle connections are checked and the pool refilled
// when no flow asked.
const poolSweep = time.Second

// poolMaxDialing bounds concurrent opens toward one peer.
const poolMaxDialing = 16

// legOptions are what legs.relay sets on a pooled connection's socket when
// it opens: a reload that changes them replaces the idle connections.
type legOptions struct {
	sock      sockopt.Options
	keepalive net.KeepAliveConfig
	fastOpen  bool
}

func legOptionsOf(leg LegConfig) legOptions {
	return legOptions{leg.socketOptions(), leg.keepaliveConfig(), leg.fastOpen()}
}

func (s *Server) newPool(peer netip.AddrPort, cfg PoolConfig, mptcp bool, leg LegConfig) *pool {
	ctx, cancel := context.WithCancel(s.flowCtx)
	p := &pool{s: s, peer: peer, cfg: cfg, mptcp: mptcp, leg: leg, kick: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{})}
	go p.run(ctx)
	return p
}

// watermarks are the configured ones, or those set at run time.
func (p *pool) watermarks() (low, high int) {
	p.mu.Lock()
	low, high = p.cfg.Low, p.cfg.High
	p.mu.Unlock()
	if w, ok := p.s.state.Load().tunables.Pools[p.peer.String()]; ok {
		low, high = w.Low, w.High
	}
	return low, high
}

func (p *pool) setConfig(cfg PoolConfig, mptcp bool, leg LegConfig) {
	p.mu.Lock()
	var drop []pooledConn
	if mptcp != p.mptcp || legOptionsOf(leg) != legOptionsOf(p.leg) {
		// Connections of the other protocol, or with other socket options,
		// are not what the configuration asks for now: the refill opens
		// new ones.
		drop, p.idle = p.idle, nil
	}
	p.cfg, p.mptcp, p.leg = cfg, mptcp, leg
	p.mu.Unlock()
	for _, pc := range drop {
		pc.c.Close()
	}
	p.expired.Add(int64(len(drop)))
	p.poke()
}

func (p *pool) poke() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// close stops refilling and closes the idle connections.
func (p *pool) close() {
	p.cancel()
	<-p.done
}

func (p *pool) run(ctx context.Context) {
	defer close(p.done)
	var wg sync.WaitGroup
	defer func() {
		wg.Wait()
		p.mu.Lock()
		for _, pc := range p.idle {
			pc.c.Close()
		}
		p.idle = nil
		p.mu.Unlock()
	}()
	t := time.NewTicker(poolSweep)
	defer t.Stop()
	for {
		p.sweep()
		for range p.toOpen() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.open(ctx)
			}()
		}
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		case <-t.C:
		}
	}
}

// toOpen counts the opens to start now: below the low watermark, up to the
// high one, unless backing off.
func (p *pool) toOpen() int {
	low, high := p.watermarks()
	p.mu.Lock()
	defer p.mu.Unlock()
	have := len(p.idle) + p.dialing
	if have >= low || time.Now().Before(p.notUtil) {
		return 0
	}
	n := max(min(high-have, poolMaxDialing-p.dialing), 0)
	p.dialing += n
	return n
}

// sweep drops idle connections that died or waited too long.
func (p *pool) sweep() {
	_, high := p.watermarks()
	p.mu.Lock()
	maxIdle := p.cfg.MaxIdle.D()
	keep := p.idle[:0]
	var drop []*net.TCPConn
	for _, pc := range p.idle {
		switch {
		case !alive(pc.c):
			p.dead.Add(1)
			drop = append(drop, pc.c)
		case time.Since(pc.since) > maxIdle || len(keep) >= high:
			p.expired.Add(1)
			drop = append(drop, pc.c)
		default:
			keep = append(keep, pc)
		}
	}
	clear(p.idle[len(keep):])
	p.idle = keep
	p.mu.Unlock()
	for _, c := range drop {
		c.Close()
	}
}

// open adds one greeted connection to the pool.
func (p *pool) open(ctx context.Context) {
	c, mptcp, opts, err := p.greet(ctx)
	p.mu.Lock()
	p.dialing--
	if err != nil {
		// Opens started together fail together (the peer is down): they
		// make one round of backoff and one log line, not one each, or a
		// pool of 16 would back off for the maximum after its first try.
		now := time.Now()
		first := !now.Before(p.notUtil)
		var back time.Duration
		if first {
			p.failing++
			back = min(100*time.Millisecond<<min(p.failing-1, 7), 10*time.Second)
			p.notUtil = now.Add(back)
		}
		p.mu.Unlock()
		p.failed.Add(1)
		if first && ctx.Err() == nil {
			p.s.log.Warn("pool: opening a connection to the peer failed", "peer", p.peer, "err", err, "retry_in", back)
		}
		return
	}
	p.failing = 0
	p.notUtil = time.Time{}
	if ctx.Err() != nil || mptcp != p.mptcp || opts != legOptionsOf(p.leg) { // closing, or opened before a reload changed the protocol or the options
		p.mu.Unlock()
		c.Close()
		return
	}
	p.idle = append(p.idle, pooledConn{c: c, since: time.Now()})
	p.mu.Unlock()
	p.opened.Add(1)
}

// greet connects to the peer and has it accept the connection into its
// pool: the greeting rides in the SYN (TCP Fast Open) and the peer answers
// with an empty Convert message, or an Error TLV. It says whether it
// asked for MPTCP, and with which options it opened.
func (p *pool) greet(ctx context.Context) (c *net.TCPConn, mptcp bool, opts legOptions, err error) {
	rt := p.s.state.Load()
	if rt.auth == nil {
		return nil, false, opts, errors.New("pools need auth.psk_file")
	}
	ctx, cancel := context.WithTimeout(ctx, rt.tunables.ConnectTimeout)
	defer cancel()
	hello, err := convert.AppendMessage(nil, &convert.Message{Cookie: rt.auth.poolCookie(p.peer)})
	if err != nil {
		return nil, false, opts, err
	}
	p.mu.Lock()
	leg := p.leg
	leg.mptcp = p.mptcp
	p.mu.Unlock()
	opts = legOptionsOf(leg)
	if c, err = p.s.dial(ctx, rt, p.peer, hello, leg, netip.Addr{}); err != nil {
		return nil, leg.mptcp, opts, err
	}
	dl, _ := ctx.Deadline()
	_ = c.SetReadDeadline(dl)
	// The pool's closing (a drain, a reload that removes the peer) ends
	// the wait for the answer at once, not at the deadline.
	stop := context.AfterFunc(ctx, func() { resetConn(c) })
	m, err := convert.ReadMessage(c)
	if !stop() && err == nil {
		err = ctx.Err() // ctx ended as the answer came: c is reset, or about to be
	}
	if err == nil && m.Error != nil {
		err = fmt.Errorf("peer refused the pooled connection: %w", fromConvert(m.Error.Code, 1))
	}
	if err != nil {
		c.Close()
		return nil, leg.mptcp, opts, err
	}
	_ = c.SetReadDeadline(time.Time{})
	return c, leg.mptcp, opts, nil
}

// take hands out an idle connection, or nil when there is none, and says
// whether it was opened asking for Multipath TCP.
func (p *pool) take() (c *net.TCPConn, mptcp bool) {
	defer p.poke() // refill behind the flow
	for {
		p.mu.Lock()
		if len(p.idle) == 0 {
			p.mu.Unlock()
			p.missed.Add(1)
			return nil, false
		}
		pc := p.idle[0]
		p.idle[0] = pooledConn{}
		p.idle = p.idle[1:]
		mptcp = p.mptcp // a change of it replaces the idle connections
		p.mu.Unlock()
		if alive(pc.c) {
			p.taken.Add(1)
			return pc.c, mptcp
		}
		p.dead.Add(1)
		pc.c.Close()
	}
}

// alive tells whether an idle connection is still open and silent: the
// peer sent neither FIN, RST nor a byte.
func alive(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	ok := false
	_ = rc.Control(func(fd uintptr) {
		_, _, e := peekByte(fd)
		ok = e == unix.EAGAIN
	})
	return ok
}

// peekByte looks at the next byte of a socket without taking it or
// waiting: n is 0 at the end of the stream, errno EAGAIN when there is
// nothing yet (or the socket's error, which the peek takes).
func peekByte(fd uintptr) (b byte, n uintptr, errno unix.Errno) {
	n, _, errno = unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b)), 1, unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
	return b, n, errno
}

// PoolStatus is one peer's pool in /api/status.
type PoolStatus struct {
	Peer    string `json:"peer"`
	Idle    int    `json:"idle"`
	Opening int    `json:"opening"`
	Low     int    `json:"low"`
	High    int    `json:"high"`
	Taken   int64  `json:"taken"`
	Missed  int64  `json:"missed"`
	Dead    int64  `json:"dead"`
	Expired int64  `json:"expired"`
	Opened  int64  `json:"opened"`
	Failed  int64  `json:"failed"`
}

func (p *pool) status() PoolStatus {
	low, high := p.watermarks()
	p.mu.Lock()
	st := PoolStatus{Peer: p.peer.String(), Idle: len(p.idle), Opening: p.dialing, Low: low, High: high}
	p.mu.Unlock()
	st.Taken, st.Missed, st.Dead = p.taken.Load(), p.missed.Load(), p.dead.Load()
	st.Expired, st.Opened, st.Failed = p.expired.Load(), p.opened.Load(), p.failed.Load()
	return st
}

// Pools reports every pool, by peer.
func (s *Server) Pools() []PoolStatus {
	out := []PoolStatus{} // [] in /api/status, not null
	for _, p := range *s.pools.Load() {
		out = append(out, p.status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Peer < out[j].Peer })
	return out
}

// applyPools makes the pools match cfg's peers (under s.mu).
func (s *Server) applyPools(cfg *Config) {
	old := *s.pools.Load()
	next := map[netip.AddrPort]*pool{}
	for _, pc := range cfg.Peers {
		if pc.Pool == nil {
			continue
		}
		ap, err := netip.ParseAddrPort(pc.Address)
		if err != nil {
			continue // Validate refused it
		}
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if p, ok := old[ap]; ok {
			p.setConfig(*pc.Pool, pc.MPTCP, cfg.Legs.Relay)
			next[ap] = p
			continue
		}
		next[ap] = s.newPool(ap, *pc.Pool, pc.MPTCP, cfg.Legs.Relay)
	}
	s.pools.Store(&next)
	for ap, p := range old {
		if next[ap] == nil {
			s.poolsClosing.Add(1)
			go func() {
				defer s.poolsClosing.Done()
				p.close()
			}()
		}
	}
}

// closePools stops every pool and closes its idle connections, and waits
// for those of pools a reload removed to be closed.
func (s *Server) closePools() {
	empty := map[netip.AddrPort]*pool{}
	for _, p := range *s.pools.Swap(&empty) {
		p.close()
	}
	s.poolsClosing.Wait()
}

// errPooledGone is a pooled connection that the peer closed before it
// answered the flow's request: the flow may retry on a fresh connection.
var errPooledGone = errors.New("pooled connection closed by the peer")

// pooledGone tells whether err, from the first write or read of a flow on
// a pooled connection, means the peer had already closed it.
func pooledGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
