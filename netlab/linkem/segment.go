package linkem

import "encoding/binary"

// Segment's errors. Constants, so the error path allocates nothing either.
const (
	errSegTruncated  vnetError = "linkem: segment: truncated or inconsistent headers"
	errSegEtherType  vnetError = "linkem: segment: ethertype is neither IPv4 nor IPv6"
	errSegVLAN       vnetError = "linkem: segment: VLAN-tagged frames are not supported"
	errSegIPHeader   vnetError = "linkem: segment: malformed IP header"
	errSegFragment   vnetError = "linkem: segment: IPv4 fragment cannot be segmented"
	errSegGSOType    vnetError = "linkem: segment: unsupported gso_type"
	errSegMismatch   vnetError = "linkem: segment: gso_type does not match the packet (IPv6 extension headers are not supported)"
	errSegGSOSize    vnetError = "linkem: segment: gso_size is 0"
	errSegHdrLen     vnetError = "linkem: segment: hdr_len exceeds the frame"
	errSegCsumOffset vnetError = "linkem: segment: csum_start/csum_offset do not point at the L4 checksum"
	errSegAlloc      vnetError = "linkem: segment: alloc returned a buffer shorter than requested"
)

const (
	segEthLen  = 14
	segIPv4Min = 20
	segIPv6Len = 40
	segTCPMin  = 20
	segUDPLen  = 8

	segProtoTCP = 6
	segProtoUDP = 17

	segTCPFin = 0x01
	segTCPPsh = 0x08
	segTCPCwr = 0x80
)

// gsoFrame is a validated super-frame. Everything Segment needs is checked
// while building it, so that a bad frame is refused before anything is
// emitted.
type gsoFrame struct {
	pkt    []byte // Ethernet frame cut at the IP length: link padding is not data
	v6     bool
	tcp    bool
	l4Off  int // offset of the TCP/UDP header in pkt
	hdrLen int // Ethernet + IP + L4 header bytes repeated in every segment
	mss    int
}

func parseGSO(h VnetHdr, frame []byte) (g gsoFrame, err error) {
	if h.GSOSize == 0 {
		return g, errSegGSOSize
	}
	// hdr_len is only a hint (Linux fills it with skb_headlen, which may
	// include payload), so like packet_snd we only require it to fit.
	if int(h.HdrLen) > len(frame) {
		return g, errSegHdrLen
	}
	if len(frame) < segEthLen {
		return g, errSegTruncated
	}
	ip := frame[segEthLen:]
	var proto byte
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case 0x0800:
		if len(ip) < segIPv4Min {
			return g, errSegTruncated
		}
		ihl := int(ip[0]&0x0f) * 4
		if ip[0]>>4 != 4 || ihl < segIPv4Min {
			return g, errSegIPHeader
		}
		tot := int(binary.BigEndian.Uint16(ip[2:4]))
		if tot > len(ip) || tot < ihl {
			return g, errSegTruncated
		}
		// MF or a fragment offset: the L4 header is not where we would
		// look, or is not there at all.
		if binary.BigEndian.Uint16(ip[6:8])&0x3fff != 0 {
			return g, errSegFragment
		}
		proto = ip[9]
		g.l4Off = segEthLen + ihl
		g.pkt = frame[:segEthLen+tot]
	case 0x86dd:
		if len(ip) < segIPv6Len {
			return g, errSegTruncated
		}
		if ip[0]>>4 != 6 {
			return g, errSegIPHeader
		}
		// A payload length of 0 (jumbogram, BIG TCP) cannot hold an L4
		// header and is refused below as truncated.
		plen := int(binary.BigEndian.Uint16(ip[4:6]))
		if segIPv6Len+plen > len(ip) {
			return g, errSegTruncated
		}
		proto = ip[6]
		g.v6 = true
		g.l4Off = segEthLen + segIPv6Len
		g.pkt = frame[:segEthLen+segIPv6Len+plen]
	case 0x8100, 0x88a8:
		return g, errSegVLAN
	default:
		return g, errSegEtherType
	}

	switch h.GSOType &^ GSOECN {
	case GSOTCPv4:
		g.tcp = true
		if g.v6 || proto != segProtoTCP {
			return g, errSegMismatch
		}
	case GSOTCPv6:
		g.tcp = true
		if !g.v6 || proto != segProtoTCP {
			return g, errSegMismatch
		}
	case GSOUDPL4:
		if proto != segProtoUDP {
			return g, errSegMismatch
		}
	default:
		return g, errSegGSOType
	}

	l4 := g.pkt[g.l4Off:]
	csumOff := 6
	if g.tcp {
		if len(l4) < segTCPMin {
			return g, errSegTruncated
		}
		doff := int(l4[12]>>4) * 4
		if doff < segTCPMin || doff > len(l4) {
			return g, errSegTruncated
		}
		g.hdrLen = g.l4Off + doff
		csumOff = 16
	} else {
		if len(l4) < segUDPLen {
			return g, errSegTruncated
		}
		g.hdrLen = g.l4Off + segUDPLen
	}
	// The partial checksum itself is never used (every segment's checksum is
	// computed from scratch), but offsets pointing elsewhere mean the sender
	// and we disagree about where the L4 header is.
	if h.Flags&VnetFlagNeedsCsum != 0 && (int(h.CsumStart) != g.l4Off || int(h.CsumOffset) != csumOff) {
		return g, errSegCsumOffset
	}
	g.mss = int(h.GSOSize)
	return g, nil
}

// Segment splits a GSO super-frame (frame = Ethernet frame following the vnet
// header h) into frames whose L4 payload is at most h.GSOSize bytes, as the
// kernel's software GSO would, so that loss and queueing apply per wire
// packet. Each segment is built in alloc(n), n = VnetHdrLen + segment frame
// length, and handed to emit before the next alloc: a zero vnet header and a
// frame with complete IPv4 header checksum, IP length, TCP/UDP length and
// checksum. IPv4 IDs count up from the original's, TCP sequence numbers
// advance by the payload, FIN and PSH stay on the last segment only and CWR on
// the first only.
//
// The incoming L4 checksum field is ignored, so both the "pseudo-header
// without length" convention (virtio/hardware TSO) and Linux's own (with the
// super-frame's length, see tcp_v4_send_check) work, as does a frame without
// VnetFlagNeedsCsum.
//
// A frame that is not GSO is emitted unchanged, vnet header included, so a
// partial checksum stays partial: the receiving kernel accepts it that way.
//
// Malformed or unsupported frames (UFO, VLAN tags, IPv6 extension headers,
// IPv4 fragments, gso_size 0, hdr_len > len(frame), csum offsets not at the L4
// checksum, truncated headers) return an error before anything is emitted.
// alloc must return at least n bytes; if it does not, Segment stops with an
// error, possibly after emitting earlier segments.
func Segment(h VnetHdr, frame []byte, alloc func(n int) []byte, emit func(seg []byte)) error {
	if !h.IsGSO() {
		n := VnetHdrLen + len(frame)
		buf := alloc(n)
		if len(buf) < n {
			return errSegAlloc
		}
		buf = buf[:n]
		h.Put(buf)
		copy(buf[VnetHdrLen:], frame)
		emit(buf)
		return nil
	}
	g, err := parseGSO(h, frame)
	if err != nil {
		return err
	}

	hdr := g.pkt[:g.hdrLen]
	payload := g.pkt[g.hdrLen:]
	l4Hdr := g.hdrLen - g.l4Off
	ipOff := segEthLen
	ihl := g.l4Off - ipOff

	// Pseudo-header sum (RFC 793/768/8200) less the per-segment length.
	var pseudo uint32
	if g.v6 {
		pseudo = uint32(csumPartial(hdr[ipOff+8:ipOff+40], 0))
	} else {
		pseudo = uint32(csumPartial(hdr[ipOff+12:ipOff+20], 0))
	}
	var proto uint32 = segProtoUDP
	if g.tcp {
		proto = segProtoTCP
	}
	pseudo += proto

	id := binary.BigEndian.Uint16(hdr[ipOff+4:])
	seq := binary.BigEndian.Uint32(hdr[g.l4Off+4:])

	// A super-frame whose payload fits one segment (or has none) still
	// becomes one fully checksummed packet.
	nseg := (len(payload) + g.mss - 1) / g.mss
	if nseg == 0 {
		nseg = 1
	}
	for i := range nseg {
		start := i * g.mss
		end := min(start+g.mss, len(payload))
		chunk := payload[start:end]
		l4Len := l4Hdr + len(chunk)
		n := VnetHdrLen + g.hdrLen + len(chunk)
		buf := alloc(n)
		if len(buf) < n {
			return errSegAlloc
		}
		buf = buf[:n]
		// Buffers may be recycled, so the zero header must be written.
		clear(buf[:VnetHdrLen])
		out := buf[VnetHdrLen:]
		copy(out, hdr)
		copy(out[g.hdrLen:], chunk)

		ip := out[ipOff:]
		if g.v6 {
			binary.BigEndian.PutUint16(ip[4:], uint16(l4Len))
		} else {
			binary.BigEndian.PutUint16(ip[2:], uint16(ihl+l4Len))
			binary.BigEndian.PutUint16(ip[4:], id+uint16(i))
			ip[10], ip[11] = 0, 0
			binary.BigEndian.PutUint16(ip[10:], Checksum(ip[:ihl], 0))
		}

		l4 := out[g.l4Off:]
		var csumAt int
		if g.tcp {
			binary.BigEndian.PutUint32(l4[4:], seq+uint32(start))
			flags := l4[13]
			if i != nseg-1 {
				flags &^= segTCPFin | segTCPPsh
			}
			if i != 0 {
				flags &^= segTCPCwr
			}
			l4[13] = flags
			csumAt = 16
		} else {
			binary.BigEndian.PutUint16(l4[4:], uint16(l4Len))
			csumAt = 6
		}
		l4[csumAt], l4[csumAt+1] = 0, 0
		cs := Checksum(l4, pseudo+uint32(l4Len))
		if cs == 0 && !g.tcp {
			// 0 means "no checksum" for UDP (RFC 768); 0xffff is the same
			// value in ones' complement.
			cs = 0xffff
		}
		binary.BigEndian.PutUint16(l4[csumAt:], cs)
		emit(buf)
	}
	return nil
}
