package bench

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestPeersMarkdownGoals: the goal lines judge halfway against HAProxy and
// the other proxies, not against halfway's own variants, and a saved
// report renders the same after a round trip.
func TestPeersMarkdownGoals(t *testing.T) {
	r := &PeersReport{Repeats: 1, Rows: []PeerRow{
		{Name: "direct", LatP50us: []float64{30}, LatP99us: []float64{80}, Flows: 100, SlabPerFlow: 1000},
		{Name: "halfway", Gbps: []float64{11}, CPUPerGB: []float64{0.5}, ConnRate: []float64{130}, ConnCPUus: []float64{90},
			LatP50us: []float64{100}, LatP99us: []float64{200}, IdleRSSKiB: 9000, Flows: 100, AnonPerFlow: 3000, FDsPerFlow: 2, SlabPerFlow: 5000},
		{Name: "halfway-copy", IdleRSSKiB: 8000, Flows: 100, AnonPerFlow: 20000, FDsPerFlow: 2},
		{Name: "haproxy", Gbps: []float64{10}, CPUPerGB: []float64{1}, ConnRate: []float64{100}, ConnCPUus: []float64{100},
			LatP50us: []float64{90}, LatP99us: []float64{250}, IdleRSSKiB: 15000, Flows: 100, AnonPerFlow: 3400, FDsPerFlow: 2, SlabPerFlow: 6000},
		{Name: "nginx", IdleRSSKiB: 18000, Flows: 100},
	}}
	r.plots()
	md := r.Markdown()
	wantLines(t, md,
		"New connections per second ≥ 1.2× HAProxy's with less CPU per request: 1.30×, CPU 0.90× — met",
		"One-stream throughput ≥ 1.1× HAProxy's with ≤ 0.6× its CPU per GB: 1.10×, CPU 0.500× — met",
		"Memory per idle flow ≤ HAProxy's: 3000 B against 3400 B — met",
		"Kernel memory per flow ≤ HAProxy's: 4000 B against 5000 B",
		"Idle RSS the lowest of all: 9000 KiB — met",
		"Added p99 latency ≤ HAProxy's: p99 200 µs against 250 µs — met",
		"| halfway | 100 | 200 | +70 / +120 |",
	)
	r.Rows[1].IdleRSSKiB = 16000 // now HAProxy's is lower
	if md := r.Markdown(); !strings.Contains(md, "Idle RSS the lowest of all: 16000 KiB — **missed**") {
		t.Errorf("idle RSS above HAProxy's judged met:\n%s", md)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	back, err := LoadPeers(b)
	if err != nil {
		t.Fatal(err)
	}
	if back.Markdown() != r.Markdown() || len(back.Plots) != 1 {
		t.Error("a saved report renders differently")
	}
}
