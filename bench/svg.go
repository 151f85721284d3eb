package bench

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// Plots are SVG, drawn here: lines for curves over a size axis, grouped
// bars for side-by-side configurations. Each is self-contained (no fonts or
// scripts to load) and readable at its natural 760×440 size.

// palette: distinguishable colours, also in grey print.
var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"}

type series struct {
	name   string
	x, y   []float64
	dashed bool
	color  int // index into palette
}

type plotFrame struct {
	b                      strings.Builder
	w, h                   float64
	left, right, top, bot  float64
	xmin, xmax, ymin, ymax float64
	logX                   bool
}

func newFrame(title, xlabel, ylabel string, xmin, xmax, ymax float64, logX bool) *plotFrame {
	f := &plotFrame{w: 760, h: 440, left: 70, right: 210, top: 40, bot: 55, xmin: xmin, xmax: xmax, ymax: axisCeil(ymax), logX: logX}
	fmt.Fprintf(&f.b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n", f.w, f.h, f.w, f.h)
	fmt.Fprintf(&f.b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&f.b, `<text x="%.0f" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", f.left, html.EscapeString(title))
	pw, ph := f.w-f.left-f.right, f.h-f.top-f.bot
	fmt.Fprintf(&f.b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#444"/>`+"\n", f.left, f.top, pw, ph)
	for _, t := range ticks(0, f.ymax) {
		y := f.py(t)
		fmt.Fprintf(&f.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`, f.left, y, f.left+pw, y)
		fmt.Fprintf(&f.b, `<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", f.left-6, y+4, fmtTick(t))
	}
	fmt.Fprintf(&f.b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", f.left+pw/2, f.h-12, html.EscapeString(xlabel))
	fmt.Fprintf(&f.b, `<text transform="translate(18 %.1f) rotate(-90)" text-anchor="middle">%s</text>`+"\n", f.top+ph/2, html.EscapeString(ylabel))
	return f
}

func (f *plotFrame) px(x float64) float64 {
	pw := f.w - f.left - f.right
	if f.logX {
		return f.left + pw*(math.Log(x)-math.Log(f.xmin))/(math.Log(f.xmax)-math.Log(f.xmin))
	}
	return f.left + pw*(x-f.xmin)/(f.xmax-f.xmin)
}

func (f *plotFrame) py(y float64) float64 {
	ph := f.h - f.top - f.bot
	return f.top + ph*(1-(y-f.ymin)/(f.ymax-f.ymin))
}

func (f *plotFrame) legend(i int, name string, color int, dashed bool) {
	x, y := f.w-f.right+14, f.top+10+float64(i)*18
	dash := ""
	if dashed {
		dash = ` stroke-dasharray="6 4"`
	}
	fmt.Fprintf(&f.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2.5"%s/>`, x, y, x+24, y, palette[color%len(palette)], dash)
	fmt.Fprintf(&f.b, `<text x="%.1f" y="%.1f">%s</text>`+"\n", x+30, y+4, html.EscapeString(name))
}

func (f *plotFrame) end() string {
	f.b.WriteString("</svg>\n")
	return f.b.String()
}

// lineSVG draws curves over x (sizes in KB, say), with a point marker at
// each measured value.
func lineSVG(title, xlabel, ylabel string, logX bool, ss []series) string {
	xmin, xmax, ymax := math.Inf(1), math.Inf(-1), 0.0
	for _, s := range ss {
		for i := range s.x {
			xmin, xmax, ymax = min(xmin, s.x[i]), max(xmax, s.x[i]), max(ymax, s.y[i])
		}
	}
	if len(ss) == 0 || xmin >= xmax {
		xmin, xmax = 0, 1
	}
	f := newFrame(title, xlabel, ylabel, xmin, xmax, ymax*1.05, logX)
	// x ticks at the data's own x values
	seen := map[float64]bool{}
	for _, s := range ss {
		for _, x := range s.x {
			if !seen[x] {
				seen[x] = true
				fmt.Fprintf(&f.b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`, f.px(x), f.h-f.bot+16, fmtTick(x))
			}
		}
	}
	for i, s := range ss {
		var pts []string
		for j := range s.x {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", f.px(s.x[j]), f.py(s.y[j])))
		}
		dash := ""
		if s.dashed {
			dash = ` stroke-dasharray="6 4"`
		}
		c := palette[s.color%len(palette)]
		fmt.Fprintf(&f.b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"%s/>`+"\n", strings.Join(pts, " "), c, dash)
		if !s.dashed {
			for _, p := range pts {
				xy := strings.Split(p, ",")
				fmt.Fprintf(&f.b, `<circle cx="%s" cy="%s" r="3" fill="%s"/>`, xy[0], xy[1], c)
			}
		}
		f.legend(i, s.name, s.color, s.dashed)
	}
	return f.end()
}

// barSVG draws, for each group (a file size), one bar per configuration,
// and the model's value as a black tick on the bar when there is one (NaN:
// none).
func barSVG(title, ylabel string, groups, bars []string, values, model [][]float64) string {
	ymax := 0.0
	for g := range values {
		for b := range values[g] {
			ymax = max(ymax, values[g][b])
			if model != nil && !math.IsNaN(model[g][b]) {
				ymax = max(ymax, model[g][b])
			}
		}
	}
	f := newFrame(title, "", ylabel, 0, float64(len(groups)), ymax*1.05, false)
	gw := (f.w - f.left - f.right) / float64(len(groups))
	bw := gw * 0.8 / float64(len(bars))
	for g, name := range groups {
		x0 := f.left + gw*float64(g) + gw*0.1
		fmt.Fprintf(&f.b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`, f.left+gw*(float64(g)+0.5), f.h-f.bot+16, html.EscapeString(name))
		for b := range bars {
			v := values[g][b]
			x, y := x0+bw*float64(b), f.py(v)
			fmt.Fprintf(&f.b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %s</title></rect>`,
				x, y, bw*0.9, f.py(0)-y, palette[b%len(palette)], html.EscapeString(bars[b]), html.EscapeString(name), fmtTick(v))
			if model != nil && !math.IsNaN(model[g][b]) {
				my := f.py(model[g][b])
				fmt.Fprintf(&f.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black" stroke-width="2"/>`, x, my, x+bw*0.9, my)
			}
		}
		f.b.WriteString("\n")
	}
	for b, name := range bars {
		f.legend(b, name, b, false)
	}
	if model != nil {
		x, y := f.w-f.right+14, f.top+10+float64(len(bars))*18
		fmt.Fprintf(&f.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black" stroke-width="2"/><text x="%.1f" y="%.1f">model</text>`+"\n", x, y, x+24, y, x+30, y+4)
	}
	return f.end()
}

// niceCeil rounds up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

// axisCeil rounds an axis maximum up to a multiple of its tick step.
func axisCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	step := niceCeil(v / 6)
	return math.Ceil(v/step) * step
}

func ticks(lo, hi float64) []float64 {
	step := niceCeil((hi - lo) / 6)
	var out []float64
	for t := lo; t <= hi+step/1000; t += step {
		out = append(out, t)
	}
	return out
}

func fmtTick(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.3g", v)
}
