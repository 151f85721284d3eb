// Package bench runs halfway's scenario benchmarks on lab topologies and
// renders their results as Markdown and JSON. Every figure in a report is
// measured in the same run as the figures it is compared with, as the
// median of interleaved repeats.
//
//	r, err := bench.RunLab(ctx, bench.DefaultLabOptions())
//	fmt.Print(r.Markdown())
package bench

import (
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Env records where a benchmark ran.
type Env struct {
	Time   time.Time `json:"time"`
	Kernel string    `json:"kernel"`
	CPUs   int       `json:"cpus"`
	Go     string    `json:"go"`
	Host   string    `json:"host"`
}

// CollectEnv describes this machine.
func CollectEnv() Env {
	e := Env{Time: time.Now().UTC(), CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		e.Kernel = strings.TrimSpace(string(b))
	}
	e.Host, _ = os.Hostname()
	return e
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func spread(xs []float64) (lo, hi float64) {
	if len(xs) == 0 {
		return 0, 0
	}
	lo, hi = xs[0], xs[0]
	for _, x := range xs {
		lo, hi = min(lo, x), max(hi, x)
	}
	return lo, hi
}

// machineCPU reads the busy and total jiffies of all CPUs from /proc/stat.
func machineCPU() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	for i, v := range f[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		total += n
		if i != 3 && i != 4 { // idle and iowait
			busy += n
		}
	}
	return busy, total
}
