// Package convert encodes and decodes messages of the 0-RTT TCP Convert
// Protocol (RFC 8803, "Convert").
//
// A Convert message is what a client puts at the very start of the byte
// stream of a TCP connection to a Transport Converter (usually inside a TCP
// Fast Open SYN), and what the converter puts at the very start of its reply
// stream. It is a 32-bit fixed header followed by TLVs (RFC 8803, Section 4):
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|    Version    | Total Length  |          Unassigned           |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|     Type      |    Length     |  Value ...                    /
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// Both Total Length and the TLV Length count 32-bit words and include the
// bytes of the header / of the Type and Length fields themselves, so every
// TLV and every message is a multiple of 4 bytes and a message is at most
// 255*4 = 1020 bytes. Whatever follows the message in the stream is
// application data; Parse and ReadMessage never consume any of it.
//
// # Decisions where the RFC leaves room
//
//   - Unknown TLV types (including Reserved type 0 and the private-use
//     range) are refused with Unsupported Message: the RFC defines that
//     code for "a message type received from a peer is not supported", and
//     silently skipping a TLV could drop a request the peer relies on.
//   - A TLV type that appears twice in a message is Malformed Message: the
//     RFC says a given TLV MUST only appear once on a connection and that the
//     connection MUST be closed otherwise. (Once per connection spans more
//     than one message; tracking that is the caller's job.)
//   - Unassigned / Zero fields (fixed header, Info, Supported TCP
//     Extensions, Cookie, Extended TCP Header) are written as zero and
//     ignored when read, so that future uses of those bits do not break us.
//   - A Connect TLV's address is always 128 bits. IPv4 travels as an
//     IPv4-mapped IPv6 address and Parse returns it Unmap()ed, so
//     Connect.Dst.Addr().Is4() tells the two families apart.
//   - A Connect TLV with port 0 is Malformed Message in both directions:
//     port 0 cannot be connected to, and refusing it in the codec keeps a
//     relay from ever dialing it.
//   - A Total Length of 0 is Malformed Message (the RFC says the connection
//     MUST then be reset). TLVs must tile the Total Length exactly: a TLV
//     of length 0, or one that runs past Total Length, is Malformed Message.
//     Bytes in the buffer beyond Total Length are not looked at.
//   - Version 0 (reserved) and any version other than 1 are Unsupported
//     Version; the reply should list the versions we speak (see
//     ProtocolError.Reply).
//
// # Padding
//
// The RFC pads several variable fields to a 32-bit boundary with zeros; the
// codec handles that as follows.
//
//   - Connect TCP options: padded with zeros (EOL). EOL and NOP may not
//     appear inside the field, so Parse stops at the first zero byte,
//     requires the rest to be zero and returns only the options.
//     AppendMessage refuses options containing EOL or NOP and pads.
//   - Supported TCP Extensions: one byte per TCP option kind, padded with
//     zeros. Kinds 0, 1 and 2 MUST NOT be listed, so Parse drops them (zero
//     is the padding) and AppendMessage refuses them.
//   - Error value: padded with zeros, and there is no length field, so the
//     padding cannot be told apart from the value. Parse returns every byte
//     after the Error Code (always 4n+1 bytes); AppendMessage appends Value
//     and pads it.
//   - Cookie and Extended TCP Header carry no padding rule: their data is
//     whole 32-bit words, so AppendMessage refuses lengths that are not a
//     multiple of 4 instead of silently changing the bytes.
//
// # Usage
//
// Client side (toward the next relay), written as the first bytes of the
// connection, then the converter's reply is read:
//
//	req := &convert.Message{
//		Connect: &convert.Connect{Dst: netip.MustParseAddrPort("192.0.2.7:443")},
//		Cookie:  token, // len(token)%4 == 0
//	}
//	b, err := convert.AppendMessage(nil, req)
//	if err != nil { ... }
//	// write b (plus early data) with TCP Fast Open, then:
//	resp, err := convert.ReadMessage(conn)
//	if err != nil { ... }
//	if resp.Error != nil { ... resp.Error.Code ... }
//
// Converter side:
//
//	raw, err := convert.ReadRaw(conn)
//	var m *convert.Message
//	if err == nil {
//		m, _, err = convert.Parse(raw)
//	}
//	var pe *convert.ProtocolError
//	if errors.As(err, &pe) {
//		reply, _ := convert.AppendMessage(nil, pe.Reply(raw))
//		conn.Write(reply) // then close
//	}
package convert

import (
	"errors"
	"net/netip"
	"strconv"
)

// Version is the only protocol version defined by RFC 8803 (0 is reserved).
const Version = 1

// HeaderLen is the size of the fixed header, and the unit of every length.
const HeaderLen = 4

// MaxMessageLen is the largest message: the 8-bit Total Length counts 32-bit
// words, header included.
const MaxMessageLen = 255 * 4

// TLV types, from the IANA "Convert TLVs" registry (RFC 8803, Section 8).
const (
	TypeInfo      = 0x01 // Info TLV: client asks for the supported extensions
	TypeConnect   = 0x0A // Connect TLV: destination and TCP options
	TypeExtended  = 0x14 // Extended TCP Header TLV: options of the server's SYN+ACK
	TypeSupported = 0x15 // Supported TCP Extensions TLV: answer to Info
	TypeCookie    = 0x16 // Cookie TLV: opaque validation data
	TypeError     = 0x1E // Error TLV
)

// ErrorCode is the 8-bit code of an Error TLV (IANA "Convert Errors").
// The ranges say who is at fault: 0-31 message validation, 32-63 client,
// 64-95 converter, 96-127 destination server.
type ErrorCode uint8

// Error codes defined by RFC 8803.
const (
	UnsupportedVersion     ErrorCode = 0  // value: the versions we support, one byte each
	MalformedMessage       ErrorCode = 1  // value: 0 then the received message echoed
	UnsupportedMessage     ErrorCode = 2  // value: 0 then the received message echoed
	MissingCookie          ErrorCode = 3  // sent with a Cookie TLV the client must retry with
	NotAuthorized          ErrorCode = 32 // value zero
	UnsupportedTCPOption   ErrorCode = 33 // value: the refused option kinds, one byte each
	ResourceExceeded       ErrorCode = 64 // value zero
	NetworkFailure         ErrorCode = 65 // value zero
	ConnectionReset        ErrorCode = 96 // value zero: the server answered with RST
	DestinationUnreachable ErrorCode = 97 // value: the Code field of the ICMP message
)

// String returns the RFC's name for the code.
func (c ErrorCode) String() string {
	switch c {
	case UnsupportedVersion:
		return "Unsupported Version"
	case MalformedMessage:
		return "Malformed Message"
	case UnsupportedMessage:
		return "Unsupported Message"
	case MissingCookie:
		return "Missing Cookie"
	case NotAuthorized:
		return "Not Authorized"
	case UnsupportedTCPOption:
		return "Unsupported TCP Option"
	case ResourceExceeded:
		return "Resource Exceeded"
	case NetworkFailure:
		return "Network Failure"
	case ConnectionReset:
		return "Connection Reset"
	case DestinationUnreachable:
		return "Destination Unreachable"
	}
	return "ErrorCode(" + strconv.Itoa(int(c)) + ")"
}

// Connect is the Connect TLV: where the converter should connect to.
type Connect struct {
	// Dst is the remote peer. IPv4 addresses are sent IPv4-mapped and come
	// back from Parse as plain IPv4. The port must not be 0; zones cannot
	// be sent.
	Dst netip.AddrPort
	// TCPOptions are TCP options, encoded as in a TCP header, that the
	// client asks the converter to put in its SYN to Dst. Each option has a
	// kind and a length byte (EOL and NOP are not allowed); padding is added
	// and removed by the codec. Parse returns nil when there are none.
	TCPOptions []byte
}

// ExtendedTCPHeader is the Extended TCP Header TLV: the converter returns to
// the client the extended TCP header (the TCP options) of the SYN+ACK it got
// from the server.
type ExtendedTCPHeader struct {
	// Header is copied verbatim; its length must be a multiple of 4, as the
	// options area of any TCP header is. Parse returns nil when empty.
	Header []byte
}

// SupportedExt is one entry of the Supported TCP Extensions TLV: a TCP option
// kind the converter can provide conversion for. Kinds 0, 1 and 2 are
// implied and never listed.
type SupportedExt struct {
	Kind uint8
}

// ErrorTLV is the Error TLV.
type ErrorTLV struct {
	Code ErrorCode
	// Value is the code-specific value. AppendMessage pads it with zeros so
	// that the TLV ends on a 32-bit boundary (nil becomes one zero byte,
	// which is what "the Value field MUST be set to zero" means); Parse
	// returns it with that padding, i.e. always 4n+1 bytes.
	Value []byte
}

// Message is one Convert message. A nil / false field is an absent TLV.
type Message struct {
	Info     bool               // Info TLV
	Connect  *Connect           // Connect TLV
	Extended *ExtendedTCPHeader // Extended TCP Header TLV
	// Supported is the Supported TCP Extensions TLV; nil means absent and a
	// non-nil empty slice an (empty) TLV. Parse keeps that distinction.
	Supported []SupportedExt
	// Cookie is the Cookie TLV's opaque validation data; nil means absent.
	// Its length must be a multiple of 4 (the TLV has no padding rule).
	Cookie []byte
	Error  *ErrorTLV // Error TLV
}

// ErrShort means the buffer holds only the start of a message; read more.
var ErrShort = errors.New("convert: short message")

// ErrTooLong means a Message does not fit in MaxMessageLen bytes.
var ErrTooLong = errors.New("convert: message longer than 1020 bytes")

// ProtocolError is a message that the peer got wrong. Code is the error code
// to answer with, per RFC 8803.
type ProtocolError struct {
	Code ErrorCode
	Msg  string
}

func (e *ProtocolError) Error() string {
	return "convert: " + e.Code.String() + ": " + e.Msg
}

// Reply builds the Error reply the RFC asks for. received is the offending
// message as read (ReadRaw returns it even on error); only its first Total
// Length bytes are used.
//   - Unsupported Version: the value lists the versions we speak.
//   - Malformed / Unsupported Message: the value is a zero byte followed by
//     the received message ("echo ... shifted by one byte to keep the
//     original alignment"), truncated to what fits in one message.
//   - Otherwise: value zero.
func (e *ProtocolError) Reply(received []byte) *Message {
	t := &ErrorTLV{Code: e.Code}
	switch e.Code {
	case UnsupportedVersion:
		t.Value = []byte{Version}
	case MalformedMessage, UnsupportedMessage:
		echo := received
		if len(echo) >= 2 && echo[1] != 0 && len(echo) > int(echo[1])*4 {
			echo = echo[:int(echo[1])*4]
		}
		// header + Type/Length/Code + shift byte
		if max := MaxMessageLen - HeaderLen - 3 - 1; len(echo) > max {
			echo = echo[:max]
		}
		t.Value = append(make([]byte, 1, 1+len(echo)), echo...)
	}
	return &Message{Error: t}
}
