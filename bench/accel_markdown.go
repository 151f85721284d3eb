package bench

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// dev is a measured value's deviation from the model, in percent.
func dev(measured, model float64) float64 { return 100 * (measured - model) / model }

// Markdown renders the accel report: tables with the model beside each
// measurement, the goals of issue 4 checked, and the plots.
func (r *AccelReport) Markdown() string {
	var b strings.Builder
	e := r.Env
	fmt.Fprintf(&b, "# halfway bench accel\n\n%s UTC, kernel %s, %d CPUs, %s. Median of %d repeats; measured (model) in ms.\n\n",
		e.Time.Format("2006-01-02 15:04"), e.Kernel, e.CPUs, e.Go, r.Repeats)
	for _, cc := range []string{"cubic", "bbr"} {
		r.fig4Markdown(&b, cc)
	}
	r.fig5Markdown(&b)
	r.ktcpMarkdown(&b)
	if len(r.Plots) > 0 {
		b.WriteString("## Plots\n\n")
		for _, p := range r.Plots {
			fmt.Fprintf(&b, "![%s](%s)\n\n", strings.TrimSuffix(p.Name, ".svg"), p.Name)
		}
	}
	for _, s := range r.Skipped {
		fmt.Fprintf(&b, "Skipped: %s\n\n", s)
	}
	b.WriteString("## Notes\n\n")
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "- %s\n", n)
	}
	labTimingMarkdown(&b, r.Labs)
	return b.String()
}

func (r *AccelReport) fig4Markdown(b *strings.Builder, cc string) {
	rows := map[[3]int]CurveRow{} // relays, halfway?, KB
	var kbs []int
	seen := map[int]bool{}
	for _, row := range r.Fig4 {
		if row.CC != cc {
			continue
		}
		h := 0
		lab := row.Relays
		if row.Config == "halfway" {
			h = 1
		} else {
			lab = int(math.Round(50/row.LegDelayMS)) - 1 // the lab it was measured in
		}
		rows[[3]int{lab, h, row.SizeKB}] = row
		if !seen[row.SizeKB] {
			seen[row.SizeKB] = true
			kbs = append(kbs, row.SizeKB)
		}
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(b, "## Miniproxy Fig. 4 (%s): RTT 100 ms, 100 Mbit/s, relays evenly spaced\n\n", cc)
	b.WriteString("Time to complete, measured (model); end to end on the same lab without relays.\n\n| size | end to end | 1 relay | 2 relays | 3 relays |\n|---:|---:|---:|---:|---:|\n")
	for _, kb := range kbs {
		fmt.Fprintf(b, "| %d KB | %s |", kb, cell(rows[[3]int{0, 0, kb}].TTCms, rows[[3]int{0, 0, kb}].ModelTTCms))
		for n := 1; n <= 3; n++ {
			row, ok := rows[[3]int{n, 1, kb}]
			if !ok {
				b.WriteString(" – |")
				continue
			}
			fmt.Fprintf(b, " %s |", cell(row.TTCms, row.ModelTTCms))
		}
		b.WriteString("\n")
	}
	b.WriteString("\nTTFB reduction against end to end measured in the same lab (10 KB flows; the model's own reduction in parentheses), and the largest TTC deviation from the model:\n\n| relays | e2e TTFB | halfway TTFB | reduction (model) | goal | largest TTC deviation |\n|---:|---:|---:|---:|---:|---:|\n")
	goals := map[int]float64{1: 25, 2: 100.0 / 3, 3: 37.5}
	for n := 1; n <= 3; n++ {
		kb := kbs[0]
		e2e, ok1 := rows[[3]int{n, 0, kb}]
		hw, ok2 := rows[[3]int{n, 1, kb}]
		if !ok1 || !ok2 {
			continue
		}
		red := 100 * (1 - hw.TTFBms/e2e.TTFBms)
		worst := 0.0
		for _, k := range kbs {
			if row, ok := rows[[3]int{n, 1, k}]; ok && math.Abs(dev(row.TTCms, row.ModelTTCms)) > math.Abs(worst) {
				worst = dev(row.TTCms, row.ModelTTCms)
			}
		}
		modelRed := 100 * (1 - hw.ModelTTFBms/e2e.ModelTTFBms)
		fmt.Fprintf(b, "| %d | %.1f | %.1f | %.1f%% (%.1f%%) | ≥ %.1f%% %s | %+.1f%% %s |\n", n, e2e.TTFBms, hw.TTFBms, red, modelRed, goals[n], yes(red >= goals[n]), worst, yes(math.Abs(worst) <= 5))
	}
	b.WriteString("\n")
}

func (r *AccelReport) fig5Markdown(b *strings.Builder) {
	if len(r.Fig5) == 0 {
		return
	}
	var xs []float64
	var kbs []int
	cells := map[string]CurveRow{}
	seenX, seenKB := map[float64]bool{}, map[int]bool{}
	var e2e map[int]CurveRow = map[int]CurveRow{}
	for _, row := range r.Fig5 {
		if row.Config == "e2e" {
			e2e[row.SizeKB] = row
		} else {
			cells[fmt.Sprint(row.LegDelayMS, row.SizeKB)] = row
			if !seenX[row.LegDelayMS] {
				seenX[row.LegDelayMS] = true
				xs = append(xs, row.LegDelayMS)
			}
		}
		if !seenKB[row.SizeKB] {
			seenKB[row.SizeKB] = true
			kbs = append(kbs, row.SizeKB)
		}
	}
	b.WriteString("## Miniproxy Fig. 5: one relay, each leg X ms one way (100 Mbit/s, cubic)\n\nTime to complete, measured (model); end to end is the 100 ms RTT path without the relay.\n\n| size | end to end |")
	for _, x := range xs {
		fmt.Fprintf(b, " X = %.1f |", x)
	}
	b.WriteString("\n|---:|---:|" + strings.Repeat("---:|", len(xs)) + "\n")
	for _, kb := range kbs {
		fmt.Fprintf(b, "| %d KB | %s |", kb, cell(e2e[kb].TTCms, e2e[kb].ModelTTCms))
		for _, x := range xs {
			row := cells[fmt.Sprint(x, kb)]
			mark := ""
			if e, ok := e2e[kb]; ok && row.TTCms < e.TTCms {
				mark = " ✓"
			}
			fmt.Fprintf(b, " %s%s |", cell(row.TTCms, row.ModelTTCms), mark)
		}
		b.WriteString("\n")
	}
	b.WriteString("\n✓: faster than end to end.\n\n")
}

func (r *AccelReport) ktcpMarkdown(b *strings.Builder) {
	if len(r.KTCP) == 0 {
		return
	}
	var configs []string
	var sizes []int
	cells := map[string]KTCPRow{}
	seenC, seenS := map[string]bool{}, map[int]bool{}
	for _, row := range r.KTCP {
		cells[fmt.Sprint(row.Config, row.SizeBytes)] = row
		if !seenC[row.Config] {
			seenC[row.Config] = true
			configs = append(configs, row.Config)
		}
		if !seenS[row.SizeBytes] {
			seenS[row.SizeBytes] = true
			sizes = append(sizes, row.SizeBytes)
		}
	}
	b.WriteString("## KTCP Figs. 3–4: client–rc 32.7 ms, rc–rs 215 ms, rs–server 26 ms RTT (200 Mbit/s, 1 Gbit/s, 1 Gbit/s), cubic\n\n")
	b.WriteString("TTFB | total time, measured (model), ms.\n\n| configuration | model |")
	for _, s := range sizes {
		fmt.Fprintf(b, " %s TTFB | %s total |", sizeLabel(s), sizeLabel(s))
	}
	b.WriteString("\n|---|---|" + strings.Repeat("---:|---:|", len(sizes)) + "\n")
	for _, c := range configs {
		fmt.Fprintf(b, "| %s | %s |", c, cells[fmt.Sprint(c, sizes[0])].ModelConfig)
		for _, s := range sizes {
			row := cells[fmt.Sprint(c, s)]
			fmt.Fprintf(b, " %s | %s |", cell(row.TTFBms, row.ModelTTFBms), cell(row.TotalMS, row.ModelTTCms))
		}
		b.WriteString("\n")
	}
	// The goals, on the smallest file's TTFB and the largest file's total.
	get := func(c string, s int) (KTCPRow, bool) { row, ok := cells[fmt.Sprint(c, s)]; return row, ok }
	small, large := sizes[0], sizes[len(sizes)-1]
	b.WriteString("\n| goal | measured | verdict |\n|---|---|:---:|\n")
	if sp, ok := get("halfway split", small); ok {
		if es, ok := get("+early SYN", small); ok {
			d := sp.TTFBms - es.TTFBms
			fmt.Fprintf(b, "| early SYN saves ≈ 59 ms of TTFB (model %.1f) | %.1f ms | %s |\n", sp.ModelTTFBms-es.ModelTTFBms, d, yes(math.Abs(d-59) <= 0.1*59))
			if pl, ok := get("+early SYN+pool", small); ok {
				d := es.TTFBms - pl.TTFBms
				fmt.Fprintf(b, "| the pool saves ≈ 182 ms more (model %.1f) | %.1f ms | %s |\n", es.ModelTTFBms-pl.ModelTTFBms, d, yes(math.Abs(d-182) <= 0.1*182))
			}
		}
	}
	if full, ok := get("+early SYN+pool+Turbo", small); ok {
		fmt.Fprintf(b, "| full stack TTFB within 5%% of the bound (%.1f ms) | %.1f ms (%+.1f%%) | %s |\n", full.ModelTTFBms, full.TTFBms, dev(full.TTFBms, full.ModelTTFBms), yes(math.Abs(dev(full.TTFBms, full.ModelTTFBms)) <= 5))
		if e2e, ok := get("e2e", small); ok {
			fmt.Fprintf(b, "| … against end to end | %.1f ms vs %.1f ms | |\n", full.TTFBms, e2e.TTFBms)
		}
		if hp, ok := get("HAProxy split", small); ok {
			fmt.Fprintf(b, "| … against HAProxy split | %.1f ms vs %.1f ms | |\n", full.TTFBms, hp.TTFBms)
		}
	}
	if full, ok := get("+early SYN+pool+Turbo", large); ok {
		if e2e, ok := get("e2e", large); ok {
			x := e2e.TotalMS / full.TotalMS
			fmt.Fprintf(b, "| %s ≥ 3× faster than end to end, ≤ 1.15 s | %.0f ms vs %.0f ms: %.2f× | %s |\n", sizeLabel(large), full.TotalMS, e2e.TotalMS, x, yes(x >= 3 && full.TotalMS <= 1150))
		}
		if hp, ok := get("HAProxy split", large); ok {
			fmt.Fprintf(b, "| … against HAProxy split | %.0f ms vs %.0f ms: %.2f× | |\n", full.TotalMS, hp.TotalMS, hp.TotalMS/full.TotalMS)
		}
	}
	b.WriteString("\n")
}

// cell is "measured (model)".
func cell(measured, model float64) string {
	if measured == 0 && model == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f (%.1f)", measured, model)
}

// labTimingMarkdown renders the lateness of the labs' link emulators.
func labTimingMarkdown(b *strings.Builder, labs []LabTiming) {
	if len(labs) == 0 {
		return
	}
	b.WriteString("\n## Link emulation\n\nPackets the user-space link emulator wrote after they were due, over each lab's life (all links, both directions): the machine running the lab fell behind. 4 ms is the RTT rise that makes cubic's HyStart leave slow start on a short path. Lost: frames the emulator itself lost, which no link was configured to (its socket full, its in-flight bound, a frame too large, a failed write).\n\n| lab | packets | ≥ 1 ms late | ≥ 4 ms late | max late ms | lost |\n|---|---:|---:|---:|---:|---:|\n")
	for _, l := range labs {
		name := l.Lab
		if l.CC != "" {
			name += " (" + l.CC + ")"
		}
		lost := "–" // not measured then
		if l.Lost != nil {
			lost = strconv.FormatUint(*l.Lost, 10)
		}
		fmt.Fprintf(b, "| %s | %d | %d | %d | %.1f | %s |\n", name, l.Packets, l.Late1ms, l.Late4ms, l.MaxLateMS, lost)
	}
}
