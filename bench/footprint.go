package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"halfway/socks5"
)

// FootprintOptions choose what `halfway bench footprint` measures.
type FootprintOptions struct {
	Flows   int // idle relayed flows held open (≤ 9000 here: 20,000 descriptors per process)
	Repeats int // exec-to-accept repeats
	// Settle is how long after its start the idle relay's RSS is read a
	// second time (0: not read): past 2 minutes the runtime's forced
	// garbage collection has run, and mapped its code.
	Settle time.Duration
	Exe    string // the halfway binary
	Log    io.Writer
}

// FootprintReport is a relay's memory and start-up cost.
type FootprintReport struct {
	Env             Env     `json:"env"`
	IdleRSSKiB      float64 `json:"idle_rss_kib"`
	IdleAnonKiB     float64 `json:"idle_rss_anon_kib"` // the process's own pages; the rest maps the binary
	SettleS         float64 `json:"settle_s,omitempty"`
	SettledRSSKiB   float64 `json:"settled_idle_rss_kib,omitempty"`
	SettledAnonKiB  float64 `json:"settled_idle_rss_anon_kib,omitempty"`
	Flows           int     `json:"flows"`
	RSSWithFlowsKiB float64 `json:"rss_with_flows_kib"`
	PerFlowBytes    float64 `json:"user_memory_per_flow_bytes"`
	// The anonymous part: the flows' own memory, without the pages of
	// the binary that running them mapped (which RSS growth counts too).
	RSSWithFlowsAnonKiB float64 `json:"rss_anon_with_flows_kib"`
	AnonPerFlowBytes    float64 `json:"anon_memory_per_flow_bytes"`
	// Idle again: the flows closed, the relay's RSS after it has run them.
	AfterFlowsRSSKiB  float64   `json:"idle_rss_after_flows_kib"`
	AfterFlowsAnonKiB float64   `json:"idle_rss_anon_after_flows_kib"`
	FDsPerFlow        float64   `json:"descriptors_per_flow"`
	SlabPerFlow       float64   `json:"kernel_slab_per_flow_bytes"` // machine-wide Slab delta: indicative
	ExecToAcceptMS    []float64 `json:"exec_to_accept_ms"`
	MedianStartMS     float64   `json:"exec_to_accept_median_ms"`
	// The same binary's exec to exit doing nothing (`halfway help`), and
	// /bin/true's: how much of the start is the runtime and package inits.
	BinaryFloorMS float64 `json:"binary_exec_to_exit_median_ms"`
	TrueFloorMS   float64 `json:"bin_true_exec_to_exit_median_ms"`
}

// footprintReleaseAfter is the relay's memory.release_after in the
// benchmark: how long it waits, idle, before it gives memory back.
const footprintReleaseAfter = 5 * time.Second

// RunFootprint starts a relay on loopback and measures it idle, with
// o.Flows idle relayed flows, and its time from exec to accepting.
func RunFootprint(ctx context.Context, o FootprintOptions) (*FootprintReport, error) {
	logf := func(format string, args ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, format+"\n", args...)
		}
	}
	r := &FootprintReport{Env: CollectEnv(), Flows: o.Flows}
	dir, err := os.MkdirTemp("", "halfway-footprint")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	held := make(chan net.Conn, o.Flows+16)
	accepting := make(chan struct{})
	go func() {
		defer close(accepting)
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			held <- c
		}
	}()
	defer func() {
		// The acceptor ends before held closes: no send on a closed channel.
		sink.Close()
		<-accepting
		close(held)
		for c := range held {
			c.Close()
		}
	}()
	port := freePort()
	cfg := fmt.Sprintf(`
admin: {listen: off}
log: {level: warn}
limits: {max_flows: 20000, max_flows_per_client: 20000}
memory: {release_after: %s}
listeners:
  - name: socks
    listen: 127.0.0.1:%d
    protocols: [socks5]
    allow_clients: [127.0.0.1/32]
    allow_destinations: ["127.0.0.1/32"]
`, footprintReleaseAfter, port)
	file := filepath.Join(dir, "relay.yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)

	for rep := 0; rep < o.Repeats; rep++ {
		cmd, d, err := startRelay(ctx, o.Exe, file, addr)
		if err != nil {
			return nil, err
		}
		r.ExecToAcceptMS = append(r.ExecToAcceptMS, ms(d))
		logf("exec to accepting: %.2f ms", ms(d))
		if rep < o.Repeats-1 {
			stopRelay(cmd)
			continue
		}
		// The last relay stays up for the memory measurements.
		defer stopRelay(cmd)
		time.Sleep(500 * time.Millisecond)
		pid := cmd.Process.Pid
		r.IdleRSSKiB, r.IdleAnonKiB = rssKiB(pid)
		logf("idle: RSS %.0f KiB (anonymous %.0f KiB)", r.IdleRSSKiB, r.IdleAnonKiB)
		if o.Settle > 0 {
			logf("waiting until %s after the start for the settled idle RSS", o.Settle)
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(o.Settle - d - 500*time.Millisecond):
			}
			r.SettleS = o.Settle.Seconds()
			r.SettledRSSKiB, r.SettledAnonKiB = rssKiB(pid)
			logf("settled idle: RSS %.0f KiB (anonymous %.0f KiB)", r.SettledRSSKiB, r.SettledAnonKiB)
		}
		fd0 := countFDs(pid)
		slab0 := slabKiB()
		clients := make([]net.Conn, 0, o.Flows)
		defer func() {
			for _, c := range clients {
				c.Close()
			}
		}()
		dst := addrPortOf(sink.Addr())
		for i := 0; i < o.Flows; i++ {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				return nil, fmt.Errorf("flow %d: %w", i, err)
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := socks5.ClientHandshake(c, c, socks5.Addr{IP: dst.Addr(), Port: dst.Port()}, "", ""); err != nil {
				c.Close()
				return nil, fmt.Errorf("flow %d: %w", i, err)
			}
			c.SetDeadline(time.Time{})
			clients = append(clients, c)
			if (i+1)%3000 == 0 {
				logf("%d flows open", i+1)
			}
		}
		if !sleepCtx(ctx, time.Second) { // let the relay's goroutines settle
			return nil, ctx.Err()
		}
		r.RSSWithFlowsKiB, r.RSSWithFlowsAnonKiB = rssKiB(pid)
		base, baseAnon := r.IdleRSSKiB, r.IdleAnonKiB
		if r.SettledRSSKiB > 0 {
			// the flows opened after the settle wait
			base, baseAnon = r.SettledRSSKiB, r.SettledAnonKiB
		}
		r.PerFlowBytes = (r.RSSWithFlowsKiB - base) * 1024 / float64(o.Flows)
		r.AnonPerFlowBytes = (r.RSSWithFlowsAnonKiB - baseAnon) * 1024 / float64(o.Flows)
		r.FDsPerFlow = float64(countFDs(pid)-fd0) / float64(o.Flows)
		r.SlabPerFlow = float64(slabKiB()-slab0) * 1024 / float64(o.Flows)
		logf("with %d flows: RSS %.0f KiB (%.0f B per flow; anonymous %.0f B), %.2f descriptors per flow", o.Flows, r.RSSWithFlowsKiB, r.PerFlowBytes, r.AnonPerFlowBytes, r.FDsPerFlow)
		// Both ends close: a flow whose server has not closed stays
		// half-open, and the relay busy.
		for _, c := range clients {
			c.Close()
		}
		clients = clients[:0]
	drain:
		for {
			select {
			case c := <-held:
				c.Close()
			default:
				break drain
			}
		}
		for i := 0; i < 100 && countFDs(pid) > fd0; i++ {
			time.Sleep(50 * time.Millisecond)
		}
		// The relay checks once a second, then waits release_after.
		if !sleepCtx(ctx, 2*footprintReleaseAfter+2*time.Second) {
			return nil, ctx.Err()
		}
		r.AfterFlowsRSSKiB, r.AfterFlowsAnonKiB = rssKiB(pid)
		logf("idle again: RSS %.0f KiB (anonymous %.0f KiB)", r.AfterFlowsRSSKiB, r.AfterFlowsAnonKiB)
	}
	r.MedianStartMS = median(r.ExecToAcceptMS)
	r.BinaryFloorMS = execMedian(ctx, 15, o.Exe, "help")
	r.TrueFloorMS = execMedian(ctx, 15, "/bin/true")
	// Cancelled, the relay was killed (exec.CommandContext) and the
	// figures read after are a dead process's zeros: no report.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return r, nil
}

// execMedian is the median time to run a command to its exit.
func execMedian(ctx context.Context, n int, name string, args ...string) float64 {
	var ds []float64
	for range n {
		start := time.Now()
		if exec.CommandContext(ctx, name, args...).Run() != nil {
			return 0
		}
		ds = append(ds, ms(time.Since(start)))
	}
	return median(ds)
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.AddrPort()
	}
	return netip.AddrPort{}
}

func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 21080
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startRelay execs a relay and returns once it accepts, with the time that took.
func startRelay(ctx context.Context, exe, file, addr string) (*exec.Cmd, time.Duration, error) {
	cmd := exec.CommandContext(ctx, exe, "relay", "-c", file, "--grace", "1s")
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, 0, err
	}
	for deadline := start.Add(10 * time.Second); time.Now().Before(deadline); {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			d := time.Since(start)
			c.Close()
			return cmd, d, nil
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			time.Sleep(100 * time.Microsecond)
		}
	}
	stopRelay(cmd)
	return nil, 0, fmt.Errorf("relay at %s never accepted", addr)
}

func stopRelay(cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// rssKiB reads a process's resident memory and its anonymous part, KiB,
// from one read of /proc/PID/status.
func rssKiB(pid int) (rss, anon float64) {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		name, v, _ := strings.Cut(line, ":")
		n, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		switch name {
		case "VmRSS":
			rss = n
		case "RssAnon":
			anon = n
		}
	}
	return rss, anon
}

func countFDs(pid int) int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents)
}

func slabKiB() int {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Slab:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	return 0
}

// slabObjects is the bytes of live slab objects per cache: active objects
// times object size, from /proc/slabinfo (readable by root only); nil if
// it cannot be read. Unlike meminfo's Slab it leaves out the free room in
// slab pages, which other activity on the machine moves.
func slabObjects() map[string]int64 {
	b, err := os.ReadFile("/proc/slabinfo")
	if err != nil {
		return nil
	}
	return parseSlabinfo(string(b))
}

// parseSlabinfo reads /proc/slabinfo's version 2.1 lines: name,
// active_objs, num_objs, objsize, ...
func parseSlabinfo(text string) map[string]int64 {
	m := map[string]int64{}
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || strings.HasPrefix(f[0], "#") || f[0] == "slabinfo" {
			continue
		}
		active, err1 := strconv.ParseInt(f[1], 10, 64)
		size, err2 := strconv.ParseInt(f[3], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		m[f[0]] += active * size
	}
	return m
}

// Markdown renders the footprint report.
func (r *FootprintReport) Markdown() string {
	lo, hi := spread(r.ExecToAcceptMS)
	settledHead, settled := "idle RSS later", "not read"
	if r.SettleS > 0 {
		settledHead = fmt.Sprintf("idle RSS %.0f s after start (anonymous)", r.SettleS)
		settled = fmt.Sprintf("%.0f KiB (%.0f KiB)", r.SettledRSSKiB, r.SettledAnonKiB)
	}
	return fmt.Sprintf(`# halfway bench footprint

%s, kernel %s, %d CPUs, %s. A relay on loopback (SOCKS5 listener, direct route).

| idle RSS (anonymous) | %s | RSS with %d idle flows (anonymous) | user memory per flow: RSS (anonymous) | descriptors per flow | kernel slab per flow (machine-wide) | idle again after the flows (anonymous) | exec to accepting, median (min–max) of %d |
|---:|---:|---:|---:|---:|---:|---:|---:|
| %.0f KiB (%.0f KiB) | %s | %.0f KiB (%.0f KiB) | %.0f B (%.0f B) | %.2f | %.0f B | %.0f KiB (%.0f KiB) | %.2f ms (%.2f–%.2f) |

Goals (issue 3): ≤ 8 MiB idle RSS, ≤ 16 KiB per relayed flow, ≤ 10 ms to accept.
Anonymous RSS is the relay's own memory; the rest of its RSS is pages of the binary, shared through the page cache. Per flow, RSS growth also counts the pages of the binary that running the flows mapped; the anonymous growth is the flows' own memory.
The relay gives memory back (memory.release, on by default) once it has started and when it has been idle for memory.release_after (%s here; 30s by default): it returns free heap and unmaps the pages of its binary it mapped, which stay in the page cache.
For scale, on this machine: the halfway binary doing nothing (halfway help) takes %.2f ms from exec to exit, /bin/true %.2f ms.
`, r.Env.Time.Format("2006-01-02 15:04 MST"), r.Env.Kernel, r.Env.CPUs, r.Env.Go,
		settledHead, r.Flows, len(r.ExecToAcceptMS), r.IdleRSSKiB, r.IdleAnonKiB, settled, r.RSSWithFlowsKiB, r.RSSWithFlowsAnonKiB, r.PerFlowBytes, r.AnonPerFlowBytes, r.FDsPerFlow, r.SlabPerFlow, r.AfterFlowsRSSKiB, r.AfterFlowsAnonKiB, r.MedianStartMS, lo, hi,
		footprintReleaseAfter, r.BinaryFloorMS, r.TrueFloorMS)
}
