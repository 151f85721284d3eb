package bench

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"halfway/netlab"
	"halfway/socks5"
)

// MPTCPOptions choose what `halfway bench mptcp` measures.
type MPTCPOptions struct {
	Exe     string
	Repeats int
	Parts   []string // goodput, buffers, interactive, pathloss, loopback
	Warm    time.Duration
	Window  time.Duration
	Buffers []int // per-socket buffer limits for the sweep, bytes
	// BufferModes are the sweeps to run: sockopt (fixed buffers), sysctl
	// (MiMBox's tcp_rmem/tcp_wmem limits), bbr (fixed buffers, bbr on the
	// client leg; not by default: it needed as much, 300 KB).
	BufferModes []string
	// Interactive is how long the 100 kbit/s flow runs per configuration.
	Interactive time.Duration
	Log         io.Writer
}

// DefaultMPTCPOptions is the full benchmark.
func DefaultMPTCPOptions() MPTCPOptions {
	return MPTCPOptions{
		Repeats:     3,
		Parts:       []string{"goodput", "buffers", "interactive", "pathloss", "loopback"},
		Warm:        3 * time.Second,
		Window:      10 * time.Second,
		Buffers:     []int{50_000, 100_000, 150_000, 200_000, 300_000, 500_000, 1_000_000},
		BufferModes: []string{"sockopt", "sysctl"},
		Interactive: 30 * time.Second,
	}
}

// MPTCPReport is MiMBox's evaluation (§4.4) reproduced in the lab, plus a
// path failure and a loopback comparison.
type MPTCPReport struct {
	Env        Env          `json:"env"`
	Repeats    int          `json:"repeats"`
	WindowS    float64      `json:"window_s"`
	Goodput    []GoodputRow `json:"goodput,omitempty"`
	Buffers    []BufferRow  `json:"buffers,omitempty"`
	FullBuffer int          `json:"full_goodput_buffer_bytes,omitempty"`
	// The same sweep the way MiMBox limited memory: the relay host's
	// tcp_rmem and tcp_wmem maximums, with the kernel's autotuning on.
	BuffersSysctl    []BufferRow `json:"buffers_sysctl,omitempty"`
	FullBufferSysctl int         `json:"full_goodput_buffer_sysctl_bytes,omitempty"`
	// Fixed buffers again, with bbr on the client leg: it keeps the
	// access links' queues short, so less data waits in flight.
	BuffersBBR    []BufferRow      `json:"buffers_bbr,omitempty"`
	FullBufferBBR int              `json:"full_goodput_buffer_bbr_bytes,omitempty"`
	Interactive   []InteractiveRow `json:"interactive,omitempty"`
	PathLoss      *PathLossRow     `json:"path_loss,omitempty"`
	Loopback      []GoodputRow     `json:"loopback,omitempty"`
	Notes         []string         `json:"notes"`
	Plots         []AccelPlot      `json:"plots"`
	Labs          []LabTiming      `json:"labs,omitempty"`
}

// GoodputRow is one configuration's download goodput, Mbit/s.
type GoodputRow struct {
	Config  string    `json:"config"`
	Mbps    []float64 `json:"mbps"`
	Median  float64   `json:"median_mbps"`
	Lo      float64   `json:"min_mbps"`
	Hi      float64   `json:"max_mbps"`
	Share3G float64   `json:"share_3g,omitempty"` // fraction of the client's downstream IP bytes on the 3G path
	// RelayCPUPerGB is the relay's CPU seconds per GB moved (loopback).
	RelayCPUPerGB float64 `json:"relay_cpu_s_per_gb,omitempty"`
}

// BufferRow is the converted flow's goodput with the relay's sockets
// limited to Buffer bytes each.
type BufferRow struct {
	Buffer int       `json:"buffer_bytes"`
	Mbps   []float64 `json:"mbps"`
	Median float64   `json:"median_mbps"`
}

// InteractiveRow is the application delay of a 100 kbit/s flow.
type InteractiveRow struct {
	Config   string  `json:"config"`
	Messages int     `json:"messages"`
	P50ms    float64 `json:"p50_ms"`
	P99ms    float64 `json:"p99_ms"`
	MaxMs    float64 `json:"max_ms"`
	BaseMs   float64 `json:"path_one_way_ms"` // the emulated links' one-way delay on the first path
	Share3G  float64 `json:"share_3g"`        // median fraction of the downstream IP bytes on the 3G path
	// RelayRTOMinMs is the minimum RTO of the relay's client leg where the
	// row sets one (0: the kernel's 200 ms).
	RelayRTOMinMs float64 `json:"relay_rto_min_ms,omitempty"`
}

// PathLossRow is a download that loses a path half-way.
type PathLossRow struct {
	Bytes       int     `json:"bytes"`
	Complete    bool    `json:"complete"`
	SHA256OK    bool    `json:"sha256_ok"`
	Error       string  `json:"error,omitempty"`
	DownAfterS  float64 `json:"path_down_after_s"`
	TotalS      float64 `json:"total_s"`
	BytesADSL   uint64  `json:"adsl_ip_bytes_down"`
	Bytes3G     uint64  `json:"3g_ip_bytes_down"`
	After3GOnly uint64  `json:"3g_ip_bytes_after_loss"`
}

// The lab of MiMBox §4.4 (Fig. 3): a client with an "ADSL" path (8 Mbit/s
// down, 512 kbit/s up, 20 ms RTT) and a "3G" path (2 Mbit/s down,
// 256 kbit/s up, 80 ms RTT) to the relay, and a 100 Mbit/s, 10 ms RTT path
// from the relay to the server. Queues: 50 ms of the rate downstream,
// 32 KB upstream (acknowledgements).
func mimboxTopology(name, loss string) string {
	return fmt.Sprintf(`name: %s
nodes:
  - {name: client, mptcp: {endpoints: subflow}}
  - {name: rc, mptcp: {}}
  - {name: server, mptcp: {}}
sysctl:
  net.ipv4.tcp_no_metrics_save: "1"
links:
  - {a: client, b: rc, delay: 10ms, rate: {ab: 512kbit, ba: 8mbit}, queue: {ab: 32KB, ba: 50ms}, loss: %s}
  - {a: client, b: rc, delay: 40ms, rate: {ab: 256kbit, ba: 2mbit}, queue: {ab: 32KB, ba: 50ms}, loss: %s}
  - {a: rc, b: server, delay: 5ms, rate: 100mbit}
`, name, loss, loss)
}

// Ports on the server host (and, for the loopback part, in rc).
const (
	portSourceTCP   = 9000 // answers requests over TCP
	portSourceMPTCP = 9001 // the same over MPTCP: the end-to-end MPTCP reference
	portLoopSink    = 9100
	portSOCKS       = 1080
)

type mptcpBench struct {
	o    MPTCPOptions
	r    *MPTCPReport
	body []byte // the path-loss download
}

func (b *mptcpBench) logf(format string, args ...any) {
	if b.o.Log != nil {
		fmt.Fprintf(b.o.Log, format+"\n", args...)
	}
}

// RunMPTCP runs the parts o asks for.
func RunMPTCP(ctx context.Context, o MPTCPOptions) (*MPTCPReport, error) {
	r := &MPTCPReport{Env: CollectEnv(), Repeats: o.Repeats, WindowS: o.Window.Seconds()}
	if err := netlab.Sweep(); err != nil {
		return nil, err
	}
	// The sweep reports the first buffer with full goodput: the smallest
	// only if they go up.
	o.Buffers = slices.Clone(o.Buffers)
	slices.Sort(o.Buffers)
	b := &mptcpBench{o: o, r: r, body: make([]byte, 4_000_000)}
	rand.Read(b.body)
	want := map[string]bool{}
	for _, p := range o.Parts {
		switch p {
		case "goodput", "buffers", "interactive", "pathloss", "loopback":
			want[p] = true
		default:
			return nil, fmt.Errorf("unknown part %q (want goodput, buffers, interactive, pathloss, loopback)", p)
		}
	}
	for _, m := range o.BufferModes {
		if m != "sockopt" && m != "sysctl" && m != "bbr" {
			return nil, fmt.Errorf("unknown buffer sweep %q (want sockopt, sysctl, bbr)", m)
		}
	}
	if want["goodput"] || want["buffers"] || want["pathloss"] || want["loopback"] {
		if err := b.withLab(ctx, "mimbox", "0%", func(l *mimboxLab) error {
			if want["goodput"] {
				if err := b.goodput(ctx, l); err != nil {
					return err
				}
			}
			if want["buffers"] {
				if err := b.buffers(ctx, l); err != nil {
					return err
				}
			}
			if want["loopback"] {
				if err := b.loopback(ctx, l); err != nil {
					return err
				}
			}
			if want["pathloss"] { // last: it takes a link down
				return b.pathLoss(ctx, l)
			}
			return nil
		}); err != nil {
			return nil, err
		}
	}
	if want["interactive"] {
		if err := b.withLab(ctx, "mimboxloss", "1%", func(l *mimboxLab) error { return b.interactive(ctx, l) }); err != nil {
			return nil, err
		}
	}
	r.plots()
	r.Notes = []string{
		"Lab: MiMBox §4.4. Client–relay: ADSL 8 Mbit/s down, 512 kbit/s up, 20 ms RTT; 3G 2 Mbit/s down, 256 kbit/s up, 80 ms RTT; downstream queues 50 ms of the rate, upstream 32 KB. Relay–server: 100 Mbit/s, 10 ms RTT. The server speaks TCP (port 9000) and, for the end-to-end MPTCP reference, MPTCP (9001).",
		"halfway: the client dials the relay's SOCKS5 listener (mptcp: true) over MPTCP or TCP; the relay opens a TCP leg to the server. End to end: the relay host only routes.",
		fmt.Sprintf("Goodput: bytes the client application received in a %s window after %s of warm-up, median of %d interleaved repeats.", b.o.Window, b.o.Warm, b.o.Repeats),
		"Buffer sweeps, the client keeping its autotuning: (1) the relay's legs.client and legs.server send_buffer and receive_buffer set to the value (SO_SNDBUFFORCE/SO_RCVBUFFORCE, which fix the buffer and turn autotuning off; the kernel doubles the value for its bookkeeping); (2) as MiMBox did, the relay host's tcp_rmem and tcp_wmem maximums set to the value (4096, min(128 KiB or 16 KiB, value), value) with autotuning on, for its MPTCP and TCP sockets alike; (3) with --buffer-modes bbr, (1) with legs.client.congestion: bbr.",
		"Interactive: the server sends 125-byte messages every 10 ms (100 kbit/s), each stamped with its send time; delay is receive time minus send time at the client application (the hosts share one clock), 1% loss on both client links, both directions.",
	}
	return r, nil
}

// mimboxLab is a running MiMBox lab with the relay on rc.
type mimboxLab struct {
	lab                *netlab.Lab
	client, rc, server *netlab.Host
	dir                string
	relay              *relayProc
}

func (b *mptcpBench) withLab(ctx context.Context, name, loss string, f func(*mimboxLab) error) error {
	t, err := netlab.ParseTopology([]byte(mimboxTopology(name, loss)))
	if err != nil {
		return err
	}
	b.logf("lab %s up (loss %s)", name, loss)
	lab, err := netlab.Up(ctx, t, netlab.Options{Detach: true, Exe: b.o.Exe, Realtime: true})
	if err != nil {
		return err
	}
	defer func() {
		if lt, err := labTiming(lab); err == nil {
			b.r.Labs = append(b.r.Labs, lt)
		}
		lab.Close()
	}()
	l := &mimboxLab{lab: lab, client: lab.Host("client"), rc: lab.Host("rc"), server: lab.Host("server")}
	if l.dir, err = os.MkdirTemp("", "halfway-mptcp"); err != nil {
		return err
	}
	defer os.RemoveAll(l.dir)
	stop, err := b.serveSources(l.server)
	if err != nil {
		return err
	}
	defer stop()
	defer func() {
		if l.relay != nil {
			l.relay.stop()
		}
	}()
	if err := b.relayWith(ctx, l, 0, "", false); err != nil {
		return err
	}
	return f(l)
}

// relayWith (re)starts the relay on rc with buf bytes of fixed buffers on
// both legs (0: the kernel's autotuning), the client leg's congestion
// control cc ("": the host's) and, if tuned, the client leg's loss
// recovery of the interactive part's tuned rows.
func (b *mptcpBench) relayWith(ctx context.Context, l *mimboxLab, buf int, cc string, tuned bool) error {
	if l.relay != nil {
		l.relay.stop()
		l.relay = nil
	}
	var client []string
	server := ""
	if buf > 0 {
		fixed := fmt.Sprintf("send_buffer: %d, receive_buffer: %d", buf, buf)
		client, server = append(client, fixed), "  server: {"+fixed+"}\n"
	}
	if cc != "" {
		client = append(client, "congestion: "+cc)
	}
	if tuned {
		client = append(client, "rto_min: "+interactiveRTOMin.String(), "thin_linear_timeouts: true")
	}
	legs := ""
	if len(client) > 0 { // a server setting comes only with a client one
		legs = "legs:\n  client: {" + strings.Join(client, ", ") + "}\n" + server
	}
	srvNet := l.server.Ifaces()[0].Addr4.Masked()
	cfg := fmt.Sprintf(`admin: {listen: "127.0.0.1:9190"}
log: {level: warn}
%slisteners:
  - name: socks
    listen: "0.0.0.0:%d"
    protocols: [socks5]
    mptcp: true
    allow_clients: [10.77.0.0/16, 127.0.0.1/32]
    allow_destinations: ["%s", "127.0.0.1/32"]
`, legs, portSOCKS, srvNet)
	p, err := startRelayIn(ctx, b.o.Exe, l.rc, l.dir, "rc", cfg)
	if err != nil {
		return err
	}
	l.relay = p
	if err := waitListening(ctx, l.client, l.rc.AddrPort(portSOCKS)); err != nil {
		return fmt.Errorf("%w\n%s", err, p.tail())
	}
	return nil
}

// serveSources answers on the server host's ports 9000 (TCP) and 9001
// (MPTCP) a 9-byte request: 'b' and a size (0: until the client closes)
// for bulk bytes, 'f' for the path-loss file, 'i' and a count for
// timestamped 125-byte messages every 10 ms.
func (b *mptcpBench) serveSources(h *netlab.Host) (func(), error) {
	var lns []net.Listener
	for _, p := range []struct {
		port  int
		mptcp bool
	}{{portSourceTCP, false}, {portSourceMPTCP, true}} {
		var ln net.Listener
		err := h.Do(func() (err error) {
			var lc net.ListenConfig
			lc.SetMultipathTCP(p.mptcp)
			ln, err = lc.Listen(context.Background(), "tcp", fmt.Sprintf(":%d", p.port))
			return err
		})
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, err
		}
		lns = append(lns, ln)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go b.source(c)
			}
		}()
	}
	return func() {
		for _, l := range lns {
			l.Close()
		}
	}, nil
}

const msgSize = 125 // 100 kbit/s at one message per 10 ms

func (b *mptcpBench) source(c net.Conn) {
	defer c.Close()
	var req [9]byte
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return
	}
	c.SetReadDeadline(time.Time{})
	n := binary.BigEndian.Uint64(req[1:])
	switch req[0] {
	case 'b':
		buf := make([]byte, 128<<10)
		rand.Read(buf)
		for sent := uint64(0); n == 0 || sent < n; {
			chunk := buf
			if n > 0 && n-sent < uint64(len(chunk)) {
				chunk = chunk[:n-sent]
			}
			k, err := c.Write(chunk)
			sent += uint64(k)
			if err != nil {
				return
			}
		}
	case 'f':
		c.Write(b.body)
	case 'i':
		msg := make([]byte, msgSize)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for i := uint64(0); i < n; i++ {
			<-t.C
			binary.BigEndian.PutUint64(msg, i)
			binary.BigEndian.PutUint64(msg[8:], uint64(monoNow()))
			if _, err := c.Write(msg); err != nil {
				return
			}
		}
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	io.Copy(io.Discard, c) // until the client closes
}

// flowConfig is how a client reaches the source.
type flowConfig struct {
	name       string
	mptcp      bool // the client's socket
	viaRelay   bool // through the relay's SOCKS5 listener
	mptcpSever bool // the server's MPTCP port (end to end only)
}

var goodputConfigs = []flowConfig{
	{name: "TCP, best path (ADSL), end to end", mptcp: false},
	{name: "TCP through halfway", mptcp: false, viaRelay: true},
	{name: "MPTCP through halfway to the TCP server", mptcp: true, viaRelay: true},
	{name: "MPTCP end to end (an MPTCP server; reference)", mptcp: true, mptcpSever: true},
}

// open connects the client and sends the request.
func (l *mimboxLab) open(ctx context.Context, fc flowConfig, kind byte, n uint64) (*net.TCPConn, error) {
	port := uint16(portSourceTCP)
	if fc.mptcpSever {
		port = portSourceMPTCP
	}
	dst := netip.MustParseAddrPort(l.server.AddrPort(port))
	d := &net.Dialer{Timeout: 10 * time.Second}
	d.SetMultipathTCP(fc.mptcp)
	addr := dst.String()
	if fc.viaRelay {
		addr = l.rc.AddrPort(portSOCKS)
	}
	c, err := l.client.DialWith(ctx, d, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := c.(*net.TCPConn)
	if fc.viaRelay {
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := socks5.ClientHandshake(tc, tc, socks5.Addr{IP: dst.Addr(), Port: dst.Port()}, "", ""); err != nil {
			tc.Close()
			return nil, fmt.Errorf("socks5: %w", err)
		}
		tc.SetDeadline(time.Time{})
	}
	var req [9]byte
	req[0] = kind
	binary.BigEndian.PutUint64(req[1:], n)
	if _, err := tc.Write(req[:]); err != nil {
		tc.Close()
		return nil, err
	}
	return tc, nil
}

// download measures one configuration's goodput and the share of the
// client's downstream bytes on the 3G link.
func (b *mptcpBench) download(ctx context.Context, l *mimboxLab, fc flowConfig) (mbps, share3G float64, err error) {
	c, err := l.open(ctx, fc, 'b', 0)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	if fc.mptcp {
		if ok, _ := c.MultipathTCP(); !ok {
			return 0, 0, fmt.Errorf("%s: the client's connection fell back to TCP", fc.name)
		}
	}
	got := make(chan int64, 1)
	var count int64
	var markAt, endAt time.Time
	var marked int64
	go func() {
		buf := make([]byte, 256<<10)
		warmEnd := time.Now().Add(b.o.Warm)
		end := warmEnd.Add(b.o.Window)
		c.SetReadDeadline(end.Add(5 * time.Second))
		for {
			n, err := c.Read(buf)
			count += int64(n)
			now := time.Now()
			if markAt.IsZero() && now.After(warmEnd) {
				markAt, marked = now, count
			}
			if now.After(end) || err != nil {
				endAt = now
				got <- count
				return
			}
		}
	}()
	var before []netlab.LinkStats
	if !sleepCtx(ctx, b.o.Warm) {
		return 0, 0, ctx.Err()
	}
	before, _ = l.lab.LinkStats()
	total := <-got
	after, _ := l.lab.LinkStats()
	if markAt.IsZero() || endAt.Sub(markAt) < b.o.Window/2 {
		return 0, 0, fmt.Errorf("%s: the download stopped early (%d bytes)", fc.name, total)
	}
	mbps = float64(total-marked) * 8 / endAt.Sub(markAt).Seconds() / 1e6
	return mbps, downShare3G(before, after), nil
}

// downShare3G is the 3G path's share of the IP bytes sent down the
// client's two links between two readings of the lab's counters.
func downShare3G(before, after []netlab.LinkStats) float64 {
	if len(before) < 2 || len(after) < 2 {
		return 0
	}
	adsl := after[0].BA.TxIPBytes - before[0].BA.TxIPBytes
	g3 := after[1].BA.TxIPBytes - before[1].BA.TxIPBytes
	if adsl+g3 == 0 {
		return 0
	}
	return float64(g3) / float64(adsl+g3)
}

func (b *mptcpBench) goodput(ctx context.Context, l *mimboxLab) error {
	rows := make([]GoodputRow, len(goodputConfigs))
	shares := make([][]float64, len(goodputConfigs))
	for rep := 0; rep < b.o.Repeats; rep++ {
		for i, fc := range goodputConfigs {
			mbps, share, err := b.download(ctx, l, fc)
			if err != nil {
				return err
			}
			rows[i].Config = fc.name
			rows[i].Mbps = append(rows[i].Mbps, mbps)
			shares[i] = append(shares[i], share)
			b.logf("goodput %d/%d %s: %.2f Mbit/s (%.0f%% on 3G)", rep+1, b.o.Repeats, fc.name, mbps, 100*share)
		}
	}
	for i := range rows {
		rows[i].Median = median(rows[i].Mbps)
		rows[i].Lo, rows[i].Hi = spread(rows[i].Mbps)
		rows[i].Share3G = median(shares[i])
	}
	b.r.Goodput = rows
	return nil
}

func (b *mptcpBench) buffers(ctx context.Context, l *mimboxLab) error {
	for _, mode := range b.o.BufferModes {
		rows, full, err := b.sweep(ctx, l, mode)
		if err != nil {
			return err
		}
		switch mode {
		case "sockopt":
			b.r.Buffers, b.r.FullBuffer = rows, full
		case "sysctl":
			b.r.BuffersSysctl, b.r.FullBufferSysctl = rows, full
		case "bbr":
			b.r.BuffersBBR, b.r.FullBufferBBR = rows, full
		}
	}
	return b.relayWith(ctx, l, 0, "", false)
}

// sweep measures the converted download with the relay's buffers limited
// to each of o.Buffers: by its own socket options (mode "sockopt": legs'
// send_buffer and receive_buffer; mode "bbr": the same with bbr on the
// client leg), or as MiMBox did (mode "sysctl": the relay host's tcp_rmem
// and tcp_wmem maximums, autotuning on). It returns the rows and the
// smallest buffer with full goodput.
func (b *mptcpBench) sweep(ctx context.Context, l *mimboxLab, mode string) ([]BufferRow, int, error) {
	fc := goodputConfigs[2]
	rows := make([]BufferRow, len(b.o.Buffers))
	if mode == "sysctl" {
		restore, err := hostTCPMem(ctx, l.rc)
		if err != nil {
			return nil, 0, err
		}
		defer restore()
	}
	for rep := 0; rep < b.o.Repeats; rep++ {
		for i, buf := range b.o.Buffers {
			relayBuf := buf
			if mode == "sysctl" {
				relayBuf = 0
				if err := setTCPMem(ctx, l.rc, fmt.Sprintf("4096 %d %d", min(131072, buf), buf), fmt.Sprintf("4096 %d %d", min(16384, buf), buf)); err != nil {
					return nil, 0, err
				}
			}
			cc := ""
			if mode == "bbr" {
				cc = "bbr"
			}
			if err := b.relayWith(ctx, l, relayBuf, cc, false); err != nil {
				return nil, 0, err
			}
			mbps, _, err := b.download(ctx, l, fc)
			if err != nil {
				return nil, 0, fmt.Errorf("buffer %d (%s): %w", buf, mode, err)
			}
			rows[i].Buffer = buf
			rows[i].Mbps = append(rows[i].Mbps, mbps)
			b.logf("buffers (%s) %d/%d %d B: %.2f Mbit/s", mode, rep+1, b.o.Repeats, buf, mbps)
		}
	}
	best := 0.0
	for i := range rows {
		rows[i].Median = median(rows[i].Mbps)
		best = math.Max(best, rows[i].Median)
	}
	for _, row := range rows {
		if row.Median >= 0.95*best {
			return rows, row.Buffer, nil
		}
	}
	return rows, 0, nil
}

// hostTCPMem reads a host's tcp_rmem and tcp_wmem and returns what puts
// them back.
func hostTCPMem(ctx context.Context, h *netlab.Host) (restore func(), err error) {
	vs, err := getSysctl(ctx, h, "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem")
	if err != nil {
		return nil, err
	}
	return func() { _ = setTCPMem(context.Background(), h, vs[0], vs[1]) }, nil
}

func setTCPMem(ctx context.Context, h *netlab.Host, rmem, wmem string) error {
	return setSysctl(ctx, h, "net.ipv4.tcp_rmem="+rmem, "net.ipv4.tcp_wmem="+wmem)
}

// getSysctl reads sysctls of a host, one value per key.
func getSysctl(ctx context.Context, h *netlab.Host, keys ...string) ([]string, error) {
	out, err := h.Command(ctx, "sysctl", append([]string{"-n"}, keys...)...).Output()
	if err != nil {
		return nil, fmt.Errorf("read %s on %s: %w", strings.Join(keys, ", "), h.Name, err)
	}
	vs := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(vs) != len(keys) {
		return nil, fmt.Errorf("read %s on %s: %q", strings.Join(keys, ", "), h.Name, out)
	}
	return vs, nil
}

// setSysctl sets key=value pairs on a host.
func setSysctl(ctx context.Context, h *netlab.Host, kvs ...string) error {
	if out, err := h.Command(ctx, "sysctl", append([]string{"-q", "-w"}, kvs...)...).CombinedOutput(); err != nil {
		return fmt.Errorf("set %s on %s: %v: %s", strings.Join(kvs, " "), h.Name, err, out)
	}
	return nil
}

// interactiveRTOMin is the minimum retransmission timeout the relay's
// client leg gets in the interactive part's tuned rows.
const interactiveRTOMin = 20 * time.Millisecond

// interactiveConfig is a configuration of the interactive part: a flow,
// and whether the relay's client leg recovers from loss faster: its
// legs.client.rto_min at interactiveRTOMin and thin_linear_timeouts on
// (which the relay sets on MPTCP subflows, whose MPTCP sockets refuse
// them).
type interactiveConfig struct {
	flowConfig
	tuned bool
}

var interactiveConfigs = []interactiveConfig{
	{flowConfig: goodputConfigs[2]},
	{flowConfig: flowConfig{name: "MPTCP through halfway, legs.client rto_min 20ms and thin_linear_timeouts", mptcp: true, viaRelay: true}, tuned: true},
	{flowConfig: goodputConfigs[3]},
	{flowConfig: flowConfig{name: "TCP through halfway, legs.client rto_min 20ms and thin_linear_timeouts", viaRelay: true}, tuned: true},
	{flowConfig: goodputConfigs[0]},
}

func (b *mptcpBench) interactive(ctx context.Context, l *mimboxLab) error {
	n := int(b.o.Interactive / (10 * time.Millisecond))
	for _, ic := range interactiveConfigs {
		if ic.viaRelay {
			if err := b.relayWith(ctx, l, 200_000, "", ic.tuned); err != nil {
				return err
			}
		}
		var delays, shares []float64
		for rep := 0; rep < b.o.Repeats; rep++ {
			before, _ := l.lab.LinkStats()
			d, err := b.messages(ctx, l, ic.flowConfig, n)
			if err != nil {
				return err
			}
			after, _ := l.lab.LinkStats()
			delays = append(delays, d...)
			shares = append(shares, downShare3G(before, after))
			b.logf("interactive %d/%d %s: %d messages, max %.1f ms, %.0f%% of the bytes down on 3G", rep+1, b.o.Repeats, ic.name, len(d), slices.Max(d), 100*shares[rep])
		}
		slices.Sort(delays)
		b.r.Interactive = append(b.r.Interactive, InteractiveRow{
			Config: ic.name, Messages: len(delays),
			P50ms: quantile(delays, 0.5), P99ms: quantile(delays, 0.99), MaxMs: delays[len(delays)-1],
			BaseMs: 10 + 5, Share3G: median(shares), RelayRTOMinMs: rtoMinMs(ic.tuned), // ADSL path: client–rc 10 ms, rc–server 5 ms, one way
		})
	}
	return nil
}

// rtoMinMs is the relay's client-leg minimum RTO in a row, 0 for the
// kernel's.
func rtoMinMs(tuned bool) float64 {
	if !tuned {
		return 0
	}
	return interactiveRTOMin.Seconds() * 1000
}

// messages runs one interactive flow of n messages and returns each
// message's delay, ms.
func (b *mptcpBench) messages(ctx context.Context, l *mimboxLab, fc flowConfig, n int) ([]float64, error) {
	c, err := l.open(ctx, fc, 'i', uint64(n))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(time.Duration(n)*10*time.Millisecond + 30*time.Second))
	delays := make([]float64, 0, n)
	msg := make([]byte, msgSize)
	for i := 0; i < n; i++ {
		if _, err := io.ReadFull(c, msg); err != nil {
			return nil, fmt.Errorf("%s: message %d of %d: %w", fc.name, i, n, err)
		}
		now := monoNow()
		if seq := binary.BigEndian.Uint64(msg); seq != uint64(i) {
			return nil, fmt.Errorf("%s: message %d arrived as %d", fc.name, i, seq)
		}
		sent := int64(binary.BigEndian.Uint64(msg[8:]))
		delays = append(delays, float64(now-sent)/1e6)
	}
	return delays, nil
}

func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(math.Ceil(q*float64(len(sorted))))-1)]
}

// pathLoss downloads the 4 MB file over MPTCP through the relay and takes
// the client's ADSL link down after 1.5 s.
func (b *mptcpBench) pathLoss(ctx context.Context, l *mimboxLab) error {
	row := &PathLossRow{Bytes: len(b.body), DownAfterS: 1.5}
	b.r.PathLoss = row
	before, _ := l.lab.LinkStats()
	start := time.Now()
	c, err := l.open(ctx, goodputConfigs[2], 'f', 0)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(2 * time.Minute))
	type result struct {
		sum [32]byte
		n   int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		h := sha256.New()
		n, err := io.Copy(h, c)
		var r result
		copy(r.sum[:], h.Sum(nil))
		r.n, r.err = n, err
		done <- r
	}()
	if !sleepCtx(ctx, 1500*time.Millisecond) {
		return ctx.Err()
	}
	mid, _ := l.lab.LinkStats()
	if out, err := l.client.Command(ctx, "ip", "link", "set", "eth0", "down").CombinedOutput(); err != nil {
		return fmt.Errorf("ip link set eth0 down: %v: %s", err, out)
	}
	res := <-done
	row.TotalS = time.Since(start).Seconds()
	after, _ := l.lab.LinkStats()
	row.Complete = res.err == nil && res.n == int64(len(b.body))
	row.SHA256OK = res.sum == sha256.Sum256(b.body)
	if res.err != nil {
		row.Error = res.err.Error()
	} else if !row.Complete {
		row.Error = fmt.Sprintf("%d of %d bytes", res.n, len(b.body))
	}
	if len(before) >= 2 && len(after) >= 2 && len(mid) >= 2 {
		row.BytesADSL = after[0].BA.TxIPBytes - before[0].BA.TxIPBytes
		row.Bytes3G = after[1].BA.TxIPBytes - before[1].BA.TxIPBytes
		row.After3GOnly = after[1].BA.TxIPBytes - mid[1].BA.TxIPBytes
	}
	b.logf("path loss: complete %v, SHA-256 %v, %.1f s", row.Complete, row.SHA256OK, row.TotalS)
	return nil
}

// monoEpoch and monoNow stamp the interactive messages on the monotonic
// clock (both ends run in this process): a wall clock step in a run
// would show as delay.
var monoEpoch = time.Now()

func monoNow() int64 { return int64(time.Since(monoEpoch)) }

// loopback compares, inside rc, a TCP client and an MPTCP client sending
// through the relay to a TCP sink on 127.0.0.1, with the relay's CPU per
// GB; and, for the stack's own cost, each client straight to a sink of its
// kind.
func (b *mptcpBench) loopback(ctx context.Context, l *mimboxLab) error {
	tcpSink, err := newSinkWith(l.rc, portLoopSink, false)
	if err != nil {
		return err
	}
	defer tcpSink.Close()
	mpSink, err := newSinkWith(l.rc, portLoopSink+1, true)
	if err != nil {
		return err
	}
	defer mpSink.Close()
	lo := netip.MustParseAddr("127.0.0.1")
	relay := netip.AddrPortFrom(lo, portSOCKS)
	cases := []struct {
		name  string
		mptcp bool
		via   netip.AddrPort
		s     *sink
		dst   netip.AddrPort
	}{
		{"TCP → halfway → TCP", false, relay, tcpSink, netip.AddrPortFrom(lo, portLoopSink)},
		{"MPTCP → halfway → TCP", true, relay, tcpSink, netip.AddrPortFrom(lo, portLoopSink)},
		{"TCP → TCP sink, no relay", false, netip.AddrPort{}, tcpSink, netip.AddrPortFrom(lo, portLoopSink)},
		{"MPTCP → MPTCP sink, no relay", true, netip.AddrPort{}, mpSink, netip.AddrPortFrom(lo, portLoopSink+1)},
	}
	rows := make([]GoodputRow, len(cases))
	cpu := make([][]float64, len(cases))
	pid := l.relay.cmd.Process.Pid
	for rep := 0; rep < b.o.Repeats; rep++ {
		for i, c := range cases {
			rows[i].Config = c.name
			// The relay's CPU over the window the bytes are counted in.
			w := cpuWindow{proc: func() float64 { return procCPU(pid) }}
			gbps, bytes, err := loopSend(ctx, l.rc, c.s, c.via, c.dst, c.mptcp, time.Second, 3*time.Second, w.edge)
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			rows[i].Mbps = append(rows[i].Mbps, gbps*1000)
			if c.via.IsValid() && bytes > 0 {
				cpu[i] = append(cpu[i], w.cpu/(float64(bytes)/1e9))
			}
			b.logf("loopback %d/%d %s: %.2f Gbit/s", rep+1, b.o.Repeats, c.name, gbps)
		}
	}
	for i := range rows {
		rows[i].Median = median(rows[i].Mbps)
		rows[i].Lo, rows[i].Hi = spread(rows[i].Mbps)
		if len(cpu[i]) > 0 {
			rows[i].RelayCPUPerGB = median(cpu[i])
		}
	}
	b.r.Loopback = rows
	return nil
}

// procCPU is a process's user and system CPU time so far, seconds.
func procCPU(pid int) float64 {
	f := procStat(pid)
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) / 100 // USER_HZ
}

// loopSend writes through the relay's SOCKS5 listener on 127.0.0.1 for
// warm+window and returns the sink's goodput in the window, Gbit/s; edge
// runs as the window starts and ends.
func loopSend(ctx context.Context, h *netlab.Host, s *sink, via, dst netip.AddrPort, mptcp bool, warm, window time.Duration, edge func()) (gbps float64, bytes int64, err error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	d.SetMultipathTCP(mptcp)
	addr := dst
	if via.IsValid() {
		addr = via
	}
	c, err := h.DialWith(ctx, d, "tcp", addr.String())
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	if ok, _ := c.(*net.TCPConn).MultipathTCP(); ok != mptcp {
		return 0, 0, fmt.Errorf("loopback client: MPTCP %v, want %v", ok, mptcp)
	}
	if via.IsValid() {
		if _, err := socks5.ClientHandshake(c, c, socks5.Addr{IP: dst.Addr(), Port: dst.Port()}, "", ""); err != nil {
			return 0, 0, err
		}
	}
	stop := make(chan struct{})
	werr := make(chan error, 1)
	go func() {
		buf := make([]byte, 256<<10)
		for {
			select {
			case <-stop:
				werr <- nil
				return
			default:
			}
			c.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
			if _, err := c.Write(buf); err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					continue
				}
				werr <- err
				return
			}
		}
	}()
	defer func() { close(stop); <-werr }()
	if !sleepCtx(ctx, warm) {
		return 0, 0, ctx.Err()
	}
	edge()
	b0, t0 := s.bytes.Load(), time.Now()
	if !sleepCtx(ctx, window) {
		return 0, 0, ctx.Err()
	}
	b1, t1 := s.bytes.Load(), time.Now()
	edge()
	return float64(b1-b0) * 8 / t1.Sub(t0).Seconds() / 1e9, b1 - b0, nil
}

// LoadMPTCP reads a report written with --json, for re-rendering.
func LoadMPTCP(b []byte) (*MPTCPReport, error) {
	var r MPTCPReport
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	r.plots()
	return &r, nil
}

func (r *MPTCPReport) plots() {
	r.Plots = nil
	if len(r.Buffers) > 0 {
		s := series{name: "MPTCP through halfway, fixed buffers"}
		for _, row := range r.Buffers {
			s.x = append(s.x, float64(row.Buffer)/1000)
			s.y = append(s.y, row.Median)
		}
		plot := []series{s}
		for _, more := range []struct {
			name  string
			rows  []BufferRow
			color int
		}{{"MPTCP through halfway, tcp_rmem/tcp_wmem limits (MiMBox)", r.BuffersSysctl, 2}, {"MPTCP through halfway, fixed buffers, bbr to the client", r.BuffersBBR, 3}} {
			if len(more.rows) == 0 {
				continue
			}
			m := series{name: more.name, color: more.color}
			for _, row := range more.rows {
				m.x = append(m.x, float64(row.Buffer)/1000)
				m.y = append(m.y, row.Median)
			}
			plot = append(plot, m)
		}
		plot = append(plot, series{name: "10 Mbit/s: both paths", dashed: true, color: 1,
			x: []float64{s.x[0], s.x[len(s.x)-1]}, y: []float64{10, 10}})
		r.Plots = append(r.Plots, AccelPlot{Name: "mptcp-buffers.svg",
			SVG: lineSVG("Goodput vs per-socket buffer on the relay (MiMBox Fig. 6)", "buffer per socket (KB)", "goodput (Mbit/s)", true, plot)})
	}
	if len(r.Goodput) > 0 {
		var groups []string
		var vals [][]float64
		for _, row := range r.Goodput {
			groups = append(groups, shortConfig(row.Config))
			vals = append(vals, []float64{row.Median})
		}
		r.Plots = append(r.Plots, AccelPlot{Name: "mptcp-goodput.svg",
			SVG: barSVG("Download goodput, ADSL + 3G client", "goodput (Mbit/s)", groups, []string{"median"}, vals, nil)})
	}
}

// shortConfig is a configuration's label under a bar.
func shortConfig(s string) string {
	for _, m := range []struct{ prefix, short string }{
		{"MPTCP through halfway, legs.client", "MPTCP halfway, tuned"},
		{"TCP through halfway, legs.client", "TCP halfway, tuned"},
		{"TCP, best path", "TCP e2e"}, {"TCP through", "TCP halfway"},
		{"MPTCP through", "MPTCP halfway"}, {"MPTCP end to end", "MPTCP e2e"},
	} {
		if strings.HasPrefix(s, m.prefix) {
			return m.short
		}
	}
	return s
}
