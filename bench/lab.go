package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"time"

	"halfway/netlab"
)

// LabOptions choose what `halfway bench lab` measures.
type LabOptions struct {
	Repeats int             // per measurement, ≥ 5 for the report
	RTTs    []time.Duration // configured round-trip times
	Rates   []uint64        // bit/s, measured with OneWay delay
	OneWay  time.Duration   // one-way delay of the throughput links
	Warm    time.Duration   // bulk warm-up before the window (slow start)
	Window  time.Duration   // bulk measurement window
	LossPct float64         // configured loss for the loss check
	LossN   int             // datagrams per loss repeat
	Exe     string          // halfway binary for the emulator daemons
	Log     io.Writer       // progress, may be nil
}

// DefaultLabOptions are the issue's: RTTs 1–300 ms, rates 1–500 Mbit/s at
// 20 ms one way, 1% loss, 5 repeats.
func DefaultLabOptions() LabOptions {
	ms := time.Millisecond
	return LabOptions{
		Repeats: 5,
		RTTs:    []time.Duration{0, 1 * ms, 10 * ms, 50 * ms, 100 * ms, 215 * ms, 300 * ms},
		Rates:   []uint64{1e6, 10e6, 100e6, 500e6},
		OneWay:  20 * ms,
		Warm:    2 * time.Second,
		Window:  4 * time.Second,
		LossPct: 1,
		LossN:   20000,
	}
}

// Validate reports every option that would leave a measure without a
// sample: its figures would be NaN, which the report's JSON cannot carry.
func (o LabOptions) Validate() error {
	var errs []error
	if o.Repeats < 1 {
		errs = append(errs, fmt.Errorf("Repeats %d: want at least 1", o.Repeats))
	}
	if o.Window <= 0 {
		errs = append(errs, fmt.Errorf("Window %v: want more than 0", o.Window))
	}
	if o.Warm < 0 {
		errs = append(errs, fmt.Errorf("Warm %v: want 0 or more", o.Warm))
	}
	if o.LossN < 1 {
		errs = append(errs, fmt.Errorf("LossN %d: want at least 1 datagram", o.LossN))
	}
	if o.LossPct < 0 || o.LossPct > 100 {
		errs = append(errs, fmt.Errorf("LossPct %g: want 0 to 100", o.LossPct))
	}
	return errors.Join(errs...)
}

// LabReport is what `halfway bench lab` prints.
type LabReport struct {
	Env        Env         `json:"env"`
	Options    labOptsJSON `json:"options"`
	RTT        []RTTRow    `json:"rtt"`
	Throughput []TputRow   `json:"throughput"`
	Loss       LossRow     `json:"loss"`
	TopSpeed   TopSpeedRow `json:"top_speed"`
	Notes      []string    `json:"notes"`
}

type labOptsJSON struct {
	Repeats  int     `json:"repeats"`
	OneWayMS float64 `json:"throughput_one_way_ms"`
	WarmS    float64 `json:"warm_s"`
	WindowS  float64 `json:"window_s"`
}

// RTTRow compares measured and configured RTT.
type RTTRow struct {
	ConfiguredMS float64   `json:"configured_ms"`
	ConnectMS    float64   `json:"connect_median_ms"`
	ReqRespMS    float64   `json:"reqresp_median_ms"`
	ConnectAll   []float64 `json:"connect_ms"`
	ReqRespAll   []float64 `json:"reqresp_ms"`
	ToleranceMS  float64   `json:"tolerance_ms"`
	OK           bool      `json:"within_goal"`
}

// TputRow compares bulk TCP throughput with the configured rate.
type TputRow struct {
	RateMbit      float64   `json:"rate_mbit"`
	GoodputMbit   float64   `json:"goodput_median_mbit"`
	IPRateMbit    float64   `json:"ip_rate_median_mbit"` // IP bytes the emulator delivered
	GoodputAll    []float64 `json:"goodput_mbit"`
	IPRateAll     []float64 `json:"ip_rate_mbit"`
	GoodputRatio  float64   `json:"goodput_ratio"`
	IPRatio       float64   `json:"ip_ratio"`
	QueueDrops    uint64    `json:"queue_drops_in_windows"`
	EmulatorCores float64   `json:"emulator_cores_median"` // CPU the emulator daemon used
	MachineBusy   float64   `json:"machine_busy_median"`   // share of all CPUs busy, 0–1
	OK            bool      `json:"within_goal"`
}

// LossRow compares the observed drop ratio with binomial bounds.
type LossRow struct {
	ConfiguredPct float64   `json:"configured_pct"`
	Sent          int       `json:"sent"`
	Lost          int       `json:"lost"`
	ObservedPct   float64   `json:"observed_pct"`
	LowPct        float64   `json:"bound99_low_pct"`
	HighPct       float64   `json:"bound99_high_pct"`
	PerRepeatPct  []float64 `json:"per_repeat_pct"`
	EmulatorLost  uint64    `json:"emulator_lost"` // the emulator's own count, for comparison
	OK            bool      `json:"within_goal"`
}

// TopSpeedRow is one unshaped link's throughput and the emulator's CPU.
type TopSpeedRow struct {
	GoodputGbit   []float64 `json:"goodput_gbit"`
	MedianGbit    float64   `json:"goodput_median_gbit"`
	CPUPerGbit    []float64 `json:"cpu_s_per_gbit"`
	MedianCPU     float64   `json:"cpu_s_per_gbit_median"`
	EmulatorCores float64   `json:"emulator_cores_median"`
}

// RunLab measures the lab's fidelity: every figure comes from labs brought
// up in this run, measured with repeats interleaved.
func RunLab(ctx context.Context, o LabOptions) (*LabReport, error) {
	logf := func(format string, args ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, format+"\n", args...)
		}
	}
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("bench lab: %w", err)
	}
	r := &LabReport{Env: CollectEnv(), Options: labOptsJSON{o.Repeats, ms(o.OneWay), o.Warm.Seconds(), o.Window.Seconds()}}
	if err := netlab.Sweep(); err != nil {
		return nil, err
	}
	up := func(name, yaml string) (*netlab.Lab, error) {
		t, err := netlab.ParseTopology([]byte(yaml))
		if err != nil {
			return nil, err
		}
		return netlab.Up(ctx, t, netlab.Options{Detach: true, Exe: o.Exe, Realtime: true})
	}
	var err error
	if r.RTT, err = benchRTT(ctx, o, up, logf); err != nil {
		return nil, err
	}
	if r.Throughput, err = benchThroughput(ctx, o, up, logf); err != nil {
		return nil, err
	}
	if r.Loss, err = benchLoss(ctx, o, up, logf); err != nil {
		return nil, err
	}
	if r.TopSpeed, err = benchTopSpeed(ctx, o, up, logf); err != nil {
		return nil, err
	}
	r.Notes = append(r.Notes,
		"RTT: connect = time a blocking connect() takes (the handshake); reqresp = 1-byte request and echo on an established connection (TCP_NODELAY), both on blocking sockets in the hosts. The 0 ms row is the floor: kernel stacks, veth and the emulator with no delay. Goal: within ±2% or ±0.3 ms of configured, whichever is larger.",
		"Rates count IP bytes (the veth's Ethernet header is not part of an emulated WAN link), so TCP goodput with 1448-byte segments is at most 96.5% of the rate; ip_rate is what the emulator delivered, counted by its own counters over the same window. Goal: goodput and IP rate within 5% below and 3% above.",
		"Top speed: one link with no delay, rate or loss; sender, receiver and emulator share the machine's cores, so the figure is a lower bound of the emulator's own limit.",
	)
	return r, nil
}

type upFunc func(name, yaml string) (*netlab.Lab, error)

func benchRTT(ctx context.Context, o LabOptions, up upFunc, logf func(string, ...any)) ([]RTTRow, error) {
	labs := make([]*netlab.Lab, len(o.RTTs))
	defer func() {
		for _, l := range labs {
			if l != nil {
				l.Close()
			}
		}
	}()
	rows := make([]RTTRow, len(o.RTTs))
	for i, rtt := range o.RTTs {
		name := fmt.Sprintf("brtt%d", i)
		var err error
		labs[i], err = up(name, fmt.Sprintf(`
name: %s
nodes: [client, server]
links: [{a: client, b: server, delay: %s}]
`, name, rtt/2))
		if err != nil {
			return nil, fmt.Errorf("rtt %v: %w", rtt, err)
		}
		rows[i].ConfiguredMS = ms(rtt)
	}
	servers := make([]*rawEcho, len(labs))
	for i, l := range labs {
		var err error
		if servers[i], err = startRawEcho(l.Host("server"), 7); err != nil {
			return nil, err
		}
		defer servers[i].Close()
	}
	for rep := 0; rep < o.Repeats; rep++ {
		for i, l := range labs {
			dst := netip.AddrPortFrom(l.Host("server").Addr(), 7)
			// The first connection after the lab sat idle wakes sleeping
			// threads and CPUs: like ping's first echo it is not counted.
			for j := 0; j <= 3; j++ {
				conn, rr, err := rawRTT(l.Host("client"), dst, 3)
				if err != nil {
					return nil, fmt.Errorf("rtt %vms: %w", rows[i].ConfiguredMS, err)
				}
				if j == 0 {
					continue
				}
				rows[i].ConnectAll = append(rows[i].ConnectAll, ms(conn))
				for _, x := range rr {
					rows[i].ReqRespAll = append(rows[i].ReqRespAll, ms(x))
				}
			}
		}
	}
	for i := range rows {
		row := &rows[i]
		row.ConnectMS, row.ReqRespMS = median(row.ConnectAll), median(row.ReqRespAll)
		row.ToleranceMS = math.Max(0.02*row.ConfiguredMS, 0.3)
		row.OK = math.Abs(row.ConnectMS-row.ConfiguredMS) <= row.ToleranceMS &&
			math.Abs(row.ReqRespMS-row.ConfiguredMS) <= row.ToleranceMS
		logf("rtt %6.1f ms: connect %.3f ms, reqresp %.3f ms", row.ConfiguredMS, row.ConnectMS, row.ReqRespMS)
	}
	return rows, nil
}

// bufSysctls let one TCP connection fill a long fat link.
const bufSysctls = `
sysctl:
  net.ipv4.tcp_rmem: "4096 131072 67108864"
  net.ipv4.tcp_wmem: "4096 131072 67108864"
`

func benchThroughput(ctx context.Context, o LabOptions, up upFunc, logf func(string, ...any)) ([]TputRow, error) {
	rows := make([]TputRow, len(o.Rates))
	for i, rate := range o.Rates {
		rows[i].RateMbit = float64(rate) / 1e6
	}
	emuCores := make([][]float64, len(o.Rates))
	busy := make([][]float64, len(o.Rates))
	// One lab at a time: a saturated link's emulator must not compete with
	// another's for the two cores; repeats are interleaved across rates.
	for rep := 0; rep < o.Repeats; rep++ {
		for i, rate := range o.Rates {
			name := fmt.Sprintf("btput%d", i)
			l, err := up(name, fmt.Sprintf(`
name: %s
nodes: [client, server]
links: [{a: client, b: server, delay: %s, rate: %s}]
congctl: cubic
%s`, name, o.OneWay, netlab.Rate(rate), bufSysctls))
			if err != nil {
				return nil, fmt.Errorf("rate %s: %w", netlab.Rate(rate), err)
			}
			// A slow link needs a longer window for TCP's loss recovery
			// to average out: at least 10 s at 1 Mbit/s.
			window := max(o.Window, time.Duration(float64(10*time.Second)*1e6/float64(rate)))
			res, m, err := measureBulk(ctx, l, o.Warm, window)
			l.Close()
			if err != nil {
				return nil, fmt.Errorf("rate %s: %w", netlab.Rate(rate), err)
			}
			ipRate, drops := m.ipRate, m.drops
			emuCores[i] = append(emuCores[i], m.emuCores)
			busy[i] = append(busy[i], m.busy)
			rows[i].GoodputAll = append(rows[i].GoodputAll, res.Goodput/1e6)
			rows[i].IPRateAll = append(rows[i].IPRateAll, ipRate/1e6)
			rows[i].QueueDrops += drops
			logf("rate %s, repeat %d: goodput %.2f Mbit/s, IP %.2f Mbit/s, queue drops %d",
				netlab.Rate(rate), rep+1, res.Goodput/1e6, ipRate/1e6, drops)
		}
	}
	for i := range rows {
		row := &rows[i]
		row.GoodputMbit, row.IPRateMbit = median(row.GoodputAll), median(row.IPRateAll)
		row.EmulatorCores, row.MachineBusy = median(emuCores[i]), median(busy[i])
		row.GoodputRatio, row.IPRatio = row.GoodputMbit/row.RateMbit, row.IPRateMbit/row.RateMbit
		within := func(x float64) bool { return x >= 0.95 && x <= 1.03 }
		row.OK = within(row.GoodputRatio) && within(row.IPRatio)
	}
	return rows, nil
}

// bulkMeasure is what the emulator and the machine did during a window.
type bulkMeasure struct {
	ipRate   float64 // IP bit/s the emulator delivered client→server
	drops    uint64  // queue drops client→server
	emuCores float64 // CPU of the emulator daemon, in cores
	busy     float64 // share of the machine's CPUs busy
}

// measureBulk runs one bulk transfer client→server and reads the
// emulator's counters, its CPU time and the machine's at the window's edges.
func measureBulk(ctx context.Context, l *netlab.Lab, warm, window time.Duration) (bulkResult, bulkMeasure, error) {
	var m bulkMeasure
	s, err := newSink(l.Host("server"), 5001)
	if err != nil {
		return bulkResult{}, m, err
	}
	defer s.Close()
	type sample struct {
		stats     []netlab.LinkStats
		at        time.Time
		cpu       time.Duration
		busy, all uint64
	}
	var samples []sample
	var serr error
	res, err := bulk(ctx, l.Host("client"), s, l.Host("server").AddrPort(5001), warm, window, func() {
		st, err := l.LinkStats()
		if err != nil {
			serr = err
			return
		}
		cpu, _ := netlab.ProcCPU(l.DaemonPID())
		busy, all := machineCPU()
		samples = append(samples, sample{st, time.Now(), cpu, busy, all})
	})
	if err != nil {
		return res, m, err
	}
	if serr != nil || len(samples) != 2 {
		return res, m, fmt.Errorf("emulator counters: %v", serr)
	}
	a, b := samples[0], samples[1]
	secs := b.at.Sub(a.at).Seconds()
	m.ipRate = float64(b.stats[0].AB.TxIPBytes-a.stats[0].AB.TxIPBytes) * 8 / secs
	m.drops = b.stats[0].AB.DropQueue - a.stats[0].AB.DropQueue
	m.emuCores = (b.cpu - a.cpu).Seconds() / secs
	if b.all > a.all {
		m.busy = float64(b.busy-a.busy) / float64(b.all-a.all)
	}
	return res, m, nil
}

func benchLoss(ctx context.Context, o LabOptions, up upFunc, logf func(string, ...any)) (LossRow, error) {
	row := LossRow{ConfiguredPct: o.LossPct}
	l, err := up("bloss", fmt.Sprintf(`
name: bloss
nodes: [client, server]
links: [{a: client, b: server, delay: 5ms, loss: {ab: %g%%, ba: 0%%}}]
`, o.LossPct))
	if err != nil {
		return row, err
	}
	defer l.Close()
	for rep := 0; rep < o.Repeats; rep++ {
		before, err := l.LinkStats()
		if err != nil {
			return row, err
		}
		got, err := udpLoss(ctx, l.Host("client"), l.Host("server"), 9000+rep, o.LossN)
		if err != nil {
			return row, err
		}
		after, err := l.LinkStats()
		if err != nil {
			return row, err
		}
		row.EmulatorLost += after[0].AB.DropLoss - before[0].AB.DropLoss
		lost := o.LossN - got
		row.Sent += o.LossN
		row.Lost += lost
		row.PerRepeatPct = append(row.PerRepeatPct, 100*float64(lost)/float64(o.LossN))
		logf("loss repeat %d: %d of %d lost (%.3f%%)", rep+1, lost, o.LossN, row.PerRepeatPct[rep])
	}
	lo, hi := binomialInterval(row.Sent, o.LossPct/100, 0.99)
	n := float64(row.Sent)
	row.LowPct, row.HighPct = 100*float64(lo)/n, 100*float64(hi)/n
	row.ObservedPct = 100 * float64(row.Lost) / n
	row.OK = row.ObservedPct >= row.LowPct && row.ObservedPct <= row.HighPct
	return row, nil
}

func benchTopSpeed(ctx context.Context, o LabOptions, up upFunc, logf func(string, ...any)) (TopSpeedRow, error) {
	var row TopSpeedRow
	l, err := up("btop", `
name: btop
nodes: [client, server]
links: [{a: client, b: server}]
`+bufSysctls)
	if err != nil {
		return row, err
	}
	defer l.Close()
	var cores []float64
	for rep := 0; rep < o.Repeats; rep++ {
		s, err := newSink(l.Host("server"), 5001)
		if err != nil {
			return row, err
		}
		var cpu []time.Duration
		var at []time.Time
		res, err := bulk(ctx, l.Host("client"), s, l.Host("server").AddrPort(5001), time.Second, o.Window, func() {
			c, _ := netlab.ProcCPU(l.DaemonPID())
			cpu, at = append(cpu, c), append(at, time.Now())
		})
		s.Close()
		if err != nil {
			return row, err
		}
		gbit := res.Goodput / 1e9
		cpuS := (cpu[1] - cpu[0]).Seconds()
		row.GoodputGbit = append(row.GoodputGbit, gbit)
		row.CPUPerGbit = append(row.CPUPerGbit, cpuS/(gbit*res.Window.Seconds()))
		cores = append(cores, cpuS/at[1].Sub(at[0]).Seconds())
		logf("top speed repeat %d: %.2f Gbit/s, emulator %.2f cores", rep+1, gbit, cores[rep])
	}
	row.MedianGbit, row.MedianCPU, row.EmulatorCores = median(row.GoodputGbit), median(row.CPUPerGbit), median(cores)
	return row, nil
}

// binomialInterval returns the central interval [lo, hi] holding at least
// the given probability of Binomial(n, p): the counts a correct link loses.
func binomialInterval(n int, p, prob float64) (lo, hi int) {
	tail := (1 - prob) / 2
	lgN, _ := math.Lgamma(float64(n + 1))
	cdf := 0.0
	lo, hi = -1, n
	for k := 0; k <= n; k++ {
		lgK, _ := math.Lgamma(float64(k + 1))
		lgNK, _ := math.Lgamma(float64(n - k + 1))
		cdf += math.Exp(lgN - lgK - lgNK + float64(k)*math.Log(p) + float64(n-k)*math.Log1p(-p))
		if lo < 0 && cdf > tail {
			lo = k // P(X < lo) ≤ tail
		}
		if cdf >= 1-tail {
			hi = k // P(X > hi) ≤ tail
			break
		}
	}
	return max(lo, 0), hi
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }
