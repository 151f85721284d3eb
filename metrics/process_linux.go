package metrics

import (
	"bytes"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

func registerProcessOS(r *Registry) {
	page := float64(os.Getpagesize())
	hz := 100.0 // USER_HZ: 100 on every Linux ABI Go supports
	stat := func() []string {
		b, err := os.ReadFile("/proc/self/stat")
		if err != nil {
			return nil
		}
		// Fields after the command, which is in parentheses and may hold spaces.
		if i := bytes.LastIndexByte(b, ')'); i >= 0 {
			return splitFields(b[i+1:])
		}
		return nil
	}
	// Field numbers of proc(5), counted from 3 (state) as index 0.
	field := func(f []string, n int) (float64, bool) {
		if len(f) <= n-3 {
			return 0, false
		}
		v, err := strconv.ParseFloat(f[n-3], 64)
		return v, err == nil
	}
	r.Func("process_cpu_seconds_total", "User and system CPU time spent, in seconds.", CounterType, nil, func(emit func(float64, ...string)) {
		f := stat()
		u, ok1 := field(f, 14)
		s, ok2 := field(f, 15)
		if ok1 && ok2 {
			emit((u + s) / hz)
		}
	})
	r.Func("process_resident_memory_bytes", "Resident memory size in bytes.", GaugeType, nil, func(emit func(float64, ...string)) {
		if v, ok := field(stat(), 24); ok {
			emit(v * page)
		}
	})
	r.Func("process_virtual_memory_bytes", "Virtual memory size in bytes.", GaugeType, nil, func(emit func(float64, ...string)) {
		if v, ok := field(stat(), 23); ok {
			emit(v)
		}
	})
	r.Func("process_open_fds", "Open file descriptors.", GaugeType, nil, func(emit func(float64, ...string)) {
		if d, err := os.ReadDir("/proc/self/fd"); err == nil {
			emit(float64(len(d)))
		}
	})
	r.Func("process_max_fds", "Limit on open file descriptors.", GaugeType, nil, func(emit func(float64, ...string)) {
		var l unix.Rlimit
		if unix.Getrlimit(unix.RLIMIT_NOFILE, &l) == nil {
			emit(float64(l.Cur))
		}
	})
}

func splitFields(b []byte) []string {
	var out []string
	for _, f := range bytes.Fields(b) {
		out = append(out, string(f))
	}
	return out
}
