package relay

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"halfway/convert"
)

// convertHop runs, in this process on loopback, a relay with one listener
// that takes Convert hops only, and returns its address and key.
func convertHop(t *testing.T) (hop netip.AddrPort, key []byte) {
	t.Helper()
	key = []byte("convert test key 0123456789")
	psk := filepath.Join(t.TempDir(), "psk")
	if err := os.WriteFile(psk, append(key, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startLoopback(t, fmt.Sprintf(`
admin: {listen: off}
auth: {psk_file: %q}
listeners:
  - {name: hop, listen: "127.0.0.1:0", protocols: [convert], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
`, psk))
	return addrPortOf(s.Addr("hop")), key
}

// convertAnswer sends raw to the hop at hop, after greet when not nil, and
// returns the Convert message it answers with.
func convertAnswer(t *testing.T, hop netip.AddrPort, greet, raw []byte) (*convert.Message, error) {
	t.Helper()
	c, err := net.Dial("tcp", hop.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if greet != nil {
		if _, err := c.Write(greet); err != nil {
			t.Fatal(err)
		}
		if m, err := convert.ReadMessage(c); err != nil || m.Error != nil {
			t.Fatalf("pool greeting answered %+v, %v", m, err)
		}
	}
	if _, err := c.Write(raw); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if len(b) == 0 {
		return nil, fmt.Errorf("no answer (%v)", err)
	}
	m, _, err := convert.Parse(b)
	return m, err
}

// TestConvertHeaderErrorsAnswered: a Convert message whose fixed header is
// wrong gets the Error TLV RFC 8803 asks for (Section 5.2.5: Unsupported
// Version lists the versions we speak; a bad length is a Malformed
// Message echoing what came), on a fresh connection and on a pooled one,
// not a bare reset or close.
func TestConvertHeaderErrorsAnswered(t *testing.T) {
	hop, key := convertHop(t)
	auth := newHopAuth(key, time.Minute)
	for _, tc := range []struct {
		name   string
		pooled bool
		raw    []byte
		code   convert.ErrorCode
		value  []byte
	}{
		{"version 2", false, []byte{2, 1, 0, 0}, convert.UnsupportedVersion, []byte{convert.Version}},
		{"version 0", false, []byte{0, 1, 0, 0}, convert.UnsupportedVersion, []byte{convert.Version}},
		{"total length 0", false, []byte{1, 0, 0, 0}, convert.MalformedMessage, []byte{0, 1, 0, 0, 0}},
		{"pooled version 2", true, []byte{2, 1, 0, 0}, convert.UnsupportedVersion, []byte{convert.Version}},
		{"pooled total length 0", true, []byte{1, 0, 0, 0}, convert.MalformedMessage, []byte{0, 1, 0, 0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var g []byte
			if tc.pooled {
				var err error
				if g, err = convert.AppendMessage(nil, &convert.Message{Cookie: auth.poolCookie(hop)}); err != nil {
					t.Fatal(err)
				}
			}
			m, err := convertAnswer(t, hop, g, tc.raw)
			if err != nil || m.Error == nil || m.Error.Code != tc.code || !bytes.HasPrefix(m.Error.Value, tc.value) {
				t.Fatalf("answer %+v, %v; want an Error TLV %v with value % x", m, err, tc.code, tc.value)
			}
		})
	}
}

// TestConvertUnsupportedMessageEchoes: a well-formed message the hop cannot
// serve (no Connect TLV) is answered with Unsupported Message whose value
// echoes the message shifted by one byte (RFC 8803, Section 5.2.5), as a
// message the codec refuses is.
func TestConvertUnsupportedMessageEchoes(t *testing.T) {
	hop, key := convertHop(t)
	auth := newHopAuth(key, time.Minute)
	for _, tc := range []struct {
		name   string
		pooled bool
		m      *convert.Message
	}{
		{"empty", false, &convert.Message{}},
		{"extended header only", false, &convert.Message{Extended: &convert.ExtendedTCPHeader{Header: []byte{2, 4, 5, 0xb4}}}},
		{"pooled, cookie only", true, &convert.Message{Cookie: []byte{1, 2, 3, 4}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := convert.AppendMessage(nil, tc.m)
			if err != nil {
				t.Fatal(err)
			}
			var g []byte
			if tc.pooled {
				if g, err = convert.AppendMessage(nil, &convert.Message{Cookie: auth.poolCookie(hop)}); err != nil {
					t.Fatal(err)
				}
			}
			m, err := convertAnswer(t, hop, g, raw)
			if err != nil || m.Error == nil {
				t.Fatalf("answer %+v, %v; want an Error TLV", m, err)
			}
			want := append([]byte{0}, raw...)
			if m.Error.Code != convert.UnsupportedMessage || !bytes.HasPrefix(m.Error.Value, want) {
				t.Fatalf("answer %v with value % x; want %v with value % x", m.Error.Code, m.Error.Value, convert.UnsupportedMessage, want)
			}
		})
	}
}

// TestConvertErrorValue: Destination Unreachable carries the ICMP code the
// errno stands for, ICMPv6's toward an IPv6 destination; other answers
// carry value zero.
func TestConvertErrorValue(t *testing.T) {
	v4, v6 := netip.MustParseAddrPort("192.0.2.1:80"), netip.MustParseAddrPort("[2001:db8::1]:80")
	dial := func(errno syscall.Errno) error {
		return classify(&net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", errno)})
	}
	for _, tc := range []struct {
		name  string
		err   error
		dst   netip.AddrPort
		code  convert.ErrorCode
		value []byte
	}{
		{"host v4", dial(syscall.EHOSTUNREACH), v4, convert.DestinationUnreachable, []byte{1}},
		{"host v6", dial(syscall.EHOSTUNREACH), v6, convert.DestinationUnreachable, []byte{3}},
		{"net v4", dial(syscall.ENETUNREACH), v4, convert.DestinationUnreachable, []byte{0}},
		{"net v6", dial(syscall.ENETUNREACH), v6, convert.DestinationUnreachable, []byte{0}},
		{"refused", dial(syscall.ECONNREFUSED), v4, convert.ConnectionReset, []byte{0}},
		{"timeout", dial(syscall.ETIMEDOUT), v4, convert.NetworkFailure, []byte{0}},
	} {
		b, err := convert.AppendMessage(nil, &convert.Message{Error: convertError(tc.err, tc.dst)})
		if err != nil {
			t.Fatal(err)
		}
		m, _, err := convert.Parse(b)
		if err != nil || m.Error.Code != tc.code || !bytes.Equal(m.Error.Value, tc.value) {
			t.Errorf("%s: %v, %v; want %v with value % x", tc.name, m.Error, err, tc.code, tc.value)
		}
	}
}

// TestConvertMissingCookie: a Connect without a Cookie TLV is answered
// Missing Cookie; one with a Cookie TLV that does not authenticate, even an
// empty one, is Not Authorized (RFC 8803: a present cookie is validated,
// and one that fails is Not Authorized).
func TestConvertMissingCookie(t *testing.T) {
	hop, _ := convertHop(t)
	dst := netip.MustParseAddrPort("127.0.0.1:9")
	for _, tc := range []struct {
		name   string
		cookie []byte
		want   convert.ErrorCode
	}{
		{"absent", nil, convert.MissingCookie},
		{"empty", []byte{}, convert.NotAuthorized},
		{"forged", make([]byte, cookieLen), convert.NotAuthorized},
	} {
		raw, err := convert.AppendMessage(nil, &convert.Message{Connect: &convert.Connect{Dst: dst}, Cookie: tc.cookie})
		if err != nil {
			t.Fatal(err)
		}
		m, err := convertAnswer(t, hop, nil, raw)
		if err != nil || m.Error == nil || m.Error.Code != tc.want {
			t.Errorf("%s cookie: answer %+v, %v; want %v", tc.name, m.Error, err, tc.want)
		}
	}
}

// TestConvertHeadJudgedWhenItComes: a Convert hop's head may come up to
// handshake_timeout after its connection was accepted. A reload meanwhile
// that changes the key, takes the peer or the destination out of the
// listener's lists, takes its Convert hops away or removes it applies to
// that head, as it does to a SOCKS5 or HTTP request and to a pooled
// connection's: the hop is refused, not connected.
func TestConvertHeadJudgedWhenItComes(t *testing.T) {
	key := []byte("convert test key 0123456789")
	dir := t.TempDir()
	psk, psk2 := filepath.Join(dir, "psk"), filepath.Join(dir, "psk2")
	if err := os.WriteFile(psk, append(key, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(psk2, []byte("the next key 9876543210\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dst := echoServer(t)
	const hopYAML = `
admin: {listen: off}
auth: {psk_file: %q}
listeners:
  - {name: hop, listen: %q, protocols: [%s], allow_clients: [%s], allow_destinations: ["%s"]}
`
	for _, tc := range []struct {
		name                    string
		psk, protos, clients, d string
		removed                 bool
	}{
		{name: "unchanged", psk: psk, protos: "convert", clients: "127.0.0.1/32", d: "127.0.0.1/32"},
		{name: "key changed", psk: psk2, protos: "convert", clients: "127.0.0.1/32", d: "127.0.0.1/32"},
		{name: "destination out", psk: psk, protos: "convert", clients: "127.0.0.1/32", d: "127.0.0.2/32"},
		{name: "client out", psk: psk, protos: "convert", clients: "10.9.9.9/32", d: "127.0.0.1/32"},
		{name: "convert taken away", psk: psk, protos: "socks5", clients: "127.0.0.1/32", d: "127.0.0.1/32"},
		{name: "listener removed", psk: psk, removed: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := freeLoopback(t)
			s := startLoopback(t, fmt.Sprintf(hopYAML, psk, addr, "convert", "127.0.0.1/32", "127.0.0.1/32"))
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			waitFor(t, func() bool { return len(s.Flows()) == 1 }) // accepted, its head awaited
			y := fmt.Sprintf(hopYAML, tc.psk, addr, tc.protos, tc.clients, tc.d)
			if tc.removed {
				y = fmt.Sprintf(`
admin: {listen: off}
auth: {psk_file: %q}
listeners:
  - {name: other, listen: "127.0.0.1:0", protocols: [convert], allow_clients: [127.0.0.1/32], allow_destinations: ["127.0.0.1/32"]}
`, psk)
			}
			if err := reloadYAML(t, s, y); err != nil {
				t.Fatal(err)
			}
			hop := netip.MustParseAddrPort(addr)
			raw, err := convert.AppendMessage(nil, &convert.Message{Connect: &convert.Connect{Dst: dst}, Cookie: newHopAuth(key, time.Minute).cookie(hop, dst)})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write(raw); err != nil {
				t.Fatal(err)
			}
			m, err := convert.ReadMessage(c)
			switch {
			case tc.name == "unchanged":
				if err != nil || m.Error != nil {
					t.Errorf("answer %+v, %v; want success", m, err)
				}
			case err != nil || m.Error == nil || m.Error.Code != convert.NotAuthorized:
				t.Errorf("answer %+v, %v; want %v", m, err, convert.NotAuthorized)
			}
		})
	}
}
