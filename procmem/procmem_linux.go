package procmem

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ReleaseBinary unmaps the resident pages of the executable's read-only
// mappings (text, read-only data) with madvise(MADV_DONTNEED). For such a
// private file mapping that only drops the page-table entries: the next
// access maps the page again from the page cache. Mappings that hold
// private copies of pages are skipped, since MADV_DONTNEED would discard
// the copies and with them a debugger's breakpoints or a uprobe; so are
// locked mappings.
func ReleaseBinary() (Stats, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/exe", &st); err != nil {
		return Stats{}, fmt.Errorf("stat /proc/self/exe: %w", err)
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return Stats{}, err
	}
	vmas, err := binaryMappings(f, unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	f.Close()
	if err != nil {
		return Stats{}, fmt.Errorf("read /proc/self/smaps: %w", err)
	}
	var s Stats
	for _, v := range vmas {
		if v.writable {
			continue
		}
		if v.anonymous > 0 || v.locked {
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

// mapping is one of the executable's mappings, as smaps shows it.
type mapping struct {
	start, end uintptr
	writable   bool
	rss        int64 // bytes resident
	anonymous  int64 // bytes of private copies (copy-on-write)
	locked     bool  // VmFlags "lo"
}

// binaryMappings reads smaps text and returns the mappings of the file
// on device major:minor with inode ino. Identity is by device and inode,
// not path: the path of an executable replaced on disk reads
// "(deleted)".
func binaryMappings(r io.Reader, major, minor uint32, ino uint64) ([]mapping, error) {
	var out []mapping
	var cur *mapping
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if header(fields[0]) {
			cur = nil
			m, ok, err := parseHeader(fields, major, minor, ino)
			if err != nil {
				return nil, fmt.Errorf("%q: %w", line, err)
			}
			if ok {
				out = append(out, m)
				cur = &out[len(out)-1]
			}
			continue
		}
		if cur == nil {
			continue
		}
		switch fields[0] {
		case "Rss:":
			cur.rss = kB(fields)
		case "Anonymous:":
			cur.anonymous = kB(fields)
		case "VmFlags:":
			for _, fl := range fields[1:] {
				if fl == "lo" {
					cur.locked = true
				}
			}
		}
	}
	return out, sc.Err()
}

// header says whether an smaps line starts a mapping ("start-end ...")
// rather than giving one of its fields ("Rss:").
func header(first string) bool {
	return !strings.HasSuffix(first, ":") && strings.IndexByte(first, '-') > 0
}

func parseHeader(fields []string, major, minor uint32, ino uint64) (mapping, bool, error) {
	if len(fields) < 5 {
		return mapping{}, false, fmt.Errorf("want at least 5 fields")
	}
	lo, hi, ok := strings.Cut(fields[0], "-")
	if !ok {
		return mapping{}, false, fmt.Errorf("bad range")
	}
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil || end <= start {
		return mapping{}, false, fmt.Errorf("bad range")
	}
	maj, mnr, ok := strings.Cut(fields[3], ":")
	if !ok {
		return mapping{}, false, fmt.Errorf("bad device")
	}
	dmaj, err1 := strconv.ParseUint(maj, 16, 32)
	dmin, err2 := strconv.ParseUint(mnr, 16, 32)
	inode, err3 := strconv.ParseUint(fields[4], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return mapping{}, false, fmt.Errorf("bad device or inode")
	}
	if inode != ino || uint32(dmaj) != major || uint32(dmin) != minor {
		return mapping{}, false, nil
	}
	return mapping{start: uintptr(start), end: uintptr(end), writable: strings.Contains(fields[1], "w")}, true, nil
}

// kB reads "Rss:  1234 kB" as bytes.
func kB(fields []string) int64 {
	if len(fields) < 2 {
		return 0
	}
	n, err := strconv.ParseInt(fields[1], 10, 64)
	if err != nil {
		return 0
	}
	return n << 10
}
