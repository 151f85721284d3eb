package metrics

import (
	"math"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func TestWriteText(t *testing.T) {
	r := NewRegistry()
	flows := r.Counter("x_flows_total", "Flows ended.\nBy listener.", "result", "listener")
	flows.With("ok", "b").Add(3)
	flows.With("reset", `a"q\`).Inc()
	active := r.Gauge("x_active", "Active.", "listener")
	active.With("a").Inc()
	active.With("a").Inc()
	active.With("a").Dec()
	r.Gauge("x_unused", "Never used: not written.")
	h := r.Histogram("x_seconds", "Latency.", []float64{0.001, 0.01, 0.1}, "leg")
	for _, v := range []float64{0.0005, 0.001, 0.05, 3} {
		h.With("server").Observe(v)
	}
	r.Func("x_bytes_total", "Bytes.", CounterType, []string{"dir"}, func(emit func(float64, ...string)) {
		emit(7, "up")
		emit(1e12, "down")
	})
	var b strings.Builder
	if _, err := r.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	want := `# HELP x_active Active.
# TYPE x_active gauge
x_active{listener="a"} 1
# HELP x_bytes_total Bytes.
# TYPE x_bytes_total counter
x_bytes_total{dir="down"} 1e+12
x_bytes_total{dir="up"} 7
# HELP x_flows_total Flows ended.\nBy listener.
# TYPE x_flows_total counter
x_flows_total{listener="a\"q\\",result="reset"} 1
x_flows_total{listener="b",result="ok"} 3
# HELP x_seconds Latency.
# TYPE x_seconds histogram
x_seconds_bucket{leg="server",le="0.001"} 2
x_seconds_bucket{leg="server",le="0.01"} 2
x_seconds_bucket{leg="server",le="0.1"} 3
x_seconds_bucket{leg="server",le="+Inf"} 4
x_seconds_sum{leg="server"} 3.0515
x_seconds_count{leg="server"} 4
`
	if b.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", b.String(), want)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(b.String()))
	if err != nil {
		t.Fatalf("the Prometheus parser refuses the output: %v", err)
	}
	if got := fams["x_seconds"].GetMetric()[0].GetHistogram().GetSampleCount(); got != 4 {
		t.Errorf("parsed histogram count %d, want 4", got)
	}
	if got := fams["x_flows_total"].GetMetric()[0].GetLabel()[0].GetValue(); got != `a"q\` { // sorted by name: listener first
		t.Errorf("parsed label %q", got)
	}
}

func TestProcessParses(t *testing.T) {
	r := NewRegistry()
	RegisterProcess(r)
	var b strings.Builder
	r.WriteTo(&b)
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(b.String()))
	if err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"} {
		f, ok := fams[name]
		if !ok || len(f.GetMetric()) != 1 {
			t.Errorf("%s missing:\n%s", name, b.String())
			continue
		}
		m := f.GetMetric()[0]
		if v := m.GetGauge().GetValue() + m.GetCounter().GetValue(); name != "process_cpu_seconds_total" && v <= 0 {
			t.Errorf("%s = %v", name, v)
		}
	}
}

func TestRegistrationErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    func(r *Registry)
	}{
		{"bad name", func(r *Registry) { r.Counter("x-y", "") }},
		{"bad label", func(r *Registry) { r.Counter("x", "", "a b") }},
		{"reserved label", func(r *Registry) { r.Counter("x", "", "__x") }},
		{"colon in a label", func(r *Registry) { r.Counter("x", "", "a:b") }},
		{"le on histogram", func(r *Registry) { r.Histogram("x", "", []float64{1}, "le") }},
		{"unsorted buckets", func(r *Registry) { r.Histogram("x", "", []float64{2, 1}) }},
		{"twice", func(r *Registry) { r.Counter("x", ""); r.Gauge("x", "") }},
		{"label count", func(r *Registry) { r.Counter("x", "", "a").With("1", "2") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("no panic")
				}
			}()
			tc.f(NewRegistry())
		})
	}
}

// TestConcurrent updates and scrapes at once (run with -race): every
// increment is counted and the output always parses.
func TestConcurrent(t *testing.T) {
	r := NewRegistry()
	c := r.Counter("c_total", "", "k")
	h := r.Histogram("h", "", ExponentialBuckets(1, 2, 4), "k")
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				k := string(rune('a' + (g+i)%3))
				c.With(k).Inc()
				h.With(k).Observe(float64(i % 20))
			}
		}()
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	for range 20 {
		var b strings.Builder
		r.WriteTo(&b)
		if _, err := p.TextToMetricFamilies(strings.NewReader(b.String())); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	var total uint64
	for _, k := range []string{"a", "b", "c"} {
		total += c.With(k).Value()
	}
	if total != 4000 {
		t.Fatalf("counted %d, want 4000", total)
	}
}

// TestLabelValuesNotUTF8: a label value with bytes that are not UTF-8 (a
// 0xff among them, which separates values in the series key) is written
// as valid UTF-8 and keeps a series of its own.
func TestLabelValuesNotUTF8(t *testing.T) {
	r := NewRegistry()
	c := r.Counter("x_total", "", "k", "l")
	c.With("a\xffb", "c").Inc()
	c.With("a", "b\xffc").Add(2)
	var b strings.Builder
	if _, err := r.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if !utf8.ValidString(out) || !strings.Contains(out, "x_total{k=\"a\uFFFDb\",l=\"c\"} 1") || !strings.Contains(out, "x_total{k=\"a\",l=\"b\uFFFDc\"} 2") {
		t.Errorf("output:\n%s", out)
	}
}

// TestFuncLabelValuesNotUTF8: a scrape-time family's label values are
// made valid UTF-8 as With's are, so the output still parses.
func TestFuncLabelValuesNotUTF8(t *testing.T) {
	r := NewRegistry()
	r.Func("x_bytes_total", "", CounterType, []string{"listener"}, func(emit func(float64, ...string)) {
		emit(1, "a\xffb")
	})
	var b strings.Builder
	if _, err := r.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	if out := b.String(); !utf8.ValidString(out) || !strings.Contains(out, "x_bytes_total{listener=\"a\uFFFDb\"} 1") {
		t.Errorf("output:\n%q", out)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	if _, err := p.TextToMetricFamilies(strings.NewReader(b.String())); err != nil {
		t.Errorf("the Prometheus parser refuses the output: %v", err)
	}
}

// TestHistogramBuckets: an observation counts in the first bucket whose
// bound is at least it, and in +Inf alone past the last bound; NaN is
// below no bound.
func TestHistogramBuckets(t *testing.T) {
	for _, tc := range []struct {
		name string
		v    float64
		want string // the finite buckets' counts, then +Inf's
	}{
		{"below", -1, "1 1 1"},
		{"on a bound", 1, "0 1 1"},
		{"past the last", 5, "0 0 1"},
		{"+Inf", math.Inf(1), "0 0 1"},
		{"-Inf", math.Inf(-1), "1 1 1"},
		{"NaN", math.NaN(), "0 0 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRegistry()
			r.Histogram("x", "", []float64{0, 1}).With().Observe(tc.v)
			var b strings.Builder
			r.WriteTo(&b)
			var got []string
			for _, line := range strings.Split(b.String(), "\n") {
				if strings.HasPrefix(line, "x_bucket") {
					got = append(got, line[strings.LastIndexByte(line, ' ')+1:])
				}
			}
			if strings.Join(got, " ") != tc.want {
				t.Errorf("buckets %v, want %s\n%s", got, tc.want, b.String())
			}
		})
	}
}
