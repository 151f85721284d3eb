package procmem

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"reflect"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ReleaseBinary unmaps the resident pages of the executable's read-only
// mappings (text, read-only data) with madvise(MADV_DONTNEED). For such a
// private file mapping that only drops the page-table entries: the next
// access maps the page again from the page cache.
//
// Mappings that hold private copies of pages, in memory or swapped out,
// are skipped, since MADV_DONTNEED would discard the copies: a debugger's
// breakpoints, a uprobe, or the relocations a position-independent
// executable's loader wrote into its read-only-after-relocation segment.
// Locked mappings are skipped too. A breakpoint set between the read of
// smaps and the madvise can still be lost.
func ReleaseBinary() (Stats, error) {
	vmas, err := ownMappings()
	if err != nil {
		return Stats{}, err
	}
	var s Stats
	for _, v := range vmas {
		if v.writable {
			continue
		}
		if v.anonymous > 0 || v.swap > 0 || v.locked {
			s.Skipped++
			continue
		}
		if v.rss == 0 {
			continue
		}
		if _, _, e := unix.Syscall(unix.SYS_MADVISE, v.start, v.end-v.start, unix.MADV_DONTNEED); e != 0 {
			return s, fmt.Errorf("madvise %#x-%#x MADV_DONTNEED: %w", v.start, v.end, e)
		}
		s.BinaryBytes += v.rss
	}
	return s, nil
}

// ownMappings reads the running executable's mappings from smaps. The
// executable is the file mapped where this very code runs: its device and
// inode as smaps shows them, which a stat of /proc/self/exe may not match
// (overlayfs on older kernels).
func ownMappings() ([]mapping, error) {
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	vmas, err := binaryMappings(f, reflect.ValueOf(ReleaseBinary).Pointer())
	if err != nil {
		return nil, fmt.Errorf("read /proc/self/smaps: %w", err)
	}
	return vmas, nil
}

// mapping is one of the executable's mappings, as smaps shows it.
type mapping struct {
	start, end uintptr
	dev, inode string // as smaps writes them
	writable   bool
	rss        int64 // bytes resident
	anonymous  int64 // bytes of private copies (copy-on-write) in memory
	swap       int64 // bytes of private copies swapped out
	locked     bool  // VmFlags "lo"
}

// binaryMappings reads smaps text and returns the mappings of the file
// mapped at pc (a code address of this program): same device and inode.
// Identity is by device and inode, not path: the path of an executable
// replaced on disk reads "(deleted)".
func binaryMappings(r io.Reader, pc uintptr) ([]mapping, error) {
	var all []mapping
	var seen []field // which of Rss, Anonymous and Swap each mapping gave
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if header(fields[0]) {
			m, err := parseHeader(fields)
			if err != nil {
				return nil, fmt.Errorf("%q: %w", line, err)
			}
			all = append(all, m)
			seen = append(seen, 0)
			continue
		}
		if len(all) == 0 {
			continue
		}
		cur := &all[len(all)-1]
		var dst *int64
		var f field
		switch fields[0] {
		case "Rss:":
			dst, f = &cur.rss, fieldRss
		case "Anonymous:":
			dst, f = &cur.anonymous, fieldAnonymous
		case "Swap:":
			dst, f = &cur.swap, fieldSwap
		case "VmFlags:":
			for _, fl := range fields[1:] {
				if fl == "lo" {
					cur.locked = true
				}
			}
		}
		if dst != nil {
			n, err := kB(fields)
			if err != nil {
				return nil, fmt.Errorf("%q: %w", line, err)
			}
			*dst = n
			seen[len(seen)-1] |= f
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	var exe *mapping
	for i := range all {
		if pc >= all[i].start && pc < all[i].end {
			exe = &all[i]
		}
	}
	if exe == nil || exe.inode == "0" {
		return nil, fmt.Errorf("no file mapping holds this program's code (%#x)", pc)
	}
	var out []mapping
	for i, m := range all {
		if m.dev == exe.dev && m.inode == exe.inode {
			// Without its Anonymous and Swap a mapping could hold private
			// copies that MADV_DONTNEED would discard: fail closed.
			if seen[i] != fieldRss|fieldAnonymous|fieldSwap {
				return nil, fmt.Errorf("mapping %#x-%#x: Rss, Anonymous or Swap missing", m.start, m.end)
			}
			out = append(out, m)
		}
	}
	return out, nil
}

// field names the smaps fields a mapping of the executable must give.
type field uint8

const (
	fieldRss field = 1 << iota
	fieldAnonymous
	fieldSwap
)

// header says whether an smaps line starts a mapping ("start-end ...")
// rather than giving one of its fields ("Rss:").
func header(first string) bool {
	return !strings.HasSuffix(first, ":") && strings.IndexByte(first, '-') > 0
}

func parseHeader(fields []string) (mapping, error) {
	if len(fields) < 5 {
		return mapping{}, fmt.Errorf("want at least 5 fields")
	}
	lo, hi, ok := strings.Cut(fields[0], "-")
	if !ok {
		return mapping{}, fmt.Errorf("bad range")
	}
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil || end <= start {
		return mapping{}, fmt.Errorf("bad range")
	}
	maj, mnr, ok := strings.Cut(fields[3], ":")
	_, err1 = strconv.ParseUint(maj, 16, 32)
	_, err2 = strconv.ParseUint(mnr, 16, 32)
	_, err3 := strconv.ParseUint(fields[4], 10, 64)
	if !ok || err1 != nil || err2 != nil || err3 != nil {
		return mapping{}, fmt.Errorf("bad device or inode")
	}
	return mapping{start: uintptr(start), end: uintptr(end), dev: fields[3], inode: fields[4], writable: strings.Contains(fields[1], "w")}, nil
}

// kB reads "Rss:  1234 kB" as bytes: a count of kilobytes that fits in
// an int64 once multiplied by 1024, in kB.
func kB(fields []string) (int64, error) {
	if len(fields) != 3 || fields[2] != "kB" {
		return 0, fmt.Errorf("want a size in kB")
	}
	n, err := strconv.ParseUint(fields[1], 10, 64)
	if err != nil || n > math.MaxInt64>>10 {
		return 0, fmt.Errorf("bad size %q", fields[1])
	}
	return int64(n) << 10, nil
}
