package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"halfway/bench"
	"halfway/netlab"
)

func runBench(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: bench needs a scenario: lab, accel, mptcp, peers or footprint", errUsage)
	}
	switch args[0] {
	case "lab":
		return benchLab(args[1:], stdout, stderr)
	case "footprint":
		return benchFootprint(args[1:], stdout, stderr)
	case "accel":
		return benchAccel(args[1:], stdout, stderr)
	case "mptcp":
		return benchMPTCP(args[1:], stdout, stderr)
	case "peers":
		return benchPeers(args[1:], stdout, stderr)
	}
	if isHelp(args[0]) {
		subcommandHelp(stdout, "bench")
		return nil
	}
	return fmt.Errorf("%w: unknown bench scenario %q", errUsage, args[0])
}

func benchLab(args []string, stdout, stderr io.Writer) error {
	o := bench.DefaultLabOptions()
	fs := newFlags("bench lab", stderr)
	asJSON := fs.Bool("json", false, "print JSON instead of Markdown")
	out := fs.String("out", "", "also write lab.md and lab.json into this directory")
	fs.IntVar(&o.Repeats, "repeats", o.Repeats, "repeats per measurement")
	fs.DurationVar(&o.Window, "window", o.Window, "bulk measurement window")
	fs.DurationVar(&o.Warm, "warm", o.Warm, "bulk warm-up before the window")
	fs.IntVar(&o.LossN, "loss-datagrams", o.LossN, "datagrams per loss repeat")
	quiet := fs.Bool("q", false, "no progress on stderr")
	fs.Func("rates", "comma-separated link rates for the throughput part (default 1mbit,10mbit,100mbit,500mbit)", func(v string) error {
		o.Rates = nil
		for _, f := range strings.Split(v, ",") {
			var r netlab.Rate
			if err := r.UnmarshalText([]byte(f)); err != nil || r == 0 {
				return fmt.Errorf("%q: want a rate like 100mbit", f)
			}
			o.Rates = append(o.Rates, uint64(r))
		}
		return nil
	})
	fs.Func("rtts", "comma-separated RTTs for the RTT part (default 0,1ms,10ms,50ms,100ms,215ms,300ms)", func(v string) error {
		o.RTTs = nil
		for _, f := range strings.Split(v, ",") {
			d, err := time.ParseDuration(f)
			if err != nil || d < 0 {
				return fmt.Errorf("%q: want a duration like 10ms", f)
			}
			o.RTTs = append(o.RTTs, d)
		}
		return nil
	})
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	if o.Repeats < 1 {
		return fmt.Errorf("%w: --repeats must be at least 1", errUsage)
	}
	if err := o.Validate(); err != nil {
		return fmt.Errorf("%w: --window > 0, --warm ≥ 0, --loss-datagrams ≥ 1: %v", errUsage, err)
	}
	if !*quiet {
		o.Log = stderr
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r, err := bench.RunLab(ctx, o)
	if err != nil {
		return err
	}
	return emit(stdout, *asJSON, *out, "lab", r.Markdown(), r)
}

// emit prints a report as Markdown or JSON, and with out set also writes
// NAME.md and NAME.json there.
func emit(stdout io.Writer, asJSON bool, out, name, md string, v any) error {
	js, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if out != "" {
		if err := os.MkdirAll(out, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(out, name+".json"), append(js, '\n'), 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(out, name+".md"), []byte(md), 0o644); err != nil {
			return err
		}
	}
	if asJSON {
		_, err = fmt.Fprintln(stdout, string(js))
	} else {
		_, err = fmt.Fprint(stdout, md)
	}
	return err
}

func benchFootprint(args []string, stdout, stderr io.Writer) error {
	o := bench.FootprintOptions{Flows: 9000, Repeats: 5, Settle: 125 * time.Second}
	fs := newFlags("bench footprint", stderr)
	asJSON := fs.Bool("json", false, "print JSON instead of Markdown")
	out := fs.String("out", "", "also write footprint.md and footprint.json into this directory")
	fs.IntVar(&o.Flows, "flows", o.Flows, "idle relayed flows to hold open")
	fs.IntVar(&o.Repeats, "repeats", o.Repeats, "exec-to-accept repeats")
	fs.DurationVar(&o.Settle, "settle", o.Settle, "read the idle relay's RSS again this long after its start, past the runtime's forced GC at 2 minutes (0: skip)")
	quiet := fs.Bool("q", false, "no progress on stderr")
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	if o.Flows < 1 || o.Repeats < 1 {
		return fmt.Errorf("%w: --flows and --repeats must be at least 1", errUsage)
	}
	if !*quiet {
		o.Log = stderr
	}
	ctx, stop, err := benchContext(&o.Exe)
	if err != nil {
		return err
	}
	defer stop()
	r, err := bench.RunFootprint(ctx, o)
	if err != nil {
		return err
	}
	return emit(stdout, *asJSON, *out, "footprint", r.Markdown(), r)
}

func benchAccel(args []string, stdout, stderr io.Writer) error {
	o := bench.DefaultAccelOptions()
	fs := newFlags("bench accel", stderr)
	asJSON := fs.Bool("json", false, "print JSON instead of Markdown")
	out := fs.String("out", "", "also write accel.md, accel.json and the SVG plots into this directory")
	fs.IntVar(&o.Repeats, "repeats", o.Repeats, "repeats per measurement")
	fs.IntVar(&o.TurboIW, "turbo-iw", o.TurboIW, "Turbo-Start initial windows on the KTCP relay legs, in segments")
	parts := fs.String("parts", strings.Join(o.Parts, ","), "which parts: fig4, fig5, ktcp")
	ccs := fs.String("fig4-cc", strings.Join(o.Fig4CCs, ","), "congestion controls for Fig. 4")
	quiet := fs.Bool("q", false, "no progress on stderr")
	from := fs.String("from", "", "render the report and plots of an earlier run's accel.json instead of measuring")
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	if *from != "" {
		r, err := loadReport(*from, bench.LoadAccel)
		if err != nil {
			return err
		}
		return writeAccel(stdout, *asJSON, *out, r)
	}
	if o.Repeats < 1 || o.TurboIW < 1 {
		return fmt.Errorf("%w: --repeats and --turbo-iw must be at least 1", errUsage)
	}
	o.Parts, o.Fig4CCs = strings.Split(*parts, ","), strings.Split(*ccs, ",")
	var r *bench.AccelReport
	if err := measure(*quiet, stderr, &o.Exe, &o.Log, func(ctx context.Context) (err error) {
		r, err = bench.RunAccel(ctx, o)
		return err
	}); err != nil {
		return err
	}
	return writeAccel(stdout, *asJSON, *out, r)
}

func benchMPTCP(args []string, stdout, stderr io.Writer) error {
	o := bench.DefaultMPTCPOptions()
	fs := newFlags("bench mptcp", stderr)
	asJSON := fs.Bool("json", false, "print JSON instead of Markdown")
	out := fs.String("out", "", "also write mptcp.md, mptcp.json and the SVG plots into this directory")
	fs.IntVar(&o.Repeats, "repeats", o.Repeats, "repeats per measurement")
	parts := fs.String("parts", strings.Join(o.Parts, ","), "which parts: goodput, buffers, interactive, pathloss, loopback")
	fs.DurationVar(&o.Warm, "warm", o.Warm, "download warm-up before the goodput window")
	fs.DurationVar(&o.Window, "window", o.Window, "goodput window")
	fs.DurationVar(&o.Interactive, "interactive", o.Interactive, "length of each interactive flow")
	fs.Func("buffers", "comma-separated per-socket buffers for the sweep, bytes (default 50000,…,1000000)", func(v string) error {
		o.Buffers = nil
		for _, f := range strings.Split(v, ",") {
			var n int
			if _, err := fmt.Sscan(f, &n); err != nil || n < 4096 {
				return fmt.Errorf("%q: want a byte count of at least 4096", f)
			}
			o.Buffers = append(o.Buffers, n)
		}
		return nil
	})
	modes := fs.String("buffer-modes", strings.Join(o.BufferModes, ","), "buffer sweeps: sockopt (fixed buffers), sysctl (tcp_rmem/tcp_wmem limits), bbr (fixed buffers, bbr on the client leg)")
	quiet := fs.Bool("q", false, "no progress on stderr")
	from := fs.String("from", "", "render the report and plots of an earlier run's mptcp.json instead of measuring")
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	var r *bench.MPTCPReport
	var err error
	if *from != "" {
		if r, err = loadReport(*from, bench.LoadMPTCP); err != nil {
			return err
		}
	} else {
		if o.Repeats < 1 || o.Window <= 0 || o.Warm < 0 || o.Interactive < 100*time.Millisecond {
			return fmt.Errorf("%w: --repeats ≥ 1, --window > 0, --interactive ≥ 100ms", errUsage)
		}
		o.Parts, o.BufferModes = strings.Split(*parts, ","), strings.Split(*modes, ",")
		if err := measure(*quiet, stderr, &o.Exe, &o.Log, func(ctx context.Context) (err error) {
			r, err = bench.RunMPTCP(ctx, o)
			return err
		}); err != nil {
			return err
		}
	}
	return writeReport(stdout, *asJSON, *out, "mptcp", r.Plots, r.Markdown(), r)
}

func benchPeers(args []string, stdout, stderr io.Writer) error {
	o := bench.DefaultPeersOptions()
	fs := newFlags("bench peers", stderr)
	asJSON := fs.Bool("json", false, "print JSON instead of Markdown")
	out := fs.String("out", "", "also write peers.md, peers.json and the plot into this directory")
	fs.IntVar(&o.Repeats, "repeats", o.Repeats, "interleaved repeats")
	peers := fs.String("peers", strings.Join(o.Peers, ","), "proxies to compare with direct: "+strings.Join(bench.KnownPeers(), ", "))
	parts := fs.String("parts", strings.Join(o.Parts, ","), "which parts: start, throughput, connrate, keepalive, latency, memory")
	fs.IntVar(&o.Flows, "flows", o.Flows, "idle flows for the memory part (20,000 descriptors per process here)")
	fs.IntVar(&o.SocatFlows, "socat-flows", o.SocatFlows, "idle flows for socat, which forks a process per flow")
	fs.DurationVar(&o.Window, "window", o.Window, "throughput and connection-rate window")
	fs.IntVar(&o.Clients, "clients", o.Clients, "concurrent clients for the connection rates")
	fs.IntVar(&o.Requests, "requests", o.Requests, "requests per latency repeat")
	noInstall := fs.Bool("no-install", false, "do not apt-get missing peers; skip them")
	quiet := fs.Bool("q", false, "no progress on stderr")
	from := fs.String("from", "", "render the report of an earlier run's peers.json instead of measuring")
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	var r *bench.PeersReport
	var err error
	if *from != "" {
		if r, err = loadReport(*from, bench.LoadPeers); err != nil {
			return err
		}
	} else {
		if o.Repeats < 1 || o.Window <= 0 || o.Clients < 1 || o.Requests < 1 || o.Flows < 1 || o.Flows > 9500 || o.SocatFlows < 1 {
			return fmt.Errorf("%w: --repeats, --clients, --requests ≥ 1, --window > 0, 1 ≤ --flows ≤ 9500", errUsage)
		}
		o.Peers, o.Parts, o.Install = strings.Split(*peers, ","), strings.Split(*parts, ","), !*noInstall
		if err := measure(*quiet, stderr, &o.Exe, &o.Log, func(ctx context.Context) (err error) {
			r, err = bench.RunPeers(ctx, o)
			return err
		}); err != nil {
			return err
		}
	}
	return writeReport(stdout, *asJSON, *out, "peers", r.Plots, r.Markdown(), r)
}

// loadReport reads a report an earlier run wrote with --json.
func loadReport[R any](file string, load func([]byte) (R, error)) (R, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		var zero R
		return zero, err
	}
	r, err := load(b)
	if err != nil {
		return r, fmt.Errorf("%s: %w", file, err)
	}
	return r, nil
}

// measure runs a benchmark as this binary (relays and lab daemons run
// it), with progress on stderr unless quiet, until SIGINT or SIGTERM.
func measure(quiet bool, stderr io.Writer, exe *string, log *io.Writer, run func(context.Context) error) error {
	if !quiet {
		*log = stderr
	}
	ctx, stop, err := benchContext(exe)
	if err != nil {
		return err
	}
	defer stop()
	return run(ctx)
}

// writeReport writes the plots into out, when set, and prints the report
// (emit writes it into out too).
func writeReport(stdout io.Writer, asJSON bool, out, name string, plots []bench.AccelPlot, markdown string, v any) error {
	if err := writePlots(out, plots); err != nil {
		return err
	}
	return emit(stdout, asJSON, out, name, markdown, v)
}

// writePlots writes SVG plots into out (nothing without out).
func writePlots(out string, plots []bench.AccelPlot) error {
	if out == "" {
		return nil
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for _, p := range plots {
		if err := os.WriteFile(filepath.Join(out, p.Name), []byte(p.SVG), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// writeAccel prints the report and, with out set, writes it and its plots
// there.
func writeAccel(stdout io.Writer, asJSON bool, out string, r *bench.AccelReport) error {
	return writeReport(stdout, asJSON, out, "accel", r.Plots, r.Markdown(), r)
}

// benchContext sets exe to this binary (the benchmarks run it as relays
// and lab daemons) and returns a context that SIGINT and SIGTERM cancel.
func benchContext(exe *string) (context.Context, context.CancelFunc, error) {
	p, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	*exe = p
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	return ctx, stop, nil
}
