package bench

import (
	"encoding/xml"
	"io"
	"math"
	"strings"
	"testing"
)

// validXML fails the test when s is not well-formed XML.
func validXML(t *testing.T, name, s string) {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(s))
	for {
		_, err := d.Token()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatalf("%s: not well-formed: %v", name, err)
		}
	}
}

func TestPlotsAreSVG(t *testing.T) {
	line := lineSVG("a & b", "size (KB)", "ms", true, []series{
		{name: "measured <1>", x: []float64{10, 100, 500}, y: []float64{200, 400, 900}},
		{name: "model", x: []float64{10, 100, 500}, y: []float64{190, 410, 880}, dashed: true},
	})
	validXML(t, "line", line)
	bars := barSVG("bars", "ms", []string{"10 KB", "10 MB"}, []string{"e2e", "halfway"},
		[][]float64{{550, 309}, {3176, 1069}}, [][]float64{{547.5, 306.5}, {3115.5, math.NaN()}})
	validXML(t, "bars", bars)
	if strings.Count(bars, "<rect") != 2+4 { // background, frame, four bars
		t.Errorf("bars: %d rects, want 6", strings.Count(bars, "<rect"))
	}
	if strings.Count(bars, `stroke="black" stroke-width="2"/>`) != 3+1 { // three model marks, one legend line
		t.Errorf("bars: model marks wrong:\n%s", bars)
	}
}

func TestAxisCeil(t *testing.T) {
	for _, tc := range []struct{ in, want float64 }{{3335, 4000}, {950, 1000}, {1, 1}, {0, 1}, {42, 50}, {560, 600}} {
		if got := axisCeil(tc.in); got != tc.want {
			t.Errorf("axisCeil(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

// The KTCP goals are judged from the rows: savings, the bound, the speed-up.
func TestAccelMarkdownGoals(t *testing.T) {
	row := func(c, m string, size int, ttfb, total, mttfb, mttc float64) KTCPRow {
		return KTCPRow{Config: c, ModelConfig: m, SizeBytes: size, TTFBms: ttfb, TotalMS: total, ModelTTFBms: mttfb, ModelTTCms: mttc}
	}
	r := &AccelReport{Repeats: 5, KTCP: []KTCPRow{
		row("e2e", "e2e", 10_000, 550, 551, 547.5, 547.8), row("e2e", "e2e", 10_000_000, 550, 3300, 547.5, 3115),
		row("halfway split", "split", 10_000, 552, 552, 547.5, 547.8), row("halfway split", "split", 10_000_000, 552, 2600, 547.5, 2586),
		row("+early SYN", "esf", 10_000, 492, 492, 488.8, 489), row("+early SYN", "esf", 10_000_000, 492, 2500, 488.8, 2527),
		row("+early SYN+pool", "esf+pool", 10_000, 309, 309, 306.5, 306.8), row("+early SYN+pool", "esf+pool", 10_000_000, 309, 2300, 306.5, 2345),
		row("+early SYN+pool+Turbo", "esf+pool+turbo", 10_000, 310, 310, 306.5, 306.8), row("+early SYN+pool+Turbo", "esf+pool+turbo", 10_000_000, 310, 1200, 306.5, 866),
	}}
	md := r.Markdown()
	wantLines(t, md,
		"| early SYN saves ≈ 59 ms of TTFB (model 58.7) | 60.0 ms | yes |",
		"| the pool saves ≈ 182 ms more (model 182.3) | 183.0 ms | yes |",
		"| full stack TTFB within 5% of the bound (306.5 ms) | 310.0 ms (+1.1%) | yes |",
		"| 10 MB ≥ 3× faster than end to end, ≤ 1.15 s | 1200 ms vs 3300 ms: 2.75× | **no** |",
	)
}

// wantLines fails t for each of wants the Markdown report md lacks.
func wantLines(t *testing.T, md string, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}

// TestFig4GoalStrict: a TTFB reduction below the goal is reported as
// missed, however close.
func TestFig4GoalStrict(t *testing.T) {
	row := func(relays int, config string, leg, ttfb, mttfb float64) CurveRow {
		return CurveRow{CC: "cubic", Relays: relays, LegDelayMS: leg, Config: config, SizeKB: 10, TTFBms: ttfb, TTCms: ttfb, ModelTTFBms: mttfb, ModelTTCms: mttfb}
	}
	r := &AccelReport{Repeats: 5, Fig4: []CurveRow{
		row(0, "e2e", 25, 200, 200), row(1, "halfway", 25, 150.2, 150),
		row(0, "e2e", 50.0/3, 200, 200), row(2, "halfway", 50.0/3, 133, 133.3),
	}}
	wantLines(t, r.Markdown(),
		"| 1 | 200.0 | 150.2 | 24.9% (25.0%) | ≥ 25.0% **no** |",
		"| 2 | 200.0 | 133.0 | 33.5% (33.3%) | ≥ 33.3% yes |",
	)
}
