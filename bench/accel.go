package bench

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"halfway/model"
	"halfway/netlab"
	"halfway/netlab/linkem"
)

// AccelOptions choose what `halfway bench accel` runs.
type AccelOptions struct {
	Exe       string   // the halfway binary, run as the relays
	Repeats   int      // per measurement (the median is reported)
	Parts     []string // fig4, fig5, ktcp
	Fig4CCs   []string // congestion controls for Fig. 4 (cubic, bbr)
	CurveKB   []int    // Fig. 4 and 5 flow sizes, KB (1000 bytes)
	KTCPSizes []int    // KTCP file sizes, bytes
	TurboIW   int      // Turbo-Start initial windows on the KTCP relay legs, segments
	Log       io.Writer
}

// DefaultAccelOptions are the issue's: 5 repeats, Fig. 4 with cubic and
// bbr, Fig. 5 and the KTCP path.
func DefaultAccelOptions() AccelOptions {
	return AccelOptions{
		Repeats:   5,
		Parts:     []string{"fig4", "fig5", "ktcp"},
		Fig4CCs:   []string{"cubic", "bbr"},
		CurveKB:   []int{10, 25, 50, 100, 200, 500},
		KTCPSizes: []int{10_000, 100_000, 1_000_000, 10_000_000},
		TurboIW:   4000,
	}
}

// AccelReport is the reproduction of Miniproxy's Figs. 4–5 and KTCP's
// Figs. 3–4 in the lab.
type AccelReport struct {
	Env     Env         `json:"env"`
	Repeats int         `json:"repeats"`
	TurboIW int         `json:"turbo_iw"`
	Fig4    []CurveRow  `json:"fig4,omitempty"`
	Fig5    []CurveRow  `json:"fig5,omitempty"`
	KTCP    []KTCPRow   `json:"ktcp,omitempty"`
	Skipped []string    `json:"skipped,omitempty"`
	Notes   []string    `json:"notes"`
	Plots   []AccelPlot `json:"plots"`
	// Labs says how punctual each lab's link emulator was.
	Labs []LabTiming `json:"labs,omitempty"`
}

// LabTiming counts, over a lab's life, the packets its emulated links
// wrote late: the machine could not keep up with the emulation.
type LabTiming struct {
	Lab       string  `json:"lab"`
	CC        string  `json:"cc,omitempty"` // the lab's congestion control
	Packets   uint64  `json:"packets"`
	Late1ms   uint64  `json:"late_1ms"`
	Late4ms   uint64  `json:"late_4ms"`
	MaxLateMS float64 `json:"max_late_ms"`
	// Lost counts frames the emulator itself lost, which no link was
	// configured to: dropped before it read them, past its in-flight
	// bound, too large to read, or not written.
	Lost *uint64 `json:"emulator_lost,omitempty"` // nil: not measured (reports before session 17)
}

// labTiming sums the lateness counters of every link of lab.
func labTiming(lab *netlab.Lab) (LabTiming, error) {
	st, err := lab.LinkStats()
	if err != nil {
		return LabTiming{}, err
	}
	t := LabTiming{Lab: lab.Topo.Name, CC: lab.Topo.Congctl}
	var lost uint64
	for _, l := range st {
		for _, d := range []linkem.DirStats{l.AB, l.BA} {
			t.Packets += d.TxPackets
			t.Late1ms += d.Late1ms
			t.Late4ms += d.Late4ms
			t.MaxLateMS = max(t.MaxLateMS, float64(d.MaxLateNS)/1e6)
			lost += d.DropSocket + d.DropOverflow + d.Truncated + d.SendErrors
		}
	}
	t.Lost = &lost
	return t, nil
}

// AccelPlot is one SVG figure of the report.
type AccelPlot struct {
	Name string `json:"name"` // file name
	SVG  string `json:"-"`
}

// CurveRow is one point of Fig. 4 or Fig. 5: one configuration and flow
// size on one path.
type CurveRow struct {
	CC          string    `json:"cc"`
	Relays      int       `json:"relays"`
	LegDelayMS  float64   `json:"leg_one_way_ms"`
	Config      string    `json:"config"` // e2e or halfway (early SYN, Fast Open hops)
	SizeKB      int       `json:"size_kb"`
	TTFBms      float64   `json:"ttfb_ms"`
	TTCms       float64   `json:"ttc_ms"`
	TTFBSamples []float64 `json:"ttfb_samples_ms"`
	TTCSamples  []float64 `json:"ttc_samples_ms"`
	ModelTTFBms float64   `json:"model_ttfb_ms"`
	ModelTTCms  float64   `json:"model_ttc_ms"`
}

// KTCPRow is one configuration and file size on the KTCP path.
type KTCPRow struct {
	Config       string    `json:"config"`
	SizeBytes    int       `json:"size_bytes"`
	TTFBms       float64   `json:"ttfb_ms"`
	TotalMS      float64   `json:"total_ms"`
	TTFBSamples  []float64 `json:"ttfb_samples_ms"`
	TotalSamples []float64 `json:"total_samples_ms"`
	ModelConfig  string    `json:"model_config,omitempty"`
	ModelTTFBms  float64   `json:"model_ttfb_ms,omitempty"`
	ModelTTCms   float64   `json:"model_ttc_ms,omitempty"`
}

// Ports the benchmark's HTTP server answers on: e2e is never captured;
// relayed is captured by the entry relay's transparent listener.
const (
	portE2E     = 8090
	portRelayed = 8080
)

// RunAccel runs the parts o asks for.
func RunAccel(ctx context.Context, o AccelOptions) (*AccelReport, error) {
	r := &AccelReport{Env: CollectEnv(), Repeats: o.Repeats, TurboIW: o.TurboIW}
	if err := netlab.Sweep(); err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("curl"); err != nil {
		return nil, errors.New("bench accel needs curl (make test installs it)")
	}
	b := &accelBench{o: o, r: r}
	b.body = make([]byte, 10_000_000)
	for _, n := range o.KTCPSizes {
		b.body = make([]byte, max(len(b.body), n))
	}
	rand.Read(b.body)
	for _, part := range o.Parts {
		var err error
		switch part {
		case "fig4":
			for _, cc := range o.Fig4CCs {
				for n := 0; n <= 3 && err == nil; n++ {
					err = b.curve(ctx, cc, n, 50*time.Millisecond/time.Duration(n+1), true, &r.Fig4)
				}
			}
		case "fig5":
			for i := 0; i < 6 && err == nil; i++ {
				x := 25*time.Millisecond + time.Duration(i)*2500*time.Microsecond
				err = b.curve(ctx, "cubic", 1, x, i == 0, &r.Fig5)
			}
		case "ktcp":
			err = b.ktcp(ctx)
		default:
			err = fmt.Errorf("unknown part %q (want fig4, fig5, ktcp)", part)
		}
		if err != nil {
			return nil, err
		}
	}
	r.plots()
	r.Notes = accelNotes(o)
	return r, nil
}

type accelBench struct {
	o    AccelOptions
	r    *AccelReport
	body []byte
}

func (b *accelBench) logf(format string, args ...any) {
	if b.o.Log != nil {
		fmt.Fprintf(b.o.Log, format+"\n", args...)
	}
}

// lineTopology is client – r1 … rN – server with legs of the given one-way
// delays and rate.
func lineTopology(name, cc string, delays []time.Duration, rate string) string {
	nodes := []string{"client"}
	for i := 1; i < len(delays); i++ {
		nodes = append(nodes, fmt.Sprintf("r%d", i))
	}
	nodes = append(nodes, "server")
	var links strings.Builder
	for i, d := range delays {
		fmt.Fprintf(&links, "  - {a: %s, b: %s, delay: %s, rate: %s}\n", nodes[i], nodes[i+1], d, rate)
	}
	return fmt.Sprintf(`name: %s
nodes: [%s]
congctl: %s
sysctl:
  net.ipv4.tcp_fastopen: "3"
  net.ipv4.tcp_no_metrics_save: "1"
  net.ipv4.tcp_rmem: "4096 131072 33554432"
  net.ipv4.tcp_wmem: "4096 131072 33554432"
links:
%s`, name, strings.Join(nodes, ", "), cc, links.String())
}

// labWithServer brings up a lab, runs the HTTP server on its server host
// on ports, and makes a directory for relay files with the relays' key
// (dir/psk). cleanup undoes it all.
func (b *accelBench) labWithServer(ctx context.Context, yaml string, ports ...int) (lab *netlab.Lab, dir string, cleanup func(), err error) {
	t, err := netlab.ParseTopology([]byte(yaml))
	if err != nil {
		return nil, "", nil, err
	}
	if lab, err = netlab.Up(ctx, t, netlab.Options{Detach: true, Exe: b.o.Exe, Realtime: true}); err != nil {
		return nil, "", nil, err
	}
	undo := []func(){func() {
		if lt, err := labTiming(lab); err == nil {
			b.r.Labs = append(b.r.Labs, lt)
		}
		lab.Close()
	}}
	cleanup = func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	stopHTTP, err := b.serveHTTP(lab.Host("server"), ports...)
	if err == nil {
		undo = append(undo, stopHTTP)
		dir, err = os.MkdirTemp("", "halfway-accel")
	}
	if err == nil {
		undo = append(undo, func() { os.RemoveAll(dir) })
		err = os.WriteFile(filepath.Join(dir, "psk"), []byte("halfway bench accel key 0123456789"), 0o600)
	}
	if err != nil {
		cleanup()
		return nil, "", nil, err
	}
	return lab, dir, cleanup, nil
}

// serveHTTP runs, until the lab goes, an HTTP server on the server host
// that answers GET /N with N bytes.
func (b *accelBench) serveHTTP(h *netlab.Host, ports ...int) (func(), error) {
	var lns []net.Listener
	closeAll := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		n, err := strconv.Atoi(strings.TrimPrefix(req.URL.Path, "/"))
		if err != nil || n < 0 || n > len(b.body) {
			http.NotFound(w, req)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(n))
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(b.body[:n])
	})
	for _, p := range ports {
		ln, err := h.Listen("tcp", fmt.Sprintf(":%d", p))
		if err != nil {
			closeAll()
			return nil, err
		}
		lns = append(lns, ln)
		go (&http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}).Serve(ln)
	}
	return closeAll, nil
}

// fetch runs curl on the client host and returns its time to first byte
// and total time, in ms.
func fetch(ctx context.Context, client *netlab.Host, url string, size int) (ttfb, total float64, err error) {
	out, err := client.Command(ctx, "curl", "-sS", "-o", "/dev/null", "--max-time", "60",
		"-w", "%{http_code} %{size_download} %{time_starttransfer} %{time_total}", url).CombinedOutput()
	if err != nil {
		return 0, 0, fmt.Errorf("curl %s: %v: %s", url, err, out)
	}
	var code, got int
	if _, err := fmt.Sscanf(string(out), "%d %d %g %g", &code, &got, &ttfb, &total); err != nil || code != 200 || got != size {
		return 0, 0, fmt.Errorf("curl %s: %q: want 200 and %d bytes", url, out, size)
	}
	return ttfb * 1000, total * 1000, nil
}

// relayProc is a `halfway relay` running in a lab host.
type relayProc struct {
	cmd *exec.Cmd
	log string
}

func (b *accelBench) startRelay(ctx context.Context, h *netlab.Host, dir, name, cfg string) (*relayProc, error) {
	return startRelayIn(ctx, b.o.Exe, h, dir, name, cfg)
}

// startRelayIn runs exe as a relay in host h with the configuration cfg,
// written to dir/name.yaml; its log goes to dir/name.log.
func startRelayIn(ctx context.Context, exe string, h *netlab.Host, dir, name, cfg string) (*relayProc, error) {
	file := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := h.Command(ctx, exe, "relay", "-c", file, "--grace", "1s")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &relayProc{cmd: cmd, log: logPath}, nil
}

func (p *relayProc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
}

func (p *relayProc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// waitListening waits until a TCP port accepts connections from host h.
func waitListening(ctx context.Context, h *netlab.Host, addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := h.Dial(ctx, "tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("nothing accepted at %s", addr)
}

// waitCaptured waits until the relay in h has its capture rules in
// (table halfway_web), then fetches twice through it: the relays learn
// each other's Fast Open cookies.
func waitCaptured(ctx context.Context, h, client *netlab.Host, url string) error {
	for i := 0; ; i++ {
		if h.Command(ctx, "nft", "list", "table", "inet", "halfway_web").Run() == nil {
			break
		}
		if i > 200 {
			return errors.New("the relay's capture rules never appeared")
		}
		time.Sleep(25 * time.Millisecond)
	}
	for range 2 {
		if _, _, err := fetch(ctx, client, url+"/1", 1); err != nil {
			return err
		}
	}
	return nil
}

// curve measures one Fig. 4 or Fig. 5 path: relays evenly placed, each
// leg x one way, 100 Mbit/s; end to end (when e2e) and through halfway
// with early SYN and Fast Open hops, per flow size.
func (b *accelBench) curve(ctx context.Context, cc string, relays int, x time.Duration, e2e bool, rows *[]CurveRow) error {
	delays := make([]time.Duration, relays+1)
	for i := range delays {
		delays[i] = x
	}
	name := fmt.Sprintf("acc%d%s", relays, strings.ReplaceAll(fmt.Sprintf("%.1f", float64(x)/1e6), ".", ""))
	b.logf("== %s: %d relay(s), legs %v one way, 100 Mbit/s, %s", name, relays, x, cc)
	topo := lineTopology(name, cc, delays, "100mbit")
	lab, dir, cleanup, err := b.labWithServer(ctx, topo, portE2E, portRelayed)
	if err != nil {
		return err
	}
	defer cleanup()
	client, server := lab.Host("client"), lab.Host("server")
	configs := []string{}
	if e2e {
		configs = append(configs, "e2e")
	}
	if relays > 0 {
		configs = append(configs, "halfway")
		procs, err := b.chainRelays(ctx, lab, relays, dir)
		defer func() {
			for _, p := range procs {
				p.stop()
			}
		}()
		if err != nil {
			return err
		}
		if err := waitCaptured(ctx, lab.Host("r1"), client, fmt.Sprintf("http://%s", server.AddrPort(portRelayed))); err != nil {
			for _, p := range procs {
				b.logf("relay log:\n%s", p.tail())
			}
			return err
		}
	}
	// The model of this very path.
	mp, err := ModelPath(lab.Topo, "client", "server", model.DefaultIW)
	if err != nil {
		return err
	}
	type key struct {
		config string
		kb     int
	}
	ttfb, ttc := map[key][]float64{}, map[key][]float64{}
	for rep := 0; rep < b.o.Repeats; rep++ {
		for _, kb := range b.o.CurveKB {
			for _, c := range configs {
				port := portE2E
				if c == "halfway" {
					port = portRelayed
				}
				a, z, err := fetch(ctx, client, fmt.Sprintf("http://%s/%d", server.AddrPort(uint16(port)), kb*1000), kb*1000)
				if err != nil {
					return err
				}
				k := key{c, kb}
				ttfb[k], ttc[k] = append(ttfb[k], a), append(ttc[k], z)
			}
		}
		b.logf("  repeat %d done", rep+1)
	}
	for _, c := range configs {
		mc := model.E2E
		if c == "halfway" {
			mc = model.ESF
		}
		for _, kb := range b.o.CurveKB {
			k := key{c, kb}
			pr, err := model.Predict(mp, mc, kb*1000, model.Options{})
			if err != nil {
				return err
			}
			row := CurveRow{CC: cc, Relays: relays, LegDelayMS: ms(x), Config: c, SizeKB: kb,
				TTFBms: median(ttfb[k]), TTCms: median(ttc[k]), TTFBSamples: ttfb[k], TTCSamples: ttc[k],
				ModelTTFBms: ms(pr.TTFB), ModelTTCms: ms(pr.TTC)}
			if c == "e2e" {
				row.Relays = 0
			}
			*rows = append(*rows, row)
			b.logf("  %-7s %3d KB: TTFB %6.1f ms (model %6.1f), TTC %6.1f ms (model %6.1f)", c, kb, row.TTFBms, row.ModelTTFBms, row.TTCms, row.ModelTTCms)
		}
	}
	return nil
}

// chainRelays runs halfway on r1…rN of a line lab: r1 captures flows to the
// server's relayed port (TPROXY, early SYN) and sends them through r2…rN,
// which take Convert hops.
func (b *accelBench) chainRelays(ctx context.Context, lab *netlab.Lab, relays int, dir string) ([]*relayProc, error) {
	psk := filepath.Join(dir, "psk")
	server := lab.Host("server")
	var via []string
	for i := 2; i <= relays; i++ {
		via = append(via, netip.AddrPortFrom(lab.Host(fmt.Sprintf("r%d", i)).Addr(), 7100).String())
	}
	var procs []*relayProc
	for i := relays; i >= 1; i-- {
		name := fmt.Sprintf("r%d", i)
		var cfg string
		if i == 1 {
			route := ""
			if len(via) > 0 {
				route = fmt.Sprintf("routes:\n  - {listener: web, via: [%s]}\n", strings.Join(via, ", "))
			}
			cfg = fmt.Sprintf(`admin: {listen: "127.0.0.1:9190"}
log: {level: warn}
auth: {psk_file: %s}
listeners:
  - name: web
    listen: 0.0.0.0:7000
    mode: tproxy
    allow_clients: [10.77.0.0/16]
    capture: {dst: [%s/32], ports: "%d", install: true}
    early_syn: true
%s`, psk, server.Addr(), portRelayed, route)
		} else {
			cfg = fmt.Sprintf(`admin: {listen: "127.0.0.1:9190"}
log: {level: warn}
auth: {psk_file: %s}
listeners:
  - name: hop
    listen: 0.0.0.0:7100
    protocols: [convert]
    allow_clients: [10.77.0.0/16]
    allow_destinations: [10.77.0.0/16]
`, psk)
		}
		p, err := b.startRelay(ctx, lab.Host(name), dir, name, cfg)
		if err != nil {
			return procs, err
		}
		procs = append(procs, p)
		if i > 1 {
			if err := waitListening(ctx, lab.Host("r1"), netip.AddrPortFrom(lab.Host(name).Addr(), 7100).String()); err != nil {
				return procs, err
			}
		}
	}
	return procs, nil
}

// tcpOverhead is what an IPv4 TCP segment with timestamps carries besides
// payload: model.DefaultMSS is an MTU of 1500 less it.
const tcpOverhead = 1500 - model.DefaultMSS

// ModelPath maps the path from one lab node to another onto the model:
// each leg's mean one-way delay and its rate toward the client (the
// direction a download flows); the inner nodes are relays. The MSS is that
// of the smallest MTU on the path (IPv4, timestamps): exact end to end, where
// the client's SYN sets it, and for split legs of equal MTUs.
func ModelPath(t *netlab.Topology, from, to string, iw int) (model.Path, error) {
	legs, err := t.PathBetween(from, to)
	if err != nil {
		return model.Path{}, err
	}
	p := model.Path{MSS: model.DefaultMSS}
	for i, l := range legs {
		p.MSS = min(p.MSS, l.MTU-tcpOverhead)
		p.Legs = append(p.Legs, model.Leg{
			Delay: (l.Forward + l.Back) / 2, Rate: float64(l.RateToward), IW: iw,
			Relay: i > 0 && i < len(legs)-1,
		})
	}
	return p, nil
}

// ktcpTopology is KTCP's cloud path (ktcp.txt §4), as examples/ktcp.yaml.
const ktcpTopology = `name: accktcp
nodes: [client, rc, rs, server]
congctl: cubic
sysctl:
  net.ipv4.tcp_fastopen: "3"
  net.ipv4.tcp_no_metrics_save: "1"
  net.ipv4.tcp_rmem: "4096 131072 33554432"
  net.ipv4.tcp_wmem: "4096 131072 33554432"
links:
  - {a: client, b: rc, delay: 16.35ms, rate: 200mbit}
  - {a: rc, b: rs, delay: 107.5ms, rate: 1gbit}
  - {a: rs, b: server, delay: 13ms, rate: 1gbit}
`

// ktcpConfigs are the rows of KTCP's Figs. 3–4, slowest first, with the
// model configuration each is compared with.
var ktcpConfigs = []struct{ name, model string }{
	{"e2e", "e2e"},
	{"no split (DNAT at rc)", "e2e"},
	{"HAProxy split", "split"},
	{"halfway split", "split"},
	{"+early SYN", "esf"},
	{"+early SYN+pool", "esf+pool"},
	{"+early SYN+pool+Turbo", "esf+pool+turbo"},
}

// ktcp measures the KTCP path: each configuration set up in turn, every
// repeat, so they share the machine's conditions.
func (b *accelBench) ktcp(ctx context.Context) error {
	b.logf("== KTCP path: client–rc 32.7 ms, rc–rs 215 ms, rs–server 26 ms RTT; cubic")
	lab, dir, cleanup, err := b.labWithServer(ctx, ktcpTopology, portE2E)
	if err != nil {
		return err
	}
	defer cleanup()
	client, rc, rs, server := lab.Host("client"), lab.Host("rc"), lab.Host("rs"), lab.Host("server")
	haveHAProxy := true
	if _, err := exec.LookPath("haproxy"); err != nil {
		haveHAProxy = false
		b.r.Skipped = append(b.r.Skipped, "HAProxy split: haproxy is not installed (apt-get install haproxy)")
	}
	rcIn := rc.Ifaces()[0].Addr4.Addr() // rc's address toward the client
	rcOut, rsIn := rc.Ifaces()[1].Addr4.Addr(), rs.Ifaces()[0].Addr4.Addr()
	direct := "http://" + server.AddrPort(portE2E)

	// setup starts configuration i and returns the URL prefix to fetch
	// from and how to undo it.
	setup := func(i int) (string, func(), error) {
		nothing := func() {}
		switch ktcpConfigs[i].name {
		case "e2e":
			return direct, nothing, nil
		case "no split (DNAT at rc)":
			rules := fmt.Sprintf("table ip hwbench {\n  chain pre {\n    type nat hook prerouting priority dstnat\n    ip daddr %s tcp dport 8010 dnat to %s\n  }\n}\n", rcIn, server.AddrPort(portE2E))
			cmd := rc.Command(ctx, "nft", "-f", "-")
			cmd.Stdin = strings.NewReader(rules)
			if out, err := cmd.CombinedOutput(); err != nil {
				return "", nil, fmt.Errorf("nft: %v: %s", err, out)
			}
			return "http://" + netip.AddrPortFrom(rcIn, 8010).String(), func() {
				rc.Command(ctx, "nft", "delete", "table", "ip", "hwbench").Run()
			}, nil
		case "HAProxy split":
			var procs []*exec.Cmd
			undo := func() {
				for _, p := range procs {
					p.Process.Kill()
					p.Wait()
				}
			}
			for _, hp := range []struct {
				h          *netlab.Host
				bind, next string
			}{{rs, netip.AddrPortFrom(rsIn, 8001).String(), server.AddrPort(portE2E)}, {rc, netip.AddrPortFrom(rcIn, 8000).String(), netip.AddrPortFrom(rsIn, 8001).String()}} {
				cfg := fmt.Sprintf("global\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 2m\n  timeout server 2m\nlisten relay\n  bind %s\n  server next %s\n", hp.bind, hp.next)
				file := filepath.Join(dir, hp.h.Name+"-haproxy.cfg")
				if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
					undo()
					return "", nil, err
				}
				cmd := hp.h.Command(ctx, "haproxy", "-db", "-f", file)
				if err := cmd.Start(); err != nil {
					undo()
					return "", nil, err
				}
				procs = append(procs, cmd)
				if err := waitListening(ctx, hp.h, hp.bind); err != nil {
					undo()
					return "", nil, err
				}
			}
			return "http://" + netip.AddrPortFrom(rcIn, 8000).String(), undo, nil
		}
		// halfway: rc captures the server's port; rs takes Convert hops.
		level := i - 3 // 0 split, 1 early SYN, 2 pool, 3 turbo
		psk := filepath.Join(dir, "psk")
		rcLegs := "legs:\n  client: {pacing: true}\n"
		rsCfg := fmt.Sprintf(`admin: {listen: "127.0.0.1:9190"}
log: {level: warn}
auth: {psk_file: %s}
listeners:
  - name: hop
    listen: 0.0.0.0:7100
    protocols: [convert]
    allow_clients: [%s/32]
    allow_destinations: [%s/32]
`, psk, rcOut, server.Addr())
		early, peers := "false", ""
		switch level {
		case 0:
			rcLegs += "  relay: {fast_open: false}\n"
		case 1:
		case 2:
			peers = fmt.Sprintf("peers:\n  - {address: %s:7100, pool: {low: 4, high: 8}}\n", rsIn)
		case 3:
			peers = fmt.Sprintf("peers:\n  - {address: %s:7100, pool: {low: 4, high: 8}, turbo: {initcwnd: %d}}\n", rsIn, b.o.TurboIW)
			rcLegs += "  relay: {send_buffer: 64MiB, receive_buffer: 64MiB}\n"
			rsCfg += fmt.Sprintf("legs:\n  relay: {send_buffer: 64MiB, receive_buffer: 64MiB}\npeers:\n  - {address: %s, turbo: {initcwnd: %d}}\n", rcOut, b.o.TurboIW)
		}
		if level >= 1 {
			early = "true"
		}
		rcCfg := fmt.Sprintf(`admin: {listen: "127.0.0.1:9190"}
log: {level: warn}
auth: {psk_file: %s}
%slisteners:
  - name: web
    listen: 0.0.0.0:7000
    mode: tproxy
    allow_clients: [%s/24]
    capture: {dst: [%s/32], ports: "%d", install: true}
    early_syn: %s
routes:
  - {listener: web, via: ["%s:7100"]}
%s`, psk, rcLegs, client.Ifaces()[0].Addr4.Masked().Addr(), server.Addr(), portE2E, early, rsIn, peers)
		rsP, err := b.startRelay(ctx, rs, dir, "rs", rsCfg)
		if err != nil {
			return "", nil, err
		}
		rcP, err := b.startRelay(ctx, rc, dir, "rc", rcCfg)
		if err != nil {
			rsP.stop()
			return "", nil, err
		}
		undo := func() { rcP.stop(); rsP.stop() }
		// Warm up: the capture rules are in, rc has rs's Fast Open cookie,
		// and the pool has refilled behind the warm-up flows.
		if err := waitCaptured(ctx, rc, client, direct); err != nil {
			b.logf("rc log:\n%s\nrs log:\n%s", rcP.tail(), rsP.tail())
			undo()
			return "", nil, err
		}
		if level >= 2 {
			if err := waitPool(ctx, rc, 4); err != nil {
				undo()
				return "", nil, err
			}
		}
		return direct, undo, nil
	}

	mp, err := ModelPath(lab.Topo, "client", "server", model.DefaultIW)
	if err != nil {
		return err
	}
	ttfb := map[[2]int][]float64{}
	total := map[[2]int][]float64{}
	for rep := 0; rep < b.o.Repeats; rep++ {
		for i, c := range ktcpConfigs {
			if c.name == "HAProxy split" && !haveHAProxy {
				continue
			}
			base, undo, err := setup(i)
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			for j, size := range b.o.KTCPSizes {
				a, z, err := fetch(ctx, client, fmt.Sprintf("%s/%d", base, size), size)
				if err != nil {
					undo()
					return fmt.Errorf("%s: %w", c.name, err)
				}
				ttfb[[2]int{i, j}] = append(ttfb[[2]int{i, j}], a)
				total[[2]int{i, j}] = append(total[[2]int{i, j}], z)
			}
			undo()
		}
		b.logf("  repeat %d done", rep+1)
	}
	for i, c := range ktcpConfigs {
		if len(ttfb[[2]int{i, 0}]) == 0 {
			continue
		}
		for j, size := range b.o.KTCPSizes {
			k := [2]int{i, j}
			row := KTCPRow{Config: c.name, SizeBytes: size, TTFBms: median(ttfb[k]), TotalMS: median(total[k]),
				TTFBSamples: ttfb[k], TotalSamples: total[k], ModelConfig: c.model}
			pr, err := model.Predict(mp, model.Config(c.model), size, model.Options{TurboIW: b.o.TurboIW})
			if err != nil {
				return err
			}
			row.ModelTTFBms, row.ModelTTCms = ms(pr.TTFB), ms(pr.TTC)
			b.r.KTCP = append(b.r.KTCP, row)
			b.logf("  %-24s %8d B: TTFB %6.1f ms (model %6.1f), total %7.1f ms (model %7.1f)", c.name, size, row.TTFBms, row.ModelTTFBms, row.TotalMS, row.ModelTTCms)
		}
	}
	return nil
}

// waitPool waits until the relay in h (admin on 127.0.0.1:9190) has at
// least n idle pooled connections.
func waitPool(ctx context.Context, h *netlab.Host, n int) error {
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) { return h.Dial(ctx, network, addr) }}}
	for i := 0; i < 200; i++ {
		resp, err := hc.Get("http://127.0.0.1:9190/api/status")
		if err == nil {
			var st struct {
				Pools []struct {
					Idle int `json:"idle"`
				} `json:"pools"`
			}
			err = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if err == nil && len(st.Pools) > 0 && st.Pools[0].Idle >= n {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("the pool never held %d connections", n)
}

func accelNotes(o AccelOptions) []string {
	return []string{
		"Every figure is the median of the repeats; within a lab the configurations and sizes are interleaved in each repeat, so they share the machine's conditions. Times come from curl (time_starttransfer, time_total) on the client host; the server is Go's net/http on the server host, answering GET /N with N bytes from memory.",
		"halfway (Figs. 4–5): the first relay captures the flow transparently (TPROXY) with early SYN; further relays are Convert hops whose Connect TLV rides in a Fast Open SYN, so each relay connects onward as soon as it learns the destination — the model's ESF. Model: `model.Predict` on the same path (esf, TFO hops).",
		"KTCP rows: halfway split = transparent capture at rc, a plain (no Fast Open) Convert hop to rs, no early SYN; +early SYN adds early SYN at rc and the Fast Open hop; +pool adds pre-established rc→rs connections (low 4, high 8); +Turbo adds Turbo-Start host routes on both relays (initcwnd = initrwnd = " + strconv.Itoa(o.TurboIW) + " segments) and 64 MiB buffers on the relay legs. Every halfway row paces its sends to the client (legs.client.pacing): the relay receives in bursts and would otherwise overflow the 200 Mbit/s client link's queue in one go, which makes cubic's HyStart leave slow start early. No split = DNAT at rc; HAProxy = `mode tcp` on rc and rs.",
		"Model: the generalized Miniproxy model on the same path: e2e for e2e and no split, split for HAProxy and halfway split, esf, esf+pool, esf+pool+turbo (TurboIW as configured). It assumes loss-free classic slow start (no HyStart exit) and a server that answers at once.",
	}
}

// LoadAccel reads a report written as JSON and renders its plots again.
func LoadAccel(b []byte) (*AccelReport, error) {
	var r AccelReport
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	r.Plots = nil
	r.plots()
	return &r, nil
}

// plots renders the report's figures.
func (r *AccelReport) plots() {
	curvePlot := func(name, title string, rows []CurveRow, label func(CurveRow) string) {
		if len(rows) == 0 {
			return
		}
		var ss []series
		idx := map[string]int{}
		for _, row := range rows {
			l := label(row)
			i, ok := idx[l]
			if !ok {
				i = len(ss) / 2
				idx[l] = i
				ss = append(ss, series{name: l + " measured", color: i}, series{name: l + " model", color: i, dashed: true})
			}
			for k, m := range []bool{false, true} {
				s := &ss[2*i+k]
				s.x = append(s.x, float64(row.SizeKB))
				if m {
					s.y = append(s.y, row.ModelTTCms)
				} else {
					s.y = append(s.y, row.TTCms)
				}
			}
		}
		r.Plots = append(r.Plots, AccelPlot{Name: name, SVG: lineSVG(title, "flow size (KB)", "time to complete (ms)", true, ss)})
	}
	for _, cc := range []string{"cubic", "bbr"} {
		var rows []CurveRow
		for _, row := range r.Fig4 {
			if row.CC == cc && (row.Config == "halfway" || row.Relays == 0 && row.LegDelayMS == 50) {
				rows = append(rows, row)
			}
		}
		curvePlot("accel-fig4-"+cc+".svg", "Fig. 4 ("+cc+"): relays on a 100 ms, 100 Mbit/s path", rows,
			func(row CurveRow) string {
				if row.Config == "e2e" {
					return "end to end"
				}
				return fmt.Sprintf("%d relay(s)", row.Relays)
			})
	}
	curvePlot("accel-fig5.svg", "Fig. 5: one relay, each leg X ms one way", r.Fig5,
		func(row CurveRow) string {
			if row.Config == "e2e" {
				return "e2e, no relay"
			}
			return fmt.Sprintf("X = %.1f ms", row.LegDelayMS)
		})
	if len(r.KTCP) > 0 {
		var configs, groups []string
		ci, gi := map[string]int{}, map[int]int{}
		for _, row := range r.KTCP {
			if _, ok := ci[row.Config]; !ok {
				ci[row.Config] = len(configs)
				configs = append(configs, row.Config)
			}
			if _, ok := gi[row.SizeBytes]; !ok {
				gi[row.SizeBytes] = len(groups)
				groups = append(groups, sizeLabel(row.SizeBytes))
			}
		}
		mk := func() [][]float64 {
			v := make([][]float64, len(groups))
			for g := range v {
				v[g] = make([]float64, len(configs))
				for b := range v[g] {
					v[g][b] = math.NaN()
				}
			}
			return v
		}
		tt, tm, to, om := mk(), mk(), mk(), mk()
		for _, row := range r.KTCP {
			g, c := gi[row.SizeBytes], ci[row.Config]
			tt[g][c], tm[g][c], to[g][c], om[g][c] = row.TTFBms, row.ModelTTFBms, row.TotalMS, row.ModelTTCms
		}
		r.Plots = append(r.Plots,
			AccelPlot{Name: "accel-ktcp-ttfb.svg", SVG: barSVG("KTCP path: time to first byte", "TTFB (ms)", groups, configs, tt, tm)},
			AccelPlot{Name: "accel-ktcp-total.svg", SVG: barSVG("KTCP path: download time", "total time (ms)", groups, configs, to, om)})
	}
}

func sizeLabel(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%d MB", n/1_000_000)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%d KB", n/1000)
	}
	return fmt.Sprintf("%d B", n)
}
