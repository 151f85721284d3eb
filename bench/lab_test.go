package bench

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"halfway/netlab/labtest"
)

func TestMedianSpread(t *testing.T) {
	tests := []struct {
		in          []float64
		med, lo, hi float64
	}{
		{nil, 0, 0, 0},
		{[]float64{3}, 3, 3, 3},
		{[]float64{5, 1, 3}, 3, 1, 5},
		{[]float64{4, 1, 3, 2}, 2.5, 1, 4},
	}
	for _, tt := range tests {
		lo, hi := spread(tt.in)
		if m := median(tt.in); m != tt.med || lo != tt.lo || hi != tt.hi {
			t.Errorf("%v: median %v spread %v–%v", tt.in, m, lo, hi)
		}
	}
}

// TestRunLabSmall runs every part of the lab benchmark once, briefly, with
// the real emulator daemon, and checks that the report is complete and
// renders. It asserts nothing about timing: that is the benchmark's job.
func TestRunLabSmall(t *testing.T) {
	labtest.RequireRoot(t)
	exe := buildHalfway(t)
	o := LabOptions{
		Repeats: 1,
		RTTs:    []time.Duration{2 * time.Millisecond},
		Rates:   []uint64{50e6},
		OneWay:  5 * time.Millisecond,
		Warm:    300 * time.Millisecond,
		Window:  700 * time.Millisecond,
		LossPct: 5,
		LossN:   400,
		Exe:     exe,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := RunLab(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.RTT) != 1 || len(r.RTT[0].ConnectAll) != 3 || r.RTT[0].ReqRespMS <= 0 {
		t.Errorf("rtt rows %+v", r.RTT)
	}
	if len(r.Throughput) != 1 || r.Throughput[0].GoodputMbit <= 0 || r.Throughput[0].IPRateMbit <= 0 {
		t.Errorf("throughput rows %+v", r.Throughput)
	}
	if r.Loss.Sent != 400 || r.Loss.EmulatorLost == 0 || r.Loss.HighPct <= r.Loss.LowPct {
		t.Errorf("loss row %+v", r.Loss)
	}
	if len(r.TopSpeed.GoodputGbit) != 1 || r.TopSpeed.MedianGbit <= 0 {
		t.Errorf("top speed %+v", r.TopSpeed)
	}
	md := r.Markdown()
	wantLines(t, md, "## RTT", "## Bulk TCP throughput", "## Loss", "## Top speed")
	if _, err := json.Marshal(r); err != nil {
		t.Error(err)
	}
	for _, name := range []string{"brtt0", "btput0", "bloss", "btop"} {
		if _, err := os.Stat("/run/netns/hwl." + name); err == nil {
			t.Errorf("lab %s left behind", name)
		}
	}
}

func TestBinomialInterval(t *testing.T) {
	// Reference values: the 0.5% and 99.5% quantiles of Binomial(n, p).
	tests := []struct {
		n      int
		p      float64
		lo, hi int
	}{
		{100000, 0.01, 919, 1082},
		{20000, 0.01, 165, 237},
		{100, 0.5, 37, 63},
	}
	for _, tt := range tests {
		lo, hi := binomialInterval(tt.n, tt.p, 0.99)
		if lo < tt.lo-1 || lo > tt.lo+1 || hi < tt.hi-1 || hi > tt.hi+1 {
			t.Errorf("Binomial(%d, %g): [%d, %d], want about [%d, %d]", tt.n, tt.p, lo, hi, tt.lo, tt.hi)
		}
	}
}

// TestRunLabRefusesEmptyMeasures: options that leave a measure without a
// sample are refused before anything runs; they made the report's figures
// NaN, which JSON cannot carry, so `bench lab` lost the whole run when it
// printed the report (Markdown too: the JSON is made first).
func TestRunLabRefusesEmptyMeasures(t *testing.T) {
	labtest.RequireRoot(t)
	exe := buildHalfway(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o := LabOptions{Repeats: 1, OneWay: time.Millisecond, Warm: 100 * time.Millisecond, Window: 300 * time.Millisecond,
		LossPct: 1, LossN: 0, Exe: exe}
	r, err := RunLab(ctx, o)
	if err == nil {
		_, jerr := json.Marshal(r)
		t.Fatalf("RunLab ran with LossN 0: loss %+v; the report's JSON: %v", r.Loss, jerr)
	}
	if !strings.Contains(err.Error(), "LossN") {
		t.Errorf("error %q, want one naming LossN", err)
	}
	for _, bad := range []LabOptions{
		{Repeats: 0, Window: time.Second, LossN: 1},
		{Repeats: 1, Window: 0, LossN: 1},
		{Repeats: 1, Window: time.Second, Warm: -time.Second, LossN: 1},
		{Repeats: 1, Window: time.Second, LossN: 1, LossPct: 101},
	} {
		if bad.Validate() == nil {
			t.Errorf("%+v: valid", bad)
		}
	}
	if err := DefaultLabOptions().Validate(); err != nil {
		t.Errorf("default options: %v", err)
	}
}
