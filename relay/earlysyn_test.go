package relay

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// synPacket builds the first bytes of a TCP SYN as the sniffer sees them:
// the IP header first.
func synPacket(src, dst netip.AddrPort, ipOptions int) []byte {
	var b []byte
	if src.Addr().Is4() {
		hl := 20 + 4*ipOptions
		b = make([]byte, hl+20)
		b[0] = 0x40 | byte(hl/4)
		b[9] = 6
		s4, d4 := src.Addr().As4(), dst.Addr().As4()
		copy(b[12:], s4[:])
		copy(b[16:], d4[:])
		binary.BigEndian.PutUint16(b[hl:], src.Port())
		binary.BigEndian.PutUint16(b[hl+2:], dst.Port())
		b[hl+13] = 0x02
		return b
	}
	b = make([]byte, 60)
	b[0] = 0x60
	b[6] = 6
	s16, d16 := src.Addr().As16(), dst.Addr().As16()
	copy(b[8:], s16[:])
	copy(b[24:], d16[:])
	binary.BigEndian.PutUint16(b[40:], src.Port())
	binary.BigEndian.PutUint16(b[42:], dst.Port())
	b[53] = 0x02
	return b
}

func TestParseSYN(t *testing.T) {
	for _, tc := range []struct {
		name     string
		pkt      []byte
		src, dst string
		ok       bool
	}{
		{"IPv4", synPacket(netip.MustParseAddrPort("10.0.0.1:40000"), netip.MustParseAddrPort("10.0.3.2:80"), 0), "10.0.0.1:40000", "10.0.3.2:80", true},
		{"IPv4 with options", synPacket(netip.MustParseAddrPort("10.0.0.1:1"), netip.MustParseAddrPort("192.0.2.9:443"), 3), "10.0.0.1:1", "192.0.2.9:443", true},
		{"IPv6", synPacket(netip.MustParseAddrPort("[2001:db8::1]:5555"), netip.MustParseAddrPort("[2001:db8:1::2]:80"), 0), "[2001:db8::1]:5555", "[2001:db8:1::2]:80", true},
		{"empty", nil, "", "", false},
		{"IPv4 cut in the header", synPacket(netip.MustParseAddrPort("10.0.0.1:1"), netip.MustParseAddrPort("10.0.0.2:2"), 0)[:22], "", "", false},
		{"IPv4 header length too small", append([]byte{0x44}, make([]byte, 40)...), "", "", false},
		{"IPv6 cut", synPacket(netip.MustParseAddrPort("[2001:db8::1]:1"), netip.MustParseAddrPort("[2001:db8::2]:2"), 0)[:43], "", "", false},
		{"not IP", []byte{0x50, 0, 0, 0}, "", "", false},
		// IPv6 drops a packet from a v4-mapped address (ip6_rcv_core): its
		// SYN is no IPv4 client's, whatever allow_clients says of one.
		{"IPv6 from a v4-mapped address", synPacket(netip.MustParseAddrPort("[::ffff:10.0.0.1]:1"), netip.MustParseAddrPort("[2001:db8::2]:80"), 0), "", "", false},
		// A link-local address needs the zone the SYN came in on, which
		// the sniffer's read does not carry.
		{"IPv6 to a link-local address", synPacket(netip.MustParseAddrPort("[2001:db8::1]:1"), netip.MustParseAddrPort("[fe80::2]:80"), 0), "", "", false},
		{"IPv6 from a link-local address", synPacket(netip.MustParseAddrPort("[fe80::1]:1"), netip.MustParseAddrPort("[2001:db8::2]:80"), 0), "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, dst, ok := parseSYN(tc.pkt)
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v", ok, tc.ok)
			}
			if ok && (src.String() != tc.src || dst.String() != tc.dst) {
				t.Errorf("got %s → %s, want %s → %s", src, dst, tc.src, tc.dst)
			}
		})
	}
}

func FuzzParseSYN(f *testing.F) {
	f.Add(synPacket(netip.MustParseAddrPort("10.0.0.1:40000"), netip.MustParseAddrPort("10.0.3.2:80"), 2))
	f.Add(synPacket(netip.MustParseAddrPort("[2001:db8::1]:5555"), netip.MustParseAddrPort("[2001:db8:1::2]:80"), 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		src, dst, ok := parseSYN(b)
		if ok && (!src.IsValid() || !dst.IsValid()) {
			t.Fatalf("ok with invalid addresses %v %v", src, dst)
		}
	})
}

// The filter's jumps land inside the program, and it ends in returns.
func TestSYNFilterShape(t *testing.T) {
	prog := synFilter()
	for i, ins := range prog {
		if ins.Code&0x07 == 0x05 { // BPF_JMP
			for _, off := range []uint8{ins.Jt, ins.Jf} {
				if i+1+int(off) >= len(prog) {
					t.Errorf("instruction %d jumps past the end", i)
				}
			}
		}
	}
	if last := prog[len(prog)-1]; last.Code != 0x06 || last.K != 0 {
		t.Errorf("last instruction %+v, want ret 0", last)
	}
}
