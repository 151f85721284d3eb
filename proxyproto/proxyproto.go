// Package proxyproto encodes and decodes version 2 (binary) headers of the
// HAProxy PROXY protocol, which halfway sends toward servers to tell them
// the original client's address. Version 1 (text) is not implemented;
// telling the versions or plain traffic apart is done elsewhere.
//
// The header is the 12-byte Signature, a version/command byte, a
// family/transport byte, a 16-bit length and that many bytes of addresses
// and TLVs, so a header is at most 16+65535 bytes. Parse works on a buffer
// and reports ErrShort while it holds only a valid prefix; Read reads
// exactly one header from a stream and nothing after it. Deadlines are the
// caller's.
//
// Sending (the relay, toward the server):
//
//	hdr, err := proxyproto.AppendHeader(nil, &proxyproto.Header{
//		Command:   proxyproto.Proxy,
//		Transport: proxyproto.Stream,
//		Src:       client.RemoteAddr().(*net.TCPAddr).AddrPort(),
//		Dst:       client.LocalAddr().(*net.TCPAddr).AddrPort(),
//	})
//	if err == nil {
//		_, err = server.Write(hdr) // first bytes on the connection, in one write
//	}
//
// Receiving:
//
//	h, err := proxyproto.Read(conn)
//	if err == nil && h.Command == proxyproto.Proxy && h.Src.IsValid() {
//		clientAddr = h.Src
//	}
package proxyproto

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/netip"
)

// Signature opens every version 2 header.
var Signature = [12]byte{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A}

const (
	headerLen = 16 // signature, ver/cmd, fam, len
	version2  = 0x2

	famUnspec = 0x0
	famInet   = 0x1
	famInet6  = 0x2
	famUnix   = 0x3

	lenInet  = 2*4 + 2*2
	lenInet6 = 2*16 + 2*2
	lenUnix  = 2 * 108

	// MaxHeaderLen is the largest possible header: 16 bytes plus a 16-bit length.
	MaxHeaderLen = headerLen + 0xFFFF
)

// Command is the low nibble of the 13th byte.
type Command uint8

const (
	// Local: the proxy opened the connection itself (e.g. a health check);
	// the receiver uses the real endpoints and ignores the address block.
	Local Command = 0x0
	// Proxy: the connection is relayed on behalf of Src.
	Proxy Command = 0x1
)

func (c Command) String() string {
	switch c {
	case Local:
		return "LOCAL"
	case Proxy:
		return "PROXY"
	}
	return fmt.Sprintf("Command(%#x)", uint8(c))
}

// Transport is the low nibble of the 14th byte.
type Transport uint8

const (
	Unspec   Transport = 0x0 // unknown; used with LOCAL and with unsupported families
	Stream   Transport = 0x1 // SOCK_STREAM, e.g. TCP
	Datagram Transport = 0x2 // SOCK_DGRAM, e.g. UDP
)

func (t Transport) String() string {
	switch t {
	case Unspec:
		return "UNSPEC"
	case Stream:
		return "STREAM"
	case Datagram:
		return "DGRAM"
	}
	return fmt.Sprintf("Transport(%#x)", uint8(t))
}

// Registered TLV types (proxy-protocol.txt §2.2).
const (
	TypeALPN      = 0x01
	TypeAuthority = 0x02
	TypeCRC32C    = 0x03
	TypeNoop      = 0x04
	TypeUniqueID  = 0x05
	TypeSSL       = 0x20
	TypeNetNS     = 0x30
)

// TLV is one type-length-value extension.
type TLV struct {
	Type  uint8
	Value []byte
}

// Header is a decoded version 2 header.
//
// For Local, and for Proxy headers whose family this package does not
// represent (AF_UNSPEC, AF_UNIX — the spec lets a receiver fall back to
// UNSPEC for those), Src and Dst are the zero AddrPort and Transport is
// Unspec: the receiver should use the connection's real endpoints.
type Header struct {
	Command   Command
	Transport Transport
	Src, Dst  netip.AddrPort
	// TLVs after the address block, in order. Parse drops NOOP TLVs (the
	// spec says to ignore them) and keeps a verified CRC32C TLV; on
	// AppendHeader a CRC32C TLV's value is computed, whatever it holds.
	TLVs []TLV
}

// Errors from Parse and Read. All but ErrShort mean "not a valid v2 header":
// the spec says to drop the connection.
var (
	ErrShort     = errors.New("proxyproto: incomplete header")
	ErrSignature = errors.New("proxyproto: not a PROXY protocol v2 signature")
	ErrVersion   = errors.New("proxyproto: unsupported version")
	ErrCommand   = errors.New("proxyproto: unknown command")
	ErrFamily    = errors.New("proxyproto: invalid address family or transport")
	ErrLength    = errors.New("proxyproto: length too small for the address family")
	ErrTLV       = errors.New("proxyproto: malformed TLV")
	ErrChecksum  = errors.New("proxyproto: CRC32C mismatch")
)

// AppendHeader appends the encoding of h to b.
//
// Proxy with both Src and Dst valid uses AF_INET when both are IPv4 (or
// IPv4-mapped, which are unmapped), otherwise AF_INET6 (an IPv4 address next
// to an IPv6 one is sent IPv4-mapped); Transport must be Stream or Datagram.
// Proxy with neither address valid is sent as UNSPEC, which the spec
// reserves for protocols the header cannot describe. Local is sent as
// AF_UNSPEC with no address block and must carry no TLVs (the receiver
// discards the block anyway). IPv6 zones are not carried.
func AppendHeader(b []byte, h *Header) ([]byte, error) {
	var fam byte
	var addrs [lenInet6]byte
	var addrLen int
	switch h.Command {
	case Local:
		if len(h.TLVs) > 0 {
			return b, errors.New("proxyproto: LOCAL header with TLVs")
		}
		fam = famUnspec<<4 | byte(Unspec)
	case Proxy:
		src, dst := h.Src.Addr(), h.Dst.Addr()
		switch {
		case !src.IsValid() && !dst.IsValid():
			fam = famUnspec<<4 | byte(Unspec)
		case !src.IsValid() || !dst.IsValid():
			return b, errors.New("proxyproto: PROXY header needs both Src and Dst, or neither")
		case h.Transport != Stream && h.Transport != Datagram:
			return b, fmt.Errorf("proxyproto: PROXY header with addresses needs Stream or Datagram, not %v", h.Transport)
		case src.Unmap().Is4() && dst.Unmap().Is4():
			fam = famInet<<4 | byte(h.Transport)
			s, d := src.Unmap().As4(), dst.Unmap().As4()
			copy(addrs[0:], s[:])
			copy(addrs[4:], d[:])
			addrs[8], addrs[9] = byte(h.Src.Port()>>8), byte(h.Src.Port())
			addrs[10], addrs[11] = byte(h.Dst.Port()>>8), byte(h.Dst.Port())
			addrLen = lenInet
		default:
			fam = famInet6<<4 | byte(h.Transport)
			s, d := src.As16(), dst.As16() // As16 maps IPv4 into ::ffff:0:0/96
			copy(addrs[0:], s[:])
			copy(addrs[16:], d[:])
			addrs[32], addrs[33] = byte(h.Src.Port()>>8), byte(h.Src.Port())
			addrs[34], addrs[35] = byte(h.Dst.Port()>>8), byte(h.Dst.Port())
			addrLen = lenInet6
		}
	default:
		return b, fmt.Errorf("proxyproto: cannot encode %v", h.Command)
	}

	total := addrLen
	crcAt := -1 // offset of the CRC32C value within the header
	for _, t := range h.TLVs {
		vlen := len(t.Value)
		if t.Type == TypeCRC32C {
			if crcAt >= 0 {
				return b, errors.New("proxyproto: more than one CRC32C TLV")
			}
			crcAt = headerLen + total + 3
			vlen = 4
		}
		if vlen > 0xFFFF {
			return b, fmt.Errorf("proxyproto: TLV %#02x value longer than 65535 bytes", t.Type)
		}
		total += 3 + vlen
	}
	if total > 0xFFFF {
		return b, errors.New("proxyproto: header longer than 65535+16 bytes")
	}

	start := len(b)
	b = append(b, Signature[:]...)
	b = append(b, version2<<4|byte(h.Command), fam, byte(total>>8), byte(total))
	b = append(b, addrs[:addrLen]...)
	for _, t := range h.TLVs {
		if t.Type == TypeCRC32C {
			b = append(b, t.Type, 0, 4, 0, 0, 0, 0) // zero while computing
			continue
		}
		b = append(b, t.Type, byte(len(t.Value)>>8), byte(len(t.Value)))
		b = append(b, t.Value...)
	}
	if crcAt >= 0 {
		// Checksum over the whole header with the field zeroed (spec §2.2.3).
		sum := crc32.Checksum(b[start:], crc32.MakeTable(crc32.Castagnoli))
		v := b[start+crcAt:]
		v[0], v[1], v[2], v[3] = byte(sum>>24), byte(sum>>16), byte(sum>>8), byte(sum)
	}
	return b, nil
}

// checkFixed validates as much of the 16-byte fixed part as b holds. It
// returns ErrShort only when b is a valid prefix shorter than 16 bytes.
func checkFixed(b []byte) error {
	n := min(len(b), len(Signature))
	if string(b[:n]) != string(Signature[:n]) {
		return ErrSignature
	}
	if len(b) > 12 {
		if b[12]>>4 != version2 {
			return ErrVersion
		}
		if Command(b[12]&0x0F) > Proxy {
			return ErrCommand
		}
	}
	if len(b) > 13 {
		// Nibbles outside the defined values must be rejected, whatever the command.
		if b[13]>>4 > famUnix || b[13]&0x0F > byte(Datagram) {
			return ErrFamily
		}
	}
	if len(b) < headerLen {
		return ErrShort
	}
	return nil
}

// Parse decodes the header at the start of b and returns it with its length
// in bytes. It returns ErrShort if b is a valid but incomplete prefix, and
// another error if b cannot start a valid header. TLV values are copied, so
// b may be reused.
//
// LOCAL headers are accepted with any address block, which is skipped
// unread as the spec requires ("discard the protocol block including the
// family"). PROXY headers must use one of the spec's family/transport
// combinations (\x00, \x11, \x12, \x21, \x22, \x31, \x32) with a length that
// covers the address block; TLVs after it must be well-formed, and a CRC32C
// TLV must match.
func Parse(b []byte) (*Header, int, error) {
	if err := checkFixed(b); err != nil {
		return nil, 0, err
	}
	n := headerLen + int(be16(b[14:]))
	if len(b) < n {
		return nil, 0, ErrShort
	}
	h := &Header{Command: Command(b[12] & 0x0F)}
	if h.Command == Local {
		return h, n, nil
	}

	block := b[headerLen:n]
	var addrLen int
	switch fam, tr := b[13]>>4, Transport(b[13]&0x0F); {
	case fam == famUnspec && tr == Unspec:
	case fam == famUnix && tr != Unspec:
		addrLen = lenUnix // not represented: fall back to UNSPEC
	case fam == famInet && tr != Unspec:
		if len(block) < lenInet {
			return nil, 0, ErrLength
		}
		h.Transport = tr
		h.Src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(block[0:4])), be16(block[8:]))
		h.Dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(block[4:8])), be16(block[10:]))
		addrLen = lenInet
	case fam == famInet6 && tr != Unspec:
		if len(block) < lenInet6 {
			return nil, 0, ErrLength
		}
		h.Transport = tr
		h.Src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(block[0:16])), be16(block[32:]))
		h.Dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(block[16:32])), be16(block[34:]))
		addrLen = lenInet6
	default:
		// Valid nibbles in a combination the spec does not define.
		return nil, 0, ErrFamily
	}
	if len(block) < addrLen {
		return nil, 0, ErrLength
	}

	tlvs, crcAt, err := parseTLVs(block[addrLen:])
	if err != nil {
		return nil, 0, err
	}
	if crcAt >= 0 {
		at := headerLen + addrLen + crcAt
		want := uint32(b[at])<<24 | uint32(b[at+1])<<16 | uint32(b[at+2])<<8 | uint32(b[at+3])
		tab := crc32.MakeTable(crc32.Castagnoli)
		sum := crc32.Update(0, tab, b[:at])
		sum = crc32.Update(sum, tab, []byte{0, 0, 0, 0})
		sum = crc32.Update(sum, tab, b[at+4:n])
		if sum != want {
			return nil, 0, ErrChecksum
		}
	}
	h.TLVs = tlvs
	return h, n, nil
}

// parseTLVs splits b into TLVs (copying values into one allocation),
// dropping NOOPs, and returns the offset in b of a CRC32C value, or -1.
func parseTLVs(b []byte) ([]TLV, int, error) {
	if len(b) == 0 {
		return nil, -1, nil
	}
	b = append([]byte(nil), b...)
	var tlvs []TLV
	crcAt := -1
	for off := 0; off < len(b); {
		if len(b)-off < 3 {
			return nil, -1, ErrTLV
		}
		typ, vlen := b[off], int(be16(b[off+1:]))
		vstart := off + 3
		if len(b)-vstart < vlen {
			return nil, -1, ErrTLV
		}
		switch typ {
		case TypeNoop:
		case TypeCRC32C:
			if vlen != 4 || crcAt >= 0 {
				return nil, -1, ErrTLV
			}
			crcAt = vstart
			fallthrough
		default:
			tlvs = append(tlvs, TLV{Type: typ, Value: b[vstart : vstart+vlen : vstart+vlen]})
		}
		off = vstart + vlen
	}
	return tlvs, crcAt, nil
}

func be16(b []byte) uint16 { return uint16(b[0])<<8 | uint16(b[1]) }

// Read reads exactly one header from r: the 16-byte fixed part, then the
// length it announces, never more, so the stream continues with the
// client's data. A header cut short by EOF yields io.ErrUnexpectedEOF (the
// spec says to reject partial headers). Read is for connections that must
// start with a v2 header; the 16 bytes are consumed even when they turn out
// not to be one.
func Read(r io.Reader) (*Header, error) {
	var fixed [headerLen]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return nil, err
	}
	if err := checkFixed(fixed[:]); err != nil {
		return nil, err
	}
	buf := make([]byte, headerLen+int(be16(fixed[14:])))
	copy(buf, fixed[:])
	if _, err := io.ReadFull(r, buf[headerLen:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	h, _, err := Parse(buf)
	return h, err
}
