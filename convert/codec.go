package convert

import (
	"errors"
	"fmt"
	"net/netip"
)

// Fixed sizes, in bytes, of the TLVs (Type and Length included) before their
// variable part.
const (
	infoLen       = 4             // Type, Length, Zero(16)
	connectMinLen = 4 + 16        // Type, Length, Port(16), Address(128)
	wordHdrLen    = 4             // Type, Length, Unassigned(16): Extended, Supported, Cookie
	errorMinLen   = 3             // Type, Length, Error Code
	maxBodyLen    = MaxMessageLen // bound used before summing, against overflow
)

// pad4 rounds n up to a multiple of 4.
func pad4(n int) int { return (n + 3) &^ 3 }

// AppendMessage appends the encoding of m to b. It returns an error, and b
// unchanged, when m cannot be encoded: too long (ErrTooLong), a Connect
// without a valid address or with port 0, ill-formed Connect TCP options,
// Supported kinds 0-2, or a Cookie / Extended header whose length is not a
// multiple of 4. TLVs are written in type order.
func AppendMessage(b []byte, m *Message) ([]byte, error) {
	if m == nil {
		return b, errors.New("convert: nil message")
	}
	n, err := encodedLen(m)
	if err != nil {
		return b, err
	}
	out := append(b, Version, byte(n/4), 0, 0)
	if m.Info {
		out = append(out, TypeInfo, infoLen/4, 0, 0)
	}
	if c := m.Connect; c != nil {
		l := connectMinLen + pad4(len(c.TCPOptions))
		a := c.Dst.Addr().As16() // IPv4 becomes IPv4-mapped, as the RFC requires
		port := c.Dst.Port()
		out = append(out, TypeConnect, byte(l/4), byte(port>>8), byte(port))
		out = append(out, a[:]...)
		out = append(out, c.TCPOptions...)
		out = appendZeros(out, l-connectMinLen-len(c.TCPOptions))
	}
	if e := m.Extended; e != nil {
		out = append(out, TypeExtended, byte((wordHdrLen+len(e.Header))/4), 0, 0)
		out = append(out, e.Header...)
	}
	if m.Supported != nil {
		l := wordHdrLen + pad4(len(m.Supported))
		out = append(out, TypeSupported, byte(l/4), 0, 0)
		for _, s := range m.Supported {
			out = append(out, s.Kind)
		}
		out = appendZeros(out, l-wordHdrLen-len(m.Supported))
	}
	if m.Cookie != nil {
		out = append(out, TypeCookie, byte((wordHdrLen+len(m.Cookie))/4), 0, 0)
		out = append(out, m.Cookie...)
	}
	if e := m.Error; e != nil {
		l := pad4(errorMinLen + len(e.Value))
		out = append(out, TypeError, byte(l/4), byte(e.Code))
		out = append(out, e.Value...)
		out = appendZeros(out, l-errorMinLen-len(e.Value))
	}
	return out, nil
}

func appendZeros(b []byte, n int) []byte {
	for ; n > 0; n-- {
		b = append(b, 0)
	}
	return b
}

// encodedLen validates m and returns its encoded size.
func encodedLen(m *Message) (int, error) {
	n := HeaderLen
	if m.Info {
		n += infoLen
	}
	if c := m.Connect; c != nil {
		if !c.Dst.Addr().IsValid() {
			return 0, errors.New("convert: Connect without a destination address")
		}
		if c.Dst.Addr().Zone() != "" {
			return 0, errors.New("convert: Connect address has a zone, which cannot be encoded")
		}
		if c.Dst.Port() == 0 {
			return 0, errors.New("convert: Connect port 0")
		}
		if len(c.TCPOptions) > maxBodyLen {
			return 0, ErrTooLong
		}
		if end, msg := scanOptions(c.TCPOptions); msg != "" || end != len(c.TCPOptions) {
			if msg == "" {
				msg = "EOL (kind 0) is not allowed"
			}
			return 0, errors.New("convert: Connect TCP options: " + msg)
		}
		n += connectMinLen + pad4(len(c.TCPOptions))
	}
	if e := m.Extended; e != nil {
		if len(e.Header) > maxBodyLen {
			return 0, ErrTooLong
		}
		if len(e.Header)%4 != 0 {
			return 0, fmt.Errorf("convert: Extended TCP header of %d bytes is not whole 32-bit words", len(e.Header))
		}
		n += wordHdrLen + len(e.Header)
	}
	if m.Supported != nil {
		if len(m.Supported) > maxBodyLen {
			return 0, ErrTooLong
		}
		for _, s := range m.Supported {
			if s.Kind <= 2 {
				return 0, fmt.Errorf("convert: TCP option kind %d must not be listed as supported", s.Kind)
			}
		}
		n += wordHdrLen + pad4(len(m.Supported))
	}
	if m.Cookie != nil {
		if len(m.Cookie) > maxBodyLen {
			return 0, ErrTooLong
		}
		if len(m.Cookie)%4 != 0 {
			return 0, fmt.Errorf("convert: cookie of %d bytes is not whole 32-bit words", len(m.Cookie))
		}
		n += wordHdrLen + len(m.Cookie)
	}
	if e := m.Error; e != nil {
		if len(e.Value) > maxBodyLen {
			return 0, ErrTooLong
		}
		n += pad4(errorMinLen + len(e.Value))
	}
	// Every TLV is smaller than the message, so this also bounds each
	// TLV's 8-bit Length.
	if n > MaxMessageLen {
		return 0, ErrTooLong
	}
	return n, nil
}

// scanOptions walks TCP options as found in a Connect TLV. It returns the
// length of the options proper, i.e. where the zero padding starts, or a
// reason why they are ill-formed.
func scanOptions(p []byte) (end int, bad string) {
	i := 0
	for i < len(p) {
		switch p[i] {
		case 0: // EOL: from here on it must all be zero padding
			for _, c := range p[i:] {
				if c != 0 {
					return 0, "non-zero byte after the padding"
				}
			}
			return i, ""
		case 1:
			return 0, "NOP (kind 1) is not allowed"
		}
		if i+1 >= len(p) {
			return 0, "option without a length"
		}
		l := int(p[i+1])
		if l < 2 {
			return 0, "option length below 2"
		}
		if l > len(p)-i {
			return 0, "option runs past the TLV"
		}
		i += l
	}
	return i, ""
}

func malformed(format string, args ...any) *ProtocolError {
	return &ProtocolError{Code: MalformedMessage, Msg: fmt.Sprintf(format, args...)}
}

// checkHeader looks at the start of the fixed header. It returns the message
// length in bytes, ErrShort, or a *ProtocolError. The version is checked
// before the length so that a peer speaking another version is told so even
// if its header looks odd to us.
func checkHeader(b []byte) (int, error) {
	if len(b) < 1 {
		return 0, ErrShort
	}
	if b[0] != Version {
		return 0, &ProtocolError{Code: UnsupportedVersion, Msg: fmt.Sprintf("version %d", b[0])}
	}
	if len(b) < 2 {
		return 0, ErrShort
	}
	if b[1] == 0 {
		return 0, malformed("total length 0")
	}
	return int(b[1]) * 4, nil
}

// Parse decodes the message at the start of b and returns it with the number
// of bytes it occupies; anything after that is application data. If b holds
// only a prefix of a message it returns ErrShort. A bad message gives a
// *ProtocolError whose Code is the error to answer with. The returned
// Message does not alias b. Parse does not panic, and what it allocates is
// bounded by the message size.
func Parse(b []byte) (*Message, int, error) {
	total, err := checkHeader(b)
	if err != nil {
		return nil, 0, err
	}
	if len(b) < total {
		return nil, 0, ErrShort
	}
	// The Unassigned half of the header is ignored (RFC: set to zero).
	m := &Message{}
	var seen [256]bool
	for off := HeaderLen; off < total; {
		// off and total are multiples of 4, so at least 4 bytes are left.
		typ, words := b[off], int(b[off+1])
		if words == 0 {
			return nil, 0, malformed("TLV type %d at offset %d has length 0", typ, off)
		}
		l := words * 4
		if l > total-off {
			return nil, 0, malformed("TLV type %d at offset %d (%d bytes) runs past total length %d", typ, off, l, total)
		}
		if seen[typ] {
			return nil, 0, malformed("TLV type %d appears twice", typ)
		}
		seen[typ] = true
		if err := parseTLV(m, typ, b[off:off+l]); err != nil {
			return nil, 0, err
		}
		off += l
	}
	return m, total, nil
}

// parseTLV decodes one whole TLV (Type and Length included) into m.
func parseTLV(m *Message, typ byte, t []byte) error {
	switch typ {
	case TypeInfo:
		if len(t) != infoLen {
			return malformed("Info TLV of %d bytes, want %d", len(t), infoLen)
		}
		m.Info = true
	case TypeConnect:
		if len(t) < connectMinLen {
			return malformed("Connect TLV of %d bytes, want at least %d", len(t), connectMinLen)
		}
		port := uint16(t[2])<<8 | uint16(t[3])
		if port == 0 {
			return malformed("Connect TLV with port 0")
		}
		addr := netip.AddrFrom16([16]byte(t[4:20])).Unmap()
		opts := t[connectMinLen:]
		end, bad := scanOptions(opts)
		if bad != "" {
			return malformed("Connect TLV TCP options: %s", bad)
		}
		c := &Connect{Dst: netip.AddrPortFrom(addr, port)}
		if end > 0 {
			c.TCPOptions = clone(opts[:end])
		}
		m.Connect = c
	case TypeExtended:
		e := &ExtendedTCPHeader{}
		if len(t) > wordHdrLen {
			e.Header = clone(t[wordHdrLen:])
		}
		m.Extended = e
	case TypeSupported:
		s := make([]SupportedExt, 0, len(t)-wordHdrLen)
		for _, k := range t[wordHdrLen:] {
			// 0 is the padding; 0, 1 and 2 MUST NOT be listed since every
			// TCP supports them, so dropping them loses nothing.
			if k > 2 {
				s = append(s, SupportedExt{Kind: k})
			}
		}
		m.Supported = s
	case TypeCookie:
		m.Cookie = clone(t[wordHdrLen:])
	case TypeError:
		m.Error = &ErrorTLV{Code: ErrorCode(t[2]), Value: clone(t[errorMinLen:])}
	default:
		return &ProtocolError{Code: UnsupportedMessage, Msg: fmt.Sprintf("unknown TLV type %d", typ)}
	}
	return nil
}

// clone copies p into a new non-nil slice, so that Parse's result does not
// pin or alias the caller's read buffer.
func clone(p []byte) []byte {
	return append(make([]byte, 0, len(p)), p...)
}
