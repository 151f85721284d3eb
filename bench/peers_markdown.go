package bench

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// LoadPeers reads a report written with --json, for re-rendering.
func LoadPeers(b []byte) (*PeersReport, error) {
	var r PeersReport
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	r.plots()
	return &r, nil
}

func (r *PeersReport) row(name string) *PeerRow {
	for i := range r.Rows {
		if r.Rows[i].Name == name {
			return &r.Rows[i]
		}
	}
	return nil
}

// med is a cell: median (min–max), or – without values.
func med(xs []float64, format string) string {
	if len(xs) == 0 {
		return "–"
	}
	lo, hi := spread(xs)
	if len(xs) == 1 {
		return fmt.Sprintf(format, median(xs))
	}
	return fmt.Sprintf(format+" ("+format+"–"+format+")", median(xs), lo, hi)
}

// Markdown renders the comparison with the goals.
func (r *PeersReport) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# halfway bench peers\n\n%s UTC, kernel %s, %d CPUs, %s. Median (min–max) of %d interleaved repeats.\n\n",
		r.Env.Time.UTC().Format("2006-01-02 15:04"), r.Env.Kernel, r.Env.CPUs, r.Env.Go, r.Repeats)
	b.WriteString("## Throughput and connections\n\n| | Gbit/s, one stream | proxy CPU s/GB | machine CPU s/GB | new conns/s (1 KB, `close`) | CPU µs/request | keep-alive req/s | CPU µs/request |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, row := range r.Rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", row.Name, med(row.Gbps, "%.2f"), med(row.CPUPerGB, "%.2f"), med(row.MachineCPUPerGB, "%.2f"),
			med(row.ConnRate, "%.0f"), med(row.ConnCPUus, "%.0f"), med(row.KARate, "%.0f"), med(row.KACPUus, "%.0f"))
	}
	b.WriteString("\n## Latency, memory, start\n\n| | p50 µs | p99 µs | added p50 / p99 µs | idle RSS | memory per idle flow | descriptors per flow | kernel per flow (beyond direct) | exec to accept ms |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	direct, objs := r.row("direct"), r.objects()
	for _, row := range r.Rows {
		added := "–"
		if direct != nil && row.Name != "direct" && len(row.LatP50us) > 0 && len(direct.LatP50us) > 0 {
			added = fmt.Sprintf("%+.0f / %+.0f", median(row.LatP50us)-median(direct.LatP50us), median(row.LatP99us)-median(direct.LatP99us))
		}
		idle, per, fds, slab := "–", "–", "–", "–"
		if row.Flows > 0 && row.Name != "direct" {
			idle = fmt.Sprintf("%.0f KiB", row.IdleRSSKiB)
			per = fmt.Sprintf("%.0f B (%d flows)", row.memPerFlow(), row.Flows)
			fds = fmt.Sprintf("%.2f", row.FDsPerFlow)
			if direct != nil && direct.Flows > 0 {
				slab = fmt.Sprintf("%.0f B", row.kernelPerFlow(objs)-direct.kernelPerFlow(objs))
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", row.Name, med(row.LatP50us, "%.0f"), med(row.LatP99us, "%.0f"),
			added, idle, per, fds, slab, med(row.StartMS, "%.1f"))
	}
	for _, row := range r.Rows {
		if row.Err != "" {
			fmt.Fprintf(&b, "\n%s failed: %s\n", row.Name, row.Err)
		}
	}
	for _, s := range r.Skipped {
		fmt.Fprintf(&b, "\nSkipped: %s\n", s)
	}
	if hw, hp := r.row("halfway"), r.row("haproxy"); hw != nil && hp != nil {
		b.WriteString("\n## Goals (issue 6), halfway against HAProxy\n\n")
		ratio := func(a, c []float64) float64 {
			if len(a) == 0 || len(c) == 0 || median(c) == 0 {
				return 0
			}
			return median(a) / median(c)
		}
		goal := func(text string, ok bool) { fmt.Fprintf(&b, "- %s — %s\n", text, metOrMissed(ok)) }
		var failed []string
		for _, row := range []*PeerRow{hw, hp} {
			if row.Err != "" {
				failed = append(failed, row.Name)
			}
		}
		if len(failed) > 0 {
			// Its parts before the failure keep their samples: fewer
			// repeats than the header's, and none after it.
			fmt.Fprintf(&b, "- %s failed in this run (above): the goals below use the repeats before the failure, and omit what it did not reach\n", strings.Join(failed, " and "))
		}
		if len(hw.ConnRate) > 0 && len(hp.ConnRate) > 0 {
			cr, crCPU := ratio(hw.ConnRate, hp.ConnRate), ratio(hw.ConnCPUus, hp.ConnCPUus)
			goal(fmt.Sprintf("New connections per second ≥ 1.2× HAProxy's with less CPU per request: %.2f×, CPU %.2f×", cr, crCPU), cr >= 1.2 && crCPU > 0 && crCPU < 1)
		}
		if len(hw.Gbps) > 0 && len(hp.Gbps) > 0 {
			tp, tpCPU := ratio(hw.Gbps, hp.Gbps), ratio(hw.CPUPerGB, hp.CPUPerGB)
			goal(fmt.Sprintf("One-stream throughput ≥ 1.1× HAProxy's with ≤ 0.6× its CPU per GB: %.2f×, CPU %.3f×", tp, tpCPU), tp >= 1.1 && tpCPU > 0 && tpCPU <= 0.6)
		}
		if hw.Flows == 0 || hp.Flows == 0 {
			why := "(--parts memory)"
			if len(failed) > 0 {
				why = "(a failure above)"
			}
			fmt.Fprintf(&b, "- Memory, descriptors, kernel memory and idle RSS: not measured in this run %s\n", why)
		} else {
			memoryGoals(r, hw, hp, direct, objs, goal)
		}
		if len(hw.LatP99us) > 0 && len(hp.LatP99us) > 0 {
			goal(fmt.Sprintf("Added p99 latency ≤ HAProxy's: p99 %.1f µs against %.1f µs", median(hw.LatP99us), median(hp.LatP99us)), median(hw.LatP99us) <= median(hp.LatP99us))
		}
	}
	if objs {
		b.WriteString(r.cachesTable())
	}
	b.WriteString("\n")
	for _, p := range r.Plots {
		fmt.Fprintf(&b, "![%s](%s)\n", p.Name, p.Name)
	}
	b.WriteString("\n## How it was measured\n\n")
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "- %s\n", n)
	}
	for _, row := range r.Rows {
		if row.Version != "" {
			fmt.Fprintf(&b, "- %s: %s\n", row.Name, row.Version)
		}
	}
	return b.String()
}

func (r *PeersReport) plots() {
	r.Plots = nil
	var groups []string
	var vals [][]float64
	for _, row := range r.Rows {
		if row.Name == "direct" {
			continue
		}
		groups = append(groups, row.Name)
		v := []float64{0, 0, 0}
		if len(row.Gbps) > 0 {
			v[0] = median(row.Gbps)
		}
		if len(row.ConnRate) > 0 {
			v[1] = median(row.ConnRate) / 1000
		}
		if len(row.KARate) > 0 {
			v[2] = median(row.KARate) / 10000
		}
		vals = append(vals, v)
	}
	if len(groups) > 0 {
		r.Plots = append(r.Plots, AccelPlot{Name: "peers.svg", SVG: barSVG("halfway and the proxies users pick, on loopback",
			"Gbit/s · thousand new conns/s · ten-thousand keep-alive req/s", groups, []string{"one stream, Gbit/s", "new conns/s ÷ 1000", "keep-alive req/s ÷ 10000"}, vals, nil)})
	}
}

// objects says whether every row with idle flows measured live slab
// objects (reports from before that was measured have Slab only).
func (r *PeersReport) objects() bool {
	some := false
	for _, row := range r.Rows {
		if row.Flows > 0 {
			if row.ObjectsPerFlow == 0 {
				return false
			}
			some = true
		}
	}
	return some
}

// kernelPerFlow is a row's kernel memory per idle flow: live slab objects
// when objs, else meminfo's Slab.
func (row *PeerRow) kernelPerFlow(objs bool) float64 {
	if objs {
		return row.ObjectsPerFlow
	}
	return row.SlabPerFlow
}

// cachesTable breaks each row's kernel memory per idle flow down by slab
// cache: those that grew by 32 B per flow or more in some row of a proxy
// that holds its flows in one process (socat's process per flow brings
// dozens of caches of its own; its whole figure is in the last column).
func (r *PeersReport) cachesTable() string {
	var names []string
	for _, row := range r.Rows {
		if row.Processes > 1 {
			continue
		}
		for name, v := range row.ObjectCaches {
			if v >= 32 && !slices.Contains(names, name) {
				names = append(names, name)
			}
		}
	}
	if len(names) == 0 {
		return ""
	}
	slices.Sort(names)
	var b strings.Builder
	b.WriteString("\n### Kernel memory per idle flow, by slab cache (bytes; the flows' own sockets included)\n\n| |")
	for _, n := range names {
		fmt.Fprintf(&b, " `%s` |", n)
	}
	b.WriteString(" all |\n|---|" + strings.Repeat("---:|", len(names)+1) + "\n")
	for _, row := range r.Rows {
		if row.Flows == 0 {
			continue
		}
		fmt.Fprintf(&b, "| %s |", row.Name)
		for _, n := range names {
			fmt.Fprintf(&b, " %.0f |", row.ObjectCaches[n])
		}
		fmt.Fprintf(&b, " %.0f |\n", row.ObjectsPerFlow)
	}
	return b.String()
}

// memPerFlow is a row's memory per idle flow: the growth of its anonymous
// memory, or of its whole RSS in reports from before that was measured.
func (row *PeerRow) memPerFlow() float64 {
	if row.AnonPerFlow == 0 {
		return row.RSSPerFlow
	}
	return row.AnonPerFlow
}

// memoryGoals judges issue 6's memory goals, for a run that measured them.
func memoryGoals(r *PeersReport, hw, hp, direct *PeerRow, objs bool, goal func(string, bool)) {
	goal(fmt.Sprintf("Memory per idle flow ≤ HAProxy's: %.0f B against %.0f B", hw.memPerFlow(), hp.memPerFlow()), hw.memPerFlow() <= hp.memPerFlow())
	goal(fmt.Sprintf("No extra descriptors held by an idle flow: %.2f per flow (2 are its sockets)", hw.FDsPerFlow), hw.FDsPerFlow <= 2.05)
	var base float64
	if direct != nil {
		base = direct.kernelPerFlow(objs)
	}
	what := "machine-wide Slab beyond direct's"
	if objs {
		what = "live slab objects beyond direct's"
	}
	hwK, hpK := hw.kernelPerFlow(objs), hp.kernelPerFlow(objs)
	goal(fmt.Sprintf("Kernel memory per flow ≤ HAProxy's: %.0f B against %.0f B (%s)", hwK-base, hpK-base, what), hwK <= hpK)
	lowest := true
	for _, row := range r.Rows {
		if !strings.HasPrefix(row.Name, "halfway") && row.Name != "direct" && row.Flows > 0 && row.IdleRSSKiB < hw.IdleRSSKiB {
			lowest = false
		}
	}
	goal(fmt.Sprintf("Idle RSS the lowest of all: %.0f KiB", hw.IdleRSSKiB), lowest)
}
