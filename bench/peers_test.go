package bench

import (
	"encoding/json"
	"math"
	"slices"
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
		"Added p99 latency ≤ HAProxy's: p99 200.0 µs against 250.0 µs — met",
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

// TestPeersKernelObjects: with live slab objects measured for every row,
// the kernel goal and column use them, broken down by cache; a report
// with Slab alone keeps Slab.
func TestPeersKernelObjects(t *testing.T) {
	objs := parseSlabinfo(`slabinfo - version: 2.1
# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>
TCP                   53    104   2368   13    8 : tunables    0    0    0 : slabdata      8      8      0
eventpoll_epi        385    576    128   32    1 : tunables    0    0    0 : slabdata     18     18      0
broken line
`)
	if len(objs) != 2 || objs["TCP"] != 53*2368 || objs["eventpoll_epi"] != 385*128 {
		t.Fatalf("parsed %v", objs)
	}
	// TIME_WAIT sockets expiring meanwhile are no flow's.
	objs["tw_sock_TCP"] = 100 * 248
	after := map[string]int64{"TCP": objs["TCP"] + 100*2*2368, "eventpoll_epi": objs["eventpoll_epi"] + 100*4*128 + 5, "request_sock_TCP": 7 * 304}
	total, caches := objectGrowth(objs, after, 100)
	if math.Abs(total-(2*2368+4*128+0.05)) > 1e-9 || caches["TCP"] != 2*2368 || len(caches) != 2 {
		t.Fatalf("growth %v, %v", total, caches)
	}
	r := &PeersReport{Repeats: 1, Rows: []PeerRow{
		{Name: "direct", Flows: 100, SlabPerFlow: 9000, ObjectsPerFlow: 7000, ObjectCaches: map[string]float64{"TCP": 4736}},
		{Name: "halfway", Flows: 100, SlabPerFlow: 1000, ObjectsPerFlow: 15000, ObjectCaches: map[string]float64{"TCP": 9472, "eventpoll_epi": 512}},
		{Name: "haproxy", Flows: 100, SlabPerFlow: 2000, ObjectsPerFlow: 14600, ObjectCaches: map[string]float64{"TCP": 9472, "eventpoll_epi": 256}},
	}}
	wantLines(t, r.Markdown(),
		"Kernel memory per flow ≤ HAProxy's: 8000 B against 7600 B (live slab objects beyond direct's) — **missed**",
		"| | `TCP` | `eventpoll_epi` | all |",
		"| halfway | 9472 | 512 | 15000 |",
	)
	r.Rows[0].ObjectsPerFlow = 0 // an older report: Slab only
	wantLines(t, r.Markdown(), "Kernel memory per flow ≤ HAProxy's: -8000 B against -7000 B (machine-wide Slab beyond direct's) — met")
}

// TestPeersMemoryRounds: a row keeps the round with the median kernel
// memory, its caches with it, and the medians of the user-space figures.
func TestPeersMemoryRounds(t *testing.T) {
	var r PeerRow
	r.setMemory([]PeerRow{
		{Flows: 9000, ObjectsPerFlow: 7900, ObjectCaches: map[string]float64{"TCP": 1}, AnonPerFlow: 3300, IdleRSSKiB: 8000, FDsPerFlow: 2},
		{Flows: 9000, ObjectsPerFlow: 7500, ObjectCaches: map[string]float64{"TCP": 2}, AnonPerFlow: 3500, IdleRSSKiB: 8200, FDsPerFlow: 2},
		{Flows: 9000, ObjectsPerFlow: 7600, ObjectCaches: map[string]float64{"TCP": 3}, AnonPerFlow: 3400, IdleRSSKiB: 8100, FDsPerFlow: 2},
	})
	if r.ObjectsPerFlow != 7600 || r.ObjectCaches["TCP"] != 3 || r.AnonPerFlow != 3400 || r.IdleRSSKiB != 8100 || r.FDsPerFlow != 2 || r.Flows != 9000 {
		t.Errorf("kept %+v", r)
	}
	if !slices.Equal(r.KernelRounds, []float64{7500, 7600, 7900}) {
		t.Errorf("rounds %v", r.KernelRounds)
	}
}

// TestPeersMarkdownFailed: when halfway or HAProxy failed part-way, the
// goals say they rest on the repeats before the failure, and missing
// memory figures are put down to it, not to --parts.
func TestPeersMarkdownFailed(t *testing.T) {
	r := &PeersReport{Repeats: 5, Rows: []PeerRow{
		{Name: "halfway", ConnRate: []float64{130}, ConnCPUus: []float64{90}, Err: "memory: relay exited"},
		{Name: "haproxy", ConnRate: []float64{100}, ConnCPUus: []float64{100}, Flows: 100, AnonPerFlow: 3400, FDsPerFlow: 2},
	}}
	md := r.Markdown()
	wantLines(t, md,
		"halfway failed in this run (above): the goals below use the repeats before the failure, and omit what it did not reach",
		"Memory, descriptors, kernel memory and idle RSS: not measured in this run (a failure above)",
	)
	if strings.Contains(md, "--parts memory") {
		t.Errorf("a failed memory part put down to --parts:\n%s", md)
	}
}
