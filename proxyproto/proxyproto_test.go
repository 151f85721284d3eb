package proxyproto

import (
	"bytes"
	"errors"
	"hash/crc32"
	"io"
	"net"
	"net/netip"
	"reflect"
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
		case rune:
			b = append(b, byte(v))
		case string:
			b = append(b, v...)
		case []byte:
			b = append(b, v...)
		case [12]byte:
			b = append(b, v[:]...)
		case [16]byte:
			b = append(b, v[:]...)
		default:
			panic("cat: bad part")
		}
	}
	return b
}

var (
	sig    = Signature
	v6a    = netip.MustParseAddr("2001:db8::1").As16()
	v6b    = netip.MustParseAddr("2001:db8::2").As16()
	mapped = netip.MustParseAddr("::ffff:192.0.2.1").As16()

	tcp4 = cat(sig, 0x21, 0x11, 0, 12, 192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x01, 0xbb)
	hdr4 = &Header{Command: Proxy, Transport: Stream,
		Src: netip.MustParseAddrPort("192.0.2.1:56324"), Dst: netip.MustParseAddrPort("198.51.100.2:443")}
)

func TestSignatureMatchesSpec(t *testing.T) {
	// proxy-protocol.txt §2.2: the 13-byte v2 detection prefix.
	want := []byte("\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A\x20")
	if !bytes.Equal(cat(Signature, 0x20), want) {
		t.Fatalf("signature % x", Signature)
	}
}

func TestAppendHeader(t *testing.T) {
	tests := []struct {
		name string
		h    *Header
		want []byte
		err  bool
	}{
		{name: "TCP over IPv4", h: hdr4, want: tcp4},
		{name: "UDP over IPv4", h: &Header{Command: Proxy, Transport: Datagram,
			Src: netip.MustParseAddrPort("192.0.2.1:53"), Dst: netip.MustParseAddrPort("198.51.100.2:53")},
			want: cat(sig, 0x21, 0x12, 0, 12, 192, 0, 2, 1, 198, 51, 100, 2, 0, 53, 0, 53)},
		{name: "TCP over IPv6", h: &Header{Command: Proxy, Transport: Stream,
			Src: netip.MustParseAddrPort("[2001:db8::1]:1000"), Dst: netip.MustParseAddrPort("[2001:db8::2]:443")},
			want: cat(sig, 0x21, 0x21, 0, 36, v6a, v6b, 0x03, 0xe8, 0x01, 0xbb)},
		{name: "IPv4-mapped pair becomes AF_INET", h: &Header{Command: Proxy, Transport: Stream,
			Src: netip.MustParseAddrPort("[::ffff:192.0.2.1]:56324"), Dst: netip.MustParseAddrPort("[::ffff:198.51.100.2]:443")},
			want: tcp4},
		{name: "mixed families map IPv4 into IPv6", h: &Header{Command: Proxy, Transport: Stream,
			Src: netip.MustParseAddrPort("192.0.2.1:1000"), Dst: netip.MustParseAddrPort("[2001:db8::2]:443")},
			want: cat(sig, 0x21, 0x21, 0, 36, mapped, v6b, 0x03, 0xe8, 0x01, 0xbb)},
		{name: "zone dropped", h: &Header{Command: Proxy, Transport: Stream,
			Src: netip.MustParseAddrPort("[2001:db8::1%eth0]:1000"), Dst: netip.MustParseAddrPort("[2001:db8::2]:443")},
			want: cat(sig, 0x21, 0x21, 0, 36, v6a, v6b, 0x03, 0xe8, 0x01, 0xbb)},
		{name: "LOCAL", h: &Header{Command: Local, Src: hdr4.Src, Dst: hdr4.Dst},
			want: cat(sig, 0x20, 0x00, 0, 0)},
		{name: "PROXY without addresses is UNSPEC", h: &Header{Command: Proxy, Transport: Stream},
			want: cat(sig, 0x21, 0x00, 0, 0)},
		{name: "TLVs", h: &Header{Command: Proxy, Transport: Stream, Src: hdr4.Src, Dst: hdr4.Dst,
			TLVs: []TLV{{TypeAuthority, []byte("example.com")}, {TypeALPN, []byte("h2")}, {0xE0, nil}}},
			want: cat(tcp4[:14], 0, 12+3+11+3+2+3, tcp4[16:], TypeAuthority, 0, 11, "example.com", TypeALPN, 0, 2, "h2", 0xE0, 0, 0)},
		{name: "only Src", h: &Header{Command: Proxy, Transport: Stream, Src: hdr4.Src}, err: true},
		{name: "addresses without transport", h: &Header{Command: Proxy, Src: hdr4.Src, Dst: hdr4.Dst}, err: true},
		{name: "bad transport", h: &Header{Command: Proxy, Transport: 3, Src: hdr4.Src, Dst: hdr4.Dst}, err: true},
		{name: "LOCAL with TLVs", h: &Header{Command: Local, TLVs: []TLV{{TypeALPN, []byte("h2")}}}, err: true},
		{name: "unknown command", h: &Header{Command: 2}, err: true},
		{name: "TLV too long", h: &Header{Command: Proxy, TLVs: []TLV{{0xE0, make([]byte, 0x10000)}}}, err: true},
		{name: "header too long", h: &Header{Command: Proxy, Transport: Stream, Src: hdr4.Src, Dst: hdr4.Dst,
			TLVs: []TLV{{0xE0, make([]byte, 0xFFFF-12-3)}, {0xE1, nil}}}, err: true},
		{name: "two CRC32C", h: &Header{Command: Proxy, TLVs: []TLV{{TypeCRC32C, nil}, {TypeCRC32C, nil}}}, err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []byte("prefix")
			got, err := AppendHeader(bytes.Clone(prefix), tt.h)
			if (err != nil) != tt.err {
				t.Fatalf("err %v", err)
			}
			if err != nil {
				if !bytes.Equal(got, prefix) {
					t.Errorf("failed append changed b: %q", got)
				}
				return
			}
			if !bytes.HasPrefix(got, prefix) || !bytes.Equal(got[len(prefix):], tt.want) {
				t.Errorf("got  % x\nwant % x", got[len(prefix):], tt.want)
			}
		})
	}
}

func TestAppendHeaderMaxLength(t *testing.T) {
	h := &Header{Command: Proxy, Transport: Stream, Src: hdr4.Src, Dst: hdr4.Dst,
		TLVs: []TLV{{0xE0, make([]byte, 0xFFFF-12-3)}}}
	b, err := AppendHeader(nil, h)
	if err != nil || len(b) != MaxHeaderLen {
		t.Fatalf("len %d, %v", len(b), err)
	}
	got, n, err := Parse(b)
	if err != nil || n != MaxHeaderLen || !reflect.DeepEqual(got, h) {
		t.Fatalf("Parse: %d, %v", n, err)
	}
}

func TestCRC32C(t *testing.T) {
	h := &Header{Command: Proxy, Transport: Stream, Src: hdr4.Src, Dst: hdr4.Dst,
		TLVs: []TLV{{TypeUniqueID, []byte("id-1")}, {TypeCRC32C, []byte("junk, replaced")}}}
	b, err := AppendHeader(nil, h)
	if err != nil {
		t.Fatal(err)
	}
	// Recompute independently: CRC32c of the header with the value zeroed.
	at := len(b) - 4
	zeroed := bytes.Clone(b)
	copy(zeroed[at:], []byte{0, 0, 0, 0})
	sum := crc32.Checksum(zeroed, crc32.MakeTable(crc32.Castagnoli))
	if want := []byte{byte(sum >> 24), byte(sum >> 16), byte(sum >> 8), byte(sum)}; !bytes.Equal(b[at:], want) {
		t.Fatalf("CRC value % x, want % x", b[at:], want)
	}
	got, _, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.TLVs) != 2 || got.TLVs[1].Type != TypeCRC32C || !bytes.Equal(got.TLVs[1].Value, b[at:]) {
		t.Errorf("TLVs %v", got.TLVs)
	}
	for i := 13; i < len(b); i++ {
		if i == at-3 {
			continue // changing the CRC32C type removes the checksum itself
		}
		bad := bytes.Clone(b)
		bad[i] ^= 0x01
		if _, _, err := Parse(bad); err == nil {
			t.Errorf("flipping byte %d not detected", i)
		}
	}
}

func TestParse(t *testing.T) {
	unixBlock := make([]byte, lenUnix)
	tests := []struct {
		name string
		in   []byte
		want *Header
		n    int
		err  error
	}{
		{name: "TCP over IPv4", in: tcp4, want: hdr4, n: 28},
		{name: "trailing data not consumed", in: cat(tcp4, "GET / HTTP/1.1\r\n"), want: hdr4, n: 28},
		{name: "TCP over IPv6", in: cat(sig, 0x21, 0x21, 0, 36, v6a, v6b, 0x03, 0xe8, 0x01, 0xbb),
			want: &Header{Command: Proxy, Transport: Stream, Src: netip.MustParseAddrPort("[2001:db8::1]:1000"), Dst: netip.MustParseAddrPort("[2001:db8::2]:443")}, n: 52},
		{name: "UDP over IPv6 with mapped source", in: cat(sig, 0x21, 0x22, 0, 36, mapped, v6b, 0, 53, 0, 53),
			want: &Header{Command: Proxy, Transport: Datagram, Src: netip.MustParseAddrPort("[::ffff:192.0.2.1]:53"), Dst: netip.MustParseAddrPort("[2001:db8::2]:53")}, n: 52},
		{name: "LOCAL", in: cat(sig, 0x20, 0x00, 0, 0), want: &Header{Command: Local}, n: 16},
		{name: "LOCAL ignores the block", in: cat(sig, 0x20, 0x11, 0, 3, 1, 2, 3), want: &Header{Command: Local}, n: 19},
		{name: "PROXY UNSPEC", in: cat(sig, 0x21, 0x00, 0, 0), want: &Header{Command: Proxy}, n: 16},
		{name: "PROXY UNSPEC with TLV", in: cat(sig, 0x21, 0x00, 0, 5, TypeALPN, 0, 2, "h2"),
			want: &Header{Command: Proxy, TLVs: []TLV{{TypeALPN, []byte("h2")}}}, n: 21},
		{name: "AF_UNIX falls back to UNSPEC", in: cat(sig, 0x21, 0x31, 0x00, 0xdb, unixBlock, TypeNetNS, 0, 0),
			want: &Header{Command: Proxy, TLVs: []TLV{{TypeNetNS, []byte{}}}}, n: 16 + 216 + 3},
		{name: "NOOP dropped", in: cat(tcp4[:14], 0, 12+4+5, tcp4[16:], TypeNoop, 0, 1, 0, TypeAuthority, 0, 2, "ab"),
			want: &Header{Command: Proxy, Transport: Stream, Src: hdr4.Src, Dst: hdr4.Dst, TLVs: []TLV{{TypeAuthority, []byte("ab")}}}, n: 28 + 9},

		{name: "empty", in: nil, err: ErrShort},
		{name: "signature prefix", in: sig[:5], err: ErrShort},
		{name: "fixed part prefix", in: tcp4[:14], err: ErrShort},
		{name: "address block short", in: tcp4[:27], err: ErrShort},
		{name: "v1 text header", in: []byte("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"), err: ErrSignature},
		{name: "bad signature byte", in: cat(sig[:11], 0x0B, 0x21, 0x11, 0, 0), err: ErrSignature},
		{name: "bad signature in prefix", in: []byte{0x0D, 0x0B}, err: ErrSignature},
		{name: "version 1", in: cat(sig, 0x11, 0x11, 0, 12), err: ErrVersion},
		{name: "version 3", in: cat(sig, 0x31), err: ErrVersion},
		{name: "command 2", in: cat(sig, 0x22, 0x11, 0, 12), err: ErrCommand},
		{name: "command F", in: cat(sig, 0x2F), err: ErrCommand},
		{name: "family 4", in: cat(sig, 0x21, 0x41, 0, 0), err: ErrFamily},
		{name: "transport 3", in: cat(sig, 0x21, 0x13), err: ErrFamily},
		{name: "LOCAL with invalid family nibble", in: cat(sig, 0x20, 0x51, 0, 0), err: ErrFamily},
		{name: "AF_INET with UNSPEC transport", in: cat(sig, 0x21, 0x10, 0, 12, make([]byte, 12)), err: ErrFamily},
		{name: "AF_UNSPEC with STREAM", in: cat(sig, 0x21, 0x01, 0, 0), err: ErrFamily},
		{name: "AF_INET length 11", in: cat(sig, 0x21, 0x11, 0, 11, make([]byte, 11)), err: ErrLength},
		{name: "AF_INET6 length 12", in: cat(sig, 0x21, 0x21, 0, 12, make([]byte, 12)), err: ErrLength},
		{name: "AF_UNIX length 100", in: cat(sig, 0x21, 0x31, 0, 100, make([]byte, 100)), err: ErrLength},
		{name: "TLV header cut", in: cat(tcp4[:14], 0, 14, tcp4[16:], 1, 0), err: ErrTLV},
		{name: "TLV value cut", in: cat(tcp4[:14], 0, 16, tcp4[16:], 1, 0, 2, 'h'), err: ErrTLV},
		{name: "CRC32C wrong size", in: cat(tcp4[:14], 0, 17, tcp4[16:], TypeCRC32C, 0, 2, 0, 0), err: ErrTLV},
		{name: "CRC32C wrong value", in: cat(tcp4[:14], 0, 19, tcp4[16:], TypeCRC32C, 0, 4, 1, 2, 3, 4), err: ErrChecksum},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, n, err := Parse(tt.in)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err %v, want %v", err, tt.err)
			}
			if n != tt.n || !reflect.DeepEqual(h, tt.want) {
				t.Errorf("got %+v, %d; want %+v, %d", h, n, tt.want, tt.n)
			}
		})
	}
}

// TestParsePrefixes checks that every proper prefix of a valid header is
// ErrShort, so a caller accumulating bytes knows to wait.
func TestParsePrefixes(t *testing.T) {
	b, err := AppendHeader(nil, &Header{Command: Proxy, Transport: Stream, Src: hdr4.Src, Dst: hdr4.Dst,
		TLVs: []TLV{{TypeAuthority, []byte("example.com")}, {TypeCRC32C, nil}}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range len(b) {
		if _, _, err := Parse(b[:i]); err != ErrShort {
			t.Errorf("prefix %d: %v", i, err)
		}
	}
}

func TestRead(t *testing.T) {
	const data = "client data"
	tests := []struct {
		name string
		in   []byte
		want *Header
		err  error
		rest string
	}{
		{name: "valid", in: cat(tcp4, data), want: hdr4, rest: data},
		{name: "LOCAL with block", in: cat(sig, 0x20, 0x11, 0, 3, 1, 2, 3, data), want: &Header{Command: Local}, rest: data},
		{name: "empty", in: nil, err: io.EOF},
		{name: "cut in fixed part", in: tcp4[:10], err: io.ErrUnexpectedEOF},
		{name: "cut in block", in: tcp4[:20], err: io.ErrUnexpectedEOF},
		{name: "not v2", in: []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), err: ErrSignature},
		{name: "bad family", in: cat(sig, 0x21, 0x51, 0, 0, data), err: ErrFamily},
		{name: "bad length", in: cat(sig, 0x21, 0x11, 0, 4, 1, 2, 3, 4, data), err: ErrLength, rest: data},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := bytes.NewReader(tt.in)
			h, err := Read(r)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err %v, want %v", err, tt.err)
			}
			if !reflect.DeepEqual(h, tt.want) {
				t.Errorf("got %+v, want %+v", h, tt.want)
			}
			if tt.rest != "" {
				if rest, _ := io.ReadAll(r); string(rest) != tt.rest {
					t.Errorf("rest %q, want %q", rest, tt.rest)
				}
			}
		})
	}
}

// TestPipe sends a header and data as the relay does and reads them back as
// the server does.
func TestPipe(t *testing.T) {
	c, s := net.Pipe()
	defer c.Close()
	defer s.Close()
	deadline := time.Now().Add(5 * time.Second)
	c.SetDeadline(deadline)
	s.SetDeadline(deadline)
	h := &Header{Command: Proxy, Transport: Stream,
		Src: netip.MustParseAddrPort("[2001:db8::1]:50000"), Dst: netip.MustParseAddrPort("192.0.2.9:443"),
		TLVs: []TLV{{TypeAuthority, []byte("example.com")}}}
	b, err := AppendHeader(nil, h)
	if err != nil {
		t.Fatal(err)
	}
	go c.Write(append(b, "hello"...))
	got, err := Read(s)
	if err != nil {
		t.Fatal(err)
	}
	want := *h
	want.Dst = netip.MustParseAddrPort("[::ffff:192.0.2.9]:443") // mixed pair travels as AF_INET6
	if !reflect.DeepEqual(got, &want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("data %q, %v", buf, err)
	}
}

func TestStrings(t *testing.T) {
	for _, s := range []string{Local.String(), Proxy.String(), Unspec.String(), Stream.String(), Datagram.String(), Command(7).String(), Transport(7).String()} {
		if s == "" {
			t.Error("empty String")
		}
	}
	if strings.Contains(Proxy.String(), "Command") || !strings.Contains(Command(7).String(), "Command") {
		t.Error("Command.String")
	}
}

// normalize mirrors AppendHeader's one lossy step: an all-IPv4 pair, even
// IPv4-mapped, is sent as AF_INET.
func normalize(h *Header) *Header {
	c := *h
	if c.Src.Addr().Unmap().Is4() && c.Dst.Addr().Unmap().Is4() {
		c.Src = netip.AddrPortFrom(c.Src.Addr().Unmap(), c.Src.Port())
		c.Dst = netip.AddrPortFrom(c.Dst.Addr().Unmap(), c.Dst.Port())
	}
	return &c
}

var knownErrs = []error{ErrShort, ErrSignature, ErrVersion, ErrCommand, ErrFamily, ErrLength, ErrTLV, ErrChecksum}

// FuzzParse checks Parse against Read and against a re-encode: whatever
// Parse accepts, AppendHeader must encode, and that encoding must parse
// back to the same header and re-encode to the same bytes.
func FuzzParse(f *testing.F) {
	f.Add(tcp4)
	f.Add(cat(sig, 0x21, 0x21, 0, 36, v6a, v6b, 0x03, 0xe8, 0x01, 0xbb))
	f.Add(cat(sig, 0x20, 0x00, 0, 0))
	f.Add(cat(sig, 0x21, 0x31, 0x00, 0xdb, make([]byte, lenUnix), TypeNetNS, 0, 0))
	f.Add(cat(tcp4[:14], 0, 12+4+5, tcp4[16:], TypeNoop, 0, 1, 0, TypeAuthority, 0, 2, "ab"))
	if b, err := AppendHeader(nil, &Header{Command: Proxy, Transport: Datagram, Src: hdr4.Src, Dst: hdr4.Dst,
		TLVs: []TLV{{TypeCRC32C, nil}}}); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := Parse(b)
		known := false
		for _, e := range knownErrs {
			known = known || err == e
		}
		if err != nil && !known {
			t.Fatalf("unknown error %v", err)
		}

		r := bytes.NewReader(b)
		hr, rerr := Read(r)
		switch {
		case err == nil:
			if rerr != nil || !reflect.DeepEqual(hr, h) || len(b)-r.Len() != n {
				t.Fatalf("Read: %+v, %v, consumed %d; Parse: %+v, %d", hr, rerr, len(b)-r.Len(), h, n)
			}
		case err == ErrShort:
			if rerr != io.EOF && rerr != io.ErrUnexpectedEOF {
				t.Fatalf("Parse ErrShort, Read %v", rerr)
			}
		case len(b) >= headerLen:
			if rerr != err {
				t.Fatalf("Parse %v, Read %v", err, rerr)
			}
		}
		if err != nil {
			return
		}

		if n < headerLen || n > len(b) || n > MaxHeaderLen {
			t.Fatalf("length %d of %d", n, len(b))
		}
		if _, _, err := Parse(b[:n-1]); err != ErrShort {
			t.Fatalf("prefix minus one byte: %v", err)
		}
		enc, err := AppendHeader(nil, h)
		if err != nil {
			t.Fatalf("AppendHeader(%+v): %v", h, err)
		}
		h2, n2, err := Parse(enc)
		if err != nil || n2 != len(enc) {
			t.Fatalf("re-parse: %v, %d of %d", err, n2, len(enc))
		}
		// A CRC32C value is recomputed over the new bytes; compare the rest.
		strip := func(h *Header) *Header {
			c := *normalize(h)
			c.TLVs = nil
			for _, t := range h.TLVs {
				if t.Type == TypeCRC32C {
					t.Value = nil
				}
				c.TLVs = append(c.TLVs, t)
			}
			return &c
		}
		if !reflect.DeepEqual(strip(h2), strip(h)) {
			t.Fatalf("re-parse: %+v, want %+v", h2, h)
		}
		enc2, err := AppendHeader(nil, h2)
		if err != nil || !bytes.Equal(enc2, enc) {
			t.Fatalf("re-encode not stable:\n% x\n% x", enc, enc2)
		}
	})
}
