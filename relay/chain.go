package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"halfway/convert"
	"halfway/sockopt"
)

// A chain client → R1 → R2 → … → server is set up in one pass of SYNs. R1
// opens R2 with TCP Fast Open; the SYN carries one Convert message per hop:
// for R2 "connect to R3" (or the server), for R3 "connect to the server",
// each with its own hop cookie. Every relay reads its own message, connects
// on with whatever bytes followed it as its own SYN's payload, and answers
// with a Convert message once its connect is done. R1 reads one answer per
// hop before the flow carries data: success, or the Error TLV of the hop
// that failed.

// dialChain opens the first relay of via, has the chain reach dst and
// waits for every hop's answer.
// It says whether the connection was opened asking for Multipath TCP.
func (s *Server) dialChain(ctx context.Context, rt *runtime, r *route, dst netip.AddrPort, early []byte) (c *net.TCPConn, askedMPTCP bool, err error) {
	pc, err := s.openChain(ctx, rt, r, dst, early, false)
	if err != nil {
		return nil, false, err
	}
	for {
		err := pc.readAnswers(ctx)
		if err == nil {
			return pc.c, pc.asked, nil
		}
		if !errors.Is(err, errPooledGone) {
			return nil, false, err
		}
		if err := s.redial(ctx, rt, pc, nil); err != nil {
			return nil, false, err
		}
	}
}

// A pendingChain is a connection to the first relay of a chain whose
// Convert messages are sent and whose answers are not read yet.
type pendingChain struct {
	c     *net.TCPConn
	hops  int
	msgs  []byte // what went first on c: sent again if c was a dead pooled one
	pool  *pool  // the pool c came from, or nil
	via0  netip.AddrPort
	mptcp bool // a fresh connection is Multipath TCP
	asked bool // c was opened asking for Multipath TCP
	// acked0 is what the peer had acknowledged on a pooled connection
	// when it was taken: if it acknowledged nothing since, it cannot have
	// read the flow's bytes, and they may go again on a fresh connection.
	acked0 uint64
	// release gives back the flow's connect slot (max_pending) once the
	// chain has answered.
	release func()
	// by is when the connect that opened the chain must end, its answers
	// included (limits.connect_timeout from its start); zero: none.
	by time.Time
}

// openChain sends the chain's Convert messages, and early bytes after
// them, to the first relay: on a pooled connection when there is one, or in
// the SYN of a fresh Fast Open connect. It does not wait for answers. With
// pipelined, the hops are told (by their cookies) that the sender does not
// wait either, so they answer with the server's first bytes.
func (s *Server) openChain(ctx context.Context, rt *runtime, r *route, dst netip.AddrPort, early []byte, pipelined bool) (*pendingChain, error) {
	via := r.via
	if rt.auth == nil {
		return nil, &connectError{kind: "failure", err: errors.New("routes via relays need auth.psk_file")}
	}
	var msgs []byte
	for i := range via {
		next := dst
		if i+1 < len(via) {
			next = via[i+1]
		}
		cookie := rt.auth.cookie(via[i], next)
		if pipelined {
			cookie = rt.auth.pipelinedCookie(via[i], next)
		}
		var err error
		msgs, err = convert.AppendMessage(msgs, &convert.Message{
			Connect: &convert.Connect{Dst: next},
			Cookie:  cookie,
		})
		if err != nil {
			return nil, &connectError{kind: "failure", err: err}
		}
	}
	msgs = append(msgs, early...)
	pc := &pendingChain{hops: len(via), msgs: msgs, via0: via[0], mptcp: r.mptcp}
	pc.by, _ = ctx.Deadline()
	if p := (*s.pools.Load())[via[0]]; p != nil {
		if c, mptcp := p.take(); c != nil {
			pc.c, pc.pool, pc.asked = c, p, mptcp
			if info, err := sockopt.Info(c); err == nil {
				pc.acked0 = info.Bytes_acked
			}
			if dl, ok := ctx.Deadline(); ok {
				_ = c.SetWriteDeadline(dl)
			}
			_, err := c.Write(msgs)
			_ = c.SetWriteDeadline(time.Time{})
			if err == nil || !pooledGone(err) {
				return pc, nil // any other error shows in the answers
			}
			// redial closes it and counts it dead.
		}
	}
	if err := s.redial(ctx, rt, pc, nil); err != nil {
		return nil, err
	}
	return pc, nil
}

// redial replaces pc's connection by a fresh one carrying the messages
// and then held, the client's bytes sent on the old one.
func (s *Server) redial(ctx context.Context, rt *runtime, pc *pendingChain, held []byte) error {
	if pc.c != nil {
		pc.c.Close()
		if pc.pool != nil {
			pc.pool.dead.Add(1)
		}
	}
	pc.c, pc.pool, pc.asked = nil, nil, pc.mptcp
	leg := rt.cfg.Legs.Relay
	leg.mptcp, leg.lateKeepalive = pc.mptcp, true
	c, err := s.dial(ctx, rt, pc.via0, append(slices.Clip(pc.msgs), held...), leg, netip.Addr{})
	if err != nil {
		// The first relay is down or refusing: no verdict on the destination.
		var ce *connectError
		if errors.As(err, &ce) {
			ce.hop = 1
			if ce.kind != "timeout" {
				ce.kind = "failure"
			}
		}
		return err
	}
	pc.c = c
	return nil
}

// readAnswers reads each hop's answer. A pooled connection found closed
// before the first answer, whose peer acknowledged none of the flow's
// bytes, is errPooledGone: the caller may redial. An acknowledgement proves
// the peer's kernel had them, so that case fails instead; its absence is
// strong but not full proof that the peer's process never read them (a
// delayed ACK can lose the race with a crash). On any other error the connection is reset: the next
// relay may hold some of the client's bytes, and must not take them for a
// complete stream.
//
// The read deadline ends the wait at ctx's deadline; ctx's cancellation
// (a drain past its grace, or told to hurry) ends it at once, and resets
// the connection as a failure does.
func (pc *pendingChain) readAnswers(ctx context.Context) error {
	c := pc.c
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetReadDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { resetConn(c) })
	defer stop()
	failed := func(hop int, err error) error {
		resetConn(c)
		if ctxErr := ctx.Err(); ctxErr != nil {
			err = ctxErr // the reset's error, or the deadline's: ctx's says why
		}
		// The relay itself failed or hung up (not allowed, down, not a
		// relay): that is no verdict on the destination.
		kind := "failure"
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
			kind = "timeout"
		}
		return &connectError{kind: kind, hop: hop, err: fmt.Errorf("relay %d of the chain: %w", hop, err)}
	}
	for i := range pc.hops {
		m, err := convert.ReadMessage(c)
		if err != nil {
			if pc.pool != nil && i == 0 && pooledGone(err) && ctx.Err() == nil && pc.unread() {
				return errPooledGone
			}
			return failed(i+1, err)
		}
		if m.Error != nil {
			resetConn(c)
			ce := fromConvert(m.Error.Code, i+1)
			if i+1 < pc.hops && (ce.kind == "refused" || ce.kind == "unreachable") {
				// The hop could not reach the next relay of the chain: as
				// with the first relay down, no verdict on the destination.
				ce.kind = "failure"
			}
			return ce
		}
	}
	if !stop() {
		// ctx ended as the last answer came: c is reset, or about to be.
		return failed(pc.hops, ctx.Err())
	}
	_ = c.SetReadDeadline(time.Time{})
	return nil
}

// unread tells whether the peer of a pooled connection acknowledged
// nothing since it was taken.
func (pc *pendingChain) unread() bool {
	info, err := sockopt.Info(pc.c)
	return err == nil && info.Bytes_acked == pc.acked0
}

// done gives back the connect slot, once.
func (pc *pendingChain) done() {
	if pc.release != nil {
		pc.release()
		pc.release = nil
	}
}

// heldMax bounds the client's bytes a transparent flow sends ahead of the
// chain's answers (and keeps, to send again on a fresh connection).
const heldMax = 64 << 10

// settle is the first phase of a transparent flow through a chain whose
// answers are pending. The client's bytes go on at once rather than after
// the answers, so its request crosses the long leg while the far relay
// connects onward: with early SYN and a pool this is what brings TTFB down
// to the model's bound. They are kept until the first answer: if a pooled
// connection turns out dead, they go again on a fresh one, so none is lost
// or sent twice on one stream. Their writes wait for the first relay
// within the connect's deadline while the answers are pending; once the
// chain has answered, that deadline bounds no write any more (it may be
// about to pass): the rest goes, where a cut write left it, as the data
// path would send it. A write the deadline cut short fails the flow only
// when no good answer came. Past heldMax the client waits for the
// answers. It returns the relay connection, ready for the data path; on
// error both are left for the caller to reset or close.
func (s *Server) settle(rt *runtime, pc *pendingChain, c *net.TCPConn, f *flow) (*net.TCPConn, error) {
	defer pc.done()
	// The answers come within the connect's timeout, which began when the
	// chain was opened (connect_timeout covers the whole chain).
	by := pc.by
	if by.IsZero() {
		by = time.Now().Add(rt.tunables.ConnectTimeout)
	}
	ctx, cancel := context.WithDeadline(s.flowCtx, by)
	defer cancel()
	type chunk struct {
		b   []byte
		err error
	}
	reads := make(chan chunk, 1)
	want := make(chan struct{}, 1)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for range want {
			buf := make([]byte, 16<<10)
			n, err := c.Read(buf)
			reads <- chunk{buf[:n], err}
			if err != nil {
				return
			}
		}
	}()
	answers := make(chan error, 1)
	go func() { answers <- pc.readAnswers(ctx) }()
	var held []byte
	sent := 0 // of held, what went on pc.c
	// writeErr is the first write of held that failed: a dead pooled
	// connection, or the relay's error, shows in the answers too; but a
	// write cut short by the deadline, the relay reading late, leaves its
	// stream without some of the client's bytes unless it goes on once
	// the chain has answered.
	var writeErr error
	writeBy := by // the connect's deadline, until the answers came
	reading := true
	want <- struct{}{}
	send := func(b []byte) {
		held = append(held, b...)
		f.up.Add(int64(len(b)))
		if writeErr != nil || sent == len(held) {
			return // after a gap, they wait for the answers
		}
		_ = pc.c.SetWriteDeadline(writeBy)
		n, err := pc.c.Write(held[sent:])
		sent, writeErr = sent+n, err
		_ = pc.c.SetWriteDeadline(time.Time{})
	}
	var clientErr error
	stopped := false
	stopReader := func() {
		if stopped {
			return
		}
		stopped = true
		close(want)
		if reading {
			_ = c.SetReadDeadline(time.Now())
			ch := <-reads
			reading = false
			if clientErr == nil && !errors.Is(ch.err, os.ErrDeadlineExceeded) && ch.err != io.EOF {
				clientErr = ch.err
			}
			send(ch.b)
		}
		<-readerDone
		_ = c.SetReadDeadline(time.Time{})
	}
	for {
		select {
		case ch := <-reads:
			reading = false
			send(ch.b)
			switch {
			case ch.err == io.EOF: // the data path passes the FIN on
			case ch.err != nil:
				// The client is gone (a reset): no answer can serve it, and
				// waiting for one would hold the connect's slot.
				stopReader()
				resetConn(pc.c)
				if errors.Is(ch.err, os.ErrDeadlineExceeded) {
					return nil, ch.err // a drain's abort (abortFlows)
				}
				return nil, fmt.Errorf("%w: %w", errClientGone, ch.err)
			case len(held) < heldMax:
				reading = true
				want <- struct{}{}
			}
		case err := <-answers:
			abort := func() bool { return true }
			if err == nil {
				// The chain is up: the connect is over, and its slot goes
				// back. The client's bytes not sent yet go as the data
				// path sends them: within the idle timeout, or until a
				// drain aborts the flows.
				pc.done()
				writeBy = time.Time{}
				if idle := idleOf(rt, false, true); idle > 0 {
					writeBy = time.Now().Add(idle)
				}
				if errors.Is(writeErr, os.ErrDeadlineExceeded) {
					writeErr = nil // the write goes on where it stopped
				}
				abort = context.AfterFunc(s.flowCtx, func() { resetConn(pc.c) })
			}
			stopReader()
			if errors.Is(err, errPooledGone) {
				// The pooled connection was dead: the same bytes again, on
				// a fresh one; the rest follows on the data path.
				if err := s.redial(ctx, rt, pc, held); err != nil {
					return nil, err
				}
				writeErr, sent = nil, len(held) // held went whole on the fresh connection
				go func() { answers <- pc.readAnswers(ctx) }()
				continue
			}
			if err == nil {
				send(nil) // what a cut write left
				if !abort() {
					err = errorf("relay 1 of the chain: sending the client's first bytes", s.flowCtx.Err())
				}
			}
			if err == nil && clientErr != nil {
				// The client reset as the answer came: as above, its own end.
				err = fmt.Errorf("%w: %w", errClientGone, clientErr)
			}
			if err == nil && writeErr != nil {
				kind := "failure"
				if errors.Is(writeErr, os.ErrDeadlineExceeded) {
					kind = "timeout"
				}
				err = &connectError{kind: kind, hop: 1, err: fmt.Errorf("relay 1 of the chain: sending the client's first bytes: %w", writeErr)}
			}
			if err != nil {
				resetConn(pc.c)
				return nil, err
			}
			return pc.c, nil
		}
	}
}

// serveConvert is the converter side: a relay hop asks, in the first bytes
// of its SYN, for a connection onward.
func (s *Server) serveConvert(l *listener, st *listenerState, rt *runtime, f *flow, c *net.TCPConn) (*net.TCPConn, error) {
	m, raw, err := readConvert(c)
	if err != nil {
		return nil, err
	}
	failWith := func(e *convert.ErrorTLV, err error) (*net.TCPConn, error) {
		replyAndClose(c, func() error { return writeConvert(c, &convert.Message{Error: e}) })
		return nil, err
	}
	fail := func(code convert.ErrorCode, err error) (*net.TCPConn, error) {
		return failWith(&convert.ErrorTLV{Code: code}, err)
	}
	// unsupported refuses a well-formed message the hop cannot serve: the
	// answer echoes it, as RFC 8803 (Section 5.2.5) asks.
	unsupported := func(err error) (*net.TCPConn, error) {
		reply := (&convert.ProtocolError{Code: convert.UnsupportedMessage}).Reply(raw)
		replyAndClose(c, func() error { return writeConvert(c, reply) })
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	// The head may have come up to handshake_timeout after the accept: it
	// is judged by the configuration in force now (its key, lists and
	// protocols), as a SOCKS5 or HTTP request is.
	var jerr error
	if st, rt, jerr = s.judgeNow(f); jerr != nil {
		return fail(convert.NotAuthorized, jerr)
	}
	fresh := true // not a pooled connection
	if m.Connect == nil && !m.Info && m.Cookie != nil {
		// A peer opening a pooled connection: it greets with a pool cookie
		// alone, and sends its request when a flow takes the connection.
		if rt.auth == nil {
			return fail(convert.NotAuthorized, errors.New("convert: no pre-shared key configured"))
		}
		if err := rt.auth.verifyPool(m.Cookie, addrPortOf(c.LocalAddr())); err != nil {
			s.metrics.refused.With(f.listener, "hop_not_authenticated").Inc()
			return fail(convert.NotAuthorized, errorf("convert pool greeting", err))
		}
		fresh = false
		pooled := "pooled"
		f.proto.Store(&pooled)
		f.endHandshake()
		_ = c.SetWriteDeadline(time.Now().Add(replyTimeout))
		if err := writeConvert(c, &convert.Message{}); err != nil {
			c.Close()
			return nil, errorf("convert pool greeting reply", err)
		}
		_ = c.SetWriteDeadline(time.Time{})
		_ = c.SetReadDeadline(time.Now().Add(rt.cfg.Limits.PooledWait.D()))
		if !s.park(l, c, rt.auth.key) {
			c.Close()
			return nil, errors.New("pooled connection: draining, or the configuration changed")
		}
		err = awaitRequest(c)
		s.unpark(c)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("pooled connection: %w", err)
		}
		// The request began: the rest of it is in the same flight.
		_ = c.SetReadDeadline(time.Now().Add(replyTimeout))
		m, raw, err = readConvert(c)
		if err != nil {
			return nil, fmt.Errorf("pooled connection: %w", err)
		}
		// The request may come long after the greeting: it is judged by
		// the configuration in force now.
		rt, st = s.state.Load(), l.cur.Load()
		if l.retired.Load() || !st.protos["convert"] {
			return fail(convert.NotAuthorized, errors.New("pooled connection: its listener was removed or takes no Convert hops any more"))
		}
		if !st.policy.clientAllowed(f.client.Addr()) {
			return fail(convert.NotAuthorized, errors.New("pooled connection: its peer is no longer in allow_clients"))
		}
		conv := "convert"
		f.proto.Store(&conv)
		_ = c.SetReadDeadline(time.Time{})
		if m.Connect == nil {
			return unsupported(errors.New("convert: pooled connection without a Connect TLV"))
		}
	}
	if m.Connect == nil {
		if m.Info {
			// RFC 8803 §4.2.1: a client may only ask what we support.
			replyAndClose(c, func() error { return writeConvert(c, &convert.Message{Supported: supportedExts(st)}) })
			return nil, errors.New("convert: Info only, answered")
		}
		return unsupported(errors.New("convert: no Connect TLV"))
	}
	dst := m.Connect.Dst
	f.dst.Store(&dst)
	if rt.auth == nil {
		return fail(convert.NotAuthorized, errors.New("convert: no pre-shared key configured"))
	}
	pipelined, err := rt.auth.verifyHop(m.Cookie, addrPortOf(c.LocalAddr()), dst)
	if err != nil {
		s.metrics.refused.With(f.listener, "hop_not_authenticated").Inc()
		code := convert.NotAuthorized
		if errors.Is(err, errCookieMissing) {
			code = convert.MissingCookie
		}
		return fail(code, errorf("convert", err))
	}
	if !st.policy.destAllowed(dst) {
		s.metrics.refused.With(f.listener, "destination_not_allowed").Inc()
		return fail(convert.NotAuthorized, fmt.Errorf("convert: destination %s not allowed", dst))
	}
	// Whatever followed our message (the next hop's, or the client's first
	// data) rides in the SYN of our own connect.
	early := readAvailable(c, 16<<10)
	name := "direct"
	f.route.Store(&name)
	f.endHandshake() // as open does: the head is in, the connect has max_pending
	// The relay before this one may give up, and reset.
	stop := s.watchClient(f, c)
	server, err := s.connect(rt, st, directRoute, f, dst, early)
	stop()
	if err != nil {
		return failWith(convertError(err, dst), err)
	}
	f.up.Add(int64(len(early))) // they went out in the SYN, before the data path
	reply := &convert.Message{}
	if m.Info {
		reply.Supported = supportedExts(st)
	}
	// A sender that waits for the answer gets it now. One that pipelines
	// (its client's bytes follow the Connect without waiting) gets it with
	// the server's first bytes rather than in a packet of its own, which
	// would hold a place in this leg's first flight until acknowledged:
	// on a pooled connection, or one whose handshake came before the
	// Connect, the client's bytes may be right behind, and the server's
	// answer to them back sooner than that ACK. But when the Connect came
	// in a Fast Open SYN (a pipelining relay puts only Connects there), the
	// sender can send the client's bytes only once our SYN-ACK reaches it,
	// so they, and the server's answer to them, come a round trip of this
	// leg later, about when the answer's ACK does. Alone, the answer then
	// leaves the server's bytes the whole first flight, while riding ahead
	// of them it would shift them off the segment size: a hop pushing
	// segments as they come would send a 4-byte runt in that flight
	// (docs/relay.md, Fig. 4).
	if pipelined && !(fresh && sockopt.SYNData(c)) {
		f.downPrefix, err = convert.AppendMessage(nil, reply)
		if err != nil {
			resetConn(server)
			c.Close()
			return nil, errorf("convert reply", err)
		}
		return server, nil
	}
	_ = c.SetWriteDeadline(time.Now().Add(replyTimeout))
	if err := writeConvert(c, reply); err != nil {
		resetConn(server)
		c.Close()
		return nil, errorf("convert reply", err)
	}
	_ = c.SetWriteDeadline(time.Time{})
	return server, nil
}

// awaitRequest waits, until c's read deadline, for the first byte of a
// pooled connection's request (or its end). A deadline that passes with
// bytes received meanwhile, because this process ran late (paused,
// overloaded), does not drop them: the peer saw them acknowledged, so it
// may not send them again on another connection, and its flow would fail.
func awaitRequest(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	pending := func(fd uintptr) bool {
		_, _, e := peekByte(fd)
		return e != unix.EAGAIN
	}
	err = rc.Read(pending)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		ready := false
		if rc.Control(func(fd uintptr) { ready = pending(fd) }) == nil && ready {
			return nil
		}
	}
	return err
}

// readConvert reads one Convert message and returns it decoded and as
// received; on malformed input, a bad fixed header included, it answers
// with the protocol's error and closes c.
func readConvert(c *net.TCPConn) (*convert.Message, []byte, error) {
	raw, err := convert.ReadRaw(c)
	var m *convert.Message
	if err == nil {
		m, _, err = convert.Parse(raw)
	}
	if err != nil {
		var pe *convert.ProtocolError
		if errors.As(err, &pe) {
			replyAndClose(c, func() error { return writeConvert(c, pe.Reply(raw)) })
		} else {
			c.Close()
		}
		return nil, nil, errorf("convert", err)
	}
	return m, raw, nil
}

func writeConvertError(c *net.TCPConn, code convert.ErrorCode) error {
	return writeConvert(c, &convert.Message{Error: &convert.ErrorTLV{Code: code}})
}

func writeConvert(c *net.TCPConn, m *convert.Message) error {
	b, err := convert.AppendMessage(nil, m)
	if err == nil {
		_, err = c.Write(b)
	}
	return err
}

// supportedExts are the TCP options this converter carries on to servers:
// the kernel's own (MSS, window scale, SACK, timestamps). MPTCP (kind 30)
// joins when a listener offers it.
func supportedExts(st *listenerState) []convert.SupportedExt {
	exts := []convert.SupportedExt{{Kind: 3}, {Kind: 4}, {Kind: 8}}
	if st.cfg.MPTCP {
		exts = append(exts, convert.SupportedExt{Kind: 30})
	}
	return exts
}

// readAvailable takes the bytes already received on c, up to max, without
// waiting for more.
func readAvailable(c *net.TCPConn, max int) []byte {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	buf := make([]byte, max)
	var n int
	_ = rc.Read(func(fd uintptr) bool {
		r, _, e := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&buf[0])), uintptr(max), unix.MSG_DONTWAIT, 0, 0)
		if e == 0 {
			n = int(r)
		}
		return true // never wait: what has not arrived follows by splice
	})
	return buf[:n]
}
