package procmem

import (
	"strings"
	"testing"
)

// FuzzBinaryMappings: whatever smaps text it reads, binaryMappings does
// not panic, and what it returns are well-formed mappings of one file,
// among them the one holding pc.
func FuzzBinaryMappings(f *testing.F) {
	f.Add(smapsSample, uint64(0x400123))
	f.Add("00400000-00935000 r-xp 00000000 fe:00 1 /a b (deleted)\nRss: 4 kB\nAnonymous: 0 kB\nVmFlags: rd ex\n", uint64(0x400000))
	f.Add("7ffc1000-7ffc3000 r-xp 00000000 00:00 0 [vdso]\n", uint64(0x7ffc1000))
	f.Fuzz(func(t *testing.T, in string, pc uint64) {
		ms, err := binaryMappings(strings.NewReader(in), uintptr(pc))
		if err != nil {
			return
		}
		holds := false
		for _, m := range ms {
			if m.start >= m.end || m.dev != ms[0].dev || m.inode != ms[0].inode || m.inode == "0" {
				t.Fatalf("bad mapping %+v among %+v", m, ms)
			}
			if m.rss < 0 || m.anonymous < 0 || m.swap < 0 {
				t.Fatalf("negative size in %+v", m)
			}
			holds = holds || uintptr(pc) >= m.start && uintptr(pc) < m.end
		}
		if !holds {
			t.Fatalf("no mapping holds pc %#x: %+v", pc, ms)
		}
	})
}
