// Package httpconnect implements HTTP/1.1 CONNECT tunnelling (RFC 9110
// §9.3.6, message syntax per RFC 9112, Basic credentials per RFC 7617): the
// proxy side that halfway runs on accepted connections and the client side
// it uses to reach a next hop that is an HTTP proxy.
//
// # No over-read
//
// ReadRequest and ReadResponse take a plain io.Reader — normally the
// net.Conn itself — and never read past the blank line that ends the head,
// so bytes the peer pipelines after the head (a TLS ClientHello, a server
// banner) stay in the connection and the caller can splice the raw
// connection right away, with no user-space buffer to drain first. This
// works without peeking because the head ends with the 4-byte CRLFCRLF: as
// long as the bytes read so far do not end with a partial CRLFCRLF, at least
// 4 more bytes belong to the head, so the reader asks for exactly as many
// bytes as are certainly still part of the head (4, or 3, 2, 1 after a
// partial terminator). A typical head of 100–300 bytes costs 25–75 small
// reads; that is paid once per connection, whereas a bufio.Reader would
// force every later byte of the tunnel through user space, or force the
// caller to drain its buffer before splicing.
//
// Deadlines are the caller's: set them on the connection.
//
// Proxy side:
//
//	req, err := httpconnect.ReadRequest(conn)
//	if err != nil {
//		var re *httpconnect.RequestError
//		if errors.As(err, &re) {
//			httpconnect.WriteResponse(conn, re.Status, "")
//		}
//		conn.Close()
//		return
//	}
//	up, err := net.Dial("tcp", net.JoinHostPort(req.Host, strconv.Itoa(int(req.Port))))
//	if err != nil {
//		httpconnect.WriteResponse(conn, 502, "")
//		conn.Close()
//		return
//	}
//	httpconnect.WriteResponse(conn, 200, "") // "HTTP/1.1 200 Connection established"
//	// conn now carries only tunnel bytes: splice conn <-> up.
//
// Client side:
//
//	err := httpconnect.WriteRequest(conn, "example.com", 443, "", "")
//	status, err := httpconnect.ReadResponse(conn) // tunnel is up if err == nil && status/100 == 2
package httpconnect

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/textproto"
	"strconv"
	"strings"
)

const (
	// MaxHeadBytes bounds a request or response head (start line, header
	// lines and the final CRLF, plus at most one ignored leading CRLF).
	MaxHeadBytes = 16 << 10
	// MaxHeaderLines bounds the number of header field lines in a head.
	MaxHeaderLines = 100

	// maxInterim bounds the 1xx responses ReadResponse skips.
	maxInterim = 10
)

// RequestError reports a request that must be refused; Status is the status
// code to answer with (400 malformed, 405 method is not CONNECT, 431 head
// too large, 505 HTTP version not supported).
type RequestError struct {
	Status int
	Msg    string
}

func (e *RequestError) Error() string {
	return fmt.Sprintf("httpconnect: %d %s: %s", e.Status, statusText(e.Status), e.Msg)
}

func reqErr(status int, format string, args ...any) *RequestError {
	return &RequestError{Status: status, Msg: fmt.Sprintf(format, args...)}
}

// ErrMalformedResponse is wrapped by errors ReadResponse returns for a
// response head that is not valid HTTP/1.x.
var ErrMalformedResponse = errors.New("httpconnect: malformed response")

// Request is a parsed CONNECT request head.
type Request struct {
	// Host is the tunnel destination from the authority-form target: a
	// lower-cased registered name, or an IP address without brackets (use
	// net.JoinHostPort to rebuild host:port).
	Host string
	// Port is the destination port, never 0.
	Port uint16
	// ProxyAuthorization is the Proxy-Authorization field value, "" if absent.
	ProxyAuthorization string
	// Header holds all header fields by canonical key (textproto form), in order.
	Header map[string][]string
}

// Errors of the head reader, mapped to statuses or response errors by callers.
var (
	errTooLarge  = errors.New("head exceeds size or line limit")
	errBareCR    = errors.New("CR not followed by LF")
	errBareLF    = errors.New("LF not preceded by CR")
	errEmptyHead = errors.New("empty lines instead of a start line")
)

// readHead reads from r up to and including the CRLFCRLF that ends a head,
// never a byte beyond it (see the package comment), and returns the head
// without any skipped leading CRLF. Bare CR or LF fail at once rather than
// waiting for more input that a non-conforming peer will never send.
func readHead(r io.Reader) ([]byte, error) {
	buf := make([]byte, 0, 256)
	start := 0      // head start; RFC 9112 §2.2 says to ignore a leading empty line
	lineStart := 0  // start of the current line
	lines := 0      // lines completed in the head (start line + fields)
	var prev byte   // last byte read, 0 at the start
	emptyReads := 0 // consecutive (0, nil) reads
	for {
		// Bytes certainly still part of the head: 4 minus the length of the
		// partial terminator the head currently ends with.
		need := 4 - partialTerminator(buf[start:])
		if len(buf)+need > MaxHeadBytes {
			// The head cannot end within the limit.
			return nil, errTooLarge
		}
		if cap(buf)-len(buf) < need {
			nb := make([]byte, len(buf), 2*cap(buf)+need)
			copy(nb, buf)
			buf = nb
		}
		n, err := r.Read(buf[len(buf) : len(buf)+need])
		if n < 0 || n > need {
			return nil, fmt.Errorf("httpconnect: reader returned %d for a %d-byte read", n, need)
		}
		for _, c := range buf[len(buf) : len(buf)+n] {
			i := len(buf)
			buf = buf[:i+1]
			switch {
			case prev == '\r' && c != '\n':
				return nil, errBareCR
			case c == '\n' && prev != '\r':
				return nil, errBareLF
			case c == '\n':
				if i-1 == lineStart { // empty line
					if lineStart == start && lines == 0 {
						if start == 0 {
							start, lineStart = i+1, i+1
							prev = 0
							continue
						}
						// Only one leading empty line is ignored; more
						// is not a plausible client.
						return nil, errEmptyHead
					}
					return buf[start:], nil
				}
				lines++
				if lines > 1+MaxHeaderLines {
					return nil, errTooLarge
				}
				lineStart = i + 1
			}
			prev = c
		}
		if err != nil {
			if err == io.EOF && len(buf) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if n == 0 {
			if emptyReads++; emptyReads > 100 {
				return nil, io.ErrNoProgress
			}
		} else {
			emptyReads = 0
		}
	}
}

// partialTerminator returns how many trailing bytes of b form a proper
// prefix of CRLFCRLF.
func partialTerminator(b []byte) int {
	switch {
	case hasSuffix(b, "\r\n\r"):
		return 3
	case hasSuffix(b, "\r\n"):
		return 2
	case hasSuffix(b, "\r"):
		return 1
	}
	return 0
}

func hasSuffix(b []byte, s string) bool {
	return len(b) >= len(s) && string(b[len(b)-len(s):]) == s
}

// ReadRequest reads one CONNECT request head from r without reading past it
// (see the package comment) and validates it.
//
// A *RequestError tells which status to answer. Other errors are I/O errors
// (io.EOF for a connection closed before the first byte,
// io.ErrUnexpectedEOF for one closed mid-head, timeouts from the caller's
// deadline); then there is nobody to answer and the caller just closes.
//
// Validation follows RFC 9112: a request line of exactly "method SP target
// SP HTTP/x.y", CRLF line endings only, no obs-fold, no whitespace before a
// field's colon, field names that are tokens, field values without control
// characters; HTTP/1.1 requests must carry exactly one valid Host field. The
// target must be authority-form uri-host ":" port with a port in 1..65535
// (RFC 9110 §9.3.6); registered names with percent-encoding and IPvFuture
// literals are refused as no DNS name needs them.
func ReadRequest(r io.Reader) (*Request, error) {
	head, err := readHead(r)
	switch err {
	case nil:
	case errTooLarge:
		return nil, reqErr(431, "request head larger than %d bytes or %d header lines", MaxHeadBytes, MaxHeaderLines)
	case errBareCR, errBareLF, errEmptyHead:
		return nil, reqErr(400, "%v", err)
	default:
		return nil, err
	}
	return parseRequest(head)
}

// parseRequest parses a complete head ending in CRLFCRLF.
func parseRequest(head []byte) (*Request, error) {
	lines := strings.Split(string(head[:len(head)-4]), "\r\n")
	reqLine := lines[0]
	if !validLine(reqLine, false) {
		return nil, reqErr(400, "control character in request line")
	}
	method, rest, ok1 := strings.Cut(reqLine, " ")
	target, version, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || strings.Contains(version, " ") {
		return nil, reqErr(400, "request line is not \"method SP target SP version\"")
	}
	if !isToken(method) {
		return nil, reqErr(400, "invalid method %q", method)
	}
	major, ok := parseVersion(version)
	if !ok {
		return nil, reqErr(400, "invalid HTTP version %q", version)
	}
	if major != 1 {
		return nil, reqErr(505, "HTTP version %q", version)
	}
	header, err := parseFields(lines[1:])
	if err != nil {
		return nil, reqErr(400, "%v", err)
	}
	if method != "CONNECT" {
		return nil, reqErr(405, "method %q", method)
	}
	host, port, hasPort, ok := parseAuthority(target)
	if !ok || !hasPort || port == 0 {
		return nil, reqErr(400, "request target %q is not host:port", target)
	}
	hosts := header["Host"]
	switch {
	case len(hosts) > 1:
		return nil, reqErr(400, "more than one Host field")
	case len(hosts) == 0 && version != "HTTP/1.0":
		return nil, reqErr(400, "HTTP/1.1 request without Host field")
	case len(hosts) == 1:
		if _, _, _, ok := parseAuthority(hosts[0]); !ok {
			return nil, reqErr(400, "invalid Host field %q", hosts[0])
		}
	}
	auth := header["Proxy-Authorization"]
	if len(auth) > 1 {
		return nil, reqErr(400, "more than one Proxy-Authorization field")
	}
	req := &Request{Host: host, Port: port, Header: header}
	if len(auth) == 1 {
		req.ProxyAuthorization = auth[0]
	}
	return req, nil
}

// parseVersion parses "HTTP/" DIGIT "." DIGIT (RFC 9112 §2.3) and returns
// the major version.
func parseVersion(v string) (int, bool) {
	if len(v) != 8 || v[:5] != "HTTP/" || !isDigit(v[5]) || v[6] != '.' || !isDigit(v[7]) {
		return 0, false
	}
	return int(v[5] - '0'), true
}

// parseFields parses header field lines (RFC 9112 §5) into canonical keys.
func parseFields(lines []string) (map[string][]string, error) {
	h := make(map[string][]string, len(lines))
	for _, line := range lines {
		if line[0] == ' ' || line[0] == '\t' {
			// RFC 9112 §5.2: reject obs-fold (or unfold it); rejecting is safer.
			return nil, errors.New("obsolete line folding")
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || !isToken(name) {
			// Also catches whitespace between name and colon (RFC 9112 §5.1).
			return nil, fmt.Errorf("invalid field line %q", line)
		}
		value = strings.Trim(value, " \t")
		if !validLine(value, true) {
			return nil, fmt.Errorf("control character in field %q", name)
		}
		key := textproto.CanonicalMIMEHeaderKey(name)
		h[key] = append(h[key], value)
	}
	return h, nil
}

// validLine reports whether s has no control characters other than, when
// tab is set, HTAB. obs-text (0x80-0xFF) is allowed as RFC 9110 §5.5 does.
func validLine(s string, tab bool) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 0x20 && !(tab && c == '\t')) || c == 0x7f {
			return false
		}
	}
	return true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// isToken reports whether s is an RFC 9110 §5.6.2 token.
func isToken(s string) bool { return alnumOr(s, "!#$%&'*+-.^_`|~") }

// alnumOr reports whether s is non-empty and made of ASCII letters, digits
// and bytes of extra.
func alnumOr(s, extra string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', isDigit(c):
		case strings.IndexByte(extra, c) >= 0:
		default:
			return false
		}
	}
	return true
}

// parseAuthority parses uri-host [ ":" port ] (RFC 3986 §3.2 as used by RFC
// 9110 §7.2 and §9.3.6). host is an IP without brackets or a lower-cased
// registered name. An empty port after the colon yields hasPort with port
// 0, which CONNECT targets reject and Host fields allow.
func parseAuthority(s string) (host string, port uint16, hasPort, ok bool) {
	var portStr string
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", 0, false, false
		}
		// netip rejects IPvFuture; zone identifiers are refused explicitly.
		ip, err := netip.ParseAddr(s[1:end])
		if err != nil || !ip.Is6() || ip.Zone() != "" {
			return "", 0, false, false
		}
		// Unmap so that [::ffff:10.0.0.1] cannot slip past IPv4 policy.
		host = ip.Unmap().String()
		switch rest := s[end+1:]; {
		case rest == "":
		case rest[0] == ':':
			hasPort, portStr = true, rest[1:]
		default:
			return "", 0, false, false
		}
	} else {
		name := s
		if i := strings.IndexByte(s, ':'); i >= 0 {
			name, hasPort, portStr = s[:i], true, s[i+1:]
		}
		if !isRegName(name) {
			return "", 0, false, false
		}
		host = strings.ToLower(name)
	}
	if hasPort && portStr != "" {
		// port = *DIGIT; more than 5 digits cannot be a valid port.
		if len(portStr) > 5 {
			return "", 0, false, false
		}
		n := 0
		for i := 0; i < len(portStr); i++ {
			if !isDigit(portStr[i]) {
				return "", 0, false, false
			}
			n = n*10 + int(portStr[i]-'0')
		}
		if n > 65535 {
			return "", 0, false, false
		}
		port = uint16(n)
	}
	return host, port, hasPort, true
}

// isRegName reports whether s is a non-empty reg-name of unreserved and
// sub-delims characters (RFC 3986 §3.2.2, without pct-encoded). An IPv4
// literal also matches.
func isRegName(s string) bool { return alnumOr(s, "-._~!$&'()*+,;=") }

// WriteResponse writes a response head in a single Write. reason "" picks
// the standard reason phrase ("Connection established" for 200).
//
// A 2xx response is the status line and CRLF only: RFC 9110 §9.3.6 forbids
// Content-Length and Transfer-Encoding there, and the tunnel starts right
// after it. Any other status (3xx-5xx) carries a short text/plain body,
// Content-Length and "Connection: close" because the caller closes next; 405
// adds "Allow: CONNECT" (RFC 9110 §15.5.6) and 407 a Basic
// Proxy-Authenticate challenge (§15.5.8, RFC 7617). 1xx is refused as there
// is no interim response in this exchange.
func WriteResponse(w io.Writer, status int, reason string) error {
	if status < 200 || status > 599 {
		return fmt.Errorf("httpconnect: status %d out of range 200-599", status)
	}
	if reason == "" {
		reason = statusText(status)
	}
	if !validLine(reason, true) {
		return errors.New("httpconnect: control character in reason phrase")
	}
	b := fmt.Appendf(nil, "HTTP/1.1 %d %s\r\n", status, reason)
	if status/100 != 2 {
		body := fmt.Sprintf("%d %s\n", status, reason)
		switch status {
		case 405:
			b = append(b, "Allow: CONNECT\r\n"...)
		case 407:
			b = append(b, "Proxy-Authenticate: Basic realm=\"proxy\", charset=\"UTF-8\"\r\n"...)
		}
		b = fmt.Appendf(b, "Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	} else {
		b = append(b, "\r\n"...)
	}
	_, err := w.Write(b)
	return err
}

// statusText returns the reason phrase for statuses a CONNECT proxy uses.
func statusText(status int) string {
	switch status {
	case 200:
		return "Connection established"
	case 400:
		return "Bad Request"
	case 403:
		return "Forbidden"
	case 405:
		return "Method Not Allowed"
	case 407:
		return "Proxy Authentication Required"
	case 408:
		return "Request Timeout"
	case 429:
		return "Too Many Requests"
	case 431:
		return "Request Header Fields Too Large"
	case 500:
		return "Internal Server Error"
	case 502:
		return "Bad Gateway"
	case 503:
		return "Service Unavailable"
	case 504:
		return "Gateway Timeout"
	case 505:
		return "HTTP Version Not Supported"
	}
	switch status / 100 {
	case 2:
		return "OK"
	case 4:
		return "Client Error"
	case 5:
		return "Server Error"
	}
	return "Status"
}

// BasicAuth parses a Proxy-Authorization value of the Basic scheme (RFC
// 7617): scheme name case-insensitively, one or more spaces, base64 of
// user-id ":" password. ok is false for any other scheme or malformed value.
func BasicAuth(v string) (user, pass string, ok bool) {
	scheme, cred, found := strings.Cut(v, " ")
	if !found || !strings.EqualFold(scheme, "Basic") {
		return "", "", false
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(strings.TrimLeft(cred, " "))
	if err != nil {
		return "", "", false
	}
	user, pass, ok = strings.Cut(string(raw), ":")
	if !ok {
		return "", "", false
	}
	return user, pass, true
}

// WriteRequest writes a CONNECT request head for host:port in a single
// Write, with a Host field (required in HTTP/1.1) and, when user or pass is
// non-empty, Basic Proxy-Authorization. host is a name or an IP address
// (IPv6 without brackets).
func WriteRequest(w io.Writer, host string, port uint16, user, pass string) error {
	if port == 0 {
		return errors.New("httpconnect: port 0")
	}
	authority := host
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return errors.New("httpconnect: IPv6 zone cannot be sent in a request target")
		}
		if ip.Is6() {
			authority = "[" + ip.String() + "]"
		}
	} else if !isRegName(host) {
		return fmt.Errorf("httpconnect: invalid host %q", host)
	}
	authority += ":" + strconv.Itoa(int(port))
	b := fmt.Appendf(nil, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n", authority, authority)
	if user != "" || pass != "" {
		// RFC 7617 §2: the user-id cannot contain ':' and neither part may
		// contain control characters.
		if strings.Contains(user, ":") || !validLine(user, false) || !validLine(pass, false) {
			return errors.New("httpconnect: user name contains ':' or credentials contain control characters")
		}
		b = append(b, "Proxy-Authorization: Basic "...)
		b = base64.StdEncoding.AppendEncode(b, []byte(user+":"+pass))
		b = append(b, "\r\n"...)
	}
	b = append(b, "\r\n"...)
	_, err := w.Write(b)
	return err
}

// ReadResponse reads the proxy's response head to a CONNECT request from r,
// never reading past it (see the package comment), skipping interim 1xx
// responses (other than 101) as RFC 9110 §15.2 requires clients to. It
// returns the final status code; err is nil for any well-formed head,
// whatever the status, so the caller decides: 2xx means the tunnel is up
// (RFC 9110 §9.3.6) and any Content-Length or Transfer-Encoding in it is to
// be ignored; otherwise close. Malformed heads yield errors wrapping
// ErrMalformedResponse; others are I/O errors.
func ReadResponse(r io.Reader) (status int, err error) {
	for range maxInterim + 1 {
		head, err := readHead(r)
		switch err {
		case nil:
		case errTooLarge, errBareCR, errBareLF, errEmptyHead:
			return 0, fmt.Errorf("%w: %v", ErrMalformedResponse, err)
		default:
			return 0, err
		}
		status, err := parseResponse(head)
		if err != nil {
			return 0, err
		}
		if status/100 != 1 || status == 101 {
			return status, nil
		}
	}
	return 0, fmt.Errorf("%w: more than %d interim responses", ErrMalformedResponse, maxInterim)
}

// parseResponse parses a status line "HTTP/x.y SP 3DIGIT SP reason" and the
// field lines. A missing SP after the code is tolerated because the reason
// phrase carries nothing a client should act on (RFC 9112 §4).
func parseResponse(head []byte) (int, error) {
	lines := strings.Split(string(head[:len(head)-4]), "\r\n")
	line := lines[0]
	if !validLine(line, true) {
		return 0, fmt.Errorf("%w: control character in status line", ErrMalformedResponse)
	}
	major, ok := 0, len(line) >= 12 && line[8] == ' '
	if ok {
		major, ok = parseVersion(line[:8])
	}
	if !ok || major != 1 || !isDigit(line[9]) || !isDigit(line[10]) || !isDigit(line[11]) ||
		(len(line) > 12 && line[12] != ' ') {
		return 0, fmt.Errorf("%w: invalid status line %q", ErrMalformedResponse, line)
	}
	status := int(line[9]-'0')*100 + int(line[10]-'0')*10 + int(line[11]-'0')
	if status < 100 {
		return 0, fmt.Errorf("%w: status %d", ErrMalformedResponse, status)
	}
	if _, err := parseFields(lines[1:]); err != nil {
		return 0, fmt.Errorf("%w: %v", ErrMalformedResponse, err)
	}
	return status, nil
}
