package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"halfway/convert"
)

// A chain client → R1 → R2 → … → server is set up in one pass of SYNs. R1
// opens R2 with TCP Fast Open; the SYN carries one Convert message per hop:
// for R2 "connect to R3" (or the server), for R3 "connect to the server",
// each with its own hop cookie. Every relay reads its own message, connects
// on with whatever bytes followed it as its own SYN's payload, and answers
// with a Convert message once its connect is done. R1 reads one answer per
// hop before the flow carries data: success, or the Error TLV of the hop
// that failed.

// dialChain opens the first relay of via and has the chain reach dst.
func (s *Server) dialChain(ctx context.Context, rt *runtime, via []netip.AddrPort, dst netip.AddrPort, early []byte) (*net.TCPConn, error) {
	if rt.auth == nil {
		return nil, &connectError{kind: "failure", err: errors.New("routes via relays need auth.psk_file")}
	}
	var payload []byte
	for i := range via {
		next := dst
		if i+1 < len(via) {
			next = via[i+1]
		}
		var err error
		payload, err = convert.AppendMessage(payload, &convert.Message{
			Connect: &convert.Connect{Dst: next},
			Cookie:  rt.auth.cookie(via[i], next),
		})
		if err != nil {
			return nil, &connectError{kind: "failure", err: err}
		}
	}
	payload = append(payload, early...)
	if p := (*s.pools.Load())[via[0]]; p != nil {
		if c := p.take(); c != nil {
			c, err := s.overChain(ctx, c, len(via), payload, true)
			if !errors.Is(err, errPooledGone) {
				return c, err
			}
			// Closed by the peer meanwhile: the same bytes go on a fresh
			// connection.
			p.dead.Add(1)
		}
	}
	c, err := s.dial(ctx, rt, via[0], payload, rt.cfg.Legs.Relay, netip.Addr{})
	if err != nil {
		// The first relay is down or refusing: no verdict on the destination.
		var ce *connectError
		if errors.As(err, &ce) {
			ce.hop = 1
			if ce.kind != "timeout" {
				ce.kind = "failure"
			}
		}
		return nil, err
	}
	return s.overChain(ctx, c, len(via), nil, false)
}

// overChain sends what is left of payload on c, the connection to the
// first relay, and reads each hop's answer. On a pooled connection a first
// write or read that finds it closed is errPooledGone.
func (s *Server) overChain(ctx context.Context, c *net.TCPConn, hops int, payload []byte, pooled bool) (*net.TCPConn, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if len(payload) > 0 {
		if _, err := c.Write(payload); err != nil {
			c.Close()
			if pooled && pooledGone(err) {
				return nil, errPooledGone
			}
			return nil, &connectError{kind: "failure", hop: 1, err: fmt.Errorf("relay 1 of the chain: %w", err)}
		}
	}
	for i := range hops {
		m, err := convert.ReadMessage(c)
		if err != nil {
			c.Close()
			if pooled && i == 0 && pooledGone(err) {
				return nil, errPooledGone
			}
			// The relay itself failed or hung up (not allowed, down, not a
			// relay): that is no verdict on the destination.
			kind := "failure"
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
				kind = "timeout"
			}
			return nil, &connectError{kind: kind, hop: i + 1, err: fmt.Errorf("relay %d of the chain: %w", i+1, err)}
		}
		if m.Error != nil {
			c.Close()
			return nil, fromConvert(m.Error.Code, i+1)
		}
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// serveConvert is the converter side: a relay hop asks, in the first bytes
// of its SYN, for a connection onward.
func (s *Server) serveConvert(st *listenerState, rt *runtime, f *flow, c *net.TCPConn) (*net.TCPConn, error) {
	m, err := readConvert(c)
	if err != nil {
		return nil, err
	}
	fail := func(code convert.ErrorCode, err error) (*net.TCPConn, error) {
		replyAndClose(c, func() error { return writeConvertError(c, code) })
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	if m.Connect == nil && !m.Info && m.Cookie != nil {
		// A peer opening a pooled connection: it greets with a pool cookie
		// alone, and sends its request when a flow takes the connection.
		if rt.auth == nil {
			return fail(convert.NotAuthorized, errors.New("convert: no pre-shared key configured"))
		}
		if err := rt.auth.verifyPool(m.Cookie, addrPortOf(c.LocalAddr())); err != nil {
			s.metrics.refused.WithLabelValues(f.listener, "hop_not_authenticated").Inc()
			return fail(convert.NotAuthorized, errorf("convert pool greeting", err))
		}
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
		if !s.park(c) {
			c.Close()
			return nil, errors.New("pooled connection: draining")
		}
		m, err = readConvert(c)
		s.unpark(c)
		if err != nil {
			return nil, fmt.Errorf("pooled connection: %w", err)
		}
		conv := "convert"
		f.proto.Store(&conv)
		_ = c.SetReadDeadline(time.Time{})
		if m.Connect == nil {
			return fail(convert.UnsupportedMessage, errors.New("convert: pooled connection without a Connect TLV"))
		}
	}
	if m.Connect == nil {
		if m.Info {
			// RFC 8803 §4.2.1: a client may only ask what we support.
			replyAndClose(c, func() error { return writeConvert(c, &convert.Message{Supported: supportedExts()}) })
			return nil, errors.New("convert: Info only, answered")
		}
		return fail(convert.UnsupportedMessage, errors.New("convert: no Connect TLV"))
	}
	dst := m.Connect.Dst
	f.dst.Store(&dst)
	if rt.auth == nil {
		return fail(convert.NotAuthorized, errors.New("convert: no pre-shared key configured"))
	}
	if err := rt.auth.verify(m.Cookie, addrPortOf(c.LocalAddr()), dst); err != nil {
		s.metrics.refused.WithLabelValues(f.listener, "hop_not_authenticated").Inc()
		code := convert.NotAuthorized
		if errors.Is(err, errCookieMissing) {
			code = convert.MissingCookie
		}
		return fail(code, errorf("convert", err))
	}
	if !st.policy.destAllowed(dst) {
		s.metrics.refused.WithLabelValues(f.listener, "destination_not_allowed").Inc()
		return fail(convert.NotAuthorized, fmt.Errorf("convert: destination %s not allowed", dst))
	}
	// Whatever followed our message (the next hop's, or the client's first
	// data) rides in the SYN of our own connect.
	early := readAvailable(c, 16<<10)
	name := "direct"
	f.route.Store(&name)
	server, err := s.connect(rt, st, directRoute, f, dst, early)
	if err != nil {
		return fail(convertCode(err), err)
	}
	f.up.Add(int64(len(early))) // they went out in the SYN, before the data path
	reply := &convert.Message{}
	if m.Info {
		reply.Supported = supportedExts()
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

// readConvert reads one Convert message; on malformed input it answers
// with the protocol's error and closes c.
func readConvert(c *net.TCPConn) (*convert.Message, error) {
	raw, err := convert.ReadRaw(c)
	if err != nil {
		c.Close()
		return nil, errorf("convert", err)
	}
	m, _, err := convert.Parse(raw)
	if err != nil {
		var pe *convert.ProtocolError
		if errors.As(err, &pe) {
			replyAndClose(c, func() error { return writeConvert(c, pe.Reply(raw)) })
		} else {
			c.Close()
		}
		return nil, errorf("convert", err)
	}
	return m, nil
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
func supportedExts() []convert.SupportedExt {
	return []convert.SupportedExt{{Kind: 3}, {Kind: 4}, {Kind: 8}}
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
