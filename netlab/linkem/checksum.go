package linkem

import (
	"encoding/binary"
	"math/bits"
)

// Checksum returns the Internet checksum (RFC 1071) of b with initial added
// into the sum, e.g. a pseudo-header sum. Ready to be stored big endian.
func Checksum(b []byte, initial uint32) uint16 {
	return ^csumPartial(b, initial)
}

// csumPartial is the folded, uncomplemented ones' complement sum of b (as
// big-endian 16-bit words) plus initial. It is 0 only if everything summed is
// 0, matching a naive word-by-word implementation exactly.
func csumPartial(b []byte, initial uint32) uint16 {
	// The sum is byte-order independent (RFC 1071 §2(B)): summing native
	// little-endian words and swapping the folded result saves a byte swap
	// per load.
	s := bits.ReverseBytes16(csumFold(csumSumLE(b)))
	return csumFold(uint64(s) + uint64(initial))
}

// csumSumLE adds b as little-endian 64-bit words with end-around carry.
// Because 2^16 ≡ 1 (mod 2^16-1), this equals the 16-bit word sum once
// folded, while doing a quarter of the additions; the carry chain compiles to
// ADC on amd64. Every step consumes an even number of bytes, so the 16-bit
// word boundaries never shift, whatever the alignment of b.
func csumSumLE(b []byte) uint64 {
	var acc, c uint64
	for len(b) >= 32 {
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b[0:8]), c)
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b[8:16]), c)
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b[16:24]), c)
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b[24:32]), c)
		b = b[32:]
	}
	for len(b) >= 8 {
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b), c)
		b = b[8:]
	}
	if len(b) >= 4 {
		acc, c = bits.Add64(acc, uint64(binary.LittleEndian.Uint32(b)), c)
		b = b[4:]
	}
	if len(b) >= 2 {
		acc, c = bits.Add64(acc, uint64(binary.LittleEndian.Uint16(b)), c)
		b = b[2:]
	}
	if len(b) == 1 {
		// An odd trailing byte is the high byte of a zero-padded big-endian
		// word, i.e. the low byte of a little-endian one.
		acc, c = bits.Add64(acc, uint64(b[0]), c)
	}
	acc, c = bits.Add64(acc, c, 0)
	// acc is 0 whenever c is 1 here, so this cannot overflow.
	return acc + c
}

// csumFold reduces a 64-bit ones' complement accumulator to 16 bits.
func csumFold(s uint64) uint16 {
	s = s>>32 + s&0xffffffff
	s = s>>16 + s&0xffff
	s = s>>16 + s&0xffff
	s = s>>16 + s&0xffff
	return uint16(s)
}
