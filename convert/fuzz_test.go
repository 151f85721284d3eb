package convert

import (
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"testing"
)

func addSeeds(f *testing.F) {
	for _, m := range roundTripMessages() {
		b, err := AppendMessage(nil, m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		"", "\x01", "\x02\x01\x00\x00", "\x01\x00\x00\x00", "\x01\x02\x00\x00\x01\x00\x00\x00",
		"\x01\x02\x00\x00\x7f\x01\x00\x00", "\x01\x03\x00\x00\x15\x02\x00\x00\x01\x02\x00\x1e",
	} {
		f.Add([]byte(s))
	}
}

// FuzzParse: Parse never panics; what it accepts re-encodes to a message
// that parses to the same value, and ReadMessage agrees with it.
func FuzzParse(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, n, err := Parse(b)
		rm, rerr := ReadMessage(bytes.NewReader(b))
		if err != nil {
			if m != nil || n != 0 {
				t.Fatalf("Parse returned %+v, %d with %v", m, n, err)
			}
			var pe *ProtocolError
			if !errors.Is(err, ErrShort) && !errors.As(err, &pe) {
				t.Fatalf("unexpected error type %T: %v", err, err)
			}
			if rerr == nil {
				t.Fatalf("ReadMessage accepted what Parse refused (%v)", err)
			}
			return
		}
		if rerr != nil || !reflect.DeepEqual(rm, m) {
			t.Fatalf("ReadMessage = %+v, %v; Parse = %+v", rm, rerr, m)
		}
		if n < HeaderLen || n > len(b) || n%4 != 0 || n > MaxMessageLen {
			t.Fatalf("Parse used %d of %d bytes", n, len(b))
		}
		enc, err := AppendMessage(nil, m)
		if err != nil {
			t.Fatalf("cannot re-encode %+v: %v", m, err)
		}
		if len(enc) > n {
			t.Fatalf("re-encoding grew from %d to %d bytes", n, len(enc))
		}
		m2, n2, err := Parse(enc)
		if err != nil || n2 != len(enc) {
			t.Fatalf("re-encoded message does not parse: %v (%d/%d)\n% x", err, n2, len(enc), enc)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("round trip changed the message:\n%+v\n%+v", m, m2)
		}
		if enc2, _ := AppendMessage(nil, m2); !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding is not stable:\n% x\n% x", enc, enc2)
		}
	})
}

// FuzzRoundTrip builds a valid Message from the fuzz input, encodes it and
// checks that Parse gives it back (in canonical form).
func FuzzRoundTrip(f *testing.F) {
	f.Add(uint8(0xff), []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1}, uint16(80),
		[]byte{2, 4, 5, 0xb4}, []byte{1, 1, 8, 10}, []byte{30, 34}, []byte("cookie!!"), uint8(97), []byte{3})
	f.Add(uint8(0x02), []byte{0x20, 0x01, 0x0d, 0xb8, 15: 1}, uint16(443), []byte{}, []byte{}, []byte{}, []byte{}, uint8(0), []byte{})
	f.Fuzz(func(t *testing.T, flags uint8, addr []byte, port uint16, opts, ext, sup, cookie []byte, code uint8, value []byte) {
		m := &Message{Info: flags&1 != 0}
		if flags&2 != 0 {
			var a [16]byte
			copy(a[:], addr)
			if port == 0 {
				port = 1
			}
			m.Connect = &Connect{Dst: netip.AddrPortFrom(netip.AddrFrom16(a), port), TCPOptions: toOptions(opts)}
		}
		if flags&4 != 0 {
			m.Extended = &ExtendedTCPHeader{Header: ext[:len(ext)&^3]}
		}
		if flags&8 != 0 {
			m.Supported = []SupportedExt{}
			for _, k := range sup {
				if k > 2 {
					m.Supported = append(m.Supported, SupportedExt{Kind: k})
				}
			}
		}
		if flags&16 != 0 {
			m.Cookie = cookie[:len(cookie)&^3]
		}
		if flags&32 != 0 {
			m.Error = &ErrorTLV{Code: ErrorCode(code), Value: value}
		}
		enc, err := AppendMessage(nil, m)
		if err != nil {
			if errors.Is(err, ErrTooLong) {
				return
			}
			t.Fatalf("AppendMessage(%+v): %v", m, err)
		}
		got, n, err := Parse(enc)
		if err != nil || n != len(enc) {
			t.Fatalf("Parse: %v (%d/%d)\n% x", err, n, len(enc), enc)
		}
		if want := canonical(m); !reflect.DeepEqual(got, want) {
			t.Fatalf("Parse = %+v\nwant %+v", got, want)
		}
	})
}

// toOptions turns arbitrary bytes into well-formed Connect TCP options
// (kind >= 2, length >= 2, no EOL or NOP).
func toOptions(raw []byte) []byte {
	var out []byte
	for len(raw) >= 2 {
		kind := raw[0]
		if kind < 2 {
			kind += 2
		}
		l := 2 + int(raw[1]%8)
		data := raw[2:]
		if len(data) > l-2 {
			data = data[:l-2]
		}
		out = append(out, kind, byte(2+len(data)))
		out = append(out, data...)
		raw = raw[2+len(data):]
	}
	return out
}
