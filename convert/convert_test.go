package convert

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustEncode(t testing.TB, m *Message) []byte {
	t.Helper()
	b, err := AppendMessage(nil, m)
	if err != nil {
		t.Fatalf("AppendMessage(%+v): %v", m, err)
	}
	return b
}

// canonical is what Parse returns for an encoded m: IPv4 unmapped, empty
// optional byte fields nil, the Error value with its padding.
func canonical(m *Message) *Message {
	c := *m
	if m.Connect != nil {
		cc := *m.Connect
		cc.Dst = netip.AddrPortFrom(cc.Dst.Addr().Unmap(), cc.Dst.Port())
		if len(cc.TCPOptions) == 0 {
			cc.TCPOptions = nil
		}
		c.Connect = &cc
	}
	if m.Extended != nil {
		e := *m.Extended
		if len(e.Header) == 0 {
			e.Header = nil
		}
		c.Extended = &e
	}
	if m.Error != nil {
		e := *m.Error
		e.Value = append([]byte{}, e.Value...)
		for (3+len(e.Value))%4 != 0 {
			e.Value = append(e.Value, 0)
		}
		c.Error = &e
	}
	return &c
}

func TestErrorCodeString(t *testing.T) {
	want := map[ErrorCode]string{
		0: "Unsupported Version", 1: "Malformed Message", 2: "Unsupported Message",
		3: "Missing Cookie", 32: "Not Authorized", 33: "Unsupported TCP Option",
		64: "Resource Exceeded", 65: "Network Failure", 96: "Connection Reset",
		97: "Destination Unreachable", 4: "ErrorCode(4)", 255: "ErrorCode(255)",
	}
	for c, s := range want {
		if got := c.String(); got != s {
			t.Errorf("ErrorCode(%d).String() = %q, want %q", uint8(c), got, s)
		}
	}
}

// Vectors written field by field from the figures of RFC 8803, Section 4:
// 4.1 (fixed header), 4.2.1 (generic TLV: Length in 32-bit words including
// Type and Length), 4.2.3 Info, 4.2.4 Supported TCP Extensions, 4.2.5
// Connect, 4.2.6 Extended TCP Header, 4.2.7 Cookie, 4.2.8 Error.
func TestRFCVectors(t *testing.T) {
	tests := []struct {
		name string
		wire string
		msg  *Message
	}{{
		name: "client SYN: Connect IPv4 with Window Scale option, Cookie",
		wire: `01 0a 0000` + // Version 1, Total Length 10 words (40 bytes), Unassigned
			// Connect TLV: Type 0x0A, Length 6 words, Remote Peer Port 80
			`0a 06 0050` +
			// Remote Peer IP Address: 192.0.2.1 as IPv4-mapped IPv6 (::ffff:c000:201)
			`00000000 00000000 0000ffff c0000201` +
			// TCP Options: Window Scale (kind 3, len 3, shift 7), one zero byte of padding
			`030307 00` +
			// Cookie TLV: Type 0x16, Length 3 words, Zero, 8 bytes of opaque data
			`16 03 0000 01020304 05060708`,
		msg: &Message{
			Connect: &Connect{
				Dst:        netip.MustParseAddrPort("192.0.2.1:80"),
				TCPOptions: []byte{3, 3, 7},
			},
			Cookie: []byte{1, 2, 3, 4, 5, 6, 7, 8},
		},
	}, {
		name: "client SYN: Info and Connect IPv6, no options",
		wire: `01 07 0000` +
			`01 01 0000` + // Info TLV: Length 1, Zero
			`0a 05 01bb` + // Connect TLV: Length 5, port 443
			`20010db8 00000000 00000000 00000001`, // 2001:db8::1
		msg: &Message{
			Info:    true,
			Connect: &Connect{Dst: netip.MustParseAddrPort("[2001:db8::1]:443")},
		},
	}, {
		name: "converter reply: Extended TCP Header and Supported TCP Extensions",
		wire: `01 06 0000` +
			// Extended TCP Header TLV: Length 3, Unassigned, MSS 1460, SACK-permitted, NOP, NOP
			`14 03 0000 020405b4 04020101` +
			// Supported TCP Extensions TLV: Length 2, Unassigned, MPTCP (30), TFO (34), padding
			`15 02 0000 1e22 0000`,
		msg: &Message{
			Extended:  &ExtendedTCPHeader{Header: []byte{2, 4, 5, 0xb4, 4, 2, 1, 1}},
			Supported: []SupportedExt{{Kind: 30}, {Kind: 34}},
		},
	}, {
		name: "converter reply: Error Not Authorized, value zero",
		wire: `01 02 0000 1e 01 20 00`,
		msg:  &Message{Error: &ErrorTLV{Code: NotAuthorized, Value: []byte{0}}},
	}, {
		name: "converter reply: Missing Cookie with the Cookie to use",
		wire: `01 04 0000 16 02 0000 cafebabe 1e 01 03 00`,
		msg: &Message{
			Cookie: []byte{0xca, 0xfe, 0xba, 0xbe},
			Error:  &ErrorTLV{Code: MissingCookie, Value: []byte{0}},
		},
	}, {
		name: "converter reply: Unsupported TCP Option listing two kinds, zero padded",
		wire: `01 03 0000 1e 02 21 1d 13 000000`,
		msg:  &Message{Error: &ErrorTLV{Code: UnsupportedTCPOption, Value: []byte{29, 19, 0, 0, 0}}},
	}, {
		name: "header only",
		wire: `01 01 0000`,
		msg:  &Message{},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wire := unhex(t, tc.wire)
			got, n, err := Parse(wire)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if n != len(wire) {
				t.Errorf("Parse used %d bytes, want %d", n, len(wire))
			}
			if !reflect.DeepEqual(got, tc.msg) {
				t.Errorf("Parse = %+v, want %+v", got, tc.msg)
			}
			if enc := mustEncode(t, tc.msg); !bytes.Equal(enc, wire) {
				t.Errorf("AppendMessage = % x, want % x", enc, wire)
			}
		})
	}
}

func roundTripMessages() map[string]*Message {
	v4 := netip.MustParseAddrPort("198.51.100.9:8080")
	v6 := netip.MustParseAddrPort("[2001:db8:1::42]:22")
	mss := []byte{2, 4, 0x05, 0xb4}
	mptcp := []byte{30, 12, 0x01, 0x81, 1, 2, 3, 4, 5, 6, 7, 8} // MP_CAPABLE with key
	tfo := []byte{34, 2}                                        // TFO cookie request
	ms := map[string]*Message{
		"empty":                 {},
		"info":                  {Info: true},
		"connect v4":            {Connect: &Connect{Dst: v4}},
		"connect v6":            {Connect: &Connect{Dst: v6}},
		"connect v4 mapped":     {Connect: &Connect{Dst: netip.MustParseAddrPort("[::ffff:10.1.2.3]:9")}},
		"connect v4 mss":        {Connect: &Connect{Dst: v4, TCPOptions: mss}},
		"connect v6 tfo":        {Connect: &Connect{Dst: v6, TCPOptions: tfo}},
		"connect v6 3 opts":     {Connect: &Connect{Dst: v6, TCPOptions: append(append(append([]byte{}, mss...), mptcp...), tfo...)}},
		"connect empty options": {Connect: &Connect{Dst: v4, TCPOptions: []byte{}}},
		"connect max port":      {Connect: &Connect{Dst: netip.MustParseAddrPort("[::]:65535")}},
		"extended empty":        {Extended: &ExtendedTCPHeader{}},
		"extended":              {Extended: &ExtendedTCPHeader{Header: append(append([]byte{}, mss...), mptcp...)}},
		"supported empty":       {Supported: []SupportedExt{}},
		"supported 1":           {Supported: []SupportedExt{{30}}},
		"supported 4":           {Supported: []SupportedExt{{30}, {34}, {8}, {3}}},
		"supported 5":           {Supported: []SupportedExt{{30}, {34}, {8}, {3}, {4}}},
		"cookie empty":          {Cookie: []byte{}},
		"cookie 4":              {Cookie: []byte{1, 2, 3, 4}},
		"cookie 16":             {Cookie: bytes.Repeat([]byte{0xa5}, 16)},
		"cookie 32":             {Cookie: bytes.Repeat([]byte{0x5a}, 32)},
		"cookie max":            {Cookie: bytes.Repeat([]byte{7}, MaxMessageLen-8)},
		"error max value":       {Error: &ErrorTLV{Code: MalformedMessage, Value: make([]byte, MaxMessageLen-7)}},
		"client all": {
			Info:    true,
			Connect: &Connect{Dst: v6, TCPOptions: mptcp},
			Cookie:  bytes.Repeat([]byte{9}, 20),
		},
		"converter all": {
			Extended:  &ExtendedTCPHeader{Header: mss},
			Supported: []SupportedExt{{30}, {34}},
			Cookie:    []byte{1, 1, 1, 1},
			Error:     &ErrorTLV{Code: MissingCookie},
		},
		"every TLV": {
			Info:      true,
			Connect:   &Connect{Dst: v4, TCPOptions: tfo},
			Extended:  &ExtendedTCPHeader{Header: mss},
			Supported: []SupportedExt{{30}},
			Cookie:    []byte{1, 2, 3, 4, 5, 6, 7, 8},
			Error:     &ErrorTLV{Code: DestinationUnreachable, Value: []byte{3}},
		},
	}
	codes := []ErrorCode{UnsupportedVersion, MalformedMessage, UnsupportedMessage, MissingCookie,
		NotAuthorized, UnsupportedTCPOption, ResourceExceeded, NetworkFailure, ConnectionReset,
		DestinationUnreachable, 200}
	for _, c := range codes {
		ms["error "+c.String()] = &Message{Error: &ErrorTLV{Code: c}}
		for _, n := range []int{1, 2, 4, 5, 9} {
			ms["error "+c.String()+" value "+string(rune('0'+n))] = &Message{Error: &ErrorTLV{Code: c, Value: bytes.Repeat([]byte{byte(n)}, n)}}
		}
	}
	return ms
}

func TestRoundTrip(t *testing.T) {
	for name, m := range roundTripMessages() {
		t.Run(name, func(t *testing.T) {
			prefix := []byte("prefix")
			b, err := AppendMessage(prefix, m)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(b, prefix) {
				t.Fatal("AppendMessage did not append")
			}
			enc := b[len(prefix):]
			if len(enc)%4 != 0 || int(enc[1])*4 != len(enc) {
				t.Fatalf("bad framing: len %d, Total Length %d", len(enc), enc[1])
			}
			// Application data after the message must not be consumed.
			got, n, err := Parse(append(enc[:len(enc):len(enc)], "GET / HTTP/1.1"...))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if n != len(enc) {
				t.Errorf("Parse used %d bytes, want %d", n, len(enc))
			}
			if want := canonical(m); !reflect.DeepEqual(got, want) {
				t.Errorf("Parse = %+v\nwant %+v", got, want)
			}
			if enc2 := mustEncode(t, got); !bytes.Equal(enc2, enc) {
				t.Errorf("re-encoding differs:\n% x\n% x", enc2, enc)
			}
		})
	}
}

func TestParseDoesNotAlias(t *testing.T) {
	b := mustEncode(t, &Message{
		Connect:  &Connect{Dst: netip.MustParseAddrPort("[2001:db8::1]:1"), TCPOptions: []byte{2, 4, 5, 0xb4}},
		Extended: &ExtendedTCPHeader{Header: []byte{1, 1, 1, 1}},
		Cookie:   []byte{1, 2, 3, 4},
		Error:    &ErrorTLV{Code: 1, Value: []byte{1}},
	})
	m, _, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	want := canonical(m)
	want.Connect.TCPOptions = bytes.Clone(m.Connect.TCPOptions)
	want.Extended.Header = bytes.Clone(m.Extended.Header)
	want.Cookie = bytes.Clone(m.Cookie)
	for i := range b {
		b[i] = 0xff
	}
	if !reflect.DeepEqual(m, want) {
		t.Error("parsed message changed when the input buffer was overwritten")
	}
}

// Parsing quirks that canonical round trips do not exercise.
func TestParseLenient(t *testing.T) {
	tests := []struct {
		name string
		wire string
		want *Message
	}{{
		name: "unassigned bits in the header and TLVs are ignored",
		wire: `01 04 ffff 01 01 ffff 16 02 abcd 01020304`,
		want: &Message{Info: true, Cookie: []byte{1, 2, 3, 4}},
	}, {
		name: "supported kinds 0, 1, 2 are dropped",
		wire: `01 03 0000 15 02 0000 01 1e 02 00`,
		want: &Message{Supported: []SupportedExt{{30}}},
	}, {
		name: "supported with only padding",
		wire: `01 03 0000 15 02 0000 00000000`,
		want: &Message{Supported: []SupportedExt{}},
	}, {
		name: "connect options followed by a whole word of padding",
		wire: `01 08 0000 0a 07 0001 00000000000000000000ffff7f000001 22 02 0000 00000000`,
		want: &Message{Connect: &Connect{Dst: netip.MustParseAddrPort("127.0.0.1:1"), TCPOptions: []byte{34, 2}}},
	}, {
		name: "connect options that are all padding",
		wire: `01 08 0000 0a 07 0001 00000000000000000000ffff7f000001 00000000 00000000`,
		want: &Message{Connect: &Connect{Dst: netip.MustParseAddrPort("127.0.0.1:1")}},
	}, {
		name: "unspecified IPv6 destination is left to the caller",
		wire: `01 06 0000 0a 05 0001 00000000000000000000000000000000`,
		want: &Message{Connect: &Connect{Dst: netip.MustParseAddrPort("[::]:1")}},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wire := unhex(t, tc.wire)
			got, n, err := Parse(wire)
			if err != nil {
				t.Fatal(err)
			}
			if n != len(wire) {
				t.Errorf("n = %d, want %d", n, len(wire))
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Parse = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseMalformed(t *testing.T) {
	connect := `0a 05 0050 00000000000000000000ffffc0000201`
	tests := []struct {
		name string
		wire string
		code ErrorCode
	}{
		{"version 0", `00 01 0000`, UnsupportedVersion},
		{"version 2", `02 01 0000`, UnsupportedVersion},
		{"version 2 single byte", `02`, UnsupportedVersion},
		{"version 255 garbage", `ff 00`, UnsupportedVersion},
		{"total length 0", `01 00 0000`, MalformedMessage},
		{"total length 0 two bytes", `01 00`, MalformedMessage},
		{"TLV length 0", `01 02 0000 01 00 0000`, MalformedMessage},
		{"TLV past total length", `01 02 0000 16 02 0000 01020304`, MalformedMessage},
		{"second TLV past total length", `01 03 0000 01 01 0000 16 02 0000 01020304`, MalformedMessage},
		{"info too long", `01 03 0000 01 02 0000 00000000`, MalformedMessage},
		{"connect 1 word", `01 02 0000 0a 01 0050`, MalformedMessage},
		{"connect 4 words", `01 05 0000 0a 04 0050 00000000000000000000ffff`, MalformedMessage},
		{"connect port 0", `01 06 0000 0a 05 0000 00000000000000000000ffffc0000201`, MalformedMessage},
		{"connect option NOP", `01 07 0000 0a 06 0050 00000000000000000000ffffc0000201 01 020405`, MalformedMessage},
		{"connect option length 1", `01 07 0000 0a 06 0050 00000000000000000000ffffc0000201 22 01 0000`, MalformedMessage},
		{"connect option length 0", `01 07 0000 0a 06 0050 00000000000000000000ffffc0000201 22 00 0000`, MalformedMessage},
		{"connect option past TLV", `01 07 0000 0a 06 0050 00000000000000000000ffffc0000201 02 05 05b4`, MalformedMessage},
		{"connect option without length", `01 07 0000 0a 06 0050 00000000000000000000ffffc0000201 22 02 00 1e`, MalformedMessage},
		{"connect garbage after padding", `01 07 0000 0a 06 0050 00000000000000000000ffffc0000201 00 00 00 05`, MalformedMessage},
		{"duplicate info", `01 03 0000 01 01 0000 01 01 0000`, MalformedMessage},
		{"duplicate connect", `01 0b 0000 ` + connect + connect, MalformedMessage},
		{"duplicate error", `01 03 0000 1e 01 01 00 1e 01 02 00`, MalformedMessage},
		{"duplicate cookie", `01 03 0000 16 01 0000 16 01 0000`, MalformedMessage},
		{"unknown TLV type", `01 02 0000 02 01 0000`, UnsupportedMessage},
		{"reserved TLV type 0", `01 02 0000 00 01 0000`, UnsupportedMessage},
		{"private use TLV type", `01 02 0000 c0 01 0000`, UnsupportedMessage},
		{"unknown TLV after connect", `01 07 0000 ` + connect + `7f 01 0000`, UnsupportedMessage},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wire := unhex(t, tc.wire)
			m, n, err := Parse(wire)
			var pe *ProtocolError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse = %+v, %d, %v; want a *ProtocolError", m, n, err)
			}
			if pe.Code != tc.code {
				t.Errorf("code = %v (%s), want %v", pe.Code, pe.Msg, tc.code)
			}
			if m != nil || n != 0 {
				t.Errorf("Parse returned %+v, %d with an error", m, n)
			}
			if !strings.HasPrefix(pe.Error(), "convert: "+tc.code.String()+": ") {
				t.Errorf("Error() = %q", pe.Error())
			}
			// ReadMessage must agree with Parse.
			if _, err := ReadMessage(bytes.NewReader(wire)); !errors.As(err, &pe) || pe.Code != tc.code {
				if len(wire) >= HeaderLen {
					t.Errorf("ReadMessage error = %v, want code %v", err, tc.code)
				}
			}
		})
	}
}

func TestParseShort(t *testing.T) {
	for name, m := range roundTripMessages() {
		enc := mustEncode(t, m)
		for i := 0; i < len(enc); i++ {
			if _, _, err := Parse(enc[:i]); err != ErrShort {
				t.Fatalf("%s: Parse of %d/%d bytes = %v, want ErrShort", name, i, len(enc), err)
			}
			_, err := ReadMessage(bytes.NewReader(enc[:i]))
			want := io.ErrUnexpectedEOF
			if i == 0 {
				want = io.EOF
			}
			if err != want {
				t.Fatalf("%s: ReadMessage of %d/%d bytes = %v, want %v", name, i, len(enc), err, want)
			}
		}
	}
	// A bad TLV inside a message that has not fully arrived is still short:
	// the caller must read the whole Total Length first.
	if _, _, err := Parse(unhex(t, `01 05 0000 01 00`)); err != ErrShort {
		t.Errorf("got %v, want ErrShort", err)
	}
}

func TestAppendMessageErrors(t *testing.T) {
	v4 := netip.MustParseAddrPort("192.0.2.1:80")
	tests := []struct {
		name string
		m    *Message
		too  bool // expect ErrTooLong
	}{
		{"nil", nil, false},
		{"connect zero AddrPort", &Message{Connect: &Connect{}}, false},
		{"connect port 0", &Message{Connect: &Connect{Dst: netip.MustParseAddrPort("192.0.2.1:0")}}, false},
		{"connect zone", &Message{Connect: &Connect{Dst: netip.MustParseAddrPort("[fe80::1%eth0]:80")}}, false},
		{"connect option EOL", &Message{Connect: &Connect{Dst: v4, TCPOptions: []byte{2, 4, 5, 0xb4, 0}}}, false},
		{"connect option NOP", &Message{Connect: &Connect{Dst: v4, TCPOptions: []byte{1, 1, 34, 2}}}, false},
		{"connect option truncated", &Message{Connect: &Connect{Dst: v4, TCPOptions: []byte{2, 4, 5}}}, false},
		{"connect option length 1", &Message{Connect: &Connect{Dst: v4, TCPOptions: []byte{34, 1}}}, false},
		{"connect option no length", &Message{Connect: &Connect{Dst: v4, TCPOptions: []byte{34}}}, false},
		{"connect options too long", &Message{Connect: &Connect{Dst: v4, TCPOptions: bytes.Repeat([]byte{34, 2}, 500)}}, true},
		{"extended not words", &Message{Extended: &ExtendedTCPHeader{Header: []byte{1, 1, 1}}}, false},
		{"extended too long", &Message{Extended: &ExtendedTCPHeader{Header: make([]byte, MaxMessageLen)}}, true},
		{"supported kind 0", &Message{Supported: []SupportedExt{{0}}}, false},
		{"supported kind 1", &Message{Supported: []SupportedExt{{30}, {1}}}, false},
		{"supported kind 2", &Message{Supported: []SupportedExt{{2}}}, false},
		{"supported too long", &Message{Supported: make([]SupportedExt, 2000)}, true},
		{"cookie 5 bytes", &Message{Cookie: []byte{1, 2, 3, 4, 5}}, false},
		{"cookie 1 byte", &Message{Cookie: []byte{1}}, false},
		{"cookie one byte too long", &Message{Cookie: make([]byte, MaxMessageLen-4)}, true},
		{"cookie huge", &Message{Cookie: make([]byte, 1<<20)}, true},
		{"error value one byte too long", &Message{Error: &ErrorTLV{Value: make([]byte, MaxMessageLen-6)}}, true},
		{"sum too long", &Message{Cookie: make([]byte, 512), Error: &ErrorTLV{Value: make([]byte, 512)}}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := []byte{0xaa}
			out, err := AppendMessage(in, tc.m)
			if err == nil {
				t.Fatalf("AppendMessage succeeded: % x", out)
			}
			if tc.too != errors.Is(err, ErrTooLong) {
				t.Errorf("err = %v, ErrTooLong expected: %v", err, tc.too)
			}
			if !bytes.Equal(out, in) {
				t.Errorf("b changed on error: % x", out)
			}
		})
	}
}

// ReadMessage must read exactly the message, however the reader splits it,
// and leave the application data behind.
func TestReadMessage(t *testing.T) {
	m := &Message{
		Connect: &Connect{Dst: netip.MustParseAddrPort("[2001:db8::7]:443"), TCPOptions: []byte{30, 4, 0, 1}},
		Cookie:  bytes.Repeat([]byte{0x42}, 32),
	}
	enc := mustEncode(t, m)
	payload := []byte("\x16\x03\x01 TLS ClientHello...")
	for name, wrap := range map[string]func(io.Reader) io.Reader{
		"plain":    func(r io.Reader) io.Reader { return r },
		"one byte": iotest.OneByteReader,
		"half":     iotest.HalfReader,
	} {
		t.Run(name, func(t *testing.T) {
			r := bytes.NewReader(append(append([]byte{}, enc...), payload...))
			got, err := ReadMessage(wrap(r))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, canonical(m)) {
				t.Errorf("got %+v", got)
			}
			rest, _ := io.ReadAll(r)
			if !bytes.Equal(rest, payload) {
				t.Errorf("left %q, want %q", rest, payload)
			}
		})
	}
	t.Run("bad version reads only the header", func(t *testing.T) {
		r := bytes.NewReader(unhex(t, `02 ff 0000 01020304`))
		raw, err := ReadRaw(r)
		var pe *ProtocolError
		if !errors.As(err, &pe) || pe.Code != UnsupportedVersion {
			t.Fatalf("err = %v", err)
		}
		if !bytes.Equal(raw, unhex(t, `02 ff 0000`)) || r.Len() != 4 {
			t.Errorf("raw = % x, %d left", raw, r.Len())
		}
	})
	t.Run("reader error", func(t *testing.T) {
		boom := errors.New("boom")
		_, err := ReadMessage(iotest.ErrReader(boom))
		if err != boom {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("raw bytes of malformed message", func(t *testing.T) {
		wire := unhex(t, `01 02 0000 01 00 0000 ffff`)
		raw, err := ReadRaw(bytes.NewReader(wire))
		if err != nil || !bytes.Equal(raw, wire[:8]) {
			t.Fatalf("ReadRaw = % x, %v", raw, err)
		}
		_, _, err = Parse(raw)
		var pe *ProtocolError
		if !errors.As(err, &pe) || pe.Code != MalformedMessage {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestReply(t *testing.T) {
	tests := []struct {
		name     string
		err      *ProtocolError
		received string
		wire     string
	}{{
		name:     "unsupported version lists version 1",
		err:      &ProtocolError{Code: UnsupportedVersion},
		received: `02 01 0000`,
		wire:     `01 02 0000 1e 01 00 01`,
	}, {
		name:     "malformed echoes the message shifted by one byte",
		err:      &ProtocolError{Code: MalformedMessage},
		received: `01 02 0000 01 00 0000 ffffffff`, // data past Total Length is not echoed
		wire:     `01 04 0000 1e 03 01 00 01020000 01000000`,
	}, {
		name:     "unsupported message",
		err:      &ProtocolError{Code: UnsupportedMessage},
		received: `01 02 0000 7f 01 0000`,
		wire:     `01 04 0000 1e 03 02 00 01020000 7f010000`,
	}, {
		name:     "other codes carry value zero",
		err:      &ProtocolError{Code: NotAuthorized},
		received: `01 01 0000`,
		wire:     `01 02 0000 1e 01 20 00`,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := mustEncode(t, tc.err.Reply(unhex(t, tc.received)))
			if want := unhex(t, tc.wire); !bytes.Equal(got, want) {
				t.Errorf("got  % x\nwant % x", got, want)
			}
		})
	}
	// The echo of the largest message is truncated to fit in one message.
	big := mustEncode(t, &Message{Cookie: make([]byte, MaxMessageLen-8)})
	r := (&ProtocolError{Code: MalformedMessage}).Reply(big)
	enc := mustEncode(t, r)
	if len(enc) != MaxMessageLen || !bytes.Equal(r.Error.Value[1:], big[:len(r.Error.Value)-1]) {
		t.Errorf("echo of %d bytes gives a %d-byte reply", len(big), len(enc))
	}
}
