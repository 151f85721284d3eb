package linkem

import (
	"math/rand/v2"
	"testing"
)

// ckRef is the textbook RFC 1071 loop, kept deliberately naive.
func ckRef(b []byte, initial uint32) uint16 {
	s := uint64(initial)
	for i := 0; i+1 < len(b); i += 2 {
		s += uint64(b[i])<<8 | uint64(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint64(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

func TestChecksumRFC1071Example(t *testing.T) {
	// RFC 1071 §3: the words sum to 0xddf2.
	b := []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}
	if got := Checksum(b, 0); got != ^uint16(0xddf2) {
		t.Fatalf("Checksum = %#04x, want %#04x", got, ^uint16(0xddf2))
	}
}

func TestChecksumMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 70000)
	for i := range buf {
		buf[i] = byte(r.Uint32())
	}
	for iter := range 20000 {
		off := r.IntN(16)
		n := r.IntN(3000)
		if iter%500 == 0 {
			n = r.IntN(len(buf) - off)
		}
		b := buf[off : off+n]
		var initial uint32
		switch iter % 4 {
		case 1:
			initial = r.Uint32()
		case 2:
			initial = uint32(r.IntN(0x10000))
		case 3:
			initial = 0xffffffff
		}
		if got, want := Checksum(b, initial), ckRef(b, initial); got != want {
			t.Fatalf("off %d len %d initial %#x: Checksum = %#04x, ref = %#04x", off, n, initial, got, want)
		}
	}
}

func TestChecksumEdgeValues(t *testing.T) {
	for _, fill := range []byte{0x00, 0x01, 0x80, 0xff} {
		for _, n := range []int{0, 1, 2, 3, 7, 8, 9, 31, 32, 33, 65535, 65536, 1 << 20} {
			b := make([]byte, n)
			for i := range b {
				b[i] = fill
			}
			for _, initial := range []uint32{0, 1, 0xffff, 0x10000, 0xfffffffe, 0xffffffff} {
				if got, want := Checksum(b, initial), ckRef(b, initial); got != want {
					t.Fatalf("fill %#x len %d initial %#x: got %#04x want %#04x", fill, n, initial, got, want)
				}
			}
		}
	}
}

func TestChecksumVerifiesToZero(t *testing.T) {
	// Storing the checksum into the data must make the data verify, whatever
	// the (even) position of the field.
	r := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		b := make([]byte, 2+2*r.IntN(800))
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		at := 2 * r.IntN(len(b)/2)
		b[at], b[at+1] = 0, 0
		c := Checksum(b, 0)
		b[at], b[at+1] = byte(c>>8), byte(c)
		if v := Checksum(b, 0); v != 0 {
			t.Fatalf("len %d field at %d: verification sum %#04x, want 0", len(b), at, v)
		}
	}
}

func BenchmarkChecksum1500(b *testing.B) {
	buf := make([]byte, 1500)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(buf)))
	var sink uint16
	for b.Loop() {
		sink += Checksum(buf, 0)
	}
	_ = sink
}
