package convert

import (
	"errors"
	"io"
)

// ReadRaw reads exactly one message from r: the 4-byte header, then the rest
// of Total Length. It reads nothing past the message, so the application data
// that follows stays in r. It checks only the header; Parse does the rest.
//
// Errors: io.EOF if r ended before any byte, io.ErrUnexpectedEOF if it ended
// inside the message, a *ProtocolError for a bad header (then the returned
// bytes are the header, for ProtocolError.Reply), or r's error.
func ReadRaw(r io.Reader) ([]byte, error) {
	var hdr [HeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	total, err := checkHeader(hdr[:])
	if err != nil {
		return hdr[:], err
	}
	// total <= MaxMessageLen: the 8-bit word count is the size limit.
	buf := make([]byte, total)
	copy(buf, hdr[:])
	if n, err := io.ReadFull(r, buf[HeaderLen:]); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return buf[:HeaderLen+n], err
	}
	return buf, nil
}

// ReadMessage reads and decodes exactly one message from r (see ReadRaw and
// Parse). Use ReadRaw and Parse instead when the raw bytes are needed to
// echo them in a Malformed Message reply.
func ReadMessage(r io.Reader) (*Message, error) {
	raw, err := ReadRaw(r)
	if err != nil {
		return nil, err
	}
	m, _, err := Parse(raw)
	return m, err
}
