package bench

import (
	"fmt"
	"strings"
)

func yes(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

// verdict judges an RTT row; the 0 ms row is the measurement floor, which
// the goal does not cover.
func verdict(row RTTRow) string {
	if row.ConfiguredMS == 0 {
		return "floor"
	}
	return yes(row.OK)
}

// Markdown renders the report as tables a person reads.
func (r *LabReport) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# halfway bench lab\n\n%s, kernel %s, %d CPUs, %s; median of %d repeats.\n\n",
		r.Env.Time.Format("2006-01-02 15:04 MST"), r.Env.Kernel, r.Env.CPUs, r.Env.Go, r.Options.Repeats)

	b.WriteString("## RTT\n\n| configured ms | connect ms (min–max) | request/response ms (min–max) | goal ± ms | within goal |\n|---:|---:|---:|---:|:---:|\n")
	for _, row := range r.RTT {
		cl, ch := spread(row.ConnectAll)
		rl, rh := spread(row.ReqRespAll)
		fmt.Fprintf(&b, "| %g | %.3f (%.3f–%.3f) | %.3f (%.3f–%.3f) | %.2f | %s |\n",
			row.ConfiguredMS, row.ConnectMS, cl, ch, row.ReqRespMS, rl, rh, row.ToleranceMS, verdict(row))
	}

	fmt.Fprintf(&b, "\n## Bulk TCP throughput (%g ms one way, %gs window after %gs warm-up; a slow link's window is at least 10 s × 1 Mbit/s ÷ its rate)\n\n", r.Options.OneWayMS, r.Options.WindowS, r.Options.WarmS)
	b.WriteString("| rate Mbit/s | goodput Mbit/s (min–max) | goodput/rate | IP rate Mbit/s | IP/rate | queue drops | emulator cores | machine busy | within goal |\n|---:|---:|---:|---:|---:|---:|---:|---:|:---:|\n")
	for _, row := range r.Throughput {
		lo, hi := spread(row.GoodputAll)
		fmt.Fprintf(&b, "| %g | %.2f (%.2f–%.2f) | %.3f | %.2f | %.3f | %d | %.2f | %.0f%% | %s |\n",
			row.RateMbit, row.GoodputMbit, lo, hi, row.GoodputRatio, row.IPRateMbit, row.IPRatio, row.QueueDrops,
			row.EmulatorCores, 100*row.MachineBusy, yes(row.OK))
	}

	l := r.Loss
	fmt.Fprintf(&b, "\n## Loss\n\n| configured | datagrams | lost | lost by the emulator | observed | 99%% binomial bounds | per repeat | within goal |\n|---:|---:|---:|---:|---:|---:|---|:---:|\n")
	var per []string
	for _, p := range l.PerRepeatPct {
		per = append(per, fmt.Sprintf("%.3f%%", p))
	}
	fmt.Fprintf(&b, "| %g%% | %d | %d | %d | %.3f%% | %.3f%%–%.3f%% | %s | %s |\n",
		l.ConfiguredPct, l.Sent, l.Lost, l.EmulatorLost, l.ObservedPct, l.LowPct, l.HighPct, strings.Join(per, " "), yes(l.OK))

	t := r.TopSpeed
	lo, hi := spread(t.GoodputGbit)
	fmt.Fprintf(&b, "\n## Top speed of one unshaped link\n\n| goodput Gbit/s (min–max) | emulator CPU s per Gbit | emulator cores busy |\n|---:|---:|---:|\n| %.2f (%.2f–%.2f) | %.3f | %.2f |\n",
		t.MedianGbit, lo, hi, t.MedianCPU, t.EmulatorCores)

	if len(r.Notes) > 0 {
		b.WriteString("\nNotes:\n")
		for _, n := range r.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	return b.String()
}
