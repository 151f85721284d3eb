package relay

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"halfway/convert"
	"halfway/httpconnect"
	"halfway/socks5"
)

// handshake runs the client's protocol on an explicit listener, opens the
// next leg and answers the client. On error it has already answered (or
// reset) the client.
func (s *Server) handshake(l *listener, st *listenerState, rt *runtime, f *flow, c *net.TCPConn) (*net.TCPConn, error) {
	_ = c.SetDeadline(time.Now().Add(rt.cfg.Limits.HandshakeTimeout.D()))
	if s.flowCtx.Err() != nil {
		_ = c.SetDeadline(longAgo) // abortFlows ran before this deadline was set
	}
	defer c.SetDeadline(time.Time{})
	proto, err := detect(c)
	if errors.Is(err, errUnknownProtocol) && st.protos["convert"] {
		// A Convert version we do not speak: RFC 8803 asks for an
		// Unsupported Version answer, which readConvert gives.
		proto, err = "convert", nil
	}
	if err != nil {
		resetConn(c)
		return nil, errorf("detect protocol", err)
	}
	if !st.protos[proto] {
		s.metrics.refused.With(f.listener, "protocol_not_enabled").Inc()
		resetConn(c)
		return nil, fmt.Errorf("protocol %s is not enabled on this listener", proto)
	}
	f.proto.Store(&proto)
	if proto == "convert" {
		setLeg(l, c, rt.cfg.Legs.Relay) // the client is a relay: its leg's settings
	} else {
		setLeg(l, c, rt.cfg.Legs.Client)
	}
	switch proto {
	case "socks5":
		return s.serveSOCKS(st, rt, f, c)
	case "http":
		return s.serveHTTP(st, rt, f, c)
	}
	return s.serveConvert(l, st, rt, f, c)
}

// errUnknownProtocol is detect's error for a first byte no protocol claims.
var errUnknownProtocol = errors.New("unknown protocol")

// detect tells the protocol from the first byte without consuming it, so
// each protocol's reader sees the stream from its start.
func detect(c *net.TCPConn) (string, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return "", err
	}
	var b byte
	var n uintptr
	var errno unix.Errno
	err = rc.Read(func(fd uintptr) bool {
		b, n, errno = peekByte(fd)
		return errno != unix.EAGAIN
	})
	switch {
	case err != nil:
		return "", err
	case errno != 0:
		return "", errno
	case n == 0:
		return "", errors.New("client closed before sending anything")
	}
	switch {
	case b == 0x05:
		return "socks5", nil
	case b == convert.Version:
		return "convert", nil
	case b >= 'A' && b <= 'Z', b == '\r':
		// An HTTP method, or the empty line a client may send before its
		// request line, which the server ignores (RFC 9112 §2.2).
		return "http", nil
	}
	return "", fmt.Errorf("%w (first byte %#02x)", errUnknownProtocol, b)
}

func (s *Server) serveSOCKS(st *listenerState, rt *runtime, f *flow, c *net.TCPConn) (*net.TCPConn, error) {
	cfg := &socks5.ServerConfig{NoAuth: len(st.users) == 0, Users: st.users}
	req, err := socks5.ServerHandshake(c, c, cfg)
	if err != nil {
		closeSOCKS(c, err)
		return nil, errorf("socks5 handshake", err)
	}
	_ = c.SetDeadline(time.Time{}) // the head is read: the connect has its own timeout
	var server *net.TCPConn
	head := st
	if st, rt, err = s.judgeNow(f); err == nil {
		if st != head && len(st.users) > 0 && !maps.Equal(st.users, cfg.Users) {
			// The login, or its absence, was judged by users a reload
			// has replaced since; which user logged in is not known.
			err = &connectError{kind: "not_allowed", err: errors.New("the listener's users changed during the client's protocol head")}
		} else {
			server, err = s.reach(rt, st, f, c, req.IP, req.Name, req.Port)
		}
	}
	if err == nil {
		_ = c.SetWriteDeadline(time.Now().Add(replyTimeout))
		if err = socks5.WriteReply(c, socks5.Succeeded, addrPortOf(server.LocalAddr())); err != nil {
			resetConn(server)
			c.Close()
			return nil, errorf("socks5 reply", err)
		}
		return server, nil
	}
	replyAndClose(c, func() error { return socks5.WriteReply(c, socksReply(err), netip.AddrPort{}) })
	return nil, err
}

// closeSOCKS ends a connection whose SOCKS5 handshake failed with err:
// it sends the reply the handshake leaves to its caller, if any, and
// closes without the reset that bytes the client pipelined behind would
// bring, which could destroy the answer (no acceptable method, a failed
// login, an unsupported command) the handshake sent itself.
func closeSOCKS(c *net.TCPConn, err error) {
	var pe *socks5.ProtocolError
	switch {
	case errors.As(err, &pe) && pe.InRequest:
		replyAndClose(c, func() error { return socks5.WriteReply(c, pe.Reply, netip.AddrPort{}) })
	case errors.As(err, &pe), errors.Is(err, socks5.ErrNoAcceptableMethods),
		errors.Is(err, socks5.ErrAuth), errors.Is(err, socks5.ErrCommandNotSupported):
		replyAndClose(c, func() error { return nil })
	default:
		c.Close()
	}
}

// replyTimeout bounds writing a protocol answer to a client.
const replyTimeout = 5 * time.Second

// replyAndClose writes an error answer and closes without discarding it:
// closing with unread input would send RST, which can destroy the answer
// before the client reads it.
func replyAndClose(c *net.TCPConn, write func() error) {
	_ = c.SetWriteDeadline(time.Now().Add(replyTimeout))
	if write() == nil {
		_ = c.CloseWrite()
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		_, _ = io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	}
	c.Close()
}

func (s *Server) serveHTTP(st *listenerState, rt *runtime, f *flow, c *net.TCPConn) (*net.TCPConn, error) {
	req, err := httpconnect.ReadRequest(c)
	if err != nil {
		status := http.StatusBadRequest
		var re *httpconnect.RequestError
		switch {
		case errors.As(err, &re):
			status = re.Status
		case errors.Is(err, os.ErrDeadlineExceeded):
			// The head did not come in time: it was not malformed.
			status = http.StatusRequestTimeout
		}
		replyAndClose(c, func() error { return httpconnect.WriteResponse(c, status, "") })
		return nil, errorf("http connect", err)
	}
	_ = c.SetDeadline(time.Time{})
	if st, rt, err = s.judgeNow(f); err != nil {
		replyAndClose(c, func() error { return httpconnect.WriteResponse(c, httpStatus(err), "") })
		return nil, err
	}
	if len(st.users) > 0 && !checkUser(st.users, req.ProxyAuthorization) {
		replyAndClose(c, func() error { return httpconnect.WriteResponse(c, http.StatusProxyAuthRequired, "") })
		return nil, errors.New("http connect: proxy authentication failed")
	}
	var ip netip.Addr
	name := req.Host
	if a, perr := netip.ParseAddr(req.Host); perr == nil {
		ip, name = a, ""
	}
	server, err := s.reach(rt, st, f, c, ip, name, req.Port)
	if err == nil {
		_ = c.SetWriteDeadline(time.Now().Add(replyTimeout))
		if err = httpconnect.WriteResponse(c, http.StatusOK, "Connection established"); err != nil {
			resetConn(server)
			c.Close()
			return nil, errorf("http reply", err)
		}
		return server, nil
	}
	replyAndClose(c, func() error { return httpconnect.WriteResponse(c, httpStatus(err), "") })
	return nil, err
}

// judgeNow is the listener state and runtime that a client's request, its
// head read, is judged by: those in force now, not at its accept. The head
// may take up to handshake_timeout, and a reload meanwhile may have
// removed the listener, taken its protocol away, or the client or the
// destination out of its lists (as a peer's pooled connection is judged
// when its request comes). A listener replaced by one of its name (a new
// socket) judges by the new one's configuration.
func (s *Server) judgeNow(f *flow) (*listenerState, *runtime, error) {
	rt, st := s.state.Load(), f.l.cur.Load()
	if f.l.retired.Load() {
		i := slices.IndexFunc(rt.cfg.Listeners, func(lc ListenerConfig) bool { return lc.Name == f.listener })
		if i < 0 {
			return nil, nil, &connectError{kind: "not_allowed", err: errors.New("the listener was removed during the client's protocol head")}
		}
		var err error
		if st, err = newListenerState(rt.cfg.Listeners[i], &s.own); err != nil {
			return nil, nil, err
		}
	}
	if !st.protos[*f.proto.Load()] {
		return nil, nil, &connectError{kind: "not_allowed", err: fmt.Errorf("the listener stopped taking %s during the client's protocol head", *f.proto.Load())}
	}
	if !st.policy.clientAllowed(f.client.Addr()) {
		s.metrics.refused.With(f.listener, "client_not_allowed").Inc()
		return nil, nil, &connectError{kind: "not_allowed", err: errors.New("the client left allow_clients during its protocol head")}
	}
	return st, rt, nil
}

// checkUser checks HTTP Basic credentials in time that tells nothing about
// which user names exist or how long their passwords are.
func checkUser(users map[string]string, authz string) bool {
	u, p, ok := httpconnect.BasicAuth(authz)
	want, known := users[u]
	got, exp := sha256.Sum256([]byte(p)), sha256.Sum256([]byte(want))
	match := subtle.ConstantTimeCompare(got[:], exp[:]) == 1
	return ok && known && match
}

// reach opens the next leg for a SOCKS5 or HTTP client, c, to its
// destination (an address, or a name and port): resolve, then open. The
// client's reset ends the lookup and the connects alike (watchClient).
func (s *Server) reach(rt *runtime, st *listenerState, f *flow, c *net.TCPConn, ip netip.Addr, name string, port uint16) (*net.TCPConn, error) {
	stop := s.watchClient(f, c)
	defer stop()
	dsts, err := s.resolve(rt, st, f, ip, name, port)
	if err != nil {
		return nil, err
	}
	return s.open(rt, st, f, dsts)
}

// resolve turns the client's destination into the addresses the listener
// allows: one for an address, for a name each of its allowed addresses.
// A name's resolution and the connects to its addresses share one
// limits.connect_timeout (as Go's net.Dialer.Timeout covers a name), so a
// name with many unanswering addresses cannot hold a client for many
// timeouts.
func (s *Server) resolve(rt *runtime, st *listenerState, f *flow, ip netip.Addr, name string, port uint16) ([]netip.AddrPort, error) {
	if ip.IsValid() {
		dst := netip.AddrPortFrom(ip.Unmap(), port)
		f.dst.Store(&dst)
		if !st.policy.destAllowed(dst) {
			s.metrics.refused.With(f.listener, "destination_not_allowed").Inc()
			return nil, &connectError{kind: "not_allowed", err: fmt.Errorf("destination %s not allowed", dst)}
		}
		return []netip.AddrPort{dst}, nil
	}
	f.connectBy = time.Now().Add(rt.tunables.ConnectTimeout)
	parent := s.flowCtx
	if f.connectCtx != nil {
		parent = f.connectCtx // the client's reset ends the lookup (watchClient)
	}
	ctx, cancel := context.WithDeadline(parent, f.connectBy)
	defer cancel()
	addrs, err := s.resolver.LookupNetIP(ctx, "ip", name)
	if err != nil && errors.Is(context.Cause(parent), errClientGone) {
		return nil, fmt.Errorf("resolve %s: %w", name, errClientGone) // no verdict on the resolver
	}
	if err != nil {
		err = resolveError(name, err)
		s.metrics.errors.With("resolve_" + errKind(err)).Inc()
		return nil, err
	}
	var out []netip.AddrPort
	for _, a := range addrs {
		if dst := netip.AddrPortFrom(a.Unmap(), port); st.policy.destAllowed(dst) {
			out = append(out, dst)
		}
	}
	if len(out) == 0 {
		s.metrics.refused.With(f.listener, "destination_not_allowed").Inc()
		return nil, &connectError{kind: "not_allowed", err: fmt.Errorf("no allowed address for %s", name)}
	}
	return out, nil
}

// resolveError says why name did not resolve in a connectError's terms: a
// name that does not exist is unreachable (SOCKS5 reply 4, HTTP 502), a
// resolver that did not answer in time a timeout (reply 4, HTTP 504), and
// a resolver's failure a failure (reply 1, HTTP 502).
func resolveError(name string, err error) error {
	kind := "failure"
	var de *net.DNSError
	switch {
	case errors.As(err, &de) && de.IsNotFound:
		kind = "unreachable"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &de) && de.IsTimeout:
		kind = "timeout"
	}
	return &connectError{kind: kind, err: fmt.Errorf("resolve %s: %w", name, err)}
}

// attemptDelay is how long a connect to one of a name's addresses may go
// unanswered before the next address is tried beside it: RFC 8305's
// Connection Attempt Delay, at its recommended value. A family that is
// broken where the other works (IPv6 routed but lost on the way) then
// costs a client this much, not a timeout.
const attemptDelay = 250 * time.Millisecond

// maxRacing bounds the attempts of one flow running at once, so that a
// name with many addresses, which a client may choose, does not take as
// many connect slots (max_pending) or send as many SYNs at once.
const maxRacing = 4

// open routes a flow and connects it to one of dsts. A name's addresses
// are raced as RFC 8305 has it (Happy Eyeballs): the families taken in
// turn, the next address started when the one before has failed or gone
// attemptDelay unanswered, the first to connect kept and the others given
// up; all within the name's budget (resolve). The client's reset ends it
// where the caller watches the client (reach).
func (s *Server) open(rt *runtime, st *listenerState, f *flow, dsts []netip.AddrPort) (*net.TCPConn, error) {
	// The head is in: the client's handshake share is for heads, and its
	// connects have their own limit (max_pending).
	f.endHandshake()
	defer func() { f.connectBy = time.Time{} }()
	if len(dsts) > 1 {
		return s.race(rt, st, f, interleave(dsts))
	}
	f.dst.Store(&dsts[0])
	r := rt.match(f.listener, dsts[0])
	f.route.Store(&r.name)
	return s.connect(rt, st, r, f, dsts[0], nil)
}

// interleave orders a name's addresses for racing (RFC 8305 §4): the
// resolver's order within each family, the families alternating from the
// first address's.
func interleave(dsts []netip.AddrPort) []netip.AddrPort {
	var first, other []netip.AddrPort
	for _, d := range dsts {
		if d.Addr().Is4() == dsts[0].Addr().Is4() {
			first = append(first, d)
		} else {
			other = append(other, d)
		}
	}
	out := make([]netip.AddrPort, 0, len(dsts))
	for i := 0; len(out) < len(dsts); i++ {
		if i < len(first) {
			out = append(out, first[i])
		}
		if i < len(other) {
			out = append(out, other[i])
		}
	}
	return out
}

// race connects to the first of dsts that answers (open). Each attempt
// holds a connect slot while it runs; one that finds none, or maxRacing
// running, is put off to the next delay or the next failure. A verdict
// that another address cannot change ends the race as a connect does: the
// attempts still running are given up, and not counted.
func (s *Server) race(rt *runtime, st *listenerState, f *flow, dsts []netip.AddrPort) (*net.TCPConn, error) {
	by := f.connectBy
	if by.IsZero() {
		by = time.Now().Add(rt.tunables.ConnectTimeout)
	}
	parent := s.flowCtx
	if f.connectCtx != nil {
		parent = f.connectCtx // the client's reset ends the race (watchClient)
	}
	ctx, cancel := context.WithDeadline(parent, by)
	defer cancel()
	type result struct {
		i     int
		c     *net.TCPConn
		asked bool
		leg   string
		start time.Time
		err   error
	}
	results := make(chan result, len(dsts))
	routes := make([]*route, len(dsts))
	next, running := 0, 0
	launch := func() bool {
		if running == maxRacing || !s.beginConnect() {
			return false
		}
		i := next
		next++
		running++
		routes[i] = rt.match(f.listener, dsts[i])
		go func() {
			start := time.Now()
			c, _, asked, leg, err := s.connectOnce(ctx, rt, st, routes[i], f.client, dsts[i], nil, true)
			// The slot is given back before the race hears of the end, so
			// the next address can take it.
			s.endConnect()
			if err != nil && !errors.Is(ctx.Err(), context.Canceled) {
				s.countConnect(leg, start, err) // the winner is counted when chosen; the losers not at all
			}
			results <- result{i, c, asked, leg, start, err}
		}()
		return true
	}
	if !launch() {
		return nil, &connectError{kind: "resource", err: errors.New("too many connects in progress")}
	}
	// at makes the flow's dst and route dsts[i]'s: the address whose
	// connect serves it, or whose error ends it.
	at := func(i int) {
		f.dst.Store(&dsts[i])
		f.route.Store(&routes[i].name)
	}
	at(0)
	delay := time.NewTimer(attemptDelay)
	defer delay.Stop()
	var err error
	last := -1
	// more says whether another address may still be tried: not past the
	// budget (an attempt's own deadline may come a moment before ctx's).
	more := func() bool {
		return next < len(dsts) && ctx.Err() == nil && time.Now().Before(by)
	}
	// giveUp ends the attempts still running, closing any that connects
	// after all.
	giveUp := func() {
		cancel()
		go func(n int) {
			for range n {
				if res := <-results; res.c != nil {
					res.c.Close()
				}
			}
		}(running)
	}
	for running > 0 {
		select {
		case <-delay.C:
			if more() {
				launch()
				delay.Reset(attemptDelay)
			}
		case res := <-results:
			running--
			if res.err == nil {
				s.countConnect(res.leg, res.start, nil)
				giveUp()
				at(res.i)
				f.askedMPTCP = res.asked
				return res.c, nil
			}
			if errors.Is(context.Cause(parent), errClientGone) {
				giveUp()
				at(res.i)
				return nil, fmt.Errorf("connect to %s: %w", dsts[res.i], errClientGone)
			}
			if !anotherMayHelp(res.err) {
				// A verdict that the attempts still running cannot change.
				giveUp()
				at(res.i)
				return nil, res.err
			}
			if res.i > last {
				err, last = res.err, res.i // the last address's error says most
			}
			if more() && launch() {
				delay.Reset(attemptDelay)
			}
		}
	}
	at(last)
	return nil, err
}

// anotherMayHelp says whether another of a name's addresses may connect
// where one failed with err: when the relay that connects to the
// destination, this one or the last of a chain, could not reach this
// address (refused, unreachable), or the budget ran out; or when this
// relay's own connect failed otherwise. A relay of the chain down or
// failing, or a refusal to connect at all (not allowed, out of
// resources), stands for every address.
func anotherMayHelp(err error) bool {
	var ce *connectError
	if !errors.As(err, &ce) {
		return false
	}
	switch ce.kind {
	case "refused", "unreachable", "timeout":
		// A relay of the chain reports these only of the destination:
		// one that could not reach the next relay says failure.
		return true
	case "resource", "not_allowed":
		return false
	}
	return ce.hop == 0
}

// watchClient has the reset of c, a flow's client, end f's connects at
// once, until stop: no answer could reach the client, and a connect to a
// destination that does not answer would hold its slot (max_pending) and
// the flow until connect_timeout. A FIN does not end them: a client may
// half-close right behind its request, which the data path passes on.
// Bytes the client sends meanwhile stay for the data path.
func (s *Server) watchClient(f *flow, c *net.TCPConn) (stop func()) {
	rc, err := c.SyscallConn()
	if err != nil {
		return func() {}
	}
	ctx, cancel := context.WithCancelCause(s.flowCtx)
	f.connectCtx = ctx
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Woken by each change on c (bytes, a FIN, a reset), or by stop's
		// deadline.
		if rc.Read(connReset) == nil {
			cancel(errClientGone)
		}
	}()
	return func() {
		_ = c.SetReadDeadline(longAgo)
		<-done
		_ = c.SetReadDeadline(time.Time{})
		f.connectCtx = nil
		cancel(nil)
	}
}

// connReset tells, without reading, whether the connection on fd has
// ended both ways or has an error pending: a reset (or a loss the kernel
// gave up on), not a FIN alone.
func connReset(fd uintptr) bool {
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(p, 0)
		if err != unix.EINTR {
			return err == nil && n > 0 && p[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0
		}
	}
}

// refuse answers a client the relay has no room for, in its protocol when
// it speaks one, then closes.
func (s *Server) refuse(st *listenerState, c *net.TCPConn, reason string) {
	defer c.Close()
	if st.cfg.Mode != "explicit" {
		resetConn(c)
		return
	}
	// Read the protocol head briefly so the answer is not lost to a reset.
	_ = c.SetDeadline(time.Now().Add(time.Second))
	proto, err := detect(c)
	if err != nil {
		return
	}
	if !st.protos[proto] {
		resetConn(c) // as handshake does: the listener speaks no such protocol
		return
	}
	switch proto {
	case "socks5":
		if _, err := socks5.ServerHandshake(c, c, &socks5.ServerConfig{NoAuth: len(st.users) == 0, Users: st.users}); err != nil {
			closeSOCKS(c, err)
		} else {
			replyAndClose(c, func() error { return socks5.WriteReply(c, socks5.GeneralFailure, netip.AddrPort{}) })
		}
	case "http":
		if _, err := httpconnect.ReadRequest(c); err == nil {
			replyAndClose(c, func() error { return httpconnect.WriteResponse(c, http.StatusServiceUnavailable, "") })
		}
	case "convert":
		if _, err := convert.ReadMessage(c); err == nil {
			replyAndClose(c, func() error { return writeConvertError(c, convert.ResourceExceeded) })
		}
	}
	s.log.Debug("refused", "client", c.RemoteAddr().String(), "reason", reason)
}
