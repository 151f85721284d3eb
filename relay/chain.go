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
	c, err := s.dial(ctx, rt, via[0], append(payload, early...), rt.cfg.Legs.Relay, netip.Addr{})
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
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetReadDeadline(dl)
	}
	for i := range via {
		m, err := convert.ReadMessage(c)
		if err != nil {
			c.Close()
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
	_ = c.SetReadDeadline(time.Time{})
	return c, nil
}

// serveConvert is the converter side: a relay hop asks, in the first bytes
// of its SYN, for a connection onward.
func (s *Server) serveConvert(st *listenerState, rt *runtime, f *flow, c *net.TCPConn) (*net.TCPConn, error) {
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
	fail := func(code convert.ErrorCode, err error) (*net.TCPConn, error) {
		replyAndClose(c, func() error { return writeConvertError(c, code) })
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
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
