package socks5

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// cat joins byte fragments so test vectors can be written field by field.
func cat(parts ...any) []byte {
	var b []byte
	for _, p := range parts {
		switch v := p.(type) {
		case int:
			b = append(b, byte(v))
		case string:
			b = append(b, v...)
		case []byte:
			b = append(b, v...)
		default:
			panic("cat: bad part")
		}
	}
	return b
}

var (
	noAuthGreeting = cat(5, 1, 0)
	connectV4      = cat(5, 1, 0, 1, 127, 0, 0, 1, 0, 80)
	ip6            = netip.MustParseAddr("2001:db8::1").As16()
	aliceAuth      = cat(1, 5, "alice", 6, "secret")
	users          = map[string]string{"alice": "secret", "nopass": ""}
)

// kind classifies errors for the tables.
type kind int

const (
	kOK kind = iota
	kAuth
	kNoMethod
	kCmd
	kProto // *ProtocolError, InRequest false
	kProtoReq
	kEOF // io.EOF or io.ErrUnexpectedEOF
)

func classify(err error) kind {
	var pe *ProtocolError
	switch {
	case err == nil:
		return kOK
	case errors.Is(err, ErrAuth):
		return kAuth
	case errors.Is(err, ErrNoAcceptableMethods):
		return kNoMethod
	case errors.Is(err, ErrCommandNotSupported):
		return kCmd
	case errors.As(err, &pe) && pe.InRequest:
		return kProtoReq
	case errors.As(err, &pe):
		return kProto
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return kEOF
	}
	return -1
}

func TestServerHandshake(t *testing.T) {
	cmdRefused := cat(5, 7, 0, 1, 0, 0, 0, 0, 0, 0)
	tests := []struct {
		name    string
		cfg     *ServerConfig
		in      []byte
		want    Addr
		kind    kind
		reply   Reply // for kProto/kProtoReq
		written []byte
	}{
		{name: "no auth IPv4", in: cat(noAuthGreeting, connectV4),
			want: Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 80}, written: cat(5, 0)},
		{name: "nil config equals no auth", cfg: nil, in: cat(noAuthGreeting, connectV4),
			want: Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 80}, written: cat(5, 0)},
		{name: "domain", in: cat(noAuthGreeting, 5, 1, 0, 3, 11, "example.com", 1, 187),
			want: Addr{Name: "example.com", Port: 443}, written: cat(5, 0)},
		{name: "IPv6", in: cat(noAuthGreeting, 5, 1, 0, 4, ip6[:], 0x1f, 0x90),
			want: Addr{IP: netip.MustParseAddr("2001:db8::1"), Port: 8080}, written: cat(5, 0)},
		{name: "IPv4-mapped IPv6 is unmapped", in: cat(noAuthGreeting, 5, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1, 0, 22),
			want: Addr{IP: netip.MustParseAddr("10.0.0.1"), Port: 22}, written: cat(5, 0)},
		{name: "IP literal in domain field", in: cat(noAuthGreeting, 5, 1, 0, 3, 8, "10.0.0.1", 0, 22),
			want: Addr{IP: netip.MustParseAddr("10.0.0.1"), Port: 22}, written: cat(5, 0)},
		{name: "many methods offered", in: cat(5, 3, 0x80, 1, 0, connectV4),
			want: Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 80}, written: cat(5, 0)},
		{name: "user/pass ok", cfg: &ServerConfig{Users: users}, in: cat(5, 2, 0, 2, aliceAuth, connectV4),
			want: Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 80}, written: cat(5, 2, 1, 0)},
		{name: "user/pass empty PLEN tolerated", cfg: &ServerConfig{Users: users}, in: cat(5, 1, 2, 1, 6, "nopass", 0, connectV4),
			want: Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 80}, written: cat(5, 2, 1, 0)},
		{name: "user/pass wrong password", cfg: &ServerConfig{Users: users}, in: cat(5, 1, 2, 1, 5, "alice", 5, "wrong"),
			kind: kAuth, written: cat(5, 2, 1, 1)},
		{name: "user/pass unknown user", cfg: &ServerConfig{Users: users}, in: cat(5, 1, 2, 1, 3, "bob", 6, "secret"),
			kind: kAuth, written: cat(5, 2, 1, 1)},
		{name: "users and NoAuth prefer user/pass", cfg: &ServerConfig{NoAuth: true, Users: users}, in: cat(5, 2, 0, 2, aliceAuth, connectV4),
			want: Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 80}, written: cat(5, 2, 1, 0)},
		{name: "users and NoAuth accept no auth", cfg: &ServerConfig{NoAuth: true, Users: users}, in: cat(noAuthGreeting, connectV4),
			want: Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 80}, written: cat(5, 0)},
		{name: "users required, only no auth offered", cfg: &ServerConfig{Users: users}, in: noAuthGreeting,
			kind: kNoMethod, written: cat(5, 0xff)},
		{name: "no users, only user/pass offered", in: cat(5, 1, 2),
			kind: kNoMethod, written: cat(5, 0xff)},
		{name: "NMETHODS zero", in: cat(5, 0),
			kind: kNoMethod, written: cat(5, 0xff)},
		{name: "GSSAPI only", in: cat(5, 1, 1),
			kind: kNoMethod, written: cat(5, 0xff)},
		{name: "SOCKS4 greeting", in: cat(4, 1, 0, 80, 127, 0, 0, 1, 0),
			kind: kProto, reply: GeneralFailure},
		{name: "auth version wrong", cfg: &ServerConfig{Users: users}, in: cat(5, 1, 2, 5, 5, "alice", 6, "secret"),
			kind: kProto, reply: GeneralFailure, written: cat(5, 2, 1, 1)},
		{name: "auth ULEN zero", cfg: &ServerConfig{Users: users}, in: cat(5, 1, 2, 1, 0, 6, "secret"),
			kind: kProto, reply: GeneralFailure, written: cat(5, 2, 1, 1)},
		{name: "request version wrong", in: cat(noAuthGreeting, 4, 1, 0, 1, 127, 0, 0, 1, 0, 80),
			kind: kProtoReq, reply: GeneralFailure, written: cat(5, 0)},
		{name: "RSV nonzero", in: cat(noAuthGreeting, 5, 1, 1, 1, 127, 0, 0, 1, 0, 80),
			kind: kProtoReq, reply: GeneralFailure, written: cat(5, 0)},
		{name: "ATYP 2", in: cat(noAuthGreeting, 5, 1, 0, 2, 127, 0, 0, 1, 0, 80),
			kind: kProtoReq, reply: AddressTypeNotSupported, written: cat(5, 0)},
		{name: "empty domain", in: cat(noAuthGreeting, 5, 1, 0, 3, 0, 0, 80),
			kind: kProtoReq, reply: GeneralFailure, written: cat(5, 0)},
		{name: "domain with space", in: cat(noAuthGreeting, 5, 1, 0, 3, 4, "a b.", 0, 80),
			kind: kProtoReq, reply: GeneralFailure, written: cat(5, 0)},
		{name: "domain with colon", in: cat(noAuthGreeting, 5, 1, 0, 3, 6, "a.b:80", 0, 80),
			kind: kProtoReq, reply: GeneralFailure, written: cat(5, 0)},
		{name: "CONNECT to port 0", in: cat(noAuthGreeting, 5, 1, 0, 1, 127, 0, 0, 1, 0, 0),
			kind: kProtoReq, reply: GeneralFailure, written: cat(5, 0)},
		{name: "BIND refused", in: cat(noAuthGreeting, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80),
			kind: kCmd, written: cat(5, 0, cmdRefused)},
		{name: "UDP ASSOCIATE refused", in: cat(noAuthGreeting, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0),
			kind: kCmd, written: cat(5, 0, cmdRefused)},
		{name: "unknown command refused", in: cat(noAuthGreeting, 5, 9, 0, 3, 1, "a", 0, 1),
			kind: kCmd, written: cat(5, 0, cmdRefused)},
		{name: "empty input", in: nil, kind: kEOF},
		{name: "truncated greeting", in: cat(5, 2, 0), kind: kEOF},
		{name: "truncated auth", cfg: &ServerConfig{Users: users}, in: cat(5, 1, 2, 1, 5, "ali"), kind: kEOF, written: cat(5, 2)},
		{name: "truncated request", in: cat(noAuthGreeting, 5, 1, 0, 1, 127, 0), kind: kEOF, written: cat(5, 0)},
		{name: "truncated domain", in: cat(noAuthGreeting, 5, 1, 0, 3, 11, "example.com", 1), kind: kEOF, written: cat(5, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const trailer = "client data after the handshake"
			r := bytes.NewReader(cat(tt.in, trailer))
			if tt.kind == kEOF {
				r = bytes.NewReader(tt.in)
			}
			var w bytes.Buffer
			got, err := ServerHandshake(r, &w, tt.cfg)
			if k := classify(err); k != tt.kind {
				t.Fatalf("error %v: kind %d, want %d", err, k, tt.kind)
			}
			var pe *ProtocolError
			if errors.As(err, &pe) && pe.Reply != tt.reply {
				t.Errorf("ProtocolError.Reply = %v, want %v", pe.Reply, tt.reply)
			}
			if got != tt.want {
				t.Errorf("addr = %+v, want %+v", got, tt.want)
			}
			if !bytes.Equal(w.Bytes(), tt.written) {
				t.Errorf("written % x, want % x", w.Bytes(), tt.written)
			}
			if tt.kind == kOK {
				rest, _ := io.ReadAll(r)
				if string(rest) != trailer {
					t.Errorf("over-read: left %q, want %q", rest, trailer)
				}
			}
		})
	}
}

func TestWriteReply(t *testing.T) {
	tests := []struct {
		rep   Reply
		bound netip.AddrPort
		want  []byte
	}{
		{Succeeded, netip.AddrPort{}, cat(5, 0, 0, 1, 0, 0, 0, 0, 0, 0)},
		{Succeeded, netip.MustParseAddrPort("192.0.2.1:1080"), cat(5, 0, 0, 1, 192, 0, 2, 1, 4, 56)},
		{Succeeded, netip.MustParseAddrPort("[::ffff:192.0.2.1]:1080"), cat(5, 0, 0, 1, 192, 0, 2, 1, 4, 56)},
		{HostUnreachable, netip.MustParseAddrPort("[2001:db8::1]:443"), cat(5, 4, 0, 4, ip6[:], 1, 187)},
		{ConnectionRefused, netip.AddrPort{}, cat(5, 5, 0, 1, 0, 0, 0, 0, 0, 0)},
	}
	for _, tt := range tests {
		var w bytes.Buffer
		if err := WriteReply(&w, tt.rep, tt.bound); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(w.Bytes(), tt.want) {
			t.Errorf("WriteReply(%v, %v) = % x, want % x", tt.rep, tt.bound, w.Bytes(), tt.want)
		}
	}
}

func TestReplyString(t *testing.T) {
	for r := Succeeded; r <= AddressTypeNotSupported; r++ {
		if s := r.String(); s == "" || strings.HasPrefix(s, "unassigned") {
			t.Errorf("Reply(%d).String() = %q", r, s)
		}
	}
	if s := Reply(9).String(); !strings.HasPrefix(s, "unassigned") {
		t.Errorf("Reply(9).String() = %q", s)
	}
}

func TestAddrString(t *testing.T) {
	for _, tt := range []struct {
		a    Addr
		want string
	}{
		{Addr{IP: netip.MustParseAddr("10.0.0.1"), Port: 80}, "10.0.0.1:80"},
		{Addr{IP: netip.MustParseAddr("2001:db8::1"), Port: 443}, "[2001:db8::1]:443"},
		{Addr{Name: "example.com", Port: 8080}, "example.com:8080"},
	} {
		if got := tt.a.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.a, got, tt.want)
		}
	}
}

// TestClientHandshake scripts the server's bytes and checks what the client
// sends and how it reads the replies.
func TestClientHandshake(t *testing.T) {
	dst := Addr{Name: "example.com", Port: 443}
	req := cat(5, 1, 0, 3, 11, "example.com", 1, 187)
	okV4 := cat(5, 0, 0, 1, 192, 0, 2, 1, 4, 56)
	tests := []struct {
		name       string
		dst        Addr
		user, pass string
		server     []byte
		want       Addr
		wantErr    func(error) bool
		written    []byte
		noTrailer  bool // for truncation cases, where a trailer would complete the reply
	}{
		{name: "no auth", dst: dst, server: cat(5, 0, okV4),
			want: Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 1080}, written: cat(5, 1, 0, req)},
		{name: "IPv4 destination", dst: Addr{IP: netip.MustParseAddr("10.1.2.3"), Port: 22}, server: cat(5, 0, okV4),
			want: Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 1080}, written: cat(5, 1, 0, 5, 1, 0, 1, 10, 1, 2, 3, 0, 22)},
		{name: "IPv6 destination and bound", dst: Addr{IP: netip.MustParseAddr("2001:db8::1"), Port: 443}, server: cat(5, 0, 5, 0, 0, 4, ip6[:], 0, 1),
			want: Addr{IP: netip.MustParseAddr("2001:db8::1"), Port: 1}, written: cat(5, 1, 0, 5, 1, 0, 4, ip6[:], 1, 187)},
		{name: "domain bound", dst: dst, server: cat(5, 0, 5, 0, 0, 3, 4, "host", 0, 9),
			want: Addr{Name: "host", Port: 9}, written: cat(5, 1, 0, req)},
		{name: "user/pass", dst: dst, user: "alice", pass: "secret", server: cat(5, 2, 1, 0, okV4),
			want: Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 1080}, written: cat(5, 2, 0, 2, aliceAuth, req)},
		{name: "user/pass but server needs none", dst: dst, user: "alice", pass: "secret", server: cat(5, 0, okV4),
			want: Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 1080}, written: cat(5, 2, 0, 2, req)},
		{name: "auth failure", dst: dst, user: "alice", pass: "secret", server: cat(5, 2, 1, 1),
			wantErr: func(err error) bool { return errors.Is(err, ErrAuth) }, written: cat(5, 2, 0, 2, aliceAuth)},
		{name: "no acceptable method", dst: dst, server: cat(5, 0xff),
			wantErr: func(err error) bool { return errors.Is(err, ErrNoAcceptableMethods) }, written: cat(5, 1, 0)},
		{name: "unoffered method", dst: dst, server: cat(5, 2),
			wantErr: func(err error) bool { return err != nil }, written: cat(5, 1, 0)},
		{name: "refused", dst: dst, server: cat(5, 0, 5, 5, 0, 1, 0, 0, 0, 0, 0, 0),
			wantErr: func(err error) bool {
				var re *ReplyError
				return errors.As(err, &re) && re.Reply == ConnectionRefused
			}, written: cat(5, 1, 0, req)},
		{name: "refused, short reply", dst: dst, server: cat(5, 0, 5, 4, 0, 1),
			wantErr: func(err error) bool {
				var re *ReplyError
				return errors.As(err, &re) && re.Reply == HostUnreachable
			}, written: cat(5, 1, 0, req)},
		{name: "bad reply version", dst: dst, server: cat(5, 0, 4, 0, 0, 1, 0, 0, 0, 0, 0, 0),
			wantErr: func(err error) bool { return err != nil }, written: cat(5, 1, 0, req)},
		{name: "bad reply ATYP", dst: dst, server: cat(5, 0, 5, 0, 0, 7, 0, 0, 0, 0, 0, 0),
			wantErr: func(err error) bool { return err != nil }, written: cat(5, 1, 0, req)},
		{name: "truncated reply", dst: dst, server: cat(5, 0, 5, 0, 0, 1, 1, 2),
			wantErr: func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }, written: cat(5, 1, 0, req), noTrailer: true},
		{name: "both IP and name", dst: Addr{IP: netip.MustParseAddr("10.0.0.1"), Name: "x", Port: 1},
			wantErr: func(err error) bool { return err != nil }},
		{name: "empty destination", wantErr: func(err error) bool { return err != nil }},
		{name: "name too long", dst: Addr{Name: strings.Repeat("a", 256), Port: 1},
			wantErr: func(err error) bool { return err != nil }},
		{name: "empty password", dst: dst, user: "alice",
			wantErr: func(err error) bool { return err != nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			trailer := "server data after the reply"
			if tt.noTrailer {
				trailer = ""
			}
			r := bytes.NewReader(cat(tt.server, trailer))
			var w bytes.Buffer
			got, err := ClientHandshake(r, &w, tt.dst, tt.user, tt.pass)
			if tt.wantErr == nil && err != nil {
				t.Fatalf("unexpected error %v", err)
			}
			if tt.wantErr != nil && !tt.wantErr(err) {
				t.Fatalf("wrong error %v", err)
			}
			if got != tt.want {
				t.Errorf("bound = %+v, want %+v", got, tt.want)
			}
			if !bytes.Equal(w.Bytes(), tt.written) {
				t.Errorf("written % x, want % x", w.Bytes(), tt.written)
			}
			if err == nil {
				if rest, _ := io.ReadAll(r); string(rest) != trailer {
					t.Errorf("over-read: left %q", rest)
				}
			}
		})
	}
}

// TestPipeRoundTrip runs ClientHandshake against ServerHandshake over
// net.Pipe and checks that the tunnel carries data afterwards.
func TestPipeRoundTrip(t *testing.T) {
	bound := netip.MustParseAddrPort("192.0.2.7:40000")
	tests := []struct {
		name       string
		cfg        *ServerConfig
		dst        Addr
		user, pass string
		wantErr    error
	}{
		{name: "no auth IPv4", dst: Addr{IP: netip.MustParseAddr("198.51.100.1"), Port: 80}},
		{name: "no auth IPv6", dst: Addr{IP: netip.MustParseAddr("2001:db8::2"), Port: 443}},
		{name: "no auth domain", dst: Addr{Name: "example.org", Port: 8443}},
		{name: "user/pass ok", cfg: &ServerConfig{Users: users}, dst: Addr{Name: "example.org", Port: 443}, user: "alice", pass: "secret"},
		{name: "user/pass with NoAuth", cfg: &ServerConfig{NoAuth: true, Users: users}, dst: Addr{Name: "example.org", Port: 443}, user: "alice", pass: "secret"},
		{name: "user/pass wrong", cfg: &ServerConfig{Users: users}, dst: Addr{Name: "example.org", Port: 443}, user: "alice", pass: "nope", wantErr: ErrAuth},
		{name: "credentials missing", cfg: &ServerConfig{Users: users}, dst: Addr{Name: "example.org", Port: 443}, wantErr: ErrNoAcceptableMethods},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, s := net.Pipe()
			deadline := time.Now().Add(5 * time.Second)
			c.SetDeadline(deadline)
			s.SetDeadline(deadline)
			type result struct {
				addr Addr
				err  error
			}
			done := make(chan result, 1)
			go func() {
				defer s.Close()
				addr, err := ServerHandshake(s, s, tt.cfg)
				if err == nil {
					err = WriteReply(s, Succeeded, bound)
				}
				if err == nil {
					// Echo one message to show the stream continues cleanly.
					var buf [4]byte
					if _, err = io.ReadFull(s, buf[:]); err == nil {
						_, err = s.Write(buf[:])
					}
				}
				done <- result{addr, err}
			}()
			got, err := ClientHandshake(c, c, tt.dst, tt.user, tt.pass)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("client error %v, want %v", err, tt.wantErr)
				}
				c.Close()
				if res := <-done; !errors.Is(res.err, tt.wantErr) {
					t.Fatalf("server error %v, want %v", res.err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("client: %v", err)
			}
			if got != (Addr{IP: bound.Addr(), Port: bound.Port()}) {
				t.Errorf("bound = %v, want %v", got, bound)
			}
			if _, err := c.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			var buf [4]byte
			if _, err := io.ReadFull(c, buf[:]); err != nil || string(buf[:]) != "ping" {
				t.Fatalf("echo %q, %v", buf, err)
			}
			c.Close()
			res := <-done
			if res.err != nil {
				t.Fatalf("server: %v", res.err)
			}
			if res.addr != tt.dst {
				t.Errorf("server saw %+v, want %+v", res.addr, tt.dst)
			}
		})
	}
}

// TestPipeBindRefused sends a BIND request by hand, since ClientHandshake
// only issues CONNECT.
func TestPipeBindRefused(t *testing.T) {
	c, s := net.Pipe()
	deadline := time.Now().Add(5 * time.Second)
	c.SetDeadline(deadline)
	s.SetDeadline(deadline)
	done := make(chan error, 1)
	go func() {
		defer s.Close()
		_, err := ServerHandshake(s, s, nil)
		done <- err
	}()
	if _, err := c.Write(cat(5, 1, 0)); err != nil {
		t.Fatal(err)
	}
	var sel [2]byte
	if _, err := io.ReadFull(c, sel[:]); err != nil || sel != [2]byte{5, 0} {
		t.Fatalf("selection % x, %v", sel, err)
	}
	if _, err := c.Write(cat(5, 2, 0, 1, 0, 0, 0, 0, 0, 0)); err != nil {
		t.Fatal(err)
	}
	var rep [10]byte
	if _, err := io.ReadFull(c, rep[:]); err != nil {
		t.Fatal(err)
	}
	if want := cat(5, 7, 0, 1, 0, 0, 0, 0, 0, 0); !bytes.Equal(rep[:], want) {
		t.Errorf("reply % x, want % x", rep, want)
	}
	if err := <-done; !errors.Is(err, ErrCommandNotSupported) {
		t.Errorf("server error %v", err)
	}
}

func fuzzConfig(mode byte) *ServerConfig {
	switch mode % 4 {
	case 0:
		return nil
	case 1:
		return &ServerConfig{Users: map[string]string{"alice": "secret"}}
	case 2:
		return &ServerConfig{NoAuth: true, Users: map[string]string{"alice": "secret", "": ""}}
	}
	return &ServerConfig{NoAuth: true}
}

// FuzzServerHandshake feeds arbitrary bytes as the client side. Besides "no
// panic" it checks that a successful handshake consumed exactly the bytes it
// needed: the same prefix succeeds alone, and one byte less does not.
func FuzzServerHandshake(f *testing.F) {
	f.Add(cat(noAuthGreeting, connectV4), byte(0))
	f.Add(cat(5, 2, 0, 2, aliceAuth, 5, 1, 0, 3, 11, "example.com", 1, 187), byte(1))
	f.Add(cat(5, 1, 2, 1, 0, 0, 5, 1, 0, 4, ip6[:], 0, 80), byte(2))
	f.Add(cat(noAuthGreeting, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80), byte(3))
	f.Add(cat(noAuthGreeting, 5, 1, 0, 3, 8, "10.0.0.1", 0, 22), byte(0))
	f.Fuzz(func(t *testing.T, in []byte, mode byte) {
		cfg := fuzzConfig(mode)
		r := bytes.NewReader(in)
		var w bytes.Buffer
		addr, err := ServerHandshake(r, &w, cfg)
		if classify(err) < 0 {
			t.Fatalf("unclassified error %v", err)
		}
		var pe *ProtocolError
		if errors.As(err, &pe) && pe.Reply != GeneralFailure && pe.Reply != AddressTypeNotSupported {
			t.Fatalf("unexpected reply %v", pe.Reply)
		}
		if err != nil {
			return
		}
		if addr.IP.IsValid() == (addr.Name != "") {
			t.Fatalf("addr %+v must have exactly one of IP and Name", addr)
		}
		n := len(in) - r.Len()
		again, err := ServerHandshake(bytes.NewReader(in[:n]), io.Discard, cfg)
		if err != nil || again != addr {
			t.Fatalf("exact prefix: %+v, %v; want %+v", again, err, addr)
		}
		if _, err := ServerHandshake(bytes.NewReader(in[:n-1]), io.Discard, cfg); classify(err) != kEOF {
			t.Fatalf("prefix minus one byte: %v, want EOF", err)
		}
	})
}

// FuzzClientHandshake feeds arbitrary bytes as the server side.
func FuzzClientHandshake(f *testing.F) {
	f.Add(cat(5, 0, 5, 0, 0, 1, 192, 0, 2, 1, 4, 56), false)
	f.Add(cat(5, 2, 1, 0, 5, 0, 0, 3, 4, "host", 0, 9), true)
	f.Add(cat(5, 0, 5, 0, 0, 4, ip6[:], 0, 1), false)
	f.Fuzz(func(t *testing.T, in []byte, auth bool) {
		user, pass := "", ""
		if auth {
			user, pass = "alice", "secret"
		}
		dst := Addr{Name: "example.com", Port: 443}
		r := bytes.NewReader(in)
		bound, err := ClientHandshake(r, io.Discard, dst, user, pass)
		if err != nil {
			return
		}
		n := len(in) - r.Len()
		again, err := ClientHandshake(bytes.NewReader(in[:n]), io.Discard, dst, user, pass)
		if err != nil || again != bound {
			t.Fatalf("exact prefix: %+v, %v; want %+v", again, err, bound)
		}
		if _, err := ClientHandshake(bytes.NewReader(in[:n-1]), io.Discard, dst, user, pass); err == nil {
			t.Fatal("prefix minus one byte succeeded")
		}
	})
}
