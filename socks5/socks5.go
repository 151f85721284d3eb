// Package socks5 implements SOCKS Protocol Version 5 (RFC 1928) with the
// Username/Password sub-negotiation (RFC 1929), CONNECT only: the server side
// that halfway runs on accepted connections and the client side it uses to
// reach a next hop (and that tests use).
//
// Every read is an io.ReadFull of a field whose length the protocol has
// already announced, so a handshake never consumes a byte the peer sent
// after it: once it returns, the connection can go straight to a splice
// loop. Handshakes take an io.Reader and an io.Writer (usually the same
// net.Conn) and set no deadlines; the caller sets them on the connection.
//
// Server side:
//
//	dst, err := socks5.ServerHandshake(conn, conn, &socks5.ServerConfig{Users: users})
//	if err != nil {
//		var pe *socks5.ProtocolError
//		if errors.As(err, &pe) && pe.InRequest {
//			socks5.WriteReply(conn, pe.Reply, netip.AddrPort{})
//		}
//		conn.Close()
//		return
//	}
//	up, err := net.Dial("tcp", dst.String())
//	if err != nil {
//		socks5.WriteReply(conn, socks5.HostUnreachable, netip.AddrPort{})
//		conn.Close()
//		return
//	}
//	socks5.WriteReply(conn, socks5.Succeeded, up.LocalAddr().(*net.TCPAddr).AddrPort())
//
// Client side:
//
//	bound, err := socks5.ClientHandshake(conn, conn, socks5.Addr{Name: "example.com", Port: 443}, "", "")
package socks5

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
)

// Wire constants from RFC 1928 and RFC 1929.
const (
	socksVersion = 0x05
	authVersion  = 0x01 // RFC 1929 sub-negotiation version

	methodNoAuth   = 0x00
	methodUserPass = 0x02
	methodNone     = 0xFF // "NO ACCEPTABLE METHODS"

	cmdConnect      = 0x01
	cmdBind         = 0x02
	cmdUDPAssociate = 0x03

	atypIPv4   = 0x01
	atypDomain = 0x03
	atypIPv6   = 0x04

	authSuccess = 0x00
	authFailure = 0x01 // any non-zero STATUS is a failure; 1 is conventional
)

// Reply is the REP field of a SOCKS5 reply (RFC 1928 §6).
type Reply uint8

// Reply codes defined by RFC 1928 §6; X'09' to X'FF' are unassigned.
const (
	Succeeded               Reply = 0x00
	GeneralFailure          Reply = 0x01
	NotAllowed              Reply = 0x02 // connection not allowed by ruleset
	NetworkUnreachable      Reply = 0x03
	HostUnreachable         Reply = 0x04
	ConnectionRefused       Reply = 0x05
	TTLExpired              Reply = 0x06
	CommandNotSupported     Reply = 0x07
	AddressTypeNotSupported Reply = 0x08
)

func (r Reply) String() string {
	switch r {
	case Succeeded:
		return "succeeded"
	case GeneralFailure:
		return "general SOCKS server failure"
	case NotAllowed:
		return "connection not allowed by ruleset"
	case NetworkUnreachable:
		return "network unreachable"
	case HostUnreachable:
		return "host unreachable"
	case ConnectionRefused:
		return "connection refused"
	case TTLExpired:
		return "TTL expired"
	case CommandNotSupported:
		return "command not supported"
	case AddressTypeNotSupported:
		return "address type not supported"
	}
	return fmt.Sprintf("unassigned reply %#02x", uint8(r))
}

// Addr is a SOCKS5 address: exactly one of IP and Name is set.
type Addr struct {
	IP   netip.Addr
	Name string // domain name (ATYP X'03'), never an IP literal when produced by this package
	Port uint16
}

// String returns host:port, with IPv6 addresses in brackets, suitable for net.Dial.
func (a Addr) String() string {
	host := a.Name
	if a.IP.IsValid() {
		host = a.IP.String()
	}
	return net.JoinHostPort(host, strconv.Itoa(int(a.Port)))
}

// ServerConfig selects the authentication methods the server accepts.
type ServerConfig struct {
	// NoAuth also allows "NO AUTHENTICATION REQUIRED" when Users is set.
	// When Users is nil or empty, "no authentication" is the only method
	// regardless of NoAuth.
	NoAuth bool
	// Users maps user name to password for RFC 1929; nil or empty allows only
	// "no authentication". If both NoAuth and Users are set, the server
	// prefers username/password when the client offers it.
	Users map[string]string
}

// ErrAuth reports failed RFC 1929 authentication: wrong credentials on the
// server side (the failure STATUS has been sent), or a failure STATUS
// received on the client side.
var ErrAuth = errors.New("socks5: username/password authentication failed")

// ErrNoAcceptableMethods reports that method negotiation found no common
// method; the server has already sent METHOD X'FF'.
var ErrNoAcceptableMethods = errors.New("socks5: no acceptable authentication methods")

// ErrCommandNotSupported reports a BIND, UDP ASSOCIATE or unknown command;
// ServerHandshake has already sent the CommandNotSupported reply.
var ErrCommandNotSupported = errors.New("socks5: command not supported")

// ProtocolError reports malformed input from the client.
//
// InRequest tells whether the error arose while reading the request, i.e.
// after method negotiation and authentication completed: only then does the
// client expect a reply message, and the caller should send
// WriteReply(w, e.Reply, netip.AddrPort{}) before closing. When InRequest is
// false (bad greeting version, malformed RFC 1929 request — for which the
// failure STATUS has already been sent) there is no reply to send; the
// caller just closes the connection.
type ProtocolError struct {
	Reply     Reply
	InRequest bool
	Msg       string
}

func (e *ProtocolError) Error() string { return "socks5: " + e.Msg }

// ReplyError is returned by ClientHandshake when the server answered the
// request with a reply code other than Succeeded.
type ReplyError struct {
	Reply Reply
}

func (e *ReplyError) Error() string { return "socks5: server replied: " + e.Reply.String() }

// ServerHandshake runs method negotiation, optional RFC 1929 authentication
// and reads one request. cfg may be nil (no authentication).
//
// Only CONNECT is supported: for BIND, UDP ASSOCIATE and unknown commands it
// writes the CommandNotSupported reply itself and returns an error wrapping
// ErrCommandNotSupported. On wrong credentials it writes the RFC 1929 failure
// status and returns ErrAuth. When no method is acceptable it writes METHOD
// X'FF' and returns ErrNoAcceptableMethods. On malformed input it returns a
// *ProtocolError; see its InRequest field for whether the caller must still
// write the reply. Any other error is an I/O error from r or w.
//
// On success it returns the requested destination; a domain name that is an
// IP literal is returned as IP, and IPv4-mapped IPv6 addresses are unmapped,
// so address-based policy sees one canonical form. The caller connects and
// then answers with WriteReply. Exactly the handshake bytes are read from r.
func ServerHandshake(r io.Reader, w io.Writer, cfg *ServerConfig) (Addr, error) {
	// One buffer covers the largest variable field (255 bytes) plus slack.
	var buf [260]byte

	// Greeting: VER NMETHODS METHODS(1..255).
	if _, err := io.ReadFull(r, buf[:2]); err != nil {
		return Addr{}, err
	}
	if buf[0] != socksVersion {
		// Not SOCKS5 (maybe SOCKS4): there is no message we could answer with.
		return Addr{}, &ProtocolError{Reply: GeneralFailure, Msg: fmt.Sprintf("greeting has version %#02x, want 0x05", buf[0])}
	}
	methods := buf[:buf[1]]
	if _, err := io.ReadFull(r, methods); err != nil {
		return Addr{}, err
	}
	method := selectMethod(methods, cfg)
	if _, err := w.Write([]byte{socksVersion, method}); err != nil {
		return Addr{}, err
	}
	switch method {
	case methodNone:
		return Addr{}, ErrNoAcceptableMethods
	case methodUserPass:
		if err := serverAuth(r, w, cfg.Users, buf[:]); err != nil {
			return Addr{}, err
		}
	}
	return serverRequest(r, w, buf[:])
}

// selectMethod picks the method the server will use from those the client
// offered (an empty list, though malformed, simply matches nothing).
func selectMethod(offered []byte, cfg *ServerConfig) byte {
	var users bool
	noAuth := true
	if cfg != nil && len(cfg.Users) > 0 {
		users, noAuth = true, cfg.NoAuth
	}
	var offNoAuth, offUserPass bool
	for _, m := range offered {
		switch m {
		case methodNoAuth:
			offNoAuth = true
		case methodUserPass:
			offUserPass = true
		}
	}
	switch {
	case users && offUserPass: // preferred: it identifies the user
		return methodUserPass
	case noAuth && offNoAuth:
		return methodNoAuth
	}
	return methodNone
}

// serverAuth runs the RFC 1929 sub-negotiation.
func serverAuth(r io.Reader, w io.Writer, users map[string]string, buf []byte) error {
	// VER ULEN UNAME(1..255) PLEN PASSWD(1..255)
	if _, err := io.ReadFull(r, buf[:2]); err != nil {
		return err
	}
	if buf[0] != authVersion || buf[1] == 0 {
		msg := fmt.Sprintf("username/password request has version %#02x, want 0x01", buf[0])
		if buf[0] == authVersion {
			msg = "username/password request has an empty UNAME"
		}
		// The client waits for a STATUS; a failure STATUS obliges it to close.
		if _, err := w.Write([]byte{authVersion, authFailure}); err != nil {
			return err
		}
		return &ProtocolError{Reply: GeneralFailure, Msg: msg}
	}
	ulen := int(buf[1])
	if _, err := io.ReadFull(r, buf[:ulen]); err != nil {
		return err
	}
	// Looked up before buf holds the password (no copy of the name).
	want, known := users[string(buf[:ulen])]
	if _, err := io.ReadFull(r, buf[:1]); err != nil {
		return err
	}
	// RFC 1929 says PLEN is 1..255, but PLEN 0 is unambiguous on the wire and
	// common clients (Go's x/net/proxy among them) send it for an empty
	// password, so it is read normally and simply compared.
	passwd := buf[:buf[0]]
	if _, err := io.ReadFull(r, passwd); err != nil {
		return err
	}
	// Compare digests so the comparison takes the same time whatever the
	// length or content of either password.
	got, exp := sha256.Sum256(passwd), sha256.Sum256([]byte(want))
	ok := subtle.ConstantTimeCompare(got[:], exp[:]) == 1 && known
	status := byte(authSuccess)
	if !ok {
		status = authFailure
	}
	if _, err := w.Write([]byte{authVersion, status}); err != nil {
		return err
	}
	if !ok {
		return ErrAuth
	}
	return nil
}

// serverRequest reads VER CMD RSV ATYP DST.ADDR DST.PORT.
func serverRequest(r io.Reader, w io.Writer, buf []byte) (Addr, error) {
	if _, err := io.ReadFull(r, buf[:4]); err != nil {
		return Addr{}, err
	}
	ver, cmd, rsv, atyp := buf[0], buf[1], buf[2], buf[3]
	if ver != socksVersion {
		return Addr{}, &ProtocolError{Reply: GeneralFailure, InRequest: true, Msg: fmt.Sprintf("request has version %#02x, want 0x05", ver)}
	}
	if rsv != 0 {
		return Addr{}, &ProtocolError{Reply: GeneralFailure, InRequest: true, Msg: fmt.Sprintf("request has RSV %#02x, want 0x00", rsv)}
	}
	// Read the whole address before judging the command: closing a socket
	// with unread input makes the kernel send RST, which can destroy the
	// reply we are about to write before the client reads it.
	addr, perr, err := readAddr(r, atyp, buf)
	if err != nil {
		return Addr{}, err
	}
	if perr != nil {
		perr.InRequest = true
		return Addr{}, perr
	}
	if cmd != cmdConnect {
		if err := WriteReply(w, CommandNotSupported, netip.AddrPort{}); err != nil {
			return Addr{}, err
		}
		return Addr{}, fmt.Errorf("%w: %s", ErrCommandNotSupported, cmdName(cmd))
	}
	if addr.Port == 0 {
		// No server listens there; HTTP CONNECT refuses it alike.
		return Addr{}, &ProtocolError{Reply: GeneralFailure, InRequest: true, Msg: "request for port 0"}
	}
	return addr, nil
}

func cmdName(c byte) string {
	switch c {
	case cmdBind:
		return "BIND"
	case cmdUDPAssociate:
		return "UDP ASSOCIATE"
	}
	return fmt.Sprintf("command %#02x", c)
}

// readAddr reads an address of type atyp followed by a port. A malformed
// address is reported as *ProtocolError (second result), I/O failures as the
// third result.
func readAddr(r io.Reader, atyp byte, buf []byte) (Addr, *ProtocolError, error) {
	var a Addr
	switch atyp {
	case atypIPv4:
		if _, err := io.ReadFull(r, buf[:6]); err != nil {
			return a, nil, err
		}
		a.IP = netip.AddrFrom4([4]byte(buf[:4]))
		a.Port = uint16(buf[4])<<8 | uint16(buf[5])
	case atypIPv6:
		if _, err := io.ReadFull(r, buf[:18]); err != nil {
			return a, nil, err
		}
		// Unmap so that ::ffff:10.0.0.1 cannot slip past IPv4 policy.
		a.IP = netip.AddrFrom16([16]byte(buf[:16])).Unmap()
		a.Port = uint16(buf[16])<<8 | uint16(buf[17])
	case atypDomain:
		if _, err := io.ReadFull(r, buf[:1]); err != nil {
			return a, nil, err
		}
		n := int(buf[0])
		if _, err := io.ReadFull(r, buf[:n+2]); err != nil {
			return a, nil, err
		}
		a.Port = uint16(buf[n])<<8 | uint16(buf[n+1])
		name := string(buf[:n])
		if ip, err := netip.ParseAddr(name); err == nil && ip.Zone() == "" {
			// Clients often put IP literals in the domain field.
			a.IP = ip.Unmap()
			return a, nil, nil
		}
		if !validName(name) {
			return Addr{}, &ProtocolError{Reply: GeneralFailure, Msg: fmt.Sprintf("invalid domain name %q", name)}, nil
		}
		a.Name = name
	default:
		return a, &ProtocolError{Reply: AddressTypeNotSupported, Msg: fmt.Sprintf("address type %#02x", atyp)}, nil
	}
	return a, nil, nil
}

// validName accepts a non-empty host name made of letters, digits, '-', '_'
// and '.'. Anything else (spaces, controls, ':', '/', '%', non-ASCII) has no
// business in a DNS name and would only confuse later host:port handling.
func validName(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}

// WriteReply writes a reply (RFC 1928 §6) in a single Write. bound is
// BND.ADDR/BND.PORT; an invalid bound is sent as 0.0.0.0:0, IPv4 and
// IPv4-mapped addresses as ATYP IPv4, others as ATYP IPv6.
func WriteReply(w io.Writer, rep Reply, bound netip.AddrPort) error {
	var b [22]byte
	b[0], b[1], b[2] = socksVersion, byte(rep), 0
	n := appendIPPort(b[:3], bound.Addr(), bound.Port())
	_, err := w.Write(n)
	return err
}

// appendIPPort appends ATYP, the address and the port.
func appendIPPort(b []byte, ip netip.Addr, port uint16) []byte {
	switch {
	case !ip.IsValid():
		b = append(b, atypIPv4, 0, 0, 0, 0)
	case ip.Is4() || ip.Is4In6():
		a := ip.Unmap().As4()
		b = append(b, atypIPv4)
		b = append(b, a[:]...)
	default:
		a := ip.As16()
		b = append(b, atypIPv6)
		b = append(b, a[:]...)
	}
	return append(b, byte(port>>8), byte(port))
}

// ClientHandshake is the client side: it offers "no authentication" and,
// when user != "", also username/password (so a server that needs no
// credentials still works), authenticates if the server selects RFC 1929,
// sends CONNECT dst and reads the reply. It returns BND.ADDR/BND.PORT. A
// reply other than Succeeded is returned as *ReplyError; an RFC 1929
// failure as ErrAuth. Exactly the handshake bytes are read from r.
func ClientHandshake(r io.Reader, w io.Writer, dst Addr, user, pass string) (bound Addr, err error) {
	req := make([]byte, 0, 4+1+255+2)
	req = append(req, socksVersion, cmdConnect, 0)
	switch {
	case dst.IP.IsValid() && dst.Name != "":
		return Addr{}, errors.New("socks5: destination has both IP and Name")
	case dst.IP.IsValid():
		if dst.IP.Zone() != "" {
			return Addr{}, errors.New("socks5: destination IP has a zone, which SOCKS5 cannot carry")
		}
		req = appendIPPort(req, dst.IP, dst.Port)
	case dst.Name != "":
		if len(dst.Name) > 255 {
			return Addr{}, errors.New("socks5: destination name longer than 255 bytes")
		}
		req = append(req, atypDomain, byte(len(dst.Name)))
		req = append(req, dst.Name...)
		req = append(req, byte(dst.Port>>8), byte(dst.Port))
	default:
		return Addr{}, errors.New("socks5: empty destination")
	}

	greeting := []byte{socksVersion, 1, methodNoAuth}
	if user != "" {
		// RFC 1929: UNAME and PASSWD are 1 to 255 bytes each.
		if len(user) > 255 || len(pass) == 0 || len(pass) > 255 {
			return Addr{}, errors.New("socks5: user name and password must be 1 to 255 bytes")
		}
		greeting = []byte{socksVersion, 2, methodNoAuth, methodUserPass}
	}
	if _, err := w.Write(greeting); err != nil {
		return Addr{}, err
	}
	var buf [260]byte
	if _, err := io.ReadFull(r, buf[:2]); err != nil {
		return Addr{}, err
	}
	if buf[0] != socksVersion {
		return Addr{}, fmt.Errorf("socks5: method selection has version %#02x, want 0x05", buf[0])
	}
	switch m := buf[1]; {
	case m == methodNone:
		return Addr{}, ErrNoAcceptableMethods
	case m == methodUserPass && user != "":
		auth := make([]byte, 0, 3+len(user)+len(pass))
		auth = append(auth, authVersion, byte(len(user)))
		auth = append(auth, user...)
		auth = append(auth, byte(len(pass)))
		auth = append(auth, pass...)
		if _, err := w.Write(auth); err != nil {
			return Addr{}, err
		}
		if _, err := io.ReadFull(r, buf[:2]); err != nil {
			return Addr{}, err
		}
		if buf[0] != authVersion {
			return Addr{}, fmt.Errorf("socks5: username/password status has version %#02x, want 0x01", buf[0])
		}
		if buf[1] != authSuccess {
			return Addr{}, ErrAuth
		}
	case m != methodNoAuth:
		return Addr{}, fmt.Errorf("socks5: server selected method %#02x, which was not offered", m)
	}

	if _, err := w.Write(req); err != nil {
		return Addr{}, err
	}
	if _, err := io.ReadFull(r, buf[:4]); err != nil {
		return Addr{}, err
	}
	ver, rep, rsv, atyp := buf[0], Reply(buf[1]), buf[2], buf[3]
	if ver != socksVersion {
		return Addr{}, fmt.Errorf("socks5: reply has version %#02x, want 0x05", ver)
	}
	if rsv != 0 {
		return Addr{}, fmt.Errorf("socks5: reply has RSV %#02x, want 0x00", rsv)
	}
	bound, perr, err := readAddr(r, atyp, buf[:])
	if rep != Succeeded {
		// The server closes after a failure reply; its code is what matters,
		// even if the rest of the reply was cut short.
		return Addr{}, &ReplyError{Reply: rep}
	}
	if err != nil {
		return Addr{}, err
	}
	if perr != nil {
		return Addr{}, fmt.Errorf("socks5: malformed reply: %s", perr.Msg)
	}
	return bound, nil
}
