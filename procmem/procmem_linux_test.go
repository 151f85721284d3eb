package procmem

import (
	"os"
	"reflect"
	"testing"
)

// exeMappings are this test binary's mappings now.
func exeMappings(t *testing.T) []mapping {
	t.Helper()
	m, err := ownMappings()
	if err != nil {
		t.Fatal(err)
	}
	if len(m) == 0 {
		t.Fatal("no mapping of the executable found in smaps")
	}
	return m
}

func readOnlyRSS(ms []mapping) (n int64) {
	for _, m := range ms {
		if !m.writable {
			n += m.rss
		}
	}
	return n
}

func TestReleaseBinary(t *testing.T) {
	before := readOnlyRSS(exeMappings(t))
	st, err := Release()
	if err != nil {
		t.Fatal(err)
	}
	after := readOnlyRSS(exeMappings(t))
	t.Logf("read-only pages of the binary resident: %d KiB before, %d KiB after; released %d KiB, %d mappings skipped",
		before>>10, after>>10, st.BinaryBytes>>10, st.Skipped)
	if st.BinaryBytes == 0 || after >= before {
		t.Errorf("nothing released: %d B before, %d B after", before, after)
	}
}

// A private copy of a text page (what a debugger's breakpoint or a uprobe
// makes) must survive: its mapping is skipped.
func TestReleaseKeepsPrivateCopies(t *testing.T) {
	pc := reflect.ValueOf(readOnlyRSS).Pointer()
	mem, err := os.OpenFile("/proc/self/mem", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("open /proc/self/mem: %v", err)
	}
	defer mem.Close()
	b := make([]byte, 1)
	if _, err := mem.ReadAt(b, int64(pc)); err != nil {
		t.Skipf("read own text: %v", err)
	}
	// The same byte written back: the page becomes a private copy.
	if _, err := mem.WriteAt(b, int64(pc)); err != nil {
		t.Skipf("this kernel does not let a process write its own text through /proc/self/mem: %v", err)
	}
	var text mapping
	for _, m := range exeMappings(t) {
		if uintptr(pc) >= m.start && uintptr(pc) < m.end {
			text = m
		}
	}
	if text.anonymous == 0 {
		t.Fatalf("text mapping %+v shows no private copy after the write", text)
	}
	st, err := ReleaseBinary()
	if err != nil {
		t.Fatal(err)
	}
	if st.Skipped == 0 {
		t.Errorf("the text mapping holding a private copy was not skipped: %+v", st)
	}
	for _, m := range exeMappings(t) {
		if m.start == text.start && m.anonymous == 0 {
			t.Errorf("the private copy was discarded: %+v", m)
		}
	}
	_ = readOnlyRSS(nil) // the copied page still runs
}
