package httpconnect

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// status returns the RequestError status of err, 0 for nil and -1 otherwise.
func status(err error) int {
	var re *RequestError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &re):
		return re.Status
	}
	return -1
}

func fields(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString("X-F: ")
		b.WriteByte('a' + byte(i%26))
		b.WriteString("\r\n")
	}
	return b.String()
}

// padTo returns a valid CONNECT head of exactly n bytes.
func padTo(n int) string {
	const pre, post = "CONNECT a:1 HTTP/1.1\r\nHost: a\r\nX-Pad: ", "\r\n\r\n"
	return pre + strings.Repeat("p", n-len(pre)-len(post)) + post
}

func TestReadRequest(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		status int // 0: success
		host   string
		port   uint16
		auth   string
		header map[string][]string // checked when non-nil
		ioErr  error               // expected non-RequestError
	}{
		// RFC 9110 §9.3.6 example.
		{name: "RFC 9110 example", in: "CONNECT server.example.com:80 HTTP/1.1\r\nHost: server.example.com\r\n\r\n",
			host: "server.example.com", port: 80, header: map[string][]string{"Host": {"server.example.com"}}},
		{name: "Host with port and credentials", in: "CONNECT server.example.com:80 HTTP/1.1\r\nHost: server.example.com:80\r\nProxy-Authorization: basic aGVsbG86d29ybGQ=\r\n\r\n",
			host: "server.example.com", port: 80, auth: "basic aGVsbG86d29ybGQ="},
		{name: "IPv6 literal", in: "CONNECT [2001:DB8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n", host: "2001:db8::1", port: 443},
		{name: "IPv4-mapped literal unmapped", in: "CONNECT [::ffff:10.0.0.1]:22 HTTP/1.1\r\nHost: x\r\n\r\n", host: "10.0.0.1", port: 22},
		{name: "IPv4 literal", in: "CONNECT 192.0.2.1:65535 HTTP/1.1\r\nHost: 192.0.2.1:65535\r\n\r\n", host: "192.0.2.1", port: 65535},
		{name: "name lower-cased", in: "CONNECT Example.COM:443 HTTP/1.1\r\nHost: Example.COM:443\r\n\r\n", host: "example.com", port: 443},
		{name: "HTTP/1.0 without Host", in: "CONNECT example.com:443 HTTP/1.0\r\n\r\n", host: "example.com", port: 443},
		{name: "higher minor version", in: "CONNECT example.com:443 HTTP/1.2\r\nHost: example.com\r\n\r\n", host: "example.com", port: 443},
		{name: "leading empty line ignored", in: "\r\nCONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n", host: "example.com", port: 443},
		{name: "canonical keys, OWS, obs-text, empty value", in: "CONNECT a:1 HTTP/1.1\r\nhost:a\r\nuser-agent: \t x\ty \xff \r\nX-Empty:\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\n",
			host: "a", port: 1, header: map[string][]string{"Host": {"a"}, "User-Agent": {"x\ty \xff"}, "X-Empty": {""}, "X-Dup": {"1", "2"}}},
		{name: "leading zeros in port", in: "CONNECT a:00443 HTTP/1.1\r\nHost: a\r\n\r\n", host: "a", port: 443},
		{name: "100 header lines", in: "CONNECT a:1 HTTP/1.1\r\nHost: a\r\n" + fields(99) + "\r\n", host: "a", port: 1},
		{name: "head of exactly MaxHeadBytes", in: padTo(MaxHeadBytes), host: "a", port: 1},

		{name: "GET", in: "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n", status: 405},
		{name: "method is case-sensitive", in: "connect example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n", status: 405},
		{name: "HTTP/2.0", in: "CONNECT example.com:443 HTTP/2.0\r\nHost: example.com\r\n\r\n", status: 505},
		{name: "HTTP/0.9", in: "CONNECT example.com:443 HTTP/0.9\r\n\r\n", status: 505},
		{name: "version garbage", in: "CONNECT example.com:443 HTTP/1.10\r\nHost: a\r\n\r\n", status: 400},
		{name: "lower-case version", in: "CONNECT example.com:443 http/1.1\r\nHost: a\r\n\r\n", status: 400},
		{name: "missing port", in: "CONNECT example.com HTTP/1.1\r\nHost: example.com\r\n\r\n", status: 400},
		{name: "empty port", in: "CONNECT example.com: HTTP/1.1\r\nHost: example.com\r\n\r\n", status: 400},
		{name: "port 0", in: "CONNECT example.com:0 HTTP/1.1\r\nHost: example.com\r\n\r\n", status: 400},
		{name: "port too big", in: "CONNECT example.com:65536 HTTP/1.1\r\nHost: example.com\r\n\r\n", status: 400},
		{name: "port too long", in: "CONNECT example.com:000443 HTTP/1.1\r\nHost: example.com\r\n\r\n", status: 400},
		{name: "signed port", in: "CONNECT example.com:+443 HTTP/1.1\r\nHost: example.com\r\n\r\n", status: 400},
		{name: "absolute-form target", in: "CONNECT http://example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n", status: 400},
		{name: "origin-form target", in: "CONNECT / HTTP/1.1\r\nHost: example.com\r\n\r\n", status: 400},
		{name: "unbracketed IPv6", in: "CONNECT 2001:db8::1:443 HTTP/1.1\r\nHost: a\r\n\r\n", status: 400},
		{name: "unclosed bracket", in: "CONNECT [2001:db8::1:443 HTTP/1.1\r\nHost: a\r\n\r\n", status: 400},
		{name: "IPv4 in brackets", in: "CONNECT [192.0.2.1]:443 HTTP/1.1\r\nHost: a\r\n\r\n", status: 400},
		{name: "zone", in: "CONNECT [fe80::1%25eth0]:443 HTTP/1.1\r\nHost: a\r\n\r\n", status: 400},
		{name: "IPvFuture", in: "CONNECT [v1.fe80::a]:443 HTTP/1.1\r\nHost: a\r\n\r\n", status: 400},
		{name: "percent-encoded name", in: "CONNECT a%2eb:443 HTTP/1.1\r\nHost: a\r\n\r\n", status: 400},
		{name: "empty host", in: "CONNECT :443 HTTP/1.1\r\nHost: a\r\n\r\n", status: 400},
		{name: "userinfo", in: "CONNECT u@a:443 HTTP/1.1\r\nHost: a\r\n\r\n", status: 400},
		{name: "missing Host", in: "CONNECT a:1 HTTP/1.1\r\n\r\n", status: 400},
		{name: "two Host fields", in: "CONNECT a:1 HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", status: 400},
		{name: "invalid Host", in: "CONNECT a:1 HTTP/1.1\r\nHost: a b\r\n\r\n", status: 400},
		{name: "empty Host", in: "CONNECT a:1 HTTP/1.1\r\nHost:\r\n\r\n", status: 400},
		{name: "two Proxy-Authorization fields", in: "CONNECT a:1 HTTP/1.1\r\nHost: a\r\nProxy-Authorization: Basic eDp5\r\nProxy-Authorization: Basic eDp5\r\n\r\n", status: 400},
		{name: "double space", in: "CONNECT  a:1 HTTP/1.1\r\nHost: a\r\n\r\n", status: 400},
		{name: "trailing space", in: "CONNECT a:1 HTTP/1.1 \r\nHost: a\r\n\r\n", status: 400},
		{name: "tab separator", in: "CONNECT\ta:1 HTTP/1.1\r\nHost: a\r\n\r\n", status: 400},
		{name: "two words", in: "CONNECT a:1\r\nHost: a\r\n\r\n", status: 400},
		{name: "bad method token", in: "CON(NECT a:1 HTTP/1.1\r\nHost: a\r\n\r\n", status: 400},
		{name: "bare LF", in: "CONNECT a:1 HTTP/1.1\nHost: a\n\n", status: 400},
		{name: "bare CR", in: "CONNECT a:1 HTTP/1.1\rHost: a\r\n\r\n", status: 400},
		{name: "obs-fold", in: "CONNECT a:1 HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", status: 400},
		{name: "space before colon", in: "CONNECT a:1 HTTP/1.1\r\nHost : a\r\n\r\n", status: 400},
		{name: "no colon", in: "CONNECT a:1 HTTP/1.1\r\nHost a\r\n\r\n", status: 400},
		{name: "empty field name", in: "CONNECT a:1 HTTP/1.1\r\n: a\r\nHost: a\r\n\r\n", status: 400},
		{name: "NUL in value", in: "CONNECT a:1 HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", status: 400},
		{name: "DEL in request line", in: "CONNECT a:1\x7f HTTP/1.1\r\nHost: a\r\n\r\n", status: 400},
		{name: "two leading empty lines", in: "\r\n\r\nCONNECT a:1 HTTP/1.1\r\nHost: a\r\n\r\n", status: 400},
		{name: "101 header lines", in: "CONNECT a:1 HTTP/1.1\r\nHost: a\r\n" + fields(100) + "\r\n", status: 431},
		{name: "head one byte over MaxHeadBytes", in: padTo(MaxHeadBytes + 1), status: 431},
		{name: "huge field", in: "CONNECT a:1 HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("b", MaxHeadBytes) + "\r\n\r\n", status: 431},
		{name: "huge unterminated request line", in: strings.Repeat("C", 2*MaxHeadBytes), status: 431},

		{name: "empty input", in: "", status: -1, ioErr: io.EOF},
		{name: "truncated", in: "CONNECT a:1 HTTP/1.1\r\nHost: a\r\n", status: -1, ioErr: io.ErrUnexpectedEOF},
		{name: "truncated after CR", in: "CONNECT a:1 HTTP/1.1\r\nHost: a\r\n\r", status: -1, ioErr: io.ErrUnexpectedEOF},
	}
	readers := map[string]func(io.Reader) io.Reader{
		"plain":    func(r io.Reader) io.Reader { return r },
		"one byte": iotest.OneByteReader,
		"half":     iotest.HalfReader,
	}
	for _, tt := range tests {
		for rname, wrap := range readers {
			t.Run(tt.name+"/"+rname, func(t *testing.T) {
				const trailer = "\x16\x03\x01 pipelined client data"
				in := tt.in
				if tt.ioErr == nil {
					in += trailer
				}
				src := strings.NewReader(in)
				req, err := ReadRequest(wrap(src))
				if got := status(err); got != tt.status {
					t.Fatalf("err %v: status %d, want %d", err, got, tt.status)
				}
				if tt.ioErr != nil && !errors.Is(err, tt.ioErr) {
					t.Fatalf("err %v, want %v", err, tt.ioErr)
				}
				if err != nil {
					return
				}
				if req.Host != tt.host || req.Port != tt.port || req.ProxyAuthorization != tt.auth {
					t.Errorf("got %q %d %q, want %q %d %q", req.Host, req.Port, req.ProxyAuthorization, tt.host, tt.port, tt.auth)
				}
				if tt.header != nil && !reflect.DeepEqual(req.Header, tt.header) {
					t.Errorf("header %q, want %q", req.Header, tt.header)
				}
				if rest, _ := io.ReadAll(src); string(rest) != trailer {
					t.Errorf("over-read: left %q, want %q", rest, trailer)
				}
			})
		}
	}
}

// zeroReader returns (0, nil) forever: ReadRequest must give up, not spin.
type zeroReader struct{}

func (zeroReader) Read([]byte) (int, error) { return 0, nil }

// liarReader claims to have read more than asked: ReadRequest must not panic.
type liarReader struct{}

func (liarReader) Read(p []byte) (int, error) { return len(p) + 10, nil }

func TestReadRequestBadReaders(t *testing.T) {
	if _, err := ReadRequest(zeroReader{}); !errors.Is(err, io.ErrNoProgress) {
		t.Errorf("zero reader: %v", err)
	}
	if _, err := ReadRequest(liarReader{}); err == nil || status(err) != -1 {
		t.Errorf("liar reader: %v", err)
	}
}

func TestWriteResponse(t *testing.T) {
	tests := []struct {
		status  int
		reason  string
		want    string // exact, or prefix when contains is set
		contain []string
		err     bool
	}{
		{status: 200, want: "HTTP/1.1 200 Connection established\r\n\r\n"},
		{status: 200, reason: "OK", want: "HTTP/1.1 200 OK\r\n\r\n"},
		{status: 400, want: "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 16\r\nConnection: close\r\n\r\n400 Bad Request\n"},
		{status: 405, contain: []string{"HTTP/1.1 405 Method Not Allowed\r\n", "\r\nAllow: CONNECT\r\n", "\r\nConnection: close\r\n"}},
		{status: 407, contain: []string{"HTTP/1.1 407 Proxy Authentication Required\r\n", "\r\nProxy-Authenticate: Basic realm=", "\r\nConnection: close\r\n"}},
		{status: 431, contain: []string{"HTTP/1.1 431 Request Header Fields Too Large\r\n"}},
		{status: 505, contain: []string{"HTTP/1.1 505 HTTP Version Not Supported\r\n"}},
		{status: 502, reason: "upstream down", contain: []string{"HTTP/1.1 502 upstream down\r\n", "\r\n\r\n502 upstream down\n"}},
		{status: 100, err: true},
		{status: 600, err: true},
		{status: 502, reason: "x\r\nSet-Cookie: a", err: true},
	}
	for _, tt := range tests {
		var w bytes.Buffer
		err := WriteResponse(&w, tt.status, tt.reason)
		if (err != nil) != tt.err {
			t.Errorf("WriteResponse(%d, %q): %v", tt.status, tt.reason, err)
			continue
		}
		got := w.String()
		if tt.want != "" && got != tt.want {
			t.Errorf("WriteResponse(%d) = %q, want %q", tt.status, got, tt.want)
		}
		for _, c := range tt.contain {
			if !strings.Contains(got, c) {
				t.Errorf("WriteResponse(%d) = %q, missing %q", tt.status, got, c)
			}
		}
		if err == nil {
			// Our own responses must parse with our own client.
			if st, err := ReadResponse(strings.NewReader(got)); err != nil || st != tt.status {
				t.Errorf("ReadResponse(WriteResponse(%d)) = %d, %v", tt.status, st, err)
			}
		}
	}
}

func TestBasicAuth(t *testing.T) {
	tests := []struct {
		in         string
		user, pass string
		ok         bool
	}{
		{"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==", "Aladdin", "open sesame", true}, // RFC 7617 §2
		{"Basic dGVzdDoxMjPCow==", "test", "123\u00a3", true},                  // RFC 7617 §2.1
		{"basic aGVsbG86d29ybGQ=", "hello", "world", true},
		{"BASIC   aGVsbG86d29ybGQ=", "hello", "world", true},
		{"Basic dXNlcjo=", "user", "", true},
		{"Basic OnB3", "", "pw", true},
		{"Basic YTpiOmM=", "a", "b:c", true},
		{"Bearer aGVsbG86d29ybGQ=", "", "", false},
		{"Basic", "", "", false},
		{"Basic ", "", "", false},
		{"Basic !!!!", "", "", false},
		{"Basic aGVsbG8=", "", "", false}, // no colon
		{"Basic aGVsbG86d29ybGQ", "", "", false},
		{"BasicaGVsbG86d29ybGQ=", "", "", false},
	}
	for _, tt := range tests {
		u, p, ok := BasicAuth(tt.in)
		if u != tt.user || p != tt.pass || ok != tt.ok {
			t.Errorf("BasicAuth(%q) = %q, %q, %v; want %q, %q, %v", tt.in, u, p, ok, tt.user, tt.pass, tt.ok)
		}
	}
}

func TestWriteRequest(t *testing.T) {
	tests := []struct {
		host       string
		port       uint16
		user, pass string
		want       string
		err        bool
	}{
		{host: "example.com", port: 443, want: "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"},
		{host: "2001:db8::1", port: 443, want: "CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n"},
		{host: "192.0.2.1", port: 80, want: "CONNECT 192.0.2.1:80 HTTP/1.1\r\nHost: 192.0.2.1:80\r\n\r\n"},
		{host: "server.example.com", port: 80, user: "hello", pass: "world",
			want: "CONNECT server.example.com:80 HTTP/1.1\r\nHost: server.example.com:80\r\nProxy-Authorization: Basic aGVsbG86d29ybGQ=\r\n\r\n"},
		{host: "a", port: 0, err: true},
		{host: "", port: 1, err: true},
		{host: "a b", port: 1, err: true},
		{host: "a\r\nX: y", port: 1, err: true},
		{host: "fe80::1%eth0", port: 1, err: true},
		{host: "a", port: 1, user: "a:b", pass: "c", err: true},
		{host: "a", port: 1, user: "a", pass: "c\r\n", err: true},
	}
	for _, tt := range tests {
		var w bytes.Buffer
		err := WriteRequest(&w, tt.host, tt.port, tt.user, tt.pass)
		if (err != nil) != tt.err {
			t.Errorf("WriteRequest(%q, %d): %v", tt.host, tt.port, err)
			continue
		}
		if err == nil && w.String() != tt.want {
			t.Errorf("WriteRequest(%q, %d) = %q, want %q", tt.host, tt.port, w.String(), tt.want)
		}
	}
}

func TestReadResponse(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		status    int
		malformed bool
		ioErr     error
	}{
		{name: "200", in: "HTTP/1.1 200 Connection established\r\n\r\n", status: 200},
		{name: "200 with ignored Content-Length", in: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", status: 200},
		{name: "HTTP/1.0 no reason", in: "HTTP/1.0 200\r\n\r\n", status: 200},
		{name: "empty reason", in: "HTTP/1.1 200 \r\n\r\n", status: 200},
		{name: "interim then final", in: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", status: 200},
		{name: "407", in: "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\nContent-Length: 0\r\n\r\n", status: 407},
		{name: "101 is final", in: "HTTP/1.1 101 Switching Protocols\r\n\r\n", status: 101},
		{name: "HTTP/2", in: "HTTP/2 200\r\n\r\n", malformed: true},
		{name: "two-digit status", in: "HTTP/1.1 20 OK\r\n\r\n", malformed: true},
		{name: "status 099", in: "HTTP/1.1 099 X\r\n\r\n", malformed: true},
		{name: "no space after code", in: "HTTP/1.1 200OK\r\n\r\n", malformed: true},
		{name: "bad field", in: "HTTP/1.1 200 OK\r\nBad Field\r\n\r\n", malformed: true},
		{name: "bare LF", in: "HTTP/1.1 200 OK\n\n", malformed: true},
		{name: "too many interim", in: strings.Repeat("HTTP/1.1 100 Continue\r\n\r\n", maxInterim+1) + "HTTP/1.1 200 OK\r\n\r\n", malformed: true},
		{name: "too large", in: "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("x", MaxHeadBytes) + "\r\n\r\n", malformed: true},
		{name: "empty", in: "", ioErr: io.EOF},
		{name: "truncated", in: "HTTP/1.1 200 OK\r\n", ioErr: io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		for _, slow := range []bool{false, true} {
			const trailer = "SSH-2.0-banner sent by the server right away\r\n"
			in := tt.in
			if tt.ioErr == nil {
				in += trailer
			}
			src := strings.NewReader(in)
			var r io.Reader = src
			if slow {
				r = iotest.OneByteReader(src)
			}
			st, err := ReadResponse(r)
			switch {
			case tt.ioErr != nil:
				if !errors.Is(err, tt.ioErr) {
					t.Errorf("%s: err %v, want %v", tt.name, err, tt.ioErr)
				}
			case tt.malformed:
				if !errors.Is(err, ErrMalformedResponse) {
					t.Errorf("%s: err %v, want malformed", tt.name, err)
				}
			default:
				if err != nil || st != tt.status {
					t.Errorf("%s: %d, %v; want %d", tt.name, st, err, tt.status)
				}
				if rest, _ := io.ReadAll(src); string(rest) != trailer {
					t.Errorf("%s: over-read: left %q", tt.name, rest)
				}
			}
		}
	}
}

func pipe(t *testing.T) (client, server net.Conn) {
	t.Helper()
	c, s := net.Pipe()
	deadline := time.Now().Add(5 * time.Second)
	c.SetDeadline(deadline)
	s.SetDeadline(deadline)
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// serve runs the proxy side on s like halfway would and reports the request
// (or error); on success it echoes 4 bytes through the "tunnel".
func serve(s net.Conn) <-chan error {
	done := make(chan error, 1)
	go func() {
		defer s.Close()
		req, err := ReadRequest(s)
		if err != nil {
			var re *RequestError
			if errors.As(err, &re) {
				WriteResponse(s, re.Status, "")
			}
			done <- err
			return
		}
		if req.Host != "example.com" || req.Port != 443 {
			WriteResponse(s, 403, "")
			done <- errors.New("unexpected target " + req.Host)
			return
		}
		if err := WriteResponse(s, 200, ""); err != nil {
			done <- err
			return
		}
		var buf [4]byte
		if _, err := io.ReadFull(s, buf[:]); err != nil {
			done <- err
			return
		}
		_, err = s.Write(buf[:])
		done <- err
	}()
	return done
}

func TestPipeValid(t *testing.T) {
	c, s := pipe(t)
	done := serve(s)
	if err := WriteRequest(c, "example.com", 443, "", ""); err != nil {
		t.Fatal(err)
	}
	st, err := ReadResponse(c)
	if err != nil || st != 200 {
		t.Fatalf("ReadResponse = %d, %v", st, err)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	var buf [4]byte
	if _, err := io.ReadFull(c, buf[:]); err != nil || string(buf[:]) != "ping" {
		t.Fatalf("echo %q, %v", buf, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestPipePipelined sends the head and the first tunnel bytes in one Write,
// as clients that do not wait for the 200 do: the bytes must stay readable
// from the connection after ReadRequest.
func TestPipePipelined(t *testing.T) {
	c, s := pipe(t)
	var head bytes.Buffer
	if err := WriteRequest(&head, "example.com", 443, "hello", "world"); err != nil {
		t.Fatal(err)
	}
	go c.Write(append(head.Bytes(), "\x16\x03\x01early"...))
	req, err := ReadRequest(s)
	if err != nil {
		t.Fatal(err)
	}
	if u, p, ok := BasicAuth(req.ProxyAuthorization); !ok || u != "hello" || p != "world" {
		t.Errorf("credentials %q %q %v", u, p, ok)
	}
	buf := make([]byte, 8)
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "\x16\x03\x01early" {
		t.Fatalf("pipelined data %q, %v", buf, err)
	}
}

func TestPipeErrors(t *testing.T) {
	tests := []struct {
		name   string
		head   string
		status int
	}{
		{"oversize head", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\nX-Big: " + strings.Repeat("x", 2*MaxHeadBytes) + "\r\n\r\n", 431},
		{"GET", "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n", 405},
		{"bad target", "CONNECT example.com HTTP/1.1\r\nHost: example.com\r\n\r\n", 400},
		{"bad version", "CONNECT example.com:443 HTTP/3.0\r\nHost: example.com\r\n\r\n", 505},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, s := pipe(t)
			done := serve(s)
			// Write concurrently: for the oversize head the server stops
			// reading midway and answers while this Write is still blocked.
			go c.Write([]byte(tt.head))
			st, err := ReadResponse(c)
			if err != nil || st != tt.status {
				t.Fatalf("ReadResponse = %d, %v; want %d", st, err, tt.status)
			}
			// Take the error body too: net.Pipe has no buffer, so the
			// server's Write would otherwise block until the deadline.
			go io.Copy(io.Discard, c)
			if got := status(<-done); got != tt.status {
				t.Errorf("server status %d, want %d", got, tt.status)
			}
		})
	}
}

func FuzzReadRequest(f *testing.F) {
	for _, s := range []string{
		"CONNECT server.example.com:80 HTTP/1.1\r\nHost: server.example.com\r\n\r\n",
		"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\nProxy-Authorization: Basic aGVsbG86d29ybGQ=\r\n\r\nDATA",
		"\r\nCONNECT a:1 HTTP/1.0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"CONNECT a:1 HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n",
		"CONNECT a:1 HTTP/1.1\nHost: a\n\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		src := bytes.NewReader(in)
		req, err := ReadRequest(src)
		switch st := status(err); st {
		case 0, 400, 405, 431, 505:
		default:
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("unexpected error %v", err)
			}
		}
		// Chunking must not matter.
		req1, err1 := ReadRequest(iotest.OneByteReader(bytes.NewReader(in)))
		if status(err1) != status(err) || !reflect.DeepEqual(req1, req) {
			t.Fatalf("one-byte reader: %+v, %v; plain: %+v, %v", req1, err1, req, err)
		}
		if err != nil {
			return
		}
		n := len(in) - src.Len()
		if n > MaxHeadBytes || !bytes.HasSuffix(in[:n], []byte("\r\n\r\n")) {
			t.Fatalf("consumed %d bytes %q", n, in[:n])
		}
		if req.Port == 0 || req.Host == "" {
			t.Fatalf("bad request %+v", req)
		}
		if _, err := ReadRequest(bytes.NewReader(in[:n-1])); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("prefix minus one byte: %v", err)
		}
		// What we parsed, we can re-encode and parse again identically.
		var w bytes.Buffer
		if err := WriteRequest(&w, req.Host, req.Port, "", ""); err != nil {
			t.Fatalf("re-encode %+v: %v", req, err)
		}
		req2, err := ReadRequest(&w)
		if err != nil || req2.Host != req.Host || req2.Port != req.Port {
			t.Fatalf("re-parse: %+v, %v; want %+v", req2, err, req)
		}
	})
}

func FuzzReadResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 Connection established\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 407 Auth\r\nProxy-Authenticate: Basic\r\n\r\nbody",
		"HTTP/1.1 200\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		src := bytes.NewReader(in)
		st, err := ReadResponse(src)
		st1, err1 := ReadResponse(iotest.OneByteReader(bytes.NewReader(in)))
		if st1 != st || (err1 == nil) != (err == nil) {
			t.Fatalf("one-byte reader: %d, %v; plain: %d, %v", st1, err1, st, err)
		}
		if err != nil {
			return
		}
		if st < 100 || st > 999 {
			t.Fatalf("status %d", st)
		}
		n := len(in) - src.Len()
		if !bytes.HasSuffix(in[:n], []byte("\r\n\r\n")) {
			t.Fatalf("consumed %q", in[:n])
		}
		if _, err := ReadResponse(bytes.NewReader(in[:n-1])); err == nil {
			t.Fatal("prefix minus one byte succeeded")
		}
	})
}

func FuzzBasicAuth(f *testing.F) {
	f.Add("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
	f.Add("basic  dGVzdDoxMjPCow==")
	f.Fuzz(func(t *testing.T, v string) {
		u, p, ok := BasicAuth(v)
		if !ok {
			return
		}
		u2, p2, ok2 := BasicAuth("Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+p)))
		if !ok2 || u2 != u || p2 != p {
			t.Fatalf("round trip of %q %q: %q %q %v", u, p, u2, p2, ok2)
		}
	})
}
