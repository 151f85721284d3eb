package bench

import (
	"strings"
	"testing"

	"halfway/netlab"
	"halfway/netlab/linkem"
)

// TestDownShare3G: the 3G share counts only what each client link sent
// down (b to a) between the two readings.
func TestDownShare3G(t *testing.T) {
	stats := func(adslDown, g3Down, up uint64) []netlab.LinkStats {
		return []netlab.LinkStats{
			{AB: linkem.DirStats{TxIPBytes: up}, BA: linkem.DirStats{TxIPBytes: adslDown}},
			{AB: linkem.DirStats{TxIPBytes: up}, BA: linkem.DirStats{TxIPBytes: g3Down}},
			{BA: linkem.DirStats{TxIPBytes: 1 << 40}}, // the server's link
		}
	}
	for _, tc := range []struct {
		name          string
		before, after []netlab.LinkStats
		want          float64
	}{
		{"one in eight", stats(1000, 500, 0), stats(8000, 1500, 9999), 0.125},
		{"none on 3G", stats(0, 7, 0), stats(4000, 7, 50), 0},
		{"nothing sent", stats(5, 5, 0), stats(5, 5, 0), 0},
		{"no counters", nil, stats(5, 5, 0), 0},
	} {
		if got := downShare3G(tc.before, tc.after); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestMPTCPMarkdownInteractive: each interactive row shows its 3G share,
// and the goal line judges the best MPTCP row through halfway.
func TestMPTCPMarkdownInteractive(t *testing.T) {
	rows := []InteractiveRow{
		{Config: "MPTCP through halfway to the TCP server", Messages: 9000, P50ms: 16.1, P99ms: 248.9, MaxMs: 636.5, Share3G: 0.13},
		{Config: "MPTCP through halfway, legs.client rto_min 20ms and thin_linear_timeouts", Messages: 9000, P50ms: 16.3, P99ms: 77.5, MaxMs: 164.9, Share3G: 0.14, RelayRTOMinMs: 20},
		{Config: "MPTCP end to end (an MPTCP server; reference)", Messages: 9000, P50ms: 16.3, P99ms: 305, MaxMs: 438.7, Share3G: 0.13},
		{Config: "TCP, best path (ADSL), end to end", Messages: 9000, P50ms: 15.4, P99ms: 46.9, MaxMs: 106.5},
	}
	for _, tc := range []struct {
		name string
		rows []InteractiveRow
		want []string
	}{
		{"met", rows, []string{
			"| MPTCP through halfway to the TCP server | 9000 | 16.1 ms | 248.9 ms | 636.5 ms | 13% |",
			"| TCP, best path (ADSL), end to end | 9000 | 15.4 ms | 46.9 ms | 106.5 ms | 0% |",
			"Measured max: 636.5 ms MPTCP halfway, 164.9 ms MPTCP halfway, tuned, 438.7 ms MPTCP e2e — met (≤ 165 ms through halfway",
		}},
		{"missed", []InteractiveRow{rows[0], rows[2]}, []string{
			"Measured max: 636.5 ms MPTCP halfway, 438.7 ms MPTCP e2e — **missed**",
		}},
	} {
		md := (&MPTCPReport{Interactive: tc.rows}).Markdown()
		for _, want := range tc.want {
			if !strings.Contains(md, want) {
				t.Errorf("%s: missing %q in\n%s", tc.name, want, md)
			}
		}
	}
}
