package main

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"

	"halfway/bench"
	"halfway/model"
	"halfway/netlab"
)

// runModel prints the Miniproxy model's TTFB and TTC for a lab topology's
// client–server path, every node between them being a relay.
func runModel(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("model", stderr)
	file := fs.String("f", "", "lab topology file (YAML)")
	sizes := fs.String("sizes", "10KB,100KB,1MB,10MB", "response sizes (KB and MB are powers of 1000)")
	from := fs.String("from", "", "client node (default: the first node)")
	to := fs.String("to", "", "server node (default: the last node)")
	iw := fs.Int("iw", model.DefaultIW, "initial window of every leg, in segments")
	turbo := fs.Int("turbo-iw", model.DefaultTurboIW, "initial window of relay–relay legs with Turbo-Start")
	tfo := fs.Bool("tfo", false, "relay–relay legs without a pool open with a 0-RTT Fast Open SYN")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	if *file == "" {
		return fmt.Errorf("%w: model -f TOPOLOGY [--sizes 10KB,100KB,1MB]", errUsage)
	}
	if *iw < 1 || *turbo < 1 {
		return fmt.Errorf("%w: --iw %d, --turbo-iw %d: want 1 segment or more", errUsage, *iw, *turbo)
	}
	t, err := netlab.LoadTopology(*file)
	if err != nil {
		return err
	}
	if *from == "" {
		*from = t.Nodes[0].Name
	}
	if *to == "" {
		*to = t.Nodes[len(t.Nodes)-1].Name
	}
	if *from == *to {
		return fmt.Errorf("%w: --from and --to are both %s: want two nodes", errUsage, *from)
	}
	legs, err := t.PathBetween(*from, *to)
	if err != nil {
		return err
	}
	p, err := bench.ModelPath(t, *from, *to, *iw)
	if err != nil {
		return err
	}
	var ss []int
	for _, f := range strings.Split(*sizes, ",") {
		n, err := parseSize(f)
		if err != nil {
			return fmt.Errorf("%w: --sizes: %v", errUsage, err)
		}
		ss = append(ss, n)
	}
	opt := model.Options{TurboIW: *turbo, TFO: *tfo}
	var preds []model.Prediction
	for _, c := range model.Configs() {
		for _, n := range ss {
			pr, err := model.Predict(p, c, n, opt)
			if err != nil {
				return err
			}
			preds = append(preds, pr)
		}
	}
	var route []string
	for _, l := range legs {
		route = append(route, l.From)
	}
	route = append(route, *to)
	if *asJSON {
		type row struct {
			Config string  `json:"config"`
			Size   int     `json:"size_bytes"`
			TTFBms float64 `json:"ttfb_ms"`
			TTCms  float64 `json:"ttc_ms"`
		}
		var rows []row
		for _, pr := range preds {
			rows = append(rows, row{string(pr.Config), pr.Size, float64(pr.TTFB) / 1e6, float64(pr.TTC) / 1e6})
		}
		return emit(stdout, true, "", "model", "", map[string]any{"topology": t.Name, "path": route, "predictions": rows})
	}
	fmt.Fprintf(stdout, "Model (Miniproxy eqs. 1–11, generalized) for %s: %s; relays at the inner nodes.\n\n", t.Name, strings.Join(route, " → "))
	tw := tabwriter.NewWriter(stdout, 2, 8, 2, ' ', tabwriter.AlignRight)
	hdr := "config\t"
	for _, n := range ss {
		hdr += fmt.Sprintf("%s TTFB ms\t%s TTC ms\t", sizeName(n), sizeName(n))
	}
	fmt.Fprintln(tw, hdr)
	for i, c := range model.Configs() {
		line := string(c) + "\t"
		for j := range ss {
			pr := preds[i*len(ss)+j]
			line += fmt.Sprintf("%.1f\t%.1f\t", float64(pr.TTFB)/1e6, float64(pr.TTC)/1e6)
		}
		fmt.Fprintln(tw, line)
	}
	return tw.Flush()
}

// maxSize bounds a --sizes entry so that its byte count is exact in a
// float64 and fits an int; the model refuses far smaller sizes itself.
const maxSize = 1 << 53

// parseSize parses one --sizes entry, such as 1448, 1448B, 10KB or 1.5MB
// (KB and MB are powers of 1000), into a positive whole number of bytes.
func parseSize(s string) (int, error) {
	num := strings.ToUpper(strings.TrimSpace(s))
	mult := 1.0
	for _, u := range []struct {
		suffix string
		m      float64
	}{{"KB", 1e3}, {"MB", 1e6}, {"B", 1}} {
		if v, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = v, u.m
			break
		}
	}
	n, err := strconv.ParseFloat(num, 64)
	if err != nil || math.IsNaN(n) || math.IsInf(n, 0) {
		return 0, fmt.Errorf("%q: want a size like 100KB", s)
	}
	b := n * mult
	r := math.Round(b)
	switch {
	case r < 1:
		return 0, fmt.Errorf("%q: want a size of at least 1 byte", s)
	case b > maxSize:
		return 0, fmt.Errorf("%q: too large", s)
	case math.Abs(b-r) > 1e-6:
		return 0, fmt.Errorf("%q: not a whole number of bytes", s)
	}
	return int(r), nil
}

func sizeName(n int) string {
	switch {
	case n >= 1e6 && n%1e6 == 0:
		return fmt.Sprintf("%dMB", n/1e6)
	case n >= 1e3 && n%1e3 == 0:
		return fmt.Sprintf("%dKB", n/1e3)
	}
	return fmt.Sprintf("%dB", n)
}
