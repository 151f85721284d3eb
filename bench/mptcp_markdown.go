package bench

import (
	"fmt"
	"math"
	"strings"
)

// Markdown renders the report with the goals beside the figures.
func (r *MPTCPReport) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# halfway bench mptcp\n\n%s UTC, kernel %s, %d CPUs, %s. Median of %d repeats.\n\n",
		r.Env.Time.UTC().Format("2006-01-02 15:04"), r.Env.Kernel, r.Env.CPUs, r.Env.Go, r.Repeats)
	if len(r.Goodput) > 0 {
		b.WriteString("## Download goodput (MiMBox §4.4)\n\n| configuration | goodput, Mbit/s (min–max) | share of downstream bytes on 3G |\n|---|---:|---:|\n")
		for _, row := range r.Goodput {
			fmt.Fprintf(&b, "| %s | %.2f (%.2f–%.2f) | %.0f%% |\n", row.Config, row.Median, row.Lo, row.Hi, 100*row.Share3G)
		}
		if conv, best := r.goodput("MPTCP through halfway"), r.goodput("TCP, best path"); conv > 0 {
			fmt.Fprintf(&b, "\nGoal: through halfway ≥ 90%% of the 10 Mbit/s sum (9.0), against ≤ 8 for TCP on the best path. Measured: %.2f Mbit/s (%.0f%% of the sum; %.2f× TCP on ADSL) — %s.\n\n",
				conv, 10*conv, conv/best, metOrMissed(conv >= 9))
		}
	}
	type sweep struct {
		head string
		rows []BufferRow
		full int
	}
	var sweeps []sweep
	for _, sw := range []sweep{
		{"tcp_rmem/tcp_wmem maximum, autotuning (MiMBox's way)", r.BuffersSysctl, r.FullBufferSysctl},
		{"fixed with send_buffer/receive_buffer", r.Buffers, r.FullBuffer},
		{"fixed, and bbr on the client leg", r.BuffersBBR, r.FullBufferBBR},
	} {
		if len(sw.rows) > 0 {
			sweeps = append(sweeps, sw)
		}
	}
	if len(sweeps) > 0 {
		b.WriteString("## Goodput vs per-socket buffer on the relay (MiMBox Fig. 6)\n\n| buffer per socket |")
		for _, sw := range sweeps {
			fmt.Fprintf(&b, " %s: Mbit/s (each repeat) |", sw.head)
		}
		b.WriteString("\n|---:|" + strings.Repeat("---:|", len(sweeps)) + "\n")
		for i, row := range sweeps[0].rows {
			fmt.Fprintf(&b, "| %d KB |", row.Buffer/1000)
			for _, sw := range sweeps {
				if i < len(sw.rows) {
					fmt.Fprintf(&b, " %.2f (%s) |", sw.rows[i].Median, floats(sw.rows[i].Mbps))
				} else {
					b.WriteString(" |")
				}
			}
			b.WriteString("\n")
		}
		b.WriteString("\nFull goodput (≥ 95% of the best median of the same sweep), goal ≤ 200 KB per socket:\n\n")
		for _, sw := range sweeps {
			from := "not reached"
			if sw.full > 0 {
				from = fmt.Sprintf("from %d KB", sw.full/1000)
			}
			fmt.Fprintf(&b, "- %s: %s — %s\n", sw.head, from, metOrMissed(sw.full > 0 && sw.full <= 200_000))
		}
		b.WriteString("\n")
	}
	if len(r.Interactive) > 0 {
		b.WriteString("## Interactive flow, 100 kbit/s, 1% loss on the client links\n\n| configuration | messages | delay p50 | p99 | max | share of downstream bytes on 3G |\n|---|---:|---:|---:|---:|---:|\n")
		for _, row := range r.Interactive {
			fmt.Fprintf(&b, "| %s | %d | %.1f ms | %.1f ms | %.1f ms | %.0f%% |\n", row.Config, row.Messages, row.P50ms, row.P99ms, row.MaxMs, 100*row.Share3G)
		}
		b.WriteString("\nDelay is the application's: from the server's write to the client's read, including the links' own one-way delay (15 ms on the ADSL path; 45 ms on 3G). The 3G share includes acknowledgements and retransmissions; MPTCP's scheduler in this kernel sends on whichever subflow would drain its queue first, so a message can leave on 3G while ADSL still has the previous one unacknowledged. A message lost on 3G, alone in flight there, waits for a timer (its tail-loss probe, or its retransmission) of about a round trip plus the sender's minimum RTO, 200 ms by default. The tuned rows lower the relay's to 20 ms (legs.client.rto_min) and keep its timeout from doubling when a retransmission is lost too (legs.client.thin_linear_timeouts); MPTCP sockets refuse both options, and the relay sets them on its listening subflow, which the subflows it accepts inherit (a BPF TCP socket iterator), with no host setting.\n\n")
		b.WriteString(interactiveGoal(r.Interactive))
	}
	if p := r.PathLoss; p != nil {
		fmt.Fprintf(&b, "## Path loss\n\nA %d-byte download over MPTCP through halfway; the client's ADSL link goes down after %.1f s. Complete: %v, SHA-256 matches: %v, in %.1f s. Downstream IP bytes: ADSL %d, 3G %d (%d of them after the loss).",
			p.Bytes, p.DownAfterS, p.Complete, p.SHA256OK, p.TotalS, p.BytesADSL, p.Bytes3G, p.After3GOnly)
		if p.Error != "" {
			fmt.Fprintf(&b, " Error: %s.", p.Error)
		}
		fmt.Fprintf(&b, " Goal: completes byte-exact — %s.\n\n", metOrMissed(p.Complete && p.SHA256OK))
	}
	if len(r.Loopback) >= 2 {
		b.WriteString("## Loopback (client, relay and sink share the 2 CPUs)\n\n| client → sink | Gbit/s (min–max) | relay CPU s/GB |\n|---|---:|---:|\n")
		for _, row := range r.Loopback {
			c := "–"
			if row.RelayCPUPerGB > 0 {
				c = fmt.Sprintf("%.2f", row.RelayCPUPerGB)
			}
			fmt.Fprintf(&b, "| %s | %.2f (%.2f–%.2f) | %s |\n", row.Config, row.Median/1000, row.Lo/1000, row.Hi/1000, c)
		}
		ratio := r.Loopback[1].Median / r.Loopback[0].Median
		fmt.Fprintf(&b, "\nThrough halfway, MPTCP→TCP is %.0f%% of TCP→TCP. Goal ≥ 90%% — %s.", 100*ratio, metOrMissed(ratio >= 0.9))
		if len(r.Loopback) == 4 && r.Loopback[2].Median > 0 {
			fmt.Fprintf(&b, " Without a relay, an MPTCP client to an MPTCP sink is %.0f%% of TCP to TCP: the rest of the gap is the MPTCP stack's own cost on the shared CPUs.", 100*r.Loopback[3].Median/r.Loopback[2].Median)
		}
		b.WriteString("\n\n")
	}
	for _, p := range r.Plots {
		fmt.Fprintf(&b, "![%s](%s)\n", p.Name, p.Name)
	}
	b.WriteString("\n## Notes\n\n")
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "- %s\n", n)
	}
	labTimingMarkdown(&b, r.Labs)
	return b.String()
}

func (r *MPTCPReport) goodput(prefix string) float64 {
	for _, row := range r.Goodput {
		if strings.HasPrefix(row.Config, prefix) {
			return row.Median
		}
	}
	return 0
}

func metOrMissed(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func floats(xs []float64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprintf("%.2f", x)
	}
	return strings.Join(s, ", ")
}

// interactiveGoal compares the interactive rows' max delay with MiMBox's:
// ≈ 150 ms through the converter, ≈ 250 ms without. Met is within 10% of
// 150 ms for the best MPTCP row through halfway.
func interactiveGoal(rows []InteractiveRow) string {
	var parts []string
	best := math.Inf(1)
	for _, row := range rows {
		if !strings.HasPrefix(row.Config, "MPTCP") {
			continue
		}
		parts = append(parts, fmt.Sprintf("%.1f ms %s", row.MaxMs, shortConfig(row.Config)))
		if strings.Contains(row.Config, "halfway") {
			best = min(best, row.MaxMs)
		}
	}
	if math.IsInf(best, 1) {
		return ""
	}
	return fmt.Sprintf("Goal (MiMBox): max ≈ 150 ms through the converter, against ≈ 250 ms without. Measured max: %s — %s (≤ 165 ms through halfway, 150 + 10%%).\n\n",
		strings.Join(parts, ", "), metOrMissed(best <= 165))
}
