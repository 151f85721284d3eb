package relay

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"syscall"

	"halfway/convert"
	"halfway/socks5"
)

// connectError is why the next leg could not be opened, in the terms every
// client protocol has an answer for.
type connectError struct {
	kind string // refused, unreachable, timeout, not_allowed, resource, failure
	hop  int    // 1-based relay in the chain that reported it; 0: this relay
	err  error
}

func (e *connectError) Error() string {
	if e.hop > 0 {
		return fmt.Sprintf("connect (relay %d of the chain): %s: %v", e.hop, e.kind, e.err)
	}
	return fmt.Sprintf("connect: %s: %v", e.kind, e.err)
}

func (e *connectError) Unwrap() error { return e.err }

// errClientGone ends a flow whose client reset its connection before the
// next leg was open: no answer could reach it. It is no verdict on the
// next leg, and the flow counts as the client's reset.
var errClientGone = errors.New("the client reset its connection")

// errDialAbandoned ends an early SYN's dial that no flow will take (its
// SYN's flow went to another listener, was refused, or never came): no
// verdict on the server either.
var errDialAbandoned = errors.New("the early dial was given up: no flow takes it")

// classify turns a dial or handshake error into a connectError.
func classify(err error) error {
	var ce *connectError
	if errors.As(err, &ce) {
		return err
	}
	kind := "failure"
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET):
		kind = "refused"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		kind = "unreachable"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT):
		kind = "timeout"
	}
	return &connectError{kind: kind, err: err}
}

func errKind(err error) string {
	var ce *connectError
	if errors.As(err, &ce) {
		return ce.kind
	}
	return "failure"
}

func socksReply(err error) socks5.Reply {
	switch errKind(err) {
	case "refused":
		return socks5.ConnectionRefused
	case "unreachable", "timeout":
		return socks5.HostUnreachable
	case "not_allowed":
		return socks5.NotAllowed
	}
	return socks5.GeneralFailure
}

func httpStatus(err error) int {
	switch errKind(err) {
	case "timeout":
		return http.StatusGatewayTimeout
	case "not_allowed":
		return http.StatusForbidden
	case "resource":
		return http.StatusServiceUnavailable
	}
	return http.StatusBadGateway
}

func convertCode(err error) convert.ErrorCode {
	switch errKind(err) {
	case "refused":
		return convert.ConnectionReset
	case "unreachable":
		return convert.DestinationUnreachable
	case "not_allowed":
		return convert.NotAuthorized
	case "resource":
		return convert.ResourceExceeded
	}
	return convert.NetworkFailure
}

// convertError is the Error TLV a hop answers when its connect to dst
// failed. RFC 8803 gives Destination Unreachable the Code of the ICMP
// (ICMPv6 toward an IPv6 dst) message as its value; the kernel reports the
// failure as an errno only, which names the usual code: no route is net
// unreachable (0, and ICMPv6's no route, 0); a host that did not answer
// (neighbour discovery failed, or an ICMP host unreachable came) is host
// unreachable (1), ICMPv6's address unreachable (3).
func convertError(err error, dst netip.AddrPort) *convert.ErrorTLV {
	t := &convert.ErrorTLV{Code: convertCode(err)}
	if t.Code == convert.DestinationUnreachable && errors.Is(err, syscall.EHOSTUNREACH) {
		t.Value = []byte{1}
		if dst.Addr().Is6() && !dst.Addr().Is4In6() {
			t.Value = []byte{3}
		}
	}
	return t
}

// fromConvert maps a Convert Error TLV from relay hop back to a kind.
func fromConvert(code convert.ErrorCode, hop int) *connectError {
	kind := "failure"
	switch code {
	case convert.ConnectionReset:
		kind = "refused"
	case convert.DestinationUnreachable:
		kind = "unreachable"
	case convert.NotAuthorized, convert.MissingCookie:
		kind = "not_allowed"
	case convert.ResourceExceeded:
		kind = "resource"
	}
	return &connectError{kind: kind, hop: hop, err: fmt.Errorf("relay answered %v", code)}
}
