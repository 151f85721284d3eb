package linkem

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
)

// Partial checksum conventions the builder can produce. Segment ignores the
// field, so all must give identical output.
const (
	sgCsumNoLen   = iota // pseudo-header sum without the L4 length, folded, not complemented (virtio/TSO-hardware convention)
	sgCsumWithLen        // same plus the super-frame's L4 length (what Linux itself stores, tcp_v4_send_check)
	sgCsumNone           // no NEEDS_CSUM, garbage in the field
)

type sgSpec struct {
	v6, udp bool
	payload []byte
	mss     uint16
	flags   byte // TCP flags byte
	seq     uint32
	id      uint16
	ipOpts  []byte // IPv4 options, multiple of 4 bytes
	noTS    bool   // leave out the 12-byte timestamps option
	csum    int
	ecn     bool
	pad     int // trailing link-layer bytes not covered by the IP length
}

// sgBuild makes a GSO super-frame the way a sending kernel hands it to a
// PACKET_VNET_HDR socket.
func sgBuild(s sgSpec) (VnetHdr, []byte) {
	proto := byte(6)
	l4Hdr := 8
	var tcpOpts []byte
	if s.udp {
		proto = 17
	} else {
		if !s.noTS {
			tcpOpts = []byte{1, 1, 8, 10, 0x01, 0x02, 0x03, 0x04, 0xa0, 0xb0, 0xc0, 0xd0}
		}
		l4Hdr = 20 + len(tcpOpts)
	}
	l4Len := l4Hdr + len(s.payload)

	f := []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2}
	var addrs []byte
	if s.v6 {
		f = append(f, 0x86, 0xdd)
		ip := make([]byte, 40)
		ip[0], ip[1], ip[2], ip[3] = 0x6b, 0x81, 0x23, 0x45
		binary.BigEndian.PutUint16(ip[4:], uint16(l4Len))
		ip[6], ip[7] = proto, 64
		copy(ip[8:], []byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe, 0xdc, 0, 1})
		copy(ip[24:], []byte{0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0, 2})
		f = append(f, ip...)
		addrs = ip[8:40]
	} else {
		f = append(f, 0x08, 0x00)
		ihl := 20 + len(s.ipOpts)
		ip := make([]byte, ihl)
		ip[0], ip[1] = 0x40|byte(ihl/4), 0x02
		binary.BigEndian.PutUint16(ip[2:], uint16(ihl+l4Len))
		binary.BigEndian.PutUint16(ip[4:], s.id)
		ip[6], ip[8], ip[9] = 0x40, 64, proto
		copy(ip[12:], []byte{10, 1, 2, 3, 192, 168, 77, 9})
		copy(ip[20:], s.ipOpts)
		binary.BigEndian.PutUint16(ip[10:], ckRef(ip, 0))
		f = append(f, ip...)
		addrs = ip[12:20]
	}
	l4Off := len(f)

	l4 := make([]byte, l4Hdr)
	binary.BigEndian.PutUint16(l4[0:], 40000)
	binary.BigEndian.PutUint16(l4[2:], 5201)
	csumOff := uint16(6)
	if s.udp {
		binary.BigEndian.PutUint16(l4[4:], uint16(l4Len))
	} else {
		binary.BigEndian.PutUint32(l4[4:], s.seq)
		binary.BigEndian.PutUint32(l4[8:], 0x11223344)
		l4[12] = byte(l4Hdr/4) << 4
		l4[13] = s.flags
		binary.BigEndian.PutUint16(l4[14:], 502)
		copy(l4[20:], tcpOpts)
		csumOff = 16
	}
	// ckRef returns the complement; complementing again gives the folded,
	// uncomplemented pseudo-header sum the kernel stores.
	initial := uint32(proto)
	if s.csum == sgCsumWithLen {
		initial += uint32(l4Len)
	}
	partial := ^ckRef(addrs, initial)
	if s.csum == sgCsumNone {
		partial = 0xdead
	}
	binary.BigEndian.PutUint16(l4[csumOff:], partial)
	f = append(f, l4...)
	f = append(f, s.payload...)
	for i := range s.pad {
		f = append(f, byte(0xe0+i))
	}

	h := VnetHdr{
		Flags:      VnetFlagNeedsCsum,
		GSOType:    GSOTCPv4,
		HdrLen:     uint16(l4Off + l4Hdr),
		GSOSize:    s.mss,
		CsumStart:  uint16(l4Off),
		CsumOffset: csumOff,
	}
	switch {
	case s.udp:
		h.GSOType = GSOUDPL4
	case s.v6:
		h.GSOType = GSOTCPv6
	}
	if s.ecn {
		h.GSOType |= GSOECN
	}
	if s.csum == sgCsumNone {
		h.Flags = 0
	}
	return h, f
}

// sgInfo is the test's own reading of a frame that Segment accepted.
type sgInfo struct {
	v6, tcp       bool
	l4Off, hdrLen int
	pkt           []byte
}

func sgParse(h VnetHdr, frame []byte) (sgInfo, error) {
	var in sgInfo
	if len(frame) < 14 {
		return in, fmt.Errorf("short ethernet")
	}
	ip := frame[14:]
	switch binary.BigEndian.Uint16(frame[12:]) {
	case 0x0800:
		if len(ip) < 20 {
			return in, fmt.Errorf("short ipv4")
		}
		ihl := int(ip[0]&15) * 4
		tot := int(binary.BigEndian.Uint16(ip[2:]))
		if ihl < 20 || tot < ihl || tot > len(ip) {
			return in, fmt.Errorf("bad ipv4 lengths")
		}
		in.l4Off = 14 + ihl
		in.pkt = frame[:14+tot]
	case 0x86dd:
		if len(ip) < 40 {
			return in, fmt.Errorf("short ipv6")
		}
		plen := int(binary.BigEndian.Uint16(ip[4:]))
		if 40+plen > len(ip) {
			return in, fmt.Errorf("bad ipv6 length")
		}
		in.v6 = true
		in.l4Off = 54
		in.pkt = frame[:54+plen]
	default:
		return in, fmt.Errorf("ethertype")
	}
	in.tcp = h.GSOType&^GSOECN != GSOUDPL4
	in.hdrLen = in.l4Off + 8
	if in.tcp {
		if len(in.pkt) < in.l4Off+20 {
			return in, fmt.Errorf("short tcp")
		}
		in.hdrLen = in.l4Off + int(in.pkt[in.l4Off+12]>>4)*4
	}
	if in.hdrLen > len(in.pkt) {
		return in, fmt.Errorf("short l4")
	}
	return in, nil
}

// sgL4Valid checks the L4 checksum of a segment against its own IP header
// with the naive reference.
func sgL4Valid(v6 bool, ip, l4 []byte, proto byte) bool {
	var ph []byte
	if v6 {
		ph = append(ph, ip[8:40]...)
		ph = binary.BigEndian.AppendUint32(ph, uint32(len(l4)))
		ph = append(ph, 0, 0, 0, proto)
	} else {
		ph = append(ph, ip[12:20]...)
		ph = append(ph, 0, proto)
		ph = binary.BigEndian.AppendUint16(ph, uint16(len(l4)))
	}
	return ckRef(append(ph, l4...), 0) == 0
}

// sgVerify checks segs against the super-frame they were cut from.
func sgVerify(t testing.TB, h VnetHdr, frame []byte, segs [][]byte) {
	t.Helper()
	in, err := sgParse(h, frame)
	if err != nil {
		t.Fatalf("Segment accepted a frame the test cannot parse: %v", err)
	}
	mss := int(h.GSOSize)
	payload := in.pkt[in.hdrLen:]
	want := max(1, (len(payload)+mss-1)/mss)
	if len(segs) != want {
		t.Fatalf("%d segments, want %d (payload %d, mss %d)", len(segs), want, len(payload), mss)
	}
	ipOff, l4Off := 14, in.l4Off
	ihl := l4Off - ipOff
	orig := in.pkt
	origL4 := orig[l4Off:in.hdrLen]
	var got []byte
	for i, seg := range segs {
		last := i == len(segs)-1
		if len(seg) > len(frame)+64 {
			t.Fatalf("seg %d: %d bytes for a %d-byte frame", i, len(seg), len(frame))
		}
		if len(seg) < VnetHdrLen+in.hdrLen {
			t.Fatalf("seg %d: %d bytes, shorter than headers", i, len(seg))
		}
		if !bytes.Equal(seg[:VnetHdrLen], make([]byte, VnetHdrLen)) {
			t.Fatalf("seg %d: vnet header % x, want zeros", i, seg[:VnetHdrLen])
		}
		out := seg[VnetHdrLen:]
		if !bytes.Equal(out[:14], orig[:14]) {
			t.Fatalf("seg %d: ethernet header changed", i)
		}
		ip := out[ipOff:]
		l4 := out[l4Off:]
		if in.v6 {
			if n := int(binary.BigEndian.Uint16(ip[4:])); n != len(l4) {
				t.Fatalf("seg %d: ipv6 payload length %d, want %d", i, n, len(l4))
			}
			if !bytes.Equal(ip[:4], orig[ipOff:ipOff+4]) || !bytes.Equal(ip[6:40], orig[ipOff+6:ipOff+40]) {
				t.Fatalf("seg %d: ipv6 header fields changed", i)
			}
		} else {
			if n := int(binary.BigEndian.Uint16(ip[2:])); n != len(ip) {
				t.Fatalf("seg %d: ipv4 total length %d, want %d", i, n, len(ip))
			}
			if ckRef(ip[:ihl], 0) != 0 {
				t.Fatalf("seg %d: bad ipv4 header checksum", i)
			}
			wantID := binary.BigEndian.Uint16(orig[ipOff+4:]) + uint16(i)
			if id := binary.BigEndian.Uint16(ip[4:]); id != wantID {
				t.Fatalf("seg %d: ipv4 id %#x, want %#x", i, id, wantID)
			}
			if !bytes.Equal(ip[:2], orig[ipOff:ipOff+2]) || !bytes.Equal(ip[6:10], orig[ipOff+6:ipOff+10]) ||
				!bytes.Equal(ip[12:ihl], orig[ipOff+12:l4Off]) {
				t.Fatalf("seg %d: ipv4 header fields or options changed", i)
			}
		}
		chunk := out[in.hdrLen:]
		if len(chunk) > mss || (!last && len(chunk) != mss) {
			t.Fatalf("seg %d: payload %d bytes, mss %d", i, len(chunk), mss)
		}
		if in.tcp {
			if !sgL4Valid(in.v6, ip, l4, 6) {
				t.Fatalf("seg %d: bad tcp checksum", i)
			}
			wantSeq := binary.BigEndian.Uint32(origL4[4:]) + uint32(len(got))
			if seq := binary.BigEndian.Uint32(l4[4:]); seq != wantSeq {
				t.Fatalf("seg %d: seq %d, want %d", i, seq, wantSeq)
			}
			wantFlags := origL4[13]
			if !last {
				wantFlags &^= 0x01 | 0x08
			}
			if i != 0 {
				wantFlags &^= 0x80
			}
			if l4[13] != wantFlags {
				t.Fatalf("seg %d: flags %#x, want %#x", i, l4[13], wantFlags)
			}
			if !bytes.Equal(l4[:4], origL4[:4]) || !bytes.Equal(l4[8:13], origL4[8:13]) ||
				!bytes.Equal(l4[14:16], origL4[14:16]) || !bytes.Equal(l4[18:len(origL4)], origL4[18:]) {
				t.Fatalf("seg %d: tcp header fields or options changed", i)
			}
		} else {
			if !sgL4Valid(in.v6, ip, l4, 17) {
				t.Fatalf("seg %d: bad udp checksum", i)
			}
			if binary.BigEndian.Uint16(l4[6:]) == 0 {
				t.Fatalf("seg %d: udp checksum 0", i)
			}
			if n := int(binary.BigEndian.Uint16(l4[4:])); n != len(l4) {
				t.Fatalf("seg %d: udp length %d, want %d", i, n, len(l4))
			}
			if !bytes.Equal(l4[:4], origL4[:4]) {
				t.Fatalf("seg %d: udp ports changed", i)
			}
		}
		got = append(got, chunk...)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("reassembled payload differs (%d vs %d bytes)", len(got), len(payload))
	}
}

func sgRun(h VnetHdr, frame []byte) ([][]byte, error) {
	var segs [][]byte
	err := Segment(h, frame, func(n int) []byte { return make([]byte, n) }, func(seg []byte) { segs = append(segs, seg) })
	return segs, err
}

func sgPayload(r *rand.Rand, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

func TestSegmentValid(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	type variant struct {
		name    string
		v6, udp bool
		mss     int
		maxPay  int // payload filling a 65535-byte IP length
		ipOpts  []byte
		noTS    bool
	}
	variants := []variant{
		{name: "tcp4", mss: 1448, maxPay: 65535 - 20 - 32},
		{name: "tcp4opts", mss: 1444, maxPay: 65535 - 24 - 32, ipOpts: []byte{0x94, 4, 0, 0}},
		{name: "tcp4nots", mss: 1460, maxPay: 65535 - 20 - 20, noTS: true},
		{name: "tcp6", v6: true, mss: 1428, maxPay: 65535 - 32},
		{name: "udp4", udp: true, mss: 1472, maxPay: 65535 - 20 - 8},
		{name: "udp6", v6: true, udp: true, mss: 1452, maxPay: 65535 - 8},
	}
	for _, v := range variants {
		sizes := []int{0, 1, v.mss - 1, v.mss, v.mss + 1, 10*v.mss + 7, 30000 + r.IntN(5000), v.maxPay}
		for _, size := range sizes {
			for csum := range 3 {
				for _, pad := range []int{0, 5} {
					name := fmt.Sprintf("%s/pay%d/csum%d/pad%d", v.name, size, csum, pad)
					t.Run(name, func(t *testing.T) {
						s := sgSpec{
							v6: v.v6, udp: v.udp, payload: sgPayload(r, size), mss: uint16(v.mss),
							flags: 0x10 | 0x08 | 0x01 | 0x80 | 0x40, seq: 0xffffff00 + uint32(r.IntN(256)),
							id: 0xfffe, ipOpts: v.ipOpts, noTS: v.noTS, csum: csum, ecn: size%2 == 0, pad: pad,
						}
						h, frame := sgBuild(s)
						orig := bytes.Clone(frame)
						segs, err := sgRun(h, frame)
						if err != nil {
							t.Fatal(err)
						}
						if !bytes.Equal(frame, orig) {
							t.Fatal("Segment modified its input")
						}
						sgVerify(t, h, frame, segs)
					})
				}
			}
		}
	}
}

func TestSegmentRandomMSS(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for i := range 300 {
		s := sgSpec{v6: i%2 == 1, udp: i%3 == 0, mss: uint16(1 + r.IntN(3000)), payload: sgPayload(r, r.IntN(20000)),
			flags: byte(r.Uint32()), seq: r.Uint32(), id: uint16(r.Uint32()), csum: i % 3}
		h, frame := sgBuild(s)
		// hdr_len is a hint (Linux puts skb_headlen there): any value up to
		// the frame length is fine.
		h.HdrLen = uint16(r.IntN(len(frame) + 1))
		segs, err := sgRun(h, frame)
		if err != nil {
			t.Fatalf("iter %d: %v", i, err)
		}
		sgVerify(t, h, frame, segs)
	}
}

func TestSegmentNotGSO(t *testing.T) {
	h, frame := sgBuild(sgSpec{payload: []byte("hello"), mss: 1448})
	h.GSOType = GSONone | GSOECN
	h.GSOSize = 0
	segs, err := sgRun(h, frame)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, VnetHdrLen)
	h.Put(want)
	want = append(want, frame...)
	if len(segs) != 1 || !bytes.Equal(segs[0], want) {
		t.Fatalf("non-GSO frame not passed through unchanged")
	}
	// Even bytes that are no IP at all pass untouched.
	segs, err = sgRun(VnetHdr{}, []byte{1, 2, 3})
	if err != nil || len(segs) != 1 || !bytes.Equal(segs[0][VnetHdrLen:], []byte{1, 2, 3}) {
		t.Fatalf("garbage non-GSO frame: %v, %d segs", err, len(segs))
	}
}

func TestSegmentMalformed(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	pay := sgPayload(r, 5000)
	tcp4 := func() (VnetHdr, []byte) { return sgBuild(sgSpec{payload: pay, mss: 1448}) }
	tcp6 := func() (VnetHdr, []byte) { return sgBuild(sgSpec{v6: true, payload: pay, mss: 1428}) }
	udp4 := func() (VnetHdr, []byte) { return sgBuild(sgSpec{udp: true, payload: pay, mss: 1472}) }
	cases := []struct {
		name string
		make func() (VnetHdr, []byte)
	}{
		{"empty", func() (VnetHdr, []byte) { h, _ := tcp4(); return h, nil }},
		{"short ethernet", func() (VnetHdr, []byte) { h, f := tcp4(); h.HdrLen = 0; return h, f[:13] }},
		{"arp", func() (VnetHdr, []byte) { h, f := tcp4(); f[12], f[13] = 0x08, 0x06; return h, f }},
		{"vlan", func() (VnetHdr, []byte) { h, f := tcp4(); f[12], f[13] = 0x81, 0x00; return h, f }},
		{"qinq", func() (VnetHdr, []byte) { h, f := tcp4(); f[12], f[13] = 0x88, 0xa8; return h, f }},
		{"short ipv4", func() (VnetHdr, []byte) { h, f := tcp4(); h.HdrLen = 0; return h, f[:14+19] }},
		{"ipv4 version", func() (VnetHdr, []byte) { h, f := tcp4(); f[14] = 0x65; return h, f }},
		{"ipv4 ihl 4", func() (VnetHdr, []byte) { h, f := tcp4(); f[14] = 0x44; return h, f }},
		{"ipv4 ihl 15", func() (VnetHdr, []byte) { h, f := tcp4(); h.HdrLen = 0; f[14] = 0x4f; return h, f[:14+50] }},
		{"ipv4 tot_len > frame", func() (VnetHdr, []byte) { h, f := tcp4(); h.HdrLen = 0; return h, f[:len(f)-1] }},
		{"ipv4 tot_len < ihl", func() (VnetHdr, []byte) { h, f := tcp4(); f[16], f[17] = 0, 19; return h, f }},
		{"ipv4 tot_len 0", func() (VnetHdr, []byte) { h, f := tcp4(); f[16], f[17] = 0, 0; return h, f }},
		{"ipv4 MF", func() (VnetHdr, []byte) { h, f := tcp4(); f[20] |= 0x20; return h, f }},
		{"ipv4 frag offset", func() (VnetHdr, []byte) { h, f := tcp4(); f[21] = 1; return h, f }},
		{"tcpv4 over udp", func() (VnetHdr, []byte) { h, f := tcp4(); f[14+9] = 17; return h, f }},
		{"tcpv6 on ipv4", func() (VnetHdr, []byte) { h, f := tcp4(); h.GSOType = GSOTCPv6; return h, f }},
		{"tcpv4 on ipv6", func() (VnetHdr, []byte) { h, f := tcp6(); h.GSOType = GSOTCPv4; return h, f }},
		{"udp_l4 on tcp", func() (VnetHdr, []byte) { h, f := tcp4(); h.GSOType = GSOUDPL4; h.CsumOffset = 6; return h, f }},
		{"ufo", func() (VnetHdr, []byte) { h, f := udp4(); h.GSOType = GSOUDP; return h, f }},
		{"gso type 2", func() (VnetHdr, []byte) { h, f := tcp4(); h.GSOType = 2; return h, f }},
		{"gso type 0x7f", func() (VnetHdr, []byte) { h, f := tcp4(); h.GSOType = 0x7f | GSOECN; return h, f }},
		{"gso_size 0", func() (VnetHdr, []byte) { h, f := tcp4(); h.GSOSize = 0; return h, f }},
		{"tcp doff 4", func() (VnetHdr, []byte) { h, f := tcp4(); f[34+12] = 0x40; return h, f }},
		{"tcp doff > packet", func() (VnetHdr, []byte) {
			h, f := sgBuild(sgSpec{mss: 1448})
			f[34+12] = 0xf0
			return h, f
		}},
		{"short tcp", func() (VnetHdr, []byte) {
			h, f := tcp4()
			f = f[:34+19]
			binary.BigEndian.PutUint16(f[16:], 20+19)
			h.HdrLen = 0
			return h, f
		}},
		{"short udp", func() (VnetHdr, []byte) {
			h, f := udp4()
			f = f[:34+7]
			binary.BigEndian.PutUint16(f[16:], 20+7)
			h.HdrLen = 0
			return h, f
		}},
		{"hdr_len > frame", func() (VnetHdr, []byte) { h, f := tcp4(); h.HdrLen = uint16(len(f) + 1); return h, f }},
		{"csum_start wrong", func() (VnetHdr, []byte) { h, f := tcp4(); h.CsumStart = 35; return h, f }},
		{"csum_offset wrong", func() (VnetHdr, []byte) { h, f := tcp4(); h.CsumOffset = 6; return h, f }},
		{"udp csum_offset wrong", func() (VnetHdr, []byte) { h, f := udp4(); h.CsumOffset = 16; return h, f }},
		{"short ipv6", func() (VnetHdr, []byte) { h, f := tcp6(); h.HdrLen = 0; return h, f[:14+39] }},
		{"ipv6 version", func() (VnetHdr, []byte) { h, f := tcp6(); f[14] = 0x4b; return h, f }},
		{"ipv6 plen > frame", func() (VnetHdr, []byte) { h, f := tcp6(); h.HdrLen = 0; return h, f[:len(f)-1] }},
		{"ipv6 plen 0 (jumbo)", func() (VnetHdr, []byte) { h, f := tcp6(); f[18], f[19] = 0, 0; return h, f }},
		{"ipv6 hop-by-hop", func() (VnetHdr, []byte) { h, f := tcp6(); f[20] = 0; return h, f }},
		{"ipv6 fragment hdr", func() (VnetHdr, []byte) { h, f := tcp6(); f[20] = 44; return h, f }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, f := c.make()
			segs, err := sgRun(h, f)
			if err == nil {
				t.Fatalf("no error, %d segments", len(segs))
			}
			if len(segs) != 0 {
				t.Fatalf("error %q but %d segments emitted", err, len(segs))
			}
		})
	}
}

func TestSegmentShortAlloc(t *testing.T) {
	h, f := sgBuild(sgSpec{payload: make([]byte, 3000), mss: 1448})
	err := Segment(h, f, func(n int) []byte { return make([]byte, n-1) }, func([]byte) { t.Fatal("emitted") })
	if err == nil {
		t.Fatal("no error for a short alloc")
	}
}

func TestSegmentReusedDirtyBuffer(t *testing.T) {
	h, f := sgBuild(sgSpec{v6: true, udp: true, payload: make([]byte, 4000), mss: 1000})
	buf := make([]byte, 2048)
	var segs [][]byte
	err := Segment(h, f,
		func(n int) []byte {
			for i := range buf {
				buf[i] = 0xa5
			}
			return buf[:n]
		},
		func(seg []byte) { segs = append(segs, bytes.Clone(seg)) })
	if err != nil {
		t.Fatal(err)
	}
	sgVerify(t, h, f, segs)
}

func TestSegmentNoAllocs(t *testing.T) {
	h, f := sgBuild(sgSpec{payload: make([]byte, 20000), mss: 1448})
	buf := make([]byte, 2048)
	alloc := func(n int) []byte { return buf[:n] }
	emit := func([]byte) {}
	if n := testing.AllocsPerRun(100, func() { _ = Segment(h, f, alloc, emit) }); n != 0 {
		t.Fatalf("%v allocations per Segment call", n)
	}
	h.GSOSize = 0
	if n := testing.AllocsPerRun(100, func() { _ = Segment(h, f, alloc, emit) }); n != 0 {
		t.Fatalf("%v allocations per failing Segment call", n)
	}
}

func FuzzSegment(f *testing.F) {
	r := rand.New(rand.NewPCG(11, 12))
	add := func(h VnetHdr, frame []byte) {
		f.Add(h.Flags, h.GSOType, h.HdrLen, h.GSOSize, h.CsumStart, h.CsumOffset, frame)
	}
	for i, s := range []sgSpec{
		{payload: sgPayload(r, 300), mss: 100, flags: 0x99},
		{payload: sgPayload(r, 301), mss: 100, ipOpts: []byte{1, 1, 1, 0}, csum: sgCsumWithLen},
		{v6: true, payload: sgPayload(r, 250), mss: 64, flags: 0x18},
		{udp: true, payload: sgPayload(r, 200), mss: 50},
		{v6: true, udp: true, payload: sgPayload(r, 99), mss: 33, csum: sgCsumNone},
		{payload: sgPayload(r, 1), mss: 1448, noTS: true, pad: 6},
	} {
		h, frame := sgBuild(s)
		add(h, frame)
		if i == 0 {
			h.GSOType = GSONone
			add(h, frame)
			add(VnetHdr{GSOType: GSOTCPv4, GSOSize: 1}, frame[:40])
		}
	}
	f.Fuzz(func(t *testing.T, flags, gsoType uint8, hdrLen, gsoSize, csumStart, csumOffset uint16, frame []byte) {
		h := VnetHdr{Flags: flags, GSOType: gsoType, HdrLen: hdrLen, GSOSize: gsoSize, CsumStart: csumStart, CsumOffset: csumOffset}
		orig := bytes.Clone(frame)
		segs, err := sgRun(h, frame)
		if !bytes.Equal(frame, orig) {
			t.Fatal("Segment modified its input")
		}
		if err != nil {
			if len(segs) != 0 {
				t.Fatalf("error %q after %d segments", err, len(segs))
			}
			return
		}
		if !h.IsGSO() {
			if len(segs) != 1 || !bytes.Equal(segs[0][VnetHdrLen:], frame) {
				t.Fatal("non-GSO frame not passed through")
			}
			got, _ := ParseVnetHdr(segs[0])
			if got != h {
				t.Fatal("non-GSO vnet header changed")
			}
			return
		}
		sgVerify(t, h, frame, segs)
	})
}

func BenchmarkSegment64K(b *testing.B) {
	r := rand.New(rand.NewPCG(13, 14))
	h, frame := sgBuild(sgSpec{payload: sgPayload(r, 65535-20-32), mss: 1448, flags: 0x18})
	buf := make([]byte, 2048)
	alloc := func(n int) []byte { return buf[:n] }
	emit := func([]byte) {}
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	for b.Loop() {
		if err := Segment(h, frame, alloc, emit); err != nil {
			b.Fatal(err)
		}
	}
}
