// Package metrics keeps a daemon's counters, gauges and histograms and
// writes them in the Prometheus text exposition format (version 0.0.4),
// with HELP and TYPE once per family and series in a stable order.
//
// It exists because the Prometheus Go client, with its protobuf, procfs
// and expvar dependencies, took about 6 ms of a relay's start (package
// initialisation measured with GODEBUG=inittrace=1 and exec-to-exit
// timings) and a few MiB of its resident binary pages, against goals of
// 10 ms to accept and 8 MiB idle. The relay needs only the text format,
// which this package writes and which its tests check with the Prometheus
// parser.
//
// Updates are lock-free on a series already seen (atomic counters); the
// first use of a label combination takes the family's lock once.
package metrics

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"
)

// Type is a metric family's type as written on its TYPE line.
type Type string

// The family types this package writes.
const (
	CounterType   Type = "counter"
	GaugeType     Type = "gauge"
	HistogramType Type = "histogram"
)

// Registry holds metric families and writes them.
type Registry struct {
	mu   sync.Mutex
	fams map[string]*family
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{fams: map[string]*family{}} }

type family struct {
	name, help string
	typ        Type
	labels     []string
	order      []int     // label indices sorted by name: the order they are written in
	buckets    []float64 // histograms

	mu     sync.RWMutex
	series map[string]any // joined label values → *Counter, *Gauge, *Histogram

	collect func(emit func(v float64, labelValues ...string)) // scrape-time families
}

func (r *Registry) add(f *family) *family {
	if !validName(f.name) {
		panic(fmt.Sprintf("metrics: invalid metric name %q", f.name))
	}
	for _, l := range f.labels {
		if !validName(l) || strings.Contains(l, ":") || strings.HasPrefix(l, "__") || (f.typ == HistogramType && l == "le") { // label names take no colon
			panic(fmt.Sprintf("metrics: %s: invalid label name %q", f.name, l))
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.fams[f.name]; dup {
		panic(fmt.Sprintf("metrics: %s registered twice", f.name))
	}
	f.series = map[string]any{}
	f.order = make([]int, len(f.labels))
	for i := range f.order {
		f.order[i] = i
	}
	slices.SortFunc(f.order, func(a, b int) int { return strings.Compare(f.labels[a], f.labels[b]) })
	r.fams[f.name] = f
	return f
}

// validName reports whether s is a metric or label name in the classic
// Prometheus alphabet, [a-zA-Z_:][a-zA-Z0-9_:]*.
func validName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		switch {
		case c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// get returns the series for labelValues, creating it with mk.
func (f *family) get(values []string, mk func() any) any {
	if len(values) != len(f.labels) {
		panic(fmt.Sprintf("metrics: %s takes %d label values, got %d", f.name, len(f.labels), len(values)))
	}
	// The key is built on the stack, and the lookup does not copy it:
	// With on a hot path allocates nothing once its series exists.
	var buf [128]byte
	key := buf[:0]
	for i, v := range values {
		if i > 0 {
			key = append(key, '\xff')
		}
		// A 0xff byte would make the key ambiguous.
		key = append(key, validUTF8(v)...)
	}
	f.mu.RLock()
	s, ok := f.series[string(key)]
	f.mu.RUnlock()
	if ok {
		return s
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok = f.series[string(key)]; !ok {
		s = mk()
		f.series[string(key)] = s
	}
	return s
}

// validUTF8 is v with each byte sequence that is not UTF-8 replaced by
// U+FFFD: label values are UTF-8 in the text format.
func validUTF8(v string) string {
	if utf8.ValidString(v) {
		return v
	}
	return strings.ToValidUTF8(v, "\uFFFD")
}

// Counter is a value that only goes up.
type Counter struct{ v atomic.Uint64 }

// Inc adds one.
func (c *Counter) Inc() { c.v.Add(1) }

// Add adds n.
func (c *Counter) Add(n uint64) { c.v.Add(n) }

// Value is the current count.
func (c *Counter) Value() uint64 { return c.v.Load() }

// CounterVec is a counter family with labels.
type CounterVec struct{ f *family }

// Counter registers a counter family.
func (r *Registry) Counter(name, help string, labels ...string) *CounterVec {
	return &CounterVec{r.add(&family{name: name, help: help, typ: CounterType, labels: labels})}
}

// With returns the counter for the label values, in the family's label order.
func (v *CounterVec) With(labelValues ...string) *Counter {
	return v.f.get(labelValues, func() any { return new(Counter) }).(*Counter)
}

// Gauge is a value that goes up and down.
type Gauge struct{ v atomic.Int64 }

// Inc adds one.
func (g *Gauge) Inc() { g.v.Add(1) }

// Dec subtracts one.
func (g *Gauge) Dec() { g.v.Add(-1) }

// Set sets the value.
func (g *Gauge) Set(n int64) { g.v.Store(n) }

// Value is the current value.
func (g *Gauge) Value() int64 { return g.v.Load() }

// GaugeVec is a gauge family with labels.
type GaugeVec struct{ f *family }

// Gauge registers a gauge family.
func (r *Registry) Gauge(name, help string, labels ...string) *GaugeVec {
	return &GaugeVec{r.add(&family{name: name, help: help, typ: GaugeType, labels: labels})}
}

// With returns the gauge for the label values.
func (v *GaugeVec) With(labelValues ...string) *Gauge {
	return v.f.get(labelValues, func() any { return new(Gauge) }).(*Gauge)
}

// Histogram counts observations in cumulative buckets.
type Histogram struct {
	upper  []float64 // shared with the family
	counts []atomic.Uint64
	count  atomic.Uint64
	sum    atomic.Uint64 // float64 bits
}

// Observe records one value. NaN is below no bound: it counts in +Inf
// alone, as the Prometheus client counts it.
func (h *Histogram) Observe(v float64) {
	// slices.BinarySearch orders NaN before every number: it would land
	// in the first bucket.
	if i, _ := slices.BinarySearch(h.upper, v); i < len(h.counts) && !math.IsNaN(v) {
		h.counts[i].Add(1)
	}
	for {
		old := h.sum.Load()
		if h.sum.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			break
		}
	}
	h.count.Add(1)
}

// HistogramVec is a histogram family with labels.
type HistogramVec struct{ f *family }

// Histogram registers a histogram family with the given bucket upper
// bounds (increasing; +Inf is implied).
func (r *Registry) Histogram(name, help string, buckets []float64, labels ...string) *HistogramVec {
	if len(buckets) == 0 || !slices.IsSorted(buckets) || math.IsInf(buckets[len(buckets)-1], 1) {
		panic(fmt.Sprintf("metrics: %s: buckets must be increasing and finite", name))
	}
	return &HistogramVec{r.add(&family{name: name, help: help, typ: HistogramType, labels: labels, buckets: slices.Clone(buckets)})}
}

// With returns the histogram for the label values.
func (v *HistogramVec) With(labelValues ...string) *Histogram {
	return v.f.get(labelValues, func() any {
		return &Histogram{upper: v.f.buckets, counts: make([]atomic.Uint64, len(v.f.buckets))}
	}).(*Histogram)
}

// ExponentialBuckets returns n bucket bounds start, start·factor, ….
func ExponentialBuckets(start, factor float64, n int) []float64 {
	b := make([]float64, n)
	for i := range b {
		b[i] = start
		start *= factor
	}
	return b
}

// Func registers a family whose samples are produced at each scrape by
// collect, which calls emit once per series. A counter family written this
// way must never go backwards.
func (r *Registry) Func(name, help string, typ Type, labels []string, collect func(emit func(v float64, labelValues ...string))) {
	if typ == HistogramType {
		panic("metrics: Func cannot write histograms")
	}
	r.add(&family{name: name, help: help, typ: typ, labels: labels, collect: collect})
}

// WriteTo writes every family in the text format, sorted by name.
func (r *Registry) WriteTo(w io.Writer) (int64, error) {
	r.mu.Lock()
	fams := make([]*family, 0, len(r.fams))
	for _, f := range r.fams {
		fams = append(fams, f)
	}
	r.mu.Unlock()
	slices.SortFunc(fams, func(a, b *family) int { return strings.Compare(a.name, b.name) })
	cw := &countWriter{w: w}
	bw := bufio.NewWriter(cw)
	for _, f := range fams {
		f.write(bw)
	}
	err := bw.Flush()
	return cw.n, err
}

type sample struct {
	values []string
	v      float64
}

func (f *family) write(w *bufio.Writer) {
	var rows []sample
	var hists []struct {
		values []string
		h      *Histogram
	}
	if f.collect != nil {
		f.collect(func(v float64, values ...string) {
			if len(values) != len(f.labels) {
				panic(fmt.Sprintf("metrics: %s takes %d label values, got %d", f.name, len(f.labels), len(values)))
			}
			vs := make([]string, len(values))
			for i, lv := range values {
				vs[i] = validUTF8(lv)
			}
			rows = append(rows, sample{vs, v})
		})
	} else {
		f.mu.RLock()
		for key, s := range f.series {
			values := splitKey(key, len(f.labels))
			switch s := s.(type) {
			case *Counter:
				rows = append(rows, sample{values, float64(s.Value())})
			case *Gauge:
				rows = append(rows, sample{values, float64(s.Value())})
			case *Histogram:
				hists = append(hists, struct {
					values []string
					h      *Histogram
				}{values, s})
			}
		}
		f.mu.RUnlock()
	}
	if len(rows) == 0 && len(hists) == 0 {
		return
	}
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", f.name, escapeHelp(f.help), f.name, f.typ)
	slices.SortFunc(rows, func(a, b sample) int { return f.compare(a.values, b.values) })
	for _, s := range rows {
		writeSample(w, f.name, f, s.values, "", "", s.v)
	}
	slices.SortFunc(hists, func(a, b struct {
		values []string
		h      *Histogram
	}) int {
		return f.compare(a.values, b.values)
	})
	for _, e := range hists {
		// Read the count first: buckets and sum read after it are at least
		// as large, and the cumulative +Inf bucket is the count itself, so
		// no bucket ever exceeds +Inf.
		count := e.h.count.Load()
		var cum uint64
		for i, ub := range f.buckets {
			cum += e.h.counts[i].Load()
			writeSample(w, f.name+"_bucket", f, e.values, "le", formatFloat(ub), float64(min(cum, count)))
		}
		writeSample(w, f.name+"_bucket", f, e.values, "le", "+Inf", float64(count))
		writeSample(w, f.name+"_sum", f, e.values, "", "", math.Float64frombits(e.h.sum.Load()))
		writeSample(w, f.name+"_count", f, e.values, "", "", float64(count))
	}
}

// compare orders series as they are written: by label values, labels
// taken in name order.
func (f *family) compare(a, b []string) int {
	for _, i := range f.order {
		if c := strings.Compare(a[i], b[i]); c != 0 {
			return c
		}
	}
	return 0
}

func splitKey(key string, n int) []string {
	if n == 0 {
		return nil
	}
	return strings.SplitN(key, "\xff", n)
}

// writeSample writes one line, labels sorted by name and the extra one
// (le) last.
func writeSample(w *bufio.Writer, name string, f *family, values []string, extraName, extraValue string, v float64) {
	w.WriteString(name)
	if len(f.labels) > 0 || extraName != "" {
		w.WriteByte('{')
		for n, i := range f.order {
			if n > 0 {
				w.WriteByte(',')
			}
			w.WriteString(f.labels[i])
			w.WriteString(`="`)
			w.WriteString(escapeLabel(values[i]))
			w.WriteByte('"')
		}
		if extraName != "" {
			if len(f.labels) > 0 {
				w.WriteByte(',')
			}
			w.WriteString(extraName)
			w.WriteString(`="`)
			w.WriteString(extraValue)
			w.WriteByte('"')
		}
		w.WriteByte('}')
	}
	w.WriteByte(' ')
	w.WriteString(formatFloat(v))
	w.WriteByte('\n')
}

func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

var (
	labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
)

func escapeLabel(s string) string { return labelEscaper.Replace(s) }
func escapeHelp(s string) string  { return helpEscaper.Replace(s) }

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Handler serves the registry's metrics over HTTP.
func (r *Registry) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		r.WriteTo(w)
	})
}
