package procmem

import (
	"strings"
	"testing"
)

const smapsSample = `00400000-00935000 r-xp 00000000 fe:00 9978204                            /tmp/hw
Size:               5332 kB
Rss:                4244 kB
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd ex mr mw me
00935000-00e7e000 r--p 00535000 fe:00 9978204                            /tmp/hw (deleted)
Rss:                4132 kB
Anonymous:             8 kB
Swap:                  0 kB
VmFlags: rd mr mw me
00e7e000-00ee4000 rw-p 00a7e000 fe:00 9978204                            /tmp/hw
Rss:                 280 kB
Anonymous:           120 kB
Swap:                  0 kB
VmFlags: rd wr mr mw me ac
00f00000-00f10000 r--p 00000000 fe:00 9978204                            /tmp/hw
Rss:                  64 kB
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd mr mw me lo
00f10000-00f20000 r--p 00000000 fe:00 9978204                            /tmp/hw
Rss:                   0 kB
Anonymous:             0 kB
Swap:                 64 kB
7fb64b520000-7fb64b580000 rw-p 00000000 00:00 0
Rss:                  52 kB
7fb64b600000-7fb64b700000 r-xp 00000000 fe:00 1234                                /usr/lib/other.so
Rss:                 100 kB
`

func TestBinaryMappings(t *testing.T) {
	got, err := binaryMappings(strings.NewReader(smapsSample), 0x400123)
	if err != nil {
		t.Fatal(err)
	}
	want := []mapping{
		{start: 0x400000, end: 0x935000, rss: 4244 << 10},
		{start: 0x935000, end: 0xe7e000, rss: 4132 << 10, anonymous: 8 << 10},
		{start: 0xe7e000, end: 0xee4000, writable: true, rss: 280 << 10, anonymous: 120 << 10},
		{start: 0xf00000, end: 0xf10000, rss: 64 << 10, locked: true},
		{start: 0xf10000, end: 0xf20000, swap: 64 << 10},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d mappings %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		want[i].dev, want[i].inode = "fe:00", "9978204"
		if got[i] != want[i] {
			t.Errorf("mapping %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestBinaryMappingsMalformed(t *testing.T) {
	for _, in := range []string{
		"00400000-0040 r-xp 00000000 fe:00\n",          // too few fields
		"zz-00935000 r-xp 00000000 fe:00 1 /x\n",       // bad start
		"00935000-00400000 r-xp 00000000 fe:00 1 /x\n", // end before start
		"00400000-00935000 r-xp 00000000 fe00 1 /x\n",  // bad device
		"00400000-00935000 r-xp 00000000 fe:00 x /x\n", // bad inode
		"00500000-00935000 r-xp 00000000 fe:00 1 /x\n", // no mapping holds the code
		"00400000-00935000 r-xp 00000000 00:00 0\n",    // code in an anonymous mapping
	} {
		if _, err := binaryMappings(strings.NewReader(in), 0x400000); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}

// TestBinaryMappingsFailClosed: an smaps field that cannot be read, or
// is missing, must not read as "no private copies": that would let
// ReleaseBinary discard them. The parse fails instead.
func TestBinaryMappingsFailClosed(t *testing.T) {
	const head = "00400000-00935000 r-xp 00000000 fe:00 1 /x\n"
	for _, tc := range []struct{ name, in string }{
		{"anonymous not a number", head + "Rss: 8 kB\nAnonymous: x kB\nSwap: 0 kB\n"},
		{"anonymous overflows", head + "Rss: 8 kB\nAnonymous: 9007199254740992 kB\nSwap: 0 kB\n"},
		{"swap negative", head + "Rss: 8 kB\nAnonymous: 0 kB\nSwap: -4 kB\n"},
		{"swap no value", head + "Rss: 8 kB\nAnonymous: 0 kB\nSwap:\n"},
		{"anonymous missing", head + "Rss: 8 kB\nSwap: 0 kB\n"},
		{"swap missing", head + "Rss: 8 kB\nAnonymous: 0 kB\n"},
		{"rss missing", head + "Anonymous: 0 kB\nSwap: 0 kB\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if ms, err := binaryMappings(strings.NewReader(tc.in), 0x400000); err == nil {
				t.Errorf("no error; mappings %+v", ms)
			}
		})
	}
}
