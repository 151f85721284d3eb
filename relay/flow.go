package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"halfway/datapath"
	"halfway/proxyproto"
	"halfway/sockopt"
)

// flow is one relayed connection, as the admin API shows it.
type flow struct {
	id       uint64
	listener string
	proto    atomic.Pointer[string] // socks5, http, convert, tproxy, redirect
	route    atomic.Pointer[string]
	client   netip.AddrPort
	dst      atomic.Pointer[netip.AddrPort]
	l        *listener
	// conn is the client's connection while the flow has no data path
	// yet (its protocol head, its connect): abortFlows ends those waits.
	conn     atomic.Pointer[net.TCPConn]
	start    int64 // unix nanos
	up, down atomic.Int64
	// endHandshake frees the client's handshake slot early: a peer's
	// pooled connection waits for its request without holding one.
	endHandshake func()
	// downPrefix is this relay's Convert answer to a pipelining peer, sent
	// with the server's first bytes.
	downPrefix []byte
	// serverFirst: the chain answered with the server's first bytes
	// (pipelined hops), which wait on the server leg when the flow starts.
	serverFirst bool
	// mptcp says, per leg that asked for MPTCP, "mptcp" or "fallback":
	// at the start, then as the flow ends (countMPTCP, under the data
	// path's lock, before its done callback reads it).
	mptcp [2]string
	// askedMPTCP: the server leg was opened asking for Multipath TCP. Go
	// dials plain TCP where the kernel refuses MPTCP sockets, or retries
	// with it when an MPTCP connect fails, and says nothing.
	askedMPTCP bool
	// dp is the data path running the flow, once it forwards.
	dp atomic.Pointer[datapath.Flow]
	// connectBy, when set, ends the flow's next connect sooner than
	// limits.connect_timeout from its start: a name's addresses share
	// one connect_timeout, its resolution included (open).
	connectBy time.Time
	// connectCtx, when set, ends the flow's next connect when it ends:
	// with errClientGone as its cause, when the client reset (watchClient).
	connectCtx context.Context
}

var legNames = [2]string{"client", "server"}

// askedMPTCPOn says whether leg i (0 client, 1 server) of the flow asked
// for Multipath TCP, its socket's state st: then it is MPTCP or a fallback.
// A client leg on an MPTCP listener may be plain TCP (a TCP client, or one
// whose MPTCP options a middlebox stripped), and a server leg dialed as
// MPTCP may be too (askedMPTCP).
func (f *flow) askedMPTCPOn(i int, st sockopt.MPTCPState) bool {
	return st.Requested || i == 0 && f.l != nil && f.l.acceptsMPTCP() || i == 1 && f.askedMPTCP
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// serve handles one accepted connection from start to end.
func (s *Server) serve(l *listener, c *net.TCPConn) {
	st := l.cur.Load()
	client := addrPortOf(c.RemoteAddr())
	explicit := st.cfg.Mode == "explicit"
	if (explicit || len(st.policy.clients) > 0) && !st.policy.clientAllowed(client.Addr()) {
		// Not a client of ours: no protocol conversation, no hint.
		s.metrics.refused.With(l.cfg.Name, "client_not_allowed").Inc()
		s.log.Debug("client not allowed", "listener", l.cfg.Name, "client", client)
		s.refuseEarly(st, l, c) // a reload may have narrowed the clients since its SYN
		resetConn(c)
		return
	}
	// Slow or silent clients may hold only so many connections in their
	// protocol head; past that they get a reset before anything is reserved.
	endHandshake := func() {}
	if explicit {
		var ok bool
		if endHandshake, ok = s.beginHandshake(client.Addr()); !ok {
			s.metrics.refused.With(l.cfg.Name, "max_handshakes").Inc()
			resetConn(c)
			return
		}
	}
	if reason := s.admit(client.Addr(), st.perClientExempt()); reason != "" {
		defer endHandshake()
		s.metrics.refused.With(l.cfg.Name, reason).Inc()
		s.refuseEarly(st, l, c)
		// Answering in the client's protocol takes a goroutine for up to a
		// second; past a few dozen at once, a flood gets plain resets.
		select {
		case s.refusing <- struct{}{}:
			s.refuse(st, c, reason)
			<-s.refusing
		default:
			resetConn(c)
		}
		return
	}
	rt := s.state.Load()
	f := &flow{listener: l.cfg.Name, l: l, client: client, start: time.Now().UnixNano(), endHandshake: endHandshake}
	f.conn.Store(c)
	f.proto.Store(&st.cfg.Mode)
	s.register(f)
	if !l.flowStarted() {
		s.refuseEarly(st, l, c)
		resetConn(c)
		s.endFlow(f, datapath.Result{Reason: datapath.ReasonError, Err: errListenerClosed})
		s.flowDone(f)
		return
	}
	var server *net.TCPConn
	var err error
	if explicit {
		server, err = s.handshake(l, st, rt, f, c)
		endHandshake()
		// A peer's pooled connection may have waited minutes for its
		// request: its flow runs on the configuration in force now.
		rt = s.state.Load()
	} else {
		setLeg(l, c, rt.cfg.Legs.Client)
		server, err = s.transparent(l, st, rt, f, c)
	}
	if err != nil {
		reason := datapath.ReasonError
		if errors.Is(err, errClientGone) {
			reason = datapath.ReasonResetClient
		}
		s.endFlow(f, datapath.Result{Reason: reason, Err: err})
		s.flowDone(f)
		return
	}
	s.forward(f, c, server, rt)
}

// flowDone releases what an ended flow held; endFlow has taken it out of
// the table already. A retired listener's capture rules go first: release
// lets a drain finish, and the process may exit right after it.
//
// It may run on the data path's wait loop, which must not block: removing
// capture rules runs nft and ip, so that goes on a goroutine of its own,
// with the release after it.
func (s *Server) flowDone(f *flow) {
	if f.l.flowEnded() {
		go func() {
			if err := f.l.uncapture(); err != nil {
				s.log.Error("removing capture rules", "listener", f.listener, "err", err)
				// A removed listener's the stop asks again (uncapture
				// keeps its error); one a reload replaced under its name
				// is in no list the stop reads.
				s.mu.Lock()
				if s.retired[captureTable(f.l.cfg.Name)] != f.l {
					s.uncaptureErrs = append(s.uncaptureErrs, err)
				}
				s.mu.Unlock()
			} else {
				// Its table is gone: a listener of its name may install
				// it again before a reload commits (the stop has no
				// failure of it to report).
				s.mu.Lock()
				if table := captureTable(f.l.cfg.Name); s.retired[table] == f.l {
					delete(s.retired, table)
				}
				s.mu.Unlock()
			}
			s.release(f.client.Addr())
		}()
		return
	}
	s.release(f.client.Addr())
}

// prefixWait is how long a relay holds its answer to a pipelining peer for
// the server's first bytes. The peer needs it only once the client has sent
// 64 KiB before any reply from the server.
const prefixWait = 100 * time.Millisecond

// forward hands an established flow to the data path, which runs it on
// goroutines of its own only while bytes move, and returns.
func (s *Server) forward(f *flow, c, server *net.TCPConn, rt *runtime) {
	for i, conn := range []*net.TCPConn{c, server} {
		if !rt.mptcp && !(f.l != nil && f.l.acceptsMPTCP()) && !f.askedMPTCP {
			// No leg asked for it: two getsockopts saved per flow. (The
			// listener and the dial are the flow's own: a reload during
			// its handshake may have left MPTCP out of rt.)
			break
		}
		if st, err := sockopt.MPTCP(conn); err == nil && f.askedMPTCPOn(i, st) {
			f.mptcp[i] = "fallback"
			if st.Active {
				f.mptcp[i] = "mptcp"
			}
		}
	}
	opt, done := s.flowOptions(f, rt)
	if f.mptcp != [2]string{} {
		opt.BeforeClose = func(client, server *net.TCPConn) { s.countMPTCP(f, client, server) }
	}
	s.runFlow(f, datapath.New(c, server, opt, done))
}

// countMPTCP counts f's legs that asked for Multipath TCP by how they
// end, just before the data path closes them: a leg MPTCP at the start
// may have fallen back to TCP since (the kernel does when a middlebox
// strips the options of data segments, on a connection of one subflow).
// A detached leg (out of Go's poller, so plain TCP) keeps its result.
func (s *Server) countMPTCP(f *flow, client, server *net.TCPConn) {
	for i, c := range []*net.TCPConn{client, server} {
		if f.mptcp[i] == "mptcp" && !datapath.Detached(c) {
			if st, err := sockopt.MPTCP(c); err == nil && !st.Active {
				f.mptcp[i] = "fallback"
			}
		}
		if f.mptcp[i] != "" {
			s.metrics.mptcp.With(f.listener, legNames[i], f.mptcp[i]).Inc()
		}
	}
}

// flowOptions are the data path's options for f, and what it calls when
// the flow ends; f counts as active from now on.
func (s *Server) flowOptions(f *flow, rt *runtime) (datapath.Options, func(datapath.Result)) {
	route := *f.route.Load()
	active := s.metrics.active.With(f.listener, route)
	active.Inc()
	toRelay, fromRelay := route != "direct", *f.proto.Load() == "convert"
	ka := rt.keepalive[0]
	cliLeg, srvLeg := rt.cfg.Legs.Client, rt.cfg.Legs.Server
	if toRelay {
		ka, srvLeg = rt.keepalive[1], rt.cfg.Legs.Relay
	}
	if fromRelay {
		cliLeg = rt.cfg.Legs.Relay
	}
	return datapath.Options{
			Idle: idleOf(rt, fromRelay, toRelay), Up: &f.up, Down: &f.down, ServerKeepalive: ka,
			PrimeClientSend: cliLeg.SendBuffer == 0, PrimeServerSend: srvLeg.SendBuffer == 0,
			ParkAfter: rt.cfg.ParkAfter.D(), DetachAfter: rt.cfg.Detach(), OnPath: s.onPath,
			DownPrefix: f.downPrefix, PrefixWait: prefixWait, ServerFirst: f.serverFirst, ForceCopy: rt.cfg.DataPath == "copy",
			Sockmap: rt.cfg.DataPath == "sockmap",
		}, func(res datapath.Result) {
			active.Dec()
			s.endFlow(f, res)
			s.flowDone(f)
		}
}

// runFlow starts f's data path.
func (s *Server) runFlow(f *flow, dp *datapath.Flow) {
	f.conn.Store(nil) // the data path owns it now, and may close it early
	f.dp.Store(dp)
	if s.flowCtx.Err() != nil {
		dp.Abort() // abortFlows ran before the flow was in reach
	}
	dp.Run()
}

// pathCounted counts the mechanism that moved a flow direction's bytes.
func (s *Server) pathCounted(_ bool, p datapath.Path) { s.metrics.path.With(string(p)).Inc() }

// idleOf is a flow's idle timeout: the shorter of its two legs', each
// taken by role — a leg to or from another relay uses the relay setting.
func idleOf(rt *runtime, inboundRelay, outboundRelay bool) time.Duration {
	a, b := rt.tunables.ClientIdle, rt.tunables.ServerIdle
	if inboundRelay {
		a = rt.cfg.Legs.Relay.IdleTimeout.D()
	}
	if outboundRelay {
		b = rt.cfg.Legs.Relay.IdleTimeout.D()
	}
	switch {
	case a == 0:
		return b
	case b == 0:
		return a
	}
	return min(a, b)
}

// endFlow logs the one line per closed flow and counts it.
func (s *Server) endFlow(f *flow, res datapath.Result) {
	routeName := "none"
	if r := f.route.Load(); r != nil {
		routeName = *r
	}
	result := string(res.Reason)
	level := slog.LevelInfo
	if *f.proto.Load() == "pooled" {
		// A peer's pooled connection that no flow used: routine.
		result, level = "pooled_unused", slog.LevelDebug
	}
	if res.Err != nil {
		var ce *connectError
		if errors.As(res.Err, &ce) {
			result = "connect_" + ce.kind
		}
	}
	s.metrics.flows.With(f.listener, routeName, result).Inc()
	s.finish(f)
	if !s.log.Enabled(context.Background(), level) {
		return // the line's attributes would cost a dozen allocations
	}
	attrs := []any{"listener", f.listener, "proto", *f.proto.Load(), "client", f.client.String(),
		"route", routeName, "up", f.up.Load(), "down", f.down.Load(), "duration", time.Duration(time.Now().UnixNano() - f.start).Round(time.Microsecond), "reason", result}
	if d := f.dst.Load(); d != nil {
		attrs = append(attrs, "dst", d.String())
	}
	for i, m := range f.mptcp {
		if m != "" {
			attrs = append(attrs, legNames[i]+"_mptcp", m)
		}
	}
	if res.Err != nil {
		attrs = append(attrs, "err", res.Err.Error())
	}
	s.log.Log(context.Background(), level, "flow", attrs...)
}

// transparent serves a flow captured by TPROXY or REDIRECT, where the
// destination is the packet's, or one of a forward listener, where it is
// the listener's forward_to.
func (s *Server) transparent(l *listener, st *listenerState, rt *runtime, f *flow, c *net.TCPConn) (*net.TCPConn, error) {
	dst := addrPortOf(c.LocalAddr()) // TPROXY: the socket has the original destination
	switch st.cfg.Mode {
	case "forward":
		dst = st.forward
	case "redirect":
		var err error
		if dst, err = sockopt.OriginalDst(c); err != nil {
			resetConn(c)
			return nil, errorf("original destination", err)
		}
	}
	f.dst.Store(&dst)
	if reason := refuseTransparent(l, st, addrPortOf(c.LocalAddr()), dst); reason != "" {
		s.metrics.refused.With(f.listener, reason).Inc()
		s.dropEarly(l, st, f.client, dst)
		resetConn(c)
		return nil, refusedError(reason)
	}
	r := rt.match(f.listener, dst)
	f.route.Store(&r.name)
	var server *net.TCPConn
	var pc *pendingChain
	var err error
	claimed := false
	// The client may give up, and reset, while the connect runs: no
	// answer could reach it then (watchClient). settle watches it itself.
	stop := s.watchClient(f, c)
	// Where no early-SYN capture takes dst, no SYN of this flow's started
	// a dial: no claim, no mark, no lock. Else claim resets a dial another
	// listener's capture started (this one has no early SYN, or is not
	// the first by name).
	if s.earlyTakes(st, dst) {
		if e := s.early.claim(f.listener, f.client, dst, s.metrics.early.With("dropped")); e != nil && e.cfg == rt.cfg && e.st == st {
			// The client's SYN started this connect already; the
			// client's reset ends it (watchClient).
			ctx := s.flowCtx
			if f.connectCtx != nil {
				ctx = f.connectCtx
			}
			server, pc, err = e.wait(ctx)
			s.metrics.early.With("claimed").Inc()
			claimed = true
		} else if e != nil {
			// A reload came between the SYN and the accept, or the SYN
			// came during one (the runtime swapped, the listener's
			// state not yet): the dial followed the old route, leg
			// options or PROXY header.
			s.dropDial(e)
		}
	}
	if !claimed {
		server, pc, err = s.connectLeg(rt, st, r, f, dst, nil, false)
	}
	stop()
	if err == nil && pc != nil {
		server, err = s.settle(rt, pc, c, f)
		f.serverFirst = true
		f.askedMPTCP = pc.asked // settle may have opened another
	} else if err == nil {
		f.askedMPTCP = r.mptcp // an early dial's too: it followed this configuration
	}
	if err != nil {
		// The client's handshake is done, so the only honest answer is a reset.
		resetConn(c)
		return nil, err
	}
	return server, nil
}

// errListenerClosed ends a flow accepted as its listener closed.
var errListenerClosed = errors.New("listener closed")

// refuseEarly resets the dial that the SYN of c, a flow refused before
// it connects, started for an early-SYN listener (its own, or one whose
// capture overlaps its own).
func (s *Server) refuseEarly(st *listenerState, l *listener, c *net.TCPConn) {
	if st.cfg.Mode != "tproxy" && st.cfg.Mode != "redirect" || !st.cfg.EarlySYN && !s.early.on() {
		return
	}
	dst := addrPortOf(c.LocalAddr())
	if st.cfg.Mode == "redirect" {
		var err error
		if dst, err = sockopt.OriginalDst(c); err != nil {
			return // the dial, if any, expires
		}
	}
	s.dropEarly(l, st, addrPortOf(c.RemoteAddr()), dst)
}

// refusedError is the flow's error for a refuseTransparent reason.
func refusedError(reason string) error {
	return &connectError{kind: "not_allowed", err: errors.New(strings.ReplaceAll(reason, "_", " "))}
}

// refuseTransparent says why a captured flow from self (the socket's
// local address) to dst must not be relayed, or "".
func refuseTransparent(l *listener, st *listenerState, self, dst netip.AddrPort) string {
	if st.cfg.Mode == "forward" {
		// The operator named the destination, but not the listener itself:
		// on every address, it is also each of the host's own on its port,
		// which the configuration's check cannot know.
		if forwardsToItself(addrPortOf(l.ln.Addr()), dst, st.policy.isOwn) {
			return "destination_is_relay"
		}
		return ""
	}
	// A flow to this very listener (a client connecting to it directly, or
	// REDIRECT of a flow that was not redirected) would dial itself forever.
	if st.cfg.Mode == "redirect" && dst == self || dst.Port() == addrPortOf(l.ln.Addr()).Port() && st.policy.isOwn(dst.Addr()) {
		return "destination_is_relay"
	}
	if len(st.policy.dests) > 0 && !st.policy.destAllowed(dst) || len(st.policy.dests) == 0 && st.policy.special(dst.Addr()) {
		return "destination_not_allowed"
	}
	return ""
}

// connect opens the next leg: to dst directly, or through r's relays.
func (s *Server) connect(rt *runtime, st *listenerState, r *route, f *flow, dst netip.AddrPort, early []byte) (*net.TCPConn, error) {
	c, _, err := s.connectLeg(rt, st, r, f, dst, early, true)
	return c, err
}

// connectLeg opens the next leg. Through relays without wait, it returns
// once the chain's messages are sent, with the answers pending; otherwise
// the connection, ready.
func (s *Server) connectLeg(rt *runtime, st *listenerState, r *route, f *flow, dst netip.AddrPort, early []byte, wait bool) (*net.TCPConn, *pendingChain, error) {
	if !s.beginConnect() {
		return nil, nil, &connectError{kind: "resource", err: errors.New("too many connects in progress")}
	}
	return s.connectReserved(rt, st, r, f, dst, early, wait)
}

// connectReserved is connectLeg once the caller has reserved the connect
// (beginConnect or reserveConnect): it gives the reservation back.
func (s *Server) connectReserved(rt *runtime, st *listenerState, r *route, f *flow, dst netip.AddrPort, early []byte, wait bool) (*net.TCPConn, *pendingChain, error) {
	// A chain whose answers are pending keeps its slot until they come.
	var pc *pendingChain
	defer func() {
		if pc != nil {
			pc.release = s.endConnect
		} else {
			s.endConnect()
		}
	}()
	start := time.Now()
	by := start.Add(rt.tunables.ConnectTimeout)
	if !f.connectBy.IsZero() && f.connectBy.Before(by) {
		by = f.connectBy
	}
	parent := s.flowCtx
	if f.connectCtx != nil {
		parent = f.connectCtx
	}
	ctx, cancel := context.WithDeadline(parent, by)
	defer cancel()
	c, pc, asked, leg, err := s.connectOnce(ctx, rt, st, r, f.client, dst, early, wait)
	if pc == nil {
		f.askedMPTCP = asked // a pending chain's is settle's to say
	}
	if cause := context.Cause(parent); err != nil && (errors.Is(cause, errClientGone) || errors.Is(cause, errDialAbandoned)) {
		err = fmt.Errorf("connect to %s: %w", dst, cause)
	}
	if s.countConnect(leg, start, err); err != nil {
		return nil, nil, err
	}
	return c, pc, nil
}

// connectOnce opens the next leg for client's flow to dst, directly or
// through r's relays, within ctx; leg names it (server or relay), asked
// says whether it asked for Multipath TCP. The caller holds the connect's
// slot and counts it.
func (s *Server) connectOnce(ctx context.Context, rt *runtime, st *listenerState, r *route, client, dst netip.AddrPort, early []byte, wait bool) (c *net.TCPConn, pc *pendingChain, asked bool, leg string, err error) {
	leg = "server"
	switch {
	case len(r.via) > 0 && wait:
		leg = "relay"
		c, asked, err = s.dialChain(ctx, rt, r, dst, early)
	case len(r.via) > 0:
		leg = "relay"
		pc, err = s.openChain(ctx, rt, r, dst, early, true)
	default:
		var hdr []byte
		if st.cfg.ProxyProtocol {
			hdr, err = proxyproto.AppendHeader(nil, &proxyproto.Header{Command: proxyproto.Proxy,
				Transport: proxyproto.Stream, Src: client, Dst: dst})
			if err != nil {
				return nil, nil, false, leg, err
			}
		}
		var src netip.Addr
		if st.cfg.SpoofSource {
			src = client.Addr()
		}
		l := rt.cfg.Legs.Server
		l.mptcp, l.lateKeepalive = r.mptcp, true
		asked = r.mptcp
		c, err = s.dial(ctx, rt, dst, append(hdr, early...), l, src)
	}
	return c, pc, asked, leg, err
}

// countConnect counts a connect of leg begun at start, and its error if any.
func (s *Server) countConnect(leg string, start time.Time, err error) {
	if errors.Is(err, errClientGone) || errors.Is(err, errDialAbandoned) {
		return // it timed the client's patience, not the leg
	}
	s.metrics.connect.With(leg).Observe(time.Since(start).Seconds())
	if err != nil {
		s.metrics.errors.With("connect_" + errKind(err)).Inc()
	}
}

// dial connects to addr. With early bytes it uses TCP Fast Open, so they
// ride in the SYN when the peer's cookie is cached, and waits until the
// handshake ends so that a refusal is reported here.
//
// A valid src is used as the local address, with IP_TRANSPARENT, so the
// leg leaves with the client's address.
func (s *Server) dial(ctx context.Context, rt *runtime, addr netip.AddrPort, early []byte, leg LegConfig, src netip.Addr) (*net.TCPConn, error) {
	var d net.Dialer
	if leg.Keepalive == 0 || leg.lateKeepalive {
		d.KeepAlive = -1
	} else {
		d.KeepAliveConfig = leg.keepaliveConfig()
	}
	o := leg.socketOptions()
	// Fast Open and MPTCP together need the newest kernels: one or the other.
	o.FastOpenConnect = len(early) > 0 && leg.fastOpen() && !leg.mptcp
	o.Transparent = src.IsValid()
	if o != (sockopt.Options{}) {
		d.Control = o.Control // none at all saves a closure per dial
	}
	if src.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	}
	d.SetMultipathTCP(leg.mptcp)
	nc, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return nil, classify(err)
	}
	c := nc.(*net.TCPConn)
	if len(early) > 0 {
		// Beyond what fits in the SYN, the write waits for the handshake:
		// until ctx's deadline, or its cancellation (a drain past its
		// grace), which resets the connection.
		if dl, ok := ctx.Deadline(); ok {
			_ = c.SetWriteDeadline(dl)
		}
		stop := context.AfterFunc(ctx, func() { resetConn(c) })
		defer stop()
		fail := func(err error) (*net.TCPConn, error) {
			c.Close()
			if ctxErr := ctx.Err(); ctxErr != nil {
				err = ctxErr // the reset's error, or the deadline's: ctx's says why
			}
			return nil, classify(err)
		}
		if _, err := c.Write(early); err != nil {
			return fail(err)
		}
		if err := sockopt.WaitEstablished(ctx, c); err != nil {
			return fail(err)
		}
		if !stop() {
			return fail(ctx.Err()) // ctx ended as the handshake did: c is reset, or about to be
		}
	}
	if leg.Congestion != "" {
		// The SYN took the route's congctl, if it names one, over the
		// leg's set before connect. A locked one (EPERM) stays.
		_ = sockopt.Tune(c, leg.Congestion, 0, 0, false)
	}
	return c, nil
}

// socketOptions are the options a dial of the leg sets before its
// connect, but for Fast Open and the transparent source.
func (leg LegConfig) socketOptions() sockopt.Options {
	return sockopt.Options{UserTimeout: leg.UserTimeout.D(), RTOMin: leg.RTOMin.D(), ThinTimeouts: leg.ThinTimeouts, Congestion: leg.Congestion,
		SendBuffer: int(leg.SendBuffer), ReceiveBuffer: int(leg.ReceiveBuffer), Pacing: leg.Pacing}
}

// keepaliveProbes is the keepalive probe count of every leg.
const keepaliveProbes = 4

// keepaliveConfig is the leg's TCP keepalive.
func (leg LegConfig) keepaliveConfig() net.KeepAliveConfig {
	return net.KeepAliveConfig{Enable: leg.Keepalive > 0, Idle: leg.Keepalive.D(), Interval: leg.Keepalive.D(), Count: keepaliveProbes}
}

// setLeg applies a leg's settings to an accepted connection of l; the
// keepalive it inherited from the listening socket is not set again.
func setLeg(l *listener, c *net.TCPConn, leg LegConfig) {
	if leg.Congestion == "" && leg.SendBuffer == 0 && leg.ReceiveBuffer == 0 && !leg.Pacing &&
		int64(leg.Keepalive.D()) == l.keepalive.Load() && leg.UserTimeout == 0 && leg.RTOMin == 0 && !leg.ThinTimeouts {
		return // the common case: not even a SyscallConn
	}
	if rc, err := c.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { setLegFD(l, int(fd), leg) })
	}
}

// resetConn aborts a connection with RST.
func resetConn(c *net.TCPConn) {
	_ = c.SetLinger(0)
	c.Close()
}
