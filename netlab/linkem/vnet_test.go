package linkem

import (
	"bytes"
	"testing"
)

func TestVnetHdrWireFormat(t *testing.T) {
	h := VnetHdr{Flags: VnetFlagNeedsCsum, GSOType: GSOTCPv4 | GSOECN, HdrLen: 0x0102, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
	b := make([]byte, VnetHdrLen)
	h.Put(b)
	want := []byte{1, 0x81, 0x02, 0x01, 0xa8, 0x05, 34, 0, 16, 0}
	if !bytes.Equal(b, want) {
		t.Fatalf("Put = % x, want % x", b, want)
	}
	got, err := ParseVnetHdr(append(b, 0xaa, 0xbb))
	if err != nil || got != h {
		t.Fatalf("ParseVnetHdr = %+v, %v; want %+v", got, err, h)
	}
}

func TestVnetHdrShort(t *testing.T) {
	for n := range VnetHdrLen {
		if _, err := ParseVnetHdr(make([]byte, n)); err == nil {
			t.Fatalf("ParseVnetHdr(%d bytes): no error", n)
		}
	}
}

func TestVnetHdrIsGSO(t *testing.T) {
	for _, c := range []struct {
		typ  uint8
		want bool
	}{
		{GSONone, false}, {GSOECN, false}, {GSOTCPv4, true}, {GSOTCPv6 | GSOECN, true},
		{GSOUDP, true}, {GSOUDPL4, true}, {0x7f, true},
	} {
		if got := (VnetHdr{GSOType: c.typ}).IsGSO(); got != c.want {
			t.Errorf("IsGSO(gso_type %#x) = %v, want %v", c.typ, got, c.want)
		}
	}
}

func FuzzParseVnetHdr(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{1, 2, 3})
	f.Add([]byte{1, 0x81, 0x02, 0x01, 0xa8, 0x05, 34, 0, 16, 0})
	f.Add(bytes.Repeat([]byte{0xff}, 12))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseVnetHdr(b)
		if len(b) < VnetHdrLen {
			if err == nil {
				t.Fatalf("no error for %d bytes", len(b))
			}
			return
		}
		if err != nil {
			t.Fatalf("error for %d bytes: %v", len(b), err)
		}
		out := make([]byte, VnetHdrLen)
		h.Put(out)
		if !bytes.Equal(out, b[:VnetHdrLen]) {
			t.Fatalf("round trip: % x != % x", out, b[:VnetHdrLen])
		}
	})
}
