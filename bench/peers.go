package bench

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"halfway/netlab"
)

// PeersOptions choose what `halfway bench peers` measures.
type PeersOptions struct {
	Exe     string
	Repeats int
	// Peers among the halfway variants (halfwayVariants), haproxy,
	// nginx, socat; direct is always measured.
	Peers []string
	Parts []string // start, throughput, connrate, keepalive, latency, memory
	Flows int      // idle flows for the memory part
	// SocatFlows is socat's: it forks a process per connection.
	SocatFlows int
	Window     time.Duration // throughput and connection-rate windows
	Clients    int           // concurrent clients for the connection rates
	Requests   int           // sequential requests per latency repeat
	Install    bool          // apt-get the peers that are missing
	Log        io.Writer
}

// DefaultPeersOptions is the benchmark.
func DefaultPeersOptions() PeersOptions {
	return PeersOptions{
		Repeats: 5, Peers: []string{"halfway", "halfway-copy", "halfway-sockmap", "halfway-park", "halfway-attached", "halfway-2cpu", "haproxy", "nginx", "socat"},
		Parts: []string{"start", "throughput", "connrate", "keepalive", "latency", "memory"},
		Flows: 9000, SocatFlows: 500, Window: 3 * time.Second, Clients: 40, Requests: 2000, Install: true,
	}
}

// PeersReport compares halfway with the proxies an operator would
// otherwise pick, measured side by side in one run.
type PeersReport struct {
	Env     Env         `json:"env"`
	Repeats int         `json:"repeats"`
	Pinned  bool        `json:"pinned"`
	Rows    []PeerRow   `json:"rows"`
	Skipped []string    `json:"skipped,omitempty"`
	Notes   []string    `json:"notes"`
	Plots   []AccelPlot `json:"plots"`
}

// PeerRow is one proxy's figures (direct: none in between). Each slice
// holds one value per repeat; the medians are beside them.
type PeerRow struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`

	StartMS []float64 `json:"exec_to_accept_ms,omitempty"`

	Gbps     []float64 `json:"throughput_gbps,omitempty"`
	CPUPerGB []float64 `json:"cpu_s_per_gb,omitempty"`
	// MachineCPUPerGB is every core's busy time per GB (/proc/stat): the
	// load generator's and the sink's too, and the kernel's work outside
	// the proxy's process (softirqs, the sockmap's kworkers), which the
	// proxy's own CPU misses. Direct's row is the floor.
	MachineCPUPerGB []float64 `json:"machine_cpu_s_per_gb,omitempty"`
	ConnRate        []float64 `json:"new_conn_per_s,omitempty"`
	ConnCPUus       []float64 `json:"new_conn_cpu_us_per_request,omitempty"`
	KARate          []float64 `json:"keepalive_req_per_s,omitempty"`
	KACPUus         []float64 `json:"keepalive_cpu_us_per_request,omitempty"`
	LatP50us        []float64 `json:"latency_p50_us,omitempty"`
	LatP99us        []float64 `json:"latency_p99_us,omitempty"`
	IdleRSSKiB      float64   `json:"idle_rss_kib,omitempty"`
	Flows           int       `json:"flows,omitempty"`
	RSSPerFlow      float64   `json:"rss_per_flow_bytes,omitempty"`
	// AnonPerFlow is the anonymous part of RSSPerFlow: the flows' own
	// memory, without pages of the program's file the flows' code mapped.
	AnonPerFlow float64 `json:"anon_per_flow_bytes,omitempty"`
	FDsPerFlow  float64 `json:"fds_per_flow,omitempty"`
	SlabPerFlow float64 `json:"kernel_slab_per_flow_bytes,omitempty"`
	// ObjectsPerFlow is the growth of live slab objects per flow
	// (/proc/slabinfo), and ObjectCaches its caches that grew by 8 B per
	// flow or more: the kernel memory the flows hold, without the free
	// room in slab pages that meminfo's Slab (SlabPerFlow) also counts.
	ObjectsPerFlow float64 `json:"kernel_objects_per_flow_bytes,omitempty"`
	// KernelRounds are the memory rounds' ObjectsPerFlow, sorted.
	KernelRounds []float64          `json:"kernel_objects_per_flow_rounds,omitempty"`
	ObjectCaches map[string]float64 `json:"kernel_object_caches_per_flow_bytes,omitempty"`
	Processes    int                `json:"processes_with_flows,omitempty"`
	Err          string             `json:"error,omitempty"`
}

// Ports inside the benchmark's namespace.
const (
	peersBackendHTTP = 8000 // 1 KB HTTP answers
	peersBackendSink = 8001 // swallows bytes, holds connections
	peersBasePort    = 9000 // proxy i listens on 9000+10i (HTTP) and 9001+10i (sink)
)

type peerProc struct {
	name    string
	version string
	cmd     *exec.Cmd
	http    string // where clients connect for the HTTP backend
	sink    string // … for the sink
	dir     string
}

// RunPeers runs the benchmark in a namespace of its own (a netlab host;
// everything goes over its loopback).
func RunPeers(ctx context.Context, o PeersOptions) (*PeersReport, error) {
	r := &PeersReport{Env: CollectEnv(), Repeats: o.Repeats}
	if err := netlab.Sweep(); err != nil {
		return nil, err
	}
	peers := installPeers(o, r)
	t, err := netlab.ParseTopology([]byte("name: peers\nnodes: [box, other]\nlinks: [{a: box, b: other}]\n"))
	if err != nil {
		return nil, err
	}
	lab, err := netlab.Up(ctx, t, netlab.Options{Detach: true, Exe: o.Exe})
	if err != nil {
		return nil, err
	}
	defer lab.Close()
	box := lab.Host("box")
	dir, err := os.MkdirTemp("", "halfway-peers")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	b := &peersBench{o: o, r: r, box: box, dir: dir}
	// The load generator and the backends on CPU 0, the proxy on CPU 1.
	r.Pinned = pinSelf(0) == nil && numCPU() >= 2
	stop, err := b.backends()
	if err != nil {
		return nil, err
	}
	defer stop()
	rows := []*PeerRow{{Name: "direct"}}
	procs := []*peerProc{{name: "direct", http: fmt.Sprintf("127.0.0.1:%d", peersBackendHTTP), sink: fmt.Sprintf("127.0.0.1:%d", peersBackendSink)}}
	for i, name := range peers {
		p, err := b.startPeer(ctx, name, i)
		if err != nil {
			r.Skipped = append(r.Skipped, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		defer p.stop()
		procs = append(procs, p)
		rows = append(rows, &PeerRow{Name: name, Version: p.version})
	}
	want := map[string]bool{}
	for _, p := range o.Parts {
		want[p] = true
	}
	for rep := 0; rep < o.Repeats; rep++ {
		for i, p := range procs {
			row := rows[i]
			if row.Err != "" {
				continue
			}
			if err := b.measure(ctx, p, row, want, rep); err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				row.Err = err.Error()
				b.logf("%s: %v", p.name, err)
			}
		}
	}
	if want["memory"] {
		b.memoryRounds(ctx, procs, rows)
	}
	// The memory rounds take a cancellation as a row's failure: a
	// cancelled run has no report.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for _, row := range rows {
		r.Rows = append(r.Rows, *row)
	}
	r.plots()
	r.Notes = b.notes()
	return r, nil
}

type peersBench struct {
	o   PeersOptions
	r   *PeersReport
	box *netlab.Host
	dir string
}

func (b *peersBench) logf(format string, args ...any) {
	if b.o.Log != nil {
		fmt.Fprintf(b.o.Log, format+"\n", args...)
	}
}

// halfwayVariant is how a halfway peer is configured and run.
type halfwayVariant struct {
	dataPath    string // data_path
	parkAfter   string // park_after
	detachAfter string // detach_after
}

// halfwayVariants are the halfway peers: halfway-copy and halfway-sockmap
// take the other data paths, halfway-park waits 2 ms on its goroutines
// before parking a direction, halfway-attached keeps flows in Go's
// poller (the general path: no flow is plain), halfway-2cpu is not pinned
// to one core.
var halfwayVariants = map[string]halfwayVariant{
	"halfway":          {"splice", "0s", "1s"},
	"halfway-copy":     {"copy", "0s", "1s"},
	"halfway-sockmap":  {"sockmap", "0s", "1s"},
	"halfway-park":     {"splice", "2ms", "1s"},
	"halfway-attached": {"splice", "0s", "0s"},
	"halfway-2cpu":     {"splice", "0s", "1s"},
}

// KnownPeers lists the peers `halfway bench peers` can run.
func KnownPeers() []string {
	ps := slices.Sorted(maps.Keys(halfwayVariants))
	return append(ps, "haproxy", "nginx", "socat")
}

// installPeers finds the peers' programs, installing the missing ones with
// apt-get when o.Install; those still missing are skipped.
func installPeers(o PeersOptions, r *PeersReport) []string {
	need := map[string][]string{"haproxy": {"haproxy"}, "nginx": {"nginx-light", "libnginx-mod-stream"}, "socat": {"socat"}}
	bin := map[string]string{"haproxy": "haproxy", "nginx": "nginx", "socat": "socat"}
	for name := range halfwayVariants {
		bin[name] = o.Exe
	}
	var missing []string
	for _, p := range o.Peers {
		if _, err := exec.LookPath(bin[p]); err != nil && need[p] != nil {
			missing = append(missing, need[p]...)
		}
	}
	if p := "/usr/lib/nginx/modules/ngx_stream_module.so"; slices.Contains(o.Peers, "nginx") {
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, "libnginx-mod-stream")
		}
	}
	if len(missing) > 0 && o.Install {
		cmd := exec.Command("apt-get", append([]string{"install", "-y", "--no-install-recommends"}, missing...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			if o.Log != nil {
				fmt.Fprintf(o.Log, "apt-get install %s: %v\n%s\n", strings.Join(missing, " "), err, lastLines(out, 5))
			}
		}
		// A fresh nginx install starts the system's nginx: not ours to run.
		exec.Command("systemctl", "stop", "nginx").Run()
		exec.Command("service", "nginx", "stop").Run()
	}
	var out []string
	for _, p := range o.Peers {
		if !slices.Contains(KnownPeers(), p) {
			r.Skipped = append(r.Skipped, fmt.Sprintf("%s: unknown peer (want one of %s)", p, strings.Join(KnownPeers(), ", ")))
			continue
		}
		if _, err := exec.LookPath(bin[p]); err != nil {
			r.Skipped = append(r.Skipped, fmt.Sprintf("%s: not installed", p))
			continue
		}
		out = append(out, p)
	}
	return out
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// backends runs, in the namespace, the 1 KB HTTP server and the sink.
func (b *peersBench) backends() (func(), error) {
	body := bytes.Repeat([]byte("x"), 1024)
	hl, err := b.box.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", peersBackendHTTP))
	if err != nil {
		return nil, err
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", "1024")
		w.Write(body)
	})}
	go srv.Serve(hl)
	sl, err := b.box.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", peersBackendSink))
	if err != nil {
		hl.Close()
		return nil, err
	}
	go func() {
		for {
			c, err := sl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64<<10)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	return func() { srv.Close(); sl.Close() }, nil
}

// startPeer starts proxy name (the i-th) on CPU 1, forwarding its two
// ports to the backends, and waits until it accepts.
func (b *peersBench) startPeer(ctx context.Context, name string, i int) (*peerProc, error) {
	port := peersBasePort + 10*i
	p := &peerProc{name: name, http: fmt.Sprintf("127.0.0.1:%d", port), sink: fmt.Sprintf("127.0.0.1:%d", port+1), dir: filepath.Join(b.dir, name)}
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		return nil, err
	}
	argv, err := p.config(b.o.Exe)
	if err != nil {
		return nil, err
	}
	p.version = peerVersion(name, b.o.Exe)
	if _, err := b.launch(ctx, p, argv); err != nil {
		return nil, err
	}
	return p, nil
}

// launch execs the proxy and returns the time from exec to accepting.
func (b *peersBench) launch(ctx context.Context, p *peerProc, argv []string) (time.Duration, error) {
	switch {
	case strings.HasSuffix(p.name, "-2cpu"):
		argv = append([]string{"taskset", "-c", "0-" + strconv.Itoa(numCPU()-1)}, argv...)
	case numCPU() >= 2:
		argv = append([]string{"taskset", "-c", "1"}, argv...)
	}
	logf, err := os.Create(filepath.Join(p.dir, "log"))
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	cmd := b.box.Command(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &unix.SysProcAttr{Setpgid: true} // socat's children go with it
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	p.cmd = cmd
	if p.http == "" {
		// No listener: the time until it exits (the wrappers' baseline).
		err := cmd.Wait()
		p.cmd = nil
		return time.Since(start), err
	}
	var d time.Duration
	err = b.box.Do(func() error {
		for deadline := start.Add(10 * time.Second); time.Now().Before(deadline); {
			c, err := net.DialTimeout("tcp", p.http, time.Second)
			if err == nil {
				d = time.Since(start)
				c.Close()
				return nil
			}
			time.Sleep(200 * time.Microsecond)
		}
		return errors.New("never accepted")
	})
	if err != nil {
		p.stop()
		log, _ := os.ReadFile(filepath.Join(p.dir, "log"))
		return 0, fmt.Errorf("%s: %v: %s", p.name, err, lastLines(log, 5))
	}
	return d, nil
}

func (p *peerProc) stop() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	unix.Kill(-p.cmd.Process.Pid, unix.SIGTERM)
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		unix.Kill(-p.cmd.Process.Pid, unix.SIGKILL)
		<-done
	}
	p.cmd = nil
}

// config writes the proxy's configuration and returns its command line.
func (p *peerProc) config(exe string) ([]string, error) {
	write := func(name, s string) (string, error) {
		f := filepath.Join(p.dir, name)
		return f, os.WriteFile(f, []byte(s), 0o644)
	}
	backend := fmt.Sprintf("127.0.0.1:%d", peersBackendHTTP)
	sink := fmt.Sprintf("127.0.0.1:%d", peersBackendSink)
	if v, ok := halfwayVariants[p.name]; ok {
		f, err := write("relay.yaml", fmt.Sprintf(`admin: {listen: off}
log: {level: warn}
data_path: %s
park_after: %s
detach_after: %s
limits: {max_flows: 20000, max_flows_per_client: 20000, max_pending: 4096}
listeners:
  - {name: http, listen: %q, mode: forward, forward_to: %q}
  - {name: sink, listen: %q, mode: forward, forward_to: %q}
`, v.dataPath, v.parkAfter, v.detachAfter, p.http, backend, p.sink, sink))
		return []string{exe, "relay", "-c", f, "--grace", "1s"}, err
	}
	switch p.name {
	case "haproxy":
		// maxconn within the 20,000 descriptors a process may have here
		// (fd-hard-limit), with room for a few splice pipes.
		f, err := write("haproxy.cfg", fmt.Sprintf(`global
    fd-hard-limit 20000
    maxconn 9300
    maxpipes 200
    nbthread 1
    tune.maxaccept 64
defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 1h
    timeout server 1h
listen http
    bind %s
    server b %s
listen sink
    bind %s
    server b %s
`, p.http, backend, p.sink, sink))
		return []string{"haproxy", "-db", "-f", f}, err
	case "nginx":
		f, err := write("nginx.conf", fmt.Sprintf(`load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid %s/nginx.pid;
error_log %s/error.log warn;
events { worker_connections 19500; multi_accept on; }
stream {
    server { listen %s; proxy_pass %s; }
    server { listen %s; proxy_pass %s; }
}
`, p.dir, p.dir, p.http, backend, p.sink, sink))
		return []string{"nginx", "-p", p.dir, "-c", f}, err
	case "socat":
		// One socat per port: a shell keeps both, and the process group
		// takes them down together.
		hp, _ := strconv.Atoi(p.http[strings.LastIndexByte(p.http, ':')+1:])
		sp := hp + 1
		script := fmt.Sprintf("socat TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork,backlog=4096 TCP:%s &\nexec socat TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork,backlog=4096 TCP:%s\n", sp, sink, hp, backend)
		return []string{"sh", "-c", script}, nil
	}
	return nil, fmt.Errorf("unknown peer %q", p.name)
}

func peerVersion(name, exe string) string {
	var cmd *exec.Cmd
	switch name {
	case "haproxy":
		cmd = exec.Command("haproxy", "-v")
	case "nginx":
		cmd = exec.Command("nginx", "-v")
	case "socat":
		cmd = exec.Command("socat", "-V")
	default:
		return ""
	}
	out, _ := cmd.CombinedOutput()
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(strings.ToLower(l), "version") {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

// measure runs one repeat of the timed parts for one proxy.
func (b *peersBench) measure(ctx context.Context, p *peerProc, row *PeerRow, want map[string]bool, rep int) error {
	if want["start"] && p.cmd != nil {
		// A second instance beside the running one: its own ports.
		q := &peerProc{name: p.name, http: "", dir: filepath.Join(b.dir, p.name+"-start")}
		port := peersBasePort + 500 + 10*rep
		q.http, q.sink = fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("127.0.0.1:%d", port+1)
		if err := os.MkdirAll(q.dir, 0o755); err != nil {
			return err
		}
		argv, err := q.config(b.o.Exe)
		if err != nil {
			return err
		}
		d, err := b.launch(ctx, q, argv)
		q.stop()
		if err != nil {
			return err
		}
		// Less what the wrappers (ip netns exec, taskset) take to start
		// a program that does nothing, timed the same way now.
		w, err := b.launch(ctx, &peerProc{name: p.name, dir: q.dir}, []string{"true"})
		if err != nil {
			return fmt.Errorf("start: timing the wrappers: %w", err)
		}
		row.StartMS = append(row.StartMS, ms(max(d-w, 0)))
	}
	if want["throughput"] {
		// CPU is read at the window's edges, as the bytes are.
		w := cpuWindow{proc: p.cpu}
		gbps, bytes, err := b.stream(ctx, p.sink, w.edge)
		if err != nil {
			return fmt.Errorf("throughput: %w", err)
		}
		row.Gbps = append(row.Gbps, gbps)
		if bytes > 0 {
			row.MachineCPUPerGB = append(row.MachineCPUPerGB, w.busy/(float64(bytes)/1e9))
		}
		if p.cmd != nil && bytes > 0 {
			row.CPUPerGB = append(row.CPUPerGB, w.cpu/(float64(bytes)/1e9))
		}
		b.logf("%d/%d %s: %.2f Gbit/s", rep+1, b.o.Repeats, p.name, gbps)
	}
	for _, part := range []struct {
		name      string
		keepalive bool
		rate, cpu *[]float64
	}{{"connrate", false, &row.ConnRate, &row.ConnCPUus}, {"keepalive", true, &row.KARate, &row.KACPUus}} {
		if !want[part.name] {
			continue
		}
		w := cpuWindow{proc: p.cpu}
		n, d, err := b.requests(ctx, p.http, b.o.Clients, part.keepalive, b.o.Window, w.edge)
		if err != nil {
			return fmt.Errorf("%s: %w", part.name, err)
		}
		*part.rate = append(*part.rate, float64(n)/d.Seconds())
		if p.cmd != nil && n > 0 {
			*part.cpu = append(*part.cpu, w.cpu/float64(n)*1e6)
		}
		b.logf("%d/%d %s %s: %.0f requests/s", rep+1, b.o.Repeats, p.name, part.name, float64(n)/d.Seconds())
	}
	if want["latency"] {
		p50, p99, err := b.latency(ctx, p.http, b.o.Requests)
		if err != nil {
			return fmt.Errorf("latency: %w", err)
		}
		row.LatP50us = append(row.LatP50us, p50)
		row.LatP99us = append(row.LatP99us, p99)
	}
	return nil
}

// cpu is the proxy's CPU seconds: its process group's live processes and
// the children they reaped.
func (p *peerProc) cpu() float64 {
	if p.cmd == nil {
		return 0
	}
	total := 0.0
	for _, pid := range groupPIDs(p.cmd.Process.Pid) {
		f := procStat(pid)
		if len(f) > 14 {
			for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime
				v, _ := strconv.ParseFloat(f[i], 64)
				total += v / 100
			}
		}
	}
	return total
}

// machineBusy is the seconds all cores have spent busy (user, nice,
// system, irq, softirq, steal), from /proc/stat.
func machineBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	total := 0.0
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		if i < len(f) {
			v, _ := strconv.ParseFloat(f[i], 64)
			total += v / 100
		}
	}
	return total
}

// procStat is /proc/PID/stat after the command, as fields (state first).
func procStat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// groupPIDs lists the processes of process group pgid.
func groupPIDs(pgid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := procStat(pid); len(f) > 3 && f[2] == strconv.Itoa(pgid) {
			out = append(out, pid)
		}
	}
	return out
}

// cpuWindow takes a process's CPU seconds and the machine's busy seconds
// over a measurement window: edge runs at its start and at its end.
type cpuWindow struct {
	proc      func() float64
	cpu, busy float64 // over the window, once it has ended
	started   bool
}

func (w *cpuWindow) edge() {
	c, b := w.proc(), machineBusy()
	if !w.started {
		w.cpu, w.busy, w.started = -c, -b, true
		return
	}
	w.cpu += c
	w.busy += b
}

// stream sends one stream through addr for a second of warm-up and the
// window; it returns the goodput in the window and its bytes. edge runs as
// the window starts and ends.
func (b *peersBench) stream(ctx context.Context, addr string, edge func()) (gbps float64, n int64, err error) {
	var moved atomic.Int64
	stop := make(chan struct{})
	errc := make(chan error, 1)
	go b.box.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			errc <- err
			return nil
		}
		defer c.Close()
		buf := make([]byte, 256<<10)
		for {
			select {
			case <-stop:
				errc <- nil
				return nil
			default:
			}
			c.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
			k, err := c.Write(buf)
			moved.Add(int64(k))
			if err != nil && !os.IsTimeout(err) {
				errc <- err
				return nil
			}
		}
	})
	defer func() { close(stop); <-errc }()
	if !sleepCtx(ctx, time.Second) {
		return 0, 0, ctx.Err()
	}
	edge()
	b0, t0 := moved.Load(), time.Now()
	if !sleepCtx(ctx, b.o.Window) {
		return 0, 0, ctx.Err()
	}
	b1, t1 := moved.Load(), time.Now()
	edge()
	if b1 == b0 {
		return 0, 0, errors.New("no byte moved")
	}
	return float64(b1-b0) * 8 / t1.Sub(t0).Seconds() / 1e9, b1 - b0, nil
}

var httpRequest = []byte("GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
var httpRequestClose = []byte("GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")

// readResponse reads one HTTP response with a Content-Length body.
func readResponse(br *bufio.Reader) error {
	status, err := br.ReadSlice('\n')
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(status, []byte("HTTP/1.1 200")) {
		return fmt.Errorf("status %q", bytes.TrimSpace(status))
	}
	n := -1
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 {
			break
		}
		if v, ok := bytes.CutPrefix(bytes.ToLower(line), []byte("content-length:")); ok {
			n, _ = strconv.Atoi(string(bytes.TrimSpace(v)))
		}
	}
	if n != 1024 {
		return fmt.Errorf("content-length %d, want 1024", n)
	}
	_, err = br.Discard(n)
	return err
}

// requests runs clients that each send 1 KB requests through addr for a
// warm-up and the window, each on a new connection or on one kept alive,
// and counts the answers in the window; edge runs as the window starts and
// ends.
func (b *peersBench) requests(ctx context.Context, addr string, clients int, keepalive bool, window time.Duration, edge func()) (int64, time.Duration, error) {
	var count atomic.Int64
	var counting atomic.Bool
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[error]
	fail := func(err error) { firstErr.CompareAndSwap(nil, &err) }
	for range clients {
		wg.Add(1)
		go b.box.Do(func() error {
			defer wg.Done()
			var c net.Conn
			var br *bufio.Reader
			defer func() {
				if c != nil {
					c.Close()
				}
			}()
			for {
				select {
				case <-stop:
					return nil
				default:
				}
				if c == nil {
					var err error
					if c, err = net.DialTimeout("tcp", addr, 5*time.Second); err != nil {
						fail(err)
						return nil
					}
					br = bufio.NewReaderSize(c, 4096)
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				req := httpRequest
				if !keepalive {
					req = httpRequestClose
				}
				if _, err := c.Write(req); err != nil {
					fail(err)
					return nil
				}
				if err := readResponse(br); err != nil {
					fail(err)
					return nil
				}
				if counting.Load() {
					count.Add(1)
				}
				if !keepalive {
					c.Close()
					c = nil
				}
			}
		})
	}
	defer func() { close(stop); wg.Wait() }()
	if !sleepCtx(ctx, 500*time.Millisecond) {
		return 0, 0, ctx.Err()
	}
	edge()
	counting.Store(true)
	t0 := time.Now()
	if !sleepCtx(ctx, window) {
		return 0, 0, ctx.Err()
	}
	counting.Store(false)
	d := time.Since(t0)
	edge()
	if e := firstErr.Load(); e != nil {
		return 0, 0, *e
	}
	return count.Load(), d, nil
}

// latency sends n sequential requests on one kept-alive connection (after
// 200 unmeasured) and returns the p50 and p99 round trip, µs.
func (b *peersBench) latency(ctx context.Context, addr string, n int) (p50, p99 float64, err error) {
	var rtts []float64
	err = b.box.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		br := bufio.NewReaderSize(c, 4096)
		for i := 0; i < n+200; i++ {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			t0 := time.Now()
			if _, err := c.Write(httpRequest); err != nil {
				return err
			}
			if err := readResponse(br); err != nil {
				return err
			}
			if i >= 200 {
				rtts = append(rtts, float64(time.Since(t0).Nanoseconds())/1e3)
			}
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	slices.Sort(rtts)
	return quantile(rtts, 0.5), quantile(rtts, 0.99), nil
}

// notFlows are slab caches that are not the flows': TIME_WAIT sockets and
// pending handshakes (those left by the earlier parts of a run expire,
// after 60 s, while a proxy's idle flows are measured, and would count
// against it), and /proc's inodes, which whoever reads /proc/PID/fd makes,
// one per descriptor listed (session 17's run read 1026–1392 B per flow
// there, depending on the proxy: not the flows' memory).
var notFlows = map[string]bool{"tw_sock_TCP": true, "tw_sock_TCPv6": true, "request_sock_TCP": true, "request_sock_TCPv6": true,
	"proc_inode_cache": true}

// objectGrowth is the growth of live slab objects from a to b per flow: in
// all, and for each cache that grew by 8 B per flow or more; caches of
// connections that are not flows (notFlows) are left out.
func objectGrowth(a, b map[string]int64, flows int) (total float64, caches map[string]float64) {
	caches = map[string]float64{}
	for name, n := range b {
		if notFlows[name] {
			continue
		}
		d := float64(n-a[name]) / float64(flows)
		total += d
		if d >= 8 {
			caches[name] = d
		}
	}
	for name, n := range a {
		if _, ok := b[name]; !ok && !notFlows[name] {
			total -= float64(n) / float64(flows)
		}
	}
	return total, caches
}

// memoryRounds measures every proxy's idle flows in rounds (up to 3, one
// per repeat), each proxy in a fresh process, in an order rotated by one
// each round: whichever goes first after direct reads some 50 B per flow
// more of the kernel's, and the rotation spreads that. Each row keeps the
// median round (by kernel memory) and the medians of its user memory.
func (b *peersBench) memoryRounds(ctx context.Context, procs []*peerProc, rows []*PeerRow) {
	rounds := min(b.o.Repeats, 3)
	got := make([][]PeerRow, len(rows))
	// direct's first measurement grows the load generator's own tables
	// (descriptors, ports) once: a warm-up, dropped.
	var warm PeerRow
	if rows[0].Err == "" {
		if err := b.memory(ctx, procs[0], &warm); err != nil {
			rows[0].Err = err.Error()
		}
	}
	for round := range rounds {
		// direct first: the kernel's own share, subtracted from the proxies'.
		if rows[0].Err == "" {
			var row PeerRow
			if err := b.memory(ctx, procs[0], &row); err != nil {
				rows[0].Err = err.Error()
			} else {
				got[0] = append(got[0], row)
			}
		}
		for k := range len(procs) - 1 {
			i := 1 + (k+round)%(len(procs)-1)
			p := procs[i]
			if rows[i].Err != "" || ctx.Err() != nil {
				continue
			}
			// A fresh process: the measurements before grew its heap.
			p.stop()
			np, err := b.startPeer(ctx, p.name, i-1)
			if err != nil {
				rows[i].Err = err.Error()
				continue
			}
			procs[i] = np
			var row PeerRow
			err = b.memory(ctx, np, &row)
			np.stop()
			if err != nil {
				rows[i].Err = err.Error()
				b.logf("%s memory: %v", p.name, err)
				continue
			}
			got[i] = append(got[i], row)
		}
	}
	for i, rs := range got {
		if len(rs) > 0 && rows[i].Err == "" {
			rows[i].setMemory(rs)
		}
	}
}

// setMemory keeps the median of memory rounds: the round with the median
// kernel memory (its breakdown by cache with it), and the medians of the
// user-space figures.
func (r *PeerRow) setMemory(rs []PeerRow) {
	slices.SortFunc(rs, func(a, b PeerRow) int { return cmp.Compare(a.ObjectsPerFlow, b.ObjectsPerFlow) })
	m := rs[(len(rs)-1)/2]
	r.Flows, r.SlabPerFlow, r.ObjectsPerFlow, r.ObjectCaches, r.Processes = m.Flows, m.SlabPerFlow, m.ObjectsPerFlow, m.ObjectCaches, m.Processes
	field := func(f func(PeerRow) float64) float64 {
		xs := make([]float64, len(rs))
		for i := range rs {
			xs[i] = f(rs[i])
		}
		return median(xs)
	}
	r.IdleRSSKiB = field(func(x PeerRow) float64 { return x.IdleRSSKiB })
	r.RSSPerFlow = field(func(x PeerRow) float64 { return x.RSSPerFlow })
	r.AnonPerFlow = field(func(x PeerRow) float64 { return x.AnonPerFlow })
	r.FDsPerFlow = field(func(x PeerRow) float64 { return x.FDsPerFlow })
	r.KernelRounds = r.KernelRounds[:0]
	for _, x := range rs {
		r.KernelRounds = append(r.KernelRounds, x.ObjectsPerFlow)
	}
}

// memory opens idle flows through the proxy to the sink and measures what
// they cost it.
func (b *peersBench) memory(ctx context.Context, p *peerProc, row *PeerRow) error {
	flows := b.o.Flows
	if p.name == "socat" {
		flows = b.o.SocatFlows
	}
	time.Sleep(300 * time.Millisecond)
	settleSockets()
	var rss0, anon0 int64
	var fds0 int
	if p.cmd != nil {
		rss0, anon0, fds0, _ = groupMem(p.cmd.Process.Pid)
		row.IdleRSSKiB = float64(rss0) / 1024
	}
	slab0, objs0 := slabKiB(), slabObjects()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	err := b.box.Do(func() error {
		for i := 0; i < flows; i++ {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			c, err := net.DialTimeout("tcp", p.sink, 5*time.Second)
			if err != nil {
				return fmt.Errorf("flow %d: %w", i, err)
			}
			conns = append(conns, c)
			// One byte, so the proxy has connected onward and the flow is
			// relayed, not pending.
			if _, err := c.Write([]byte{0}); err != nil {
				return fmt.Errorf("flow %d: %w", i, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	time.Sleep(2 * time.Second) // every flow reached the sink and went idle
	row.Flows = flows
	row.SlabPerFlow = float64(slabKiB()-slab0) * 1024 / float64(flows)
	if objs0 != nil {
		row.ObjectsPerFlow, row.ObjectCaches = objectGrowth(objs0, slabObjects(), flows)
	}
	if p.cmd == nil {
		return nil
	}
	rss1, anon1, fds1, procs := groupMem(p.cmd.Process.Pid)
	row.RSSPerFlow = float64(rss1-rss0) / float64(flows)
	row.AnonPerFlow = float64(anon1-anon0) / float64(flows)
	row.FDsPerFlow = float64(fds1-fds0) / float64(flows)
	row.Processes = procs
	b.logf("%s: %d flows, %.0f B RSS (%.0f B anonymous) and %.2f descriptors per flow", p.name, flows, row.RSSPerFlow, row.AnonPerFlow, row.FDsPerFlow)
	return nil
}

// settleSockets waits, at most 15 s, until the machine's count of TCP
// sockets has stopped moving for 600 ms: the previous proxy's flows,
// closed as it ended, are freed a while after, and would make the next
// one's growth look smaller.
func settleSockets() {
	prev, stable := tcpAllocated(), 0
	for deadline := time.Now().Add(15 * time.Second); stable < 3 && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		n := tcpAllocated()
		if n-prev <= 16 && prev-n <= 16 {
			stable++
		} else {
			stable = 0
		}
		prev = n
	}
}

// tcpAllocated is the kernel's count of TCP sockets, all namespaces
// (/proc/net/sockstat's TCP alloc), or -1.
func tcpAllocated() int {
	b, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "TCP:" {
			continue
		}
		for i := 1; i+1 < len(f); i += 2 {
			if f[i] == "alloc" {
				n, _ := strconv.Atoi(f[i+1])
				return n
			}
		}
	}
	return -1
}

// groupMem sums the resident memory (bytes), its anonymous part and the
// descriptors of a process group.
func groupMem(pgid int) (rss, anon int64, fds int, procs int) {
	for _, pid := range groupPIDs(pgid) {
		procs++
		r, a := rssKiB(pid)
		rss += int64(r) * 1024
		anon += int64(a) * 1024
		fds += countFDs(pid)
	}
	return rss, anon, fds, procs
}

// pinSelf binds every thread of this process (and so the threads it
// starts later) to cpu.
func pinSelf(cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, _ := strconv.Atoi(t.Name())
		if err := unix.SchedSetaffinity(tid, &set); err != nil {
			return err
		}
	}
	return nil
}

func numCPU() int {
	var set unix.CPUSet
	if unix.SchedGetaffinity(0, &set) != nil {
		return 1
	}
	b, _ := os.ReadFile("/sys/devices/system/cpu/online")
	if s := strings.TrimSpace(string(b)); s == "0-1" || strings.HasPrefix(s, "0-") {
		n, _ := strconv.Atoi(s[2:])
		return n + 1
	}
	return set.Count()
}

func (b *peersBench) notes() []string {
	n := []string{
		"Everything runs over the loopback of one network namespace (a netlab host): clients, the proxy and the backends (a Go HTTP server answering 1 KB, and a sink).",
		fmt.Sprintf("Proxies: halfway (`mode: forward` listeners; halfway-copy with `data_path: copy`; halfway-sockmap with `data_path: sockmap`; halfway-park with `park_after: 2ms`; halfway-attached with `detach_after: 0s`, its flows kept in Go's poller (none plain, so it takes the general path); halfway-2cpu on both cores, shared with the clients), HAProxy (`mode tcp`, `option splice-auto`, nbthread 1), nginx (stream, 1 worker), socat (`fork`). Repeats are interleaved: each repeat measures every proxy in turn; %d repeats, medians with min–max.", b.o.Repeats),
		fmt.Sprintf("Throughput: one stream, 256 KB writes, 1 s warm-up then %s; CPU is the proxy's user+system time (its process group, reaped children included) per GB moved, both read at the window's edges. Machine CPU is every core's busy time per GB (/proc/stat), load generator and sink included: it counts the kernel's work outside the proxy's process (softirqs, and the kworkers that send what the sockmap program redirects), which the proxy's own CPU misses; direct's is the floor.", b.o.Window),
		fmt.Sprintf("Connection rates: %d clients, 1 KB HTTP; new connection per request (`Connection: close`) or one kept alive per client; 0.5 s warm-up then %s; CPU per request as above.", b.o.Clients, b.o.Window),
		"Start: from exec to the first accepted connection of a second instance beside the running one, less the time the same wrappers (ip netns exec, taskset) take to run a program that does nothing, timed alike in the same repeat.",
		fmt.Sprintf("Latency: one client, %d sequential requests on one kept-alive connection after 200 unmeasured; added latency is the proxy's median minus direct's.", b.o.Requests),
		fmt.Sprintf("Memory: a fresh proxy process; %d idle flows (socat %d: it forks a process per flow) each with one byte sent, measured 2 s later (begun once the kernel has freed the previous proxy's sockets), in %d rounds with the proxies' order rotated by one each round (whichever goes first after direct reads some 50 B per flow more of the kernel's), the median round kept (direct's first measurement, which grows the load generator's own tables, is dropped): RSS of the proxy's processes (memory per flow is the growth of its anonymous part, the flows' own memory: the rest is pages of the program's file, which the first flows' code maps once; the whole RSS growth is in the JSON), their descriptors, and the kernel's memory: the growth of live slab objects (/proc/slabinfo: active objects times their size, per cache, without the caches of TIME_WAIT sockets and pending handshakes, which earlier parts leave to expire meanwhile, and of /proc's inodes, which reading a process's descriptors makes; meminfo's machine-wide Slab, which also counts free room in slab pages, is in the JSON).", b.o.Flows, b.o.SocatFlows, min(b.o.Repeats, 3)),
	}
	if b.r.Pinned {
		n = append(n, "Pinned: each proxy runs on CPU 1 (taskset), the load generator and backends on CPU 0, so the proxy has a core to itself and its CPU time is not the clients'.")
	} else {
		n = append(n, "Not pinned: fewer than 2 CPUs, or pinning failed; the proxy shares CPUs with the load generator.")
	}
	return n
}
