package relay_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"halfway/convert"
	"halfway/httpconnect"
	"halfway/netlab"
	"halfway/netlab/labtest"
	"halfway/proxyproto"
	"halfway/relay"
	"halfway/sockopt"
	"halfway/socks5"
)

// chainLab is client – rc – rs – server with a relay on rc (SOCKS5 and
// HTTP CONNECT for clients) and one on rs (Convert, for rc only), and
// servers on the server host run by the test.
type chainLab struct {
	lab     *netlab.Lab
	rcProxy string // rc's explicit listener
	rsHop   string // rs's convert listener
	psk     []byte
	logs    map[string]string       // relay name → log file
	stops   map[string]func() error // relay name → stop it now
}

const chainTopo = `
name: chain
nodes: [client, rc, rs, server]
sysctl:
  net.ipv4.tcp_fastopen: "3"
links:
  - {a: client, b: rc, delay: 2ms}
  - {a: rc, b: rs, delay: 5ms}
  - {a: rs, b: server, delay: 2ms}
`

var buildOnce = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "halfway-bin")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "halfway")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/halfway").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

func startChain(t *testing.T) *chainLab { return startChainWith(t, false) }

// accelLegs and the peers below turn on every acceleration feature between
// rc and rs: a pool, Turbo-Start both ways, cubic and fixed buffers.
const accelLegs = `
legs:
  relay: {congestion: cubic, send_buffer: 8MiB, receive_buffer: 8MiB}
`

// ifaceToward is h's address on its link to the host named peer.
func ifaceToward(t *testing.T, h *netlab.Host, peer string) netip.Addr {
	t.Helper()
	for _, i := range h.Ifaces() {
		if i.Peer == peer {
			return i.Addr4.Addr()
		}
	}
	t.Fatalf("%s has no link to %s", h.Name, peer)
	return netip.Addr{}
}

// startChainWith starts the chain lab; accel adds a pool of connections
// from rc to rs, Turbo-Start on both, and relay legs with cubic and 8 MiB
// buffers.
func startChainWith(t *testing.T, accel bool, extra ...string) *chainLab {
	labtest.RequireRoot(t)
	lab := labtest.Start(t, chainTopo)
	dir := t.TempDir()
	psk := []byte("a test key that is long enough!!")
	os.WriteFile(filepath.Join(dir, "psk"), psk, 0o600)
	rc, rs, server := lab.Host("rc"), lab.Host("rs"), lab.Host("server")
	cl := &chainLab{lab: lab, psk: psk, logs: map[string]string{}, stops: map[string]func() error{},
		rcProxy: rc.AddrPort(1080), rsHop: netip.AddrPortFrom(rs.Ifaces()[0].Addr4.Addr(), 7100).String()}
	serverNet := server.Ifaces()[0].Addr4.Masked().String()
	configs := map[string]string{
		"rc": fmt.Sprintf(`
admin: {listen: "127.0.0.1:9190"}
log: {level: debug}
auth: {psk_file: %s/psk}
limits: {connect_timeout: 3s}
listeners:
  - name: proxy
    listen: 0.0.0.0:1080
    protocols: [socks5, http]
    allow_clients: [10.77.0.0/16]
    allow_destinations: [10.77.0.0/16]
routes:
  - {dst: [%s], via: [%s]}
`, dir, serverNet, cl.rsHop),
		"rs": fmt.Sprintf(`
admin: {listen: "127.0.0.1:9190"}
log: {level: debug}
auth: {psk_file: %s/psk}
listeners:
  - name: hop
    listen: 0.0.0.0:7100
    protocols: [convert]
    allow_clients: [10.77.0.0/16]
    allow_destinations: [10.77.0.0/16]
`, dir),
	}
	if accel {
		configs["rc"] += accelLegs + fmt.Sprintf(`
peers:
  - {address: %s, pool: {low: 8, high: 16}, turbo: {initcwnd: 200, initrwnd: 300}}
`, cl.rsHop)
		configs["rs"] += accelLegs + fmt.Sprintf(`
peers:
  - {address: %s, turbo: {initcwnd: 200, initrwnd: 300}}
`, ifaceToward(t, rc, "rs"))
	}
	for _, name := range []string{"rs", "rc"} {
		configs[name] += strings.Join(extra, "")
		cl.logs[name], cl.stops[name] = runRelay(t, lab.Host(name), name, configs[name])
	}
	// Wait until both relays accept.
	for _, a := range []struct {
		host *netlab.Host
		addr string
	}{{lab.Host("client"), cl.rcProxy}, {lab.Host("rc"), cl.rsHop}} {
		deadline := time.Now().Add(10 * time.Second)
		for {
			c, err := a.host.Dial(context.Background(), "tcp", a.addr)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("relay at %s never accepted: %v", a.addr, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return cl
}

// runRelay starts `halfway relay` with cfg inside host h; it is stopped
// (SIGINT, then SIGKILL) when the test ends, or earlier with stop, which
// returns its exit error. The log is printed if the test failed.
func runRelay(t *testing.T, h *netlab.Host, name, cfg string) (logPath string, stop func() error) {
	t.Helper()
	return runRelayWith(t, h, name, cfg)
}

// runRelayWith is runRelay with listening sockets passed as systemd
// socket activation passes them (descriptors 3, 4, …, $LISTEN_FDS).
func runRelayWith(t *testing.T, h *netlab.Host, name, cfg string, files ...*os.File) (logPath string, stop func() error) {
	t.Helper()
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, name+".yaml")
	os.WriteFile(file, []byte(cfg), 0o644)
	logf, _ := os.Create(filepath.Join(dir, name+".log"))
	cmd := h.Command(context.Background(), bin, "relay", "-c", file, "--grace", "2s")
	if len(files) > 0 {
		// LISTEN_PID is the relay's own: the shell's, which exec keeps.
		cmd = h.Command(context.Background(), "/bin/sh", "-c",
			fmt.Sprintf(`LISTEN_PID=$$ LISTEN_FDS=%d exec "$0" relay -c "$1" --grace 2s`, len(files)), bin, file)
		cmd.ExtraFiles = files
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	var werr error
	stop = func() error {
		once.Do(func() {
			cmd.Process.Signal(os.Interrupt)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case werr = <-done:
			case <-time.After(15 * time.Second):
				cmd.Process.Kill()
				werr = fmt.Errorf("relay %s ignored SIGINT", name)
				<-done
			}
		})
		return werr
	}
	t.Cleanup(func() {
		stop()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("%s relay log:\n%s", name, b)
		}
	})
	return logf.Name(), stop
}

// waitLogged waits up to 20 s for the relay log at path to hold s.
func waitLogged(t *testing.T, path, s string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if b, _ := os.ReadFile(path); strings.Contains(string(b), s) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the relay did not log %q in 20s", s)
		}
	}
}

// waitAccept waits until addr accepts connections from h.
func waitAccept(t *testing.T, h *netlab.Host, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := h.Dial(context.Background(), "tcp", addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing accepts at %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// socksDial opens a flow through rc's SOCKS5 listener from the client host.
func (cl *chainLab) socksDial(ctx context.Context, dst string) (*net.TCPConn, error) {
	c, err := cl.lab.Host("client").Dial(ctx, "tcp", cl.rcProxy)
	if err != nil {
		return nil, err
	}
	ap := netip.MustParseAddrPort(dst)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := socks5.ClientHandshake(c, c, socks5.Addr{IP: ap.Addr(), Port: ap.Port()}, "", ""); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c.(*net.TCPConn), nil
}

func TestChainEndToEnd(t *testing.T) {
	cl := startChain(t)
	server := cl.lab.Host("server")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// An HTTP server, fetched with curl through SOCKS5 and HTTP CONNECT.
	hln, err := server.Listen("tcp", ":8080")
	if err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte("halfway "), 100000)
	hsrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) })}
	go hsrv.Serve(hln)
	defer hsrv.Close()
	if _, err := exec.LookPath("curl"); err == nil {
		for _, proxy := range []string{"--socks5", "--proxytunnel --proxy"} {
			args := append(strings.Fields(proxy), "rc:1080", "-sS", "--max-time", "20", "http://server:8080/")
			if proxy == "--proxytunnel --proxy" {
				args = []string{"--proxytunnel", "--proxy", "http://rc:1080", "-sS", "--max-time", "20", "http://server:8080/"}
			}
			out, err := cl.lab.Host("client").Command(ctx, "curl", args...).Output()
			if err != nil || !bytes.Equal(out, body) {
				t.Errorf("curl %s: %v, %d bytes of %d", proxy, err, len(out), len(body))
			}
		}
	}

	// Byte-exact transfers both ways with half-closes, through the chain.
	ln, err := server.Listen("tcp", ":9000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveSHA(ln)
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(i), 9))
			size := r.IntN(2 << 20)
			if i%7 == 0 {
				size = 0
			}
			c, err := cl.socksDial(ctx, server.AddrPort(9000))
			if err != nil {
				t.Errorf("flow %d: %v", i, err)
				return
			}
			defer c.Close()
			data := make([]byte, size)
			for j := range data {
				data[j] = byte(r.Uint32())
			}
			go func() { c.Write(data); c.CloseWrite() }()
			// The server answers, after our FIN, with the SHA-256 of what it got
			// followed by the same bytes back.
			c.SetReadDeadline(time.Now().Add(time.Minute))
			got, err := io.ReadAll(c)
			want := sha256.Sum256(data)
			if err != nil || len(got) != 32+size || !bytes.Equal(got[:32], want[:]) || !bytes.Equal(got[32:], data) {
				t.Errorf("flow %d (%d bytes): %v, got %d bytes back", i, size, err, len(got))
			}
		}()
	}
	wg.Wait()
	// Every flow crossed rs as a Convert hop and ended cleanly there.
	time.Sleep(200 * time.Millisecond)
	logs, _ := os.ReadFile(cl.logs["rs"])
	if n := strings.Count(string(logs), "msg=flow listener=hop proto=convert"); n < 40 {
		t.Errorf("rs logged %d convert flows, want at least 40", n)
	}
	if n := strings.Count(string(logs), "reason=closed"); n < 40 {
		t.Errorf("rs logged %d cleanly closed flows, want at least 40", n)
	}
}

// serveSHA reads each connection to EOF, then writes the SHA-256 of what it
// read and the bytes themselves, and closes.
func serveSHA(ln net.Listener) {
	relay.AcceptEach(ln, func(c net.Conn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Minute))
		data, err := io.ReadAll(c)
		if err != nil {
			return
		}
		sum := sha256.Sum256(data)
		c.Write(sum[:])
		c.Write(data)
	})
}

func TestChainRefusals(t *testing.T) {
	cl := startChain(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	server := cl.lab.Host("server")

	// A destination outside the allow list: SOCKS "not allowed".
	_, err := cl.socksDial(ctx, "192.0.2.1:80")
	var re *socks5.ReplyError
	if !errors.As(err, &re) || re.Reply != socks5.NotAllowed {
		t.Errorf("disallowed destination: %v, want reply NotAllowed", err)
	}
	// The relay's own loopback is refused even though 10.77/16 is allowed.
	if _, err := cl.socksDial(ctx, "127.0.0.1:9190"); !errors.As(err, &re) || re.Reply != socks5.NotAllowed {
		t.Errorf("loopback destination: %v, want reply NotAllowed", err)
	}
	// Nothing listens on the server's port 9: the far relay's connect is
	// refused and that travels back as a SOCKS "connection refused".
	if _, err := cl.socksDial(ctx, server.AddrPort(9)); !errors.As(err, &re) || re.Reply != socks5.ConnectionRefused {
		t.Errorf("refused destination: %v, want reply ConnectionRefused", err)
	}

	// rs refuses hops that do not authenticate.
	for _, tc := range []struct {
		name   string
		cookie []byte
		want   convert.ErrorCode
	}{
		{"no cookie", nil, convert.MissingCookie},
		{"forged cookie", bytes.Repeat([]byte{7}, 28), convert.NotAuthorized},
	} {
		c, err := cl.lab.Host("rc").Dial(ctx, "tcp", cl.rsHop)
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := convert.AppendMessage(nil, &convert.Message{
			Connect: &convert.Connect{Dst: netip.MustParseAddrPort(server.AddrPort(9000))}, Cookie: tc.cookie})
		c.Write(msg)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		m, err := convert.ReadMessage(bufio.NewReader(c))
		c.Close()
		if err != nil || m.Error == nil || m.Error.Code != tc.want {
			t.Errorf("%s: reply %+v, %v; want error %v", tc.name, m, err, tc.want)
		}
	}
	// A client outside allow_clients gets a reset, not a conversation: the
	// rs relay allows 10.77/16 only, so reach it from... every lab host is in
	// 10.77/16, so check the SOCKS listener refuses a non-SOCKS, non-HTTP byte.
	c, err := cl.lab.Host("client").Dial(ctx, "tcp", cl.rcProxy)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte{0x99, 1, 2, 3})
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 10)); err == nil {
		t.Errorf("garbage got an answer of %d bytes", n)
	}
	c.Close()
}

// TestTransparentCapture runs rc as a transparent relay that installs its
// own capture rules: the client fetches http://server:8080/ with no proxy
// configured, and the flow crosses rc and rs all the same.
func TestTransparentCapture(t *testing.T) {
	for _, mode := range []string{"tproxy", "redirect"} {
		t.Run(mode, func(t *testing.T) {
			requireTools(t, "nft")
			cl := startChain(t)
			bin, _ := buildOnce()
			rc, server := cl.lab.Host("rc"), cl.lab.Host("server")
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "psk"), cl.psk, 0o600)
			file := filepath.Join(dir, "tr.yaml")
			os.WriteFile(file, []byte(fmt.Sprintf(`
admin: {listen: "127.0.0.1:9191"}
log: {level: debug}
auth: {psk_file: %s/psk}
listeners:
  - name: web
    listen: 0.0.0.0:7000
    mode: %s
    allow_clients: [10.77.1.0/24]
    capture: {dst: [%s], ports: "8080", install: true}
routes:
  - {listener: web, via: [%s]}
`, dir, mode, server.Ifaces()[0].Addr4.Masked(), cl.rsHop)), 0o644)
			logf, _ := os.Create(filepath.Join(dir, "tr.log"))
			cmd := rc.Command(context.Background(), bin, "relay", "-c", file, "--grace", "1s")
			cmd.Stdout, cmd.Stderr = logf, logf
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			stopped := false
			stop := func() {
				if stopped {
					return
				}
				stopped = true
				cmd.Process.Signal(os.Interrupt)
				done := make(chan error, 1)
				go func() { done <- cmd.Wait() }()
				select {
				case <-done:
				case <-time.After(10 * time.Second):
					cmd.Process.Kill()
					<-done
				}
			}
			t.Cleanup(func() {
				stop()
				if t.Failed() {
					b, _ := os.ReadFile(logf.Name())
					t.Logf("transparent relay log:\n%s", b)
				}
			})
			waitCapture(t, rc, "halfway_web", "7000")
			serveSeenFrom(t, server, ":8080")
			out, err := cl.lab.Host("client").Command(context.Background(), "curl", "-sS", "--max-time", "15", "http://server:8080/").CombinedOutput()
			// The server sees the far relay, rs, as its client: the flow was split twice.
			rsServerSide := cl.lab.Host("rs").Ifaces()[1].Addr4.Addr().String()
			if err != nil || !strings.Contains(string(out), "seen from "+rsServerSide+":") {
				t.Errorf("curl through the transparent relay: %v: %s (want the server to see %s)", err, out, rsServerSide)
			}
			stop()
			out, _ = rc.Command(context.Background(), "nft", "list", "tables").CombinedOutput()
			if strings.Contains(string(out), "halfway_web") {
				t.Errorf("capture table left after the relay stopped:\n%s", out)
			}
		})
	}
}

// adminClient talks to a relay's admin API inside its host.
// scrapeMetrics reads the /metrics of the relay whose admin API listens
// on 127.0.0.1:port in h.
func scrapeMetrics(t *testing.T, h *netlab.Host, port int) string {
	t.Helper()
	resp, err := adminClient(h).Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

func adminClient(h *netlab.Host) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true, // an idle admin connection is not a leak
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return h.Dial(ctx, "tcp", addr)
		},
	}}
}

func TestRelayOperations(t *testing.T) {
	cl := startChain(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	server, rc := cl.lab.Host("server"), cl.lab.Host("rc")
	ln, err := server.Listen("tcp", ":9000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveSHA(ln)
	admin := adminClient(rc)

	// An RST from the server reaches the client as an RST.
	rln, err := server.Listen("tcp", ":9001")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		c, err := rln.Accept()
		if err != nil {
			return
		}
		io.ReadFull(c, make([]byte, 5))
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}()
	c, err := cl.socksDial(ctx, server.AddrPort(9001))
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("hello"))
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("server reset: the client read %v, want a reset", err)
	}
	c.Close()
	rln.Close()

	// Open flows are listed by the admin API while they run.
	held, err := cl.socksDial(ctx, server.AddrPort(9000))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := admin.Get("http://127.0.0.1:9190/api/flows")
	if err != nil {
		t.Fatal(err)
	}
	var flows []map[string]any
	json.NewDecoder(resp.Body).Decode(&flows)
	resp.Body.Close()
	if len(flows) != 1 || flows[0]["dst"] != server.AddrPort(9000) || !strings.HasPrefix(flows[0]["route"].(string), "via ") {
		t.Errorf("/api/flows: %v", flows)
	}

	// A per-client limit set at run time refuses the next flow cleanly, in
	// SOCKS, and leaves the held one working.
	req, _ := http.NewRequest(http.MethodPut, "http://127.0.0.1:9190/api/tunables", strings.NewReader(`{"max_flows_per_client": 1}`))
	if resp, err := admin.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("PUT tunables: %v %v", resp, err)
	}
	bad, _ := http.NewRequest(http.MethodPut, "http://127.0.0.1:9190/api/tunables", strings.NewReader(`{"max_flows": 0}`))
	if resp, err := admin.Do(bad); err != nil || resp.StatusCode != 400 {
		t.Errorf("PUT invalid tunables: %v %v, want 400", resp, err)
	}
	var re *socks5.ReplyError
	if _, err := cl.socksDial(ctx, server.AddrPort(9000)); !errors.As(err, &re) || re.Reply != socks5.GeneralFailure {
		t.Errorf("flow over the per-client limit: %v, want reply GeneralFailure", err)
	}
	held.Write([]byte("still here"))
	held.CloseWrite()
	held.SetReadDeadline(time.Now().Add(20 * time.Second))
	if got, err := io.ReadAll(held); err != nil || !bytes.HasSuffix(got, []byte("still here")) {
		t.Errorf("held flow after the refusal: %v, %q", err, got)
	}
	held.Close()
	req, _ = http.NewRequest(http.MethodPut, "http://127.0.0.1:9190/api/tunables", strings.NewReader(`{"max_flows_per_client": 1000}`))
	admin.Do(req)

	// Metrics count what happened.
	body := scrapeMetrics(t, rc, 9190)
	for _, want := range []string{
		`halfway_refused_total{listener="proxy",reason="max_flows_per_client"} 1`,
		`halfway_flows_total{listener="proxy",result="closed",route="via ` + cl.rsHop + `"}`,
		`halfway_datapath_total{path="splice"}`,
		`halfway_connect_seconds_count{leg="relay"}`,
		`halfway_bytes_total{direction="up",listener="proxy"}`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(string(body), `halfway_datapath_total{path="copy"}`) {
		t.Errorf("a flow fell back to copying:\n%s", body)
	}

	// SIGHUP with transfers running: every one completes byte-exact.
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := cl.socksDial(ctx, server.AddrPort(9000))
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			data := bytes.Repeat([]byte{byte(i)}, 1<<20)
			go func() {
				for off := 0; off < len(data); off += 64 << 10 {
					c.Write(data[off : off+64<<10])
					time.Sleep(20 * time.Millisecond) // spread over the reload
				}
				c.CloseWrite()
			}()
			c.SetReadDeadline(time.Now().Add(time.Minute))
			got, err := io.ReadAll(c)
			sum := sha256.Sum256(data)
			if err != nil || len(got) != 32+len(data) || !bytes.Equal(got[:32], sum[:]) {
				errs <- fmt.Errorf("flow %d across the reload: %v, %d bytes", i, err, len(got))
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	if out, err := rc.Command(ctx, "pkill", "-HUP", "-f", "halfway relay -c .*/rc.yaml").CombinedOutput(); err != nil {
		t.Fatalf("pkill -HUP: %v %s", err, out)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	time.Sleep(200 * time.Millisecond)
	if logs, _ := os.ReadFile(cl.logs["rc"]); !strings.Contains(string(logs), "configuration reloaded") {
		t.Error("rc never logged the reload")
	}
}

// TestSlowAndDeadNextHops: a destination whose SYNs vanish times out, and
// the client hears so in its protocol rather than waiting forever.
func TestSlowNextHop(t *testing.T) {
	requireTools(t, "nft")
	cl := startChain(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	server := cl.lab.Host("server")
	out, err := server.Command(ctx, "nft", "add table inet blackhole; add chain inet blackhole in { type filter hook input priority 0; }; add rule inet blackhole in tcp dport 9999 drop").CombinedOutput()
	if err != nil {
		t.Fatalf("nft: %v %s", err, out)
	}
	start := time.Now()
	_, err = cl.socksDial(ctx, server.AddrPort(9999))
	var re *socks5.ReplyError
	if !errors.As(err, &re) || re.Reply != socks5.HostUnreachable {
		t.Errorf("blackholed destination: %v, want reply HostUnreachable", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("the refusal took %v", d)
	}
}

// TestIPv4ClientToIPv6Server: an IPv4 client asks rc for an IPv6 server;
// rc reaches rs over IPv6, rs reaches the server over IPv6.
func TestIPv4ClientToIPv6Server(t *testing.T) {
	labtest.RequireRoot(t)
	lab := labtest.Start(t, strings.Replace(chainTopo, "name: chain", "name: chain6\nipv6: true", 1))
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "psk"), []byte("a test key that is long enough!!"), 0o600)
	rs, server := lab.Host("rs"), lab.Host("server")
	rsHop := netip.AddrPortFrom(rs.Ifaces()[0].Addr6.Addr(), 7100)
	rsLog, _ := runRelay(t, rs, "rs", fmt.Sprintf(`
admin: {listen: off}
log: {level: debug}
auth: {psk_file: %s/psk}
listeners:
  - {name: hop, listen: "[::]:7100", protocols: [convert], allow_clients: ["fd00:77::/32"], allow_destinations: ["fd00:77::/32"]}
`, dir))
	runRelay(t, lab.Host("rc"), "rc", fmt.Sprintf(`
admin: {listen: off}
auth: {psk_file: %s/psk}
listeners:
  - {name: proxy, listen: "0.0.0.0:1080", protocols: [socks5], allow_clients: [10.77.0.0/16], allow_destinations: ["fd00:77::/32"]}
routes:
  - {dst: ["%s"], via: ["%s"]}
`, dir, server.Ifaces()[0].Addr6.Masked(), rsHop))
	proxy := lab.Host("rc").AddrPort(1080)
	waitAccept(t, lab.Host("client"), proxy)
	waitAccept(t, lab.Host("rc"), rsHop.String())

	ln, err := server.Listen("tcp6", "[::]:9000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveSHA(ln)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := lab.Host("client").Dial(ctx, "tcp4", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	dst := server.Addr6()
	if _, err := socks5.ClientHandshake(c, c, socks5.Addr{IP: dst, Port: 9000}, "", ""); err != nil {
		t.Fatalf("socks to [%s]:9000: %v", dst, err)
	}
	data := bytes.Repeat([]byte("v6 "), 100000)
	go func() { c.Write(data); c.(*net.TCPConn).CloseWrite() }()
	got, err := io.ReadAll(c)
	sum := sha256.Sum256(data)
	if err != nil || len(got) != 32+len(data) || !bytes.Equal(got[:32], sum[:]) {
		t.Fatalf("through the IPv6 chain: %v, %d bytes", err, len(got))
	}
	time.Sleep(100 * time.Millisecond)
	if logs, _ := os.ReadFile(rsLog); !strings.Contains(string(logs), "client=["+rs.Ifaces()[0].PeerAddr6.String()+"]") {
		t.Errorf("rs did not see rc over IPv6:\n%s", logs)
	}
}

// TestDrain: on SIGTERM a relay stops accepting, lets a running flow finish
// within the grace period, and exits.
func TestDrain(t *testing.T) {
	cl := startChain(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	server := cl.lab.Host("server")
	ln, err := server.Listen("tcp", ":9000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveSHA(ln)
	// A relay of its own on rc, with a long grace period, so the test
	// controls its SIGTERM.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "psk"), cl.psk, 0o600)
	logPath, stop := runRelay(t, cl.lab.Host("rc"), "drainer", fmt.Sprintf(`
admin: {listen: off}
auth: {psk_file: %s/psk}
listeners:
  - {name: p, listen: "0.0.0.0:1081", protocols: [socks5], allow_clients: [10.77.0.0/16], allow_destinations: [10.77.0.0/16]}
`, dir))
	proxy := cl.lab.Host("rc").AddrPort(1081)
	waitAccept(t, cl.lab.Host("client"), proxy)
	c, err := cl.lab.Host("client").Dial(ctx, "tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	dst := netip.MustParseAddrPort(server.AddrPort(9000))
	if _, err := socks5.ClientHandshake(c, c, socks5.Addr{IP: dst.Addr(), Port: dst.Port()}, "", ""); err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("before"))
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	time.Sleep(300 * time.Millisecond)
	// Draining: new connections are refused...
	if nc, err := cl.lab.Host("client").Dial(ctx, "tcp", proxy); err == nil {
		nc.Close()
		t.Error("the draining relay still accepts")
	}
	// ...and the running flow finishes.
	c.Write([]byte(" and after"))
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || !bytes.HasSuffix(got, []byte("before and after")) {
		t.Errorf("flow across the drain: %v, %q", err, got)
	}
	if err := <-stopped; err != nil {
		t.Errorf("relay exit: %v", err)
	}
	if logs, _ := os.ReadFile(logPath); !strings.Contains(string(logs), "relay stopped") {
		t.Errorf("no orderly stop in the log:\n%s", logs)
	}
}

// TestProxyProtocol: with proxy_protocol on, a server reached directly
// learns the real client from a PROXY v2 header before the data.
func TestProxyProtocol(t *testing.T) {
	labtest.RequireRoot(t)
	lab := labtest.Start(t, chainTopo)
	runRelay(t, lab.Host("rc"), "rc", `
admin: {listen: off}
listeners:
  - {name: p, listen: "0.0.0.0:1080", protocols: [http], allow_clients: [10.77.0.0/16], allow_destinations: [10.77.0.0/16], proxy_protocol: true}
`)
	proxy := lab.Host("rc").AddrPort(1080)
	waitAccept(t, lab.Host("client"), proxy)
	server := lab.Host("server")
	ln, err := server.Listen("tcp", ":9000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		h, err := proxyproto.Read(c)
		if err != nil {
			got <- err.Error()
			return
		}
		data, _ := io.ReadAll(c)
		got <- fmt.Sprintf("%s>%s %s", h.Src.Addr(), h.Dst, data)
	}()
	c, err := lab.Host("client").Dial(context.Background(), "tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if err := httpconnect.WriteRequest(c, server.Addr().String(), 9000, "", ""); err != nil {
		t.Fatal(err)
	}
	if status, err := httpconnect.ReadResponse(c); err != nil || status != 200 {
		t.Fatalf("CONNECT: %d %v", status, err)
	}
	c.Write([]byte("payload"))
	c.(*net.TCPConn).CloseWrite()
	want := fmt.Sprintf("%s>%s payload", lab.Host("client").Addr(), server.AddrPort(9000))
	if g := <-got; g != want {
		t.Errorf("server saw %q, want %q", g, want)
	}
}

// TestThousandTransfers: 1,000 flows of random sizes from 0 B to 8 MB, both
// directions, half-closed both ways, through the chain, each checked with
// SHA-256; then the relays hold no more descriptors than before.
// TestThousandTransfers runs with every acceleration feature on: flows
// take pooled connections, relay legs start with Turbo-Start windows.
func TestThousandTransfers(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short mode")
	}
	cl := startChainWith(t, true)
	server := cl.lab.Host("server")
	ln, err := server.Listen("tcp", ":9000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveSHA(ln)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// Sockets only: the pool keeps a few empty pipes for later flows.
	fds := func(name string) int {
		out, _ := cl.lab.Host(name).Command(ctx, "sh", "-c", "ls -l /proc/$(pgrep -f 'relay -c .*/"+name+".yaml' | head -1)/fd | grep -c socket:").Output()
		n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
		return n
	}
	// Idle pooled connections hold a socket on each relay and a goroutine
	// on rs; the pool refills only below its low watermark, so their
	// number differs before and after, and is taken out.
	pooled := func() int {
		t.Helper()
		for i := 0; ; i++ {
			if st := poolStatus(t, cl.lab.Host("rc")); len(st) == 1 && st[0].Idle >= st[0].Low && st[0].Opening == 0 {
				time.Sleep(100 * time.Millisecond) // rs has answered the last greetings; let it park them
				return st[0].Idle
			}
			if i > 200 {
				t.Fatalf("rc's pool never filled: %+v", poolStatus(t, cl.lab.Host("rc")))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	idle0 := pooled()
	before := map[string]int{"rc": fds("rc") - idle0, "rs": fds("rs") - idle0}
	goroutines := func(name string) int {
		resp, err := adminClient(cl.lab.Host(name)).Get("http://127.0.0.1:9190/debug/pprof/goroutine?debug=1")
		if err != nil {
			return -1
		}
		defer resp.Body.Close()
		line, _ := bufio.NewReader(resp.Body).ReadString('\n')
		n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "goroutine profile: total")))
		return n
	}
	gBefore := map[string]int{"rc": goroutines("rc"), "rs": goroutines("rs") - idle0}

	sizes := rand.New(rand.NewPCG(1000, 1))
	work := make(chan int)
	var wg sync.WaitGroup
	var failures atomic.Int64
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for size := range work {
				if err := roundTrip(ctx, cl, server.AddrPort(9000), size); err != nil {
					if failures.Add(1) <= 5 {
						t.Errorf("%d bytes: %v", size, err)
					}
				}
			}
		}()
	}
	for i := 0; i < 1000; i++ {
		size := int(math.Exp(sizes.Float64() * math.Log(64<<10))) // mostly small, log-uniform
		switch {
		case i%20 == 0:
			size = sizes.IntN(8<<20 + 1) // one in twenty up to 8 MB
		case i%97 == 0:
			size = 0
		}
		work <- size
	}
	close(work)
	wg.Wait()
	if n := failures.Load(); n > 0 {
		t.Fatalf("%d of 1000 transfers failed", n)
	}
	time.Sleep(500 * time.Millisecond)
	idle1 := pooled()
	// How many found the pool empty depends on timing; every flow asked.
	if st := poolStatus(t, cl.lab.Host("rc")); st[0].Taken == 0 || st[0].Taken+st[0].Missed < 1000 {
		t.Errorf("rc's pool: %+v; want the 1000 flows to have asked it, and pooled connections used", st[0])
	}
	for name, n := range before {
		if after := fds(name) - idle1; after > n || n == 0 {
			t.Errorf("relay %s holds %d sockets after the transfers, %d before", name, after, n)
		}
		// The admin request itself runs a goroutine or two; workers that
		// served the last flows wait a second for more before they end.
		g0 := gBefore[name]
		var g1 int
		for deadline := time.Now().Add(4 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			if g1 = goroutines(name); name == "rs" {
				g1 -= idle1
			}
			if g1 <= g0+2 || time.Now().After(deadline) {
				break
			}
		}
		if g0 <= 0 || g1 > g0+2 {
			t.Errorf("relay %s runs %d goroutines after the transfers, %d before", name, g1, g0)
		}
	}
}

// roundTrip sends size random bytes through the chain, half-closes, and
// checks that the server's SHA-256 and echo come back intact.
func roundTrip(ctx context.Context, cl *chainLab, dst string, size int) error {
	c, err := cl.socksDial(ctx, dst)
	if err != nil {
		return err
	}
	return roundTripOn(c, size)
}

// roundTripOn is roundTrip on a connection already open.
func roundTripOn(c *net.TCPConn, size int) error {
	defer c.Close()
	r := rand.New(rand.NewPCG(uint64(size), 7))
	data := make([]byte, size)
	for i := 0; i+8 <= size; i += 8 {
		binary.LittleEndian.PutUint64(data[i:], r.Uint64())
	}
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	c.SetReadDeadline(time.Now().Add(2 * time.Minute))
	got, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if err := <-werr; err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	if len(got) != 32+size || !bytes.Equal(got[:32], sum[:]) || !bytes.Equal(got[32:], data) {
		return fmt.Errorf("got %d bytes back, want %d, intact: %v", len(got), 32+size, len(got) >= 32 && bytes.Equal(got[:32], sum[:]))
	}
	return nil
}

// TestChainSockmap runs flows through rc and rs with data_path: sockmap on
// both: each exchanges a message first (so its sockets are drained and go
// into the sockmap), then moves up to 2 MB each way through an echo server
// with half-closes, byte-exact. Both relays' metrics show the sockmap ran.
func TestChainSockmap(t *testing.T) {
	cl := startChainWith(t, false, "data_path: sockmap\n")
	server := cl.lab.Host("server")
	ln, err := server.Listen("tcp", ":9001")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveEchoConns(ln)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const flows = 30
	var wg sync.WaitGroup
	for i := range flows {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := cl.socksDial(ctx, server.AddrPort(9001))
			if err != nil {
				t.Errorf("flow %d: %v", i, err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(time.Minute))
			hello := []byte(fmt.Sprintf("hello %d", i))
			got := make([]byte, len(hello))
			if _, err := c.Write(hello); err != nil {
				t.Errorf("flow %d: %v", i, err)
				return
			}
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, hello) {
				t.Errorf("flow %d: first echo %q, %v", i, got, err)
				return
			}
			r := rand.New(rand.NewPCG(uint64(i), 11))
			data := make([]byte, r.IntN(2<<20))
			for j := range data {
				data[j] = byte(r.Uint32())
			}
			go func() {
				c.Write(data)
				c.CloseWrite()
			}()
			back, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(back, data) {
				t.Errorf("flow %d: %d of %d bytes back (%v), intact %v", i, len(back), len(data), err, bytes.Equal(back, data))
			}
		}()
	}
	wg.Wait()
	// A flow enters the sockmap once both its directions are idle, which
	// a flow whose client sends its last bytes and FIN at once may never
	// be: most flows, not necessarily all, run there.
	for _, name := range []string{"rc", "rs"} {
		body := scrapeMetrics(t, cl.lab.Host(name), 9190)
		var n int
		for _, l := range strings.Split(body, "\n") {
			if v, ok := strings.CutPrefix(l, "halfway_datapath_sockmap_flows_total "); ok {
				n, _ = strconv.Atoi(v)
			}
		}
		t.Logf("%s: %d of %d flows entered the sockmap", name, n, flows)
		if n == 0 || !strings.Contains(body, `halfway_datapath_total{path="sockmap"} `) {
			t.Errorf("%s: no flow ran on the sockmap:\n%s", name, grepLines(body, "halfway_datapath"))
		}
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestIperf3ThroughChain runs iperf3 (control and data connections) from
// the client to the server through a transparent rc and a Convert hop to rs.
func TestIperf3ThroughChain(t *testing.T) {
	requireTools(t, "iperf3", "nft")
	cl := startChain(t)
	server := cl.lab.Host("server")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "psk"), cl.psk, 0o600)
	runRelay(t, cl.lab.Host("rc"), "tr", fmt.Sprintf(`
admin: {listen: off}
auth: {psk_file: %s/psk}
listeners:
  - name: iperf
    listen: 0.0.0.0:7000
    mode: tproxy
    capture: {dst: [%s], ports: "5201", install: true}
routes:
  - {listener: iperf, via: [%s]}
`, dir, server.Ifaces()[0].Addr4.Masked(), cl.rsHop))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv := server.Command(ctx, "iperf3", "-s", "-1")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Wait()
	defer srv.Process.Kill()
	// Not by connecting: iperf3 -1 serves exactly one client.
	for i := 0; server.Command(ctx, "sh", "-c", "ss -ltn | grep -q ':5201 '").Run() != nil; i++ {
		if i > 100 {
			t.Fatal("iperf3 never listened")
		}
		time.Sleep(50 * time.Millisecond)
	}
	waitCapture(t, cl.lab.Host("rc"), "halfway_iperf", "7000")
	out, err := cl.lab.Host("client").Command(ctx, "iperf3", "-c", server.Addr().String(), "-t", "2", "-J").Output()
	if err != nil {
		t.Fatalf("iperf3: %v\n%s", err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				Bytes float64 `json:"bytes"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil || res.End.SumReceived.Bytes == 0 {
		t.Fatalf("iperf3 result: %v\n%s", err, out)
	}
	t.Logf("iperf3 through rc (tproxy) and rs: %.0f MB in 2 s", res.End.SumReceived.Bytes/1e6)
}

// TestThreeHopChain sends flows through three relays — rc, then two hop
// listeners on rs — so nested Convert messages ride one SYN each way and
// every hop authenticates its own. The second hop is rs's own address,
// which its policy must name exactly.
func TestThreeHopChain(t *testing.T) {
	labtest.RequireRoot(t)
	lab := labtest.Start(t, chainTopo)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "psk"), []byte("a test key that is long enough!!"), 0o600)
	rs, server := lab.Host("rs"), lab.Host("server")
	rsAddr := rs.Ifaces()[0].Addr4.Addr()
	hop1, hop2, hop3 := netip.AddrPortFrom(rsAddr, 7100), netip.AddrPortFrom(rsAddr, 7101), netip.AddrPortFrom(rsAddr, 7102)
	runRelay(t, rs, "rs", fmt.Sprintf(`
admin: {listen: off}
auth: {psk_file: %s/psk}
listeners:
  - {name: h1, listen: "0.0.0.0:7100", protocols: [convert], allow_clients: [10.77.0.0/16], allow_destinations: ["%s/32:7101"]}
  - {name: h2, listen: "0.0.0.0:7101", protocols: [convert], allow_clients: [10.77.0.0/16], allow_destinations: ["%s/32:7102"]}
  - {name: h3, listen: "0.0.0.0:7102", protocols: [convert], allow_clients: [10.77.0.0/16], allow_destinations: [10.77.3.0/24]}
`, dir, rsAddr, rsAddr))
	runRelay(t, lab.Host("rc"), "rc", fmt.Sprintf(`
admin: {listen: off}
auth: {psk_file: %s/psk}
listeners:
  - {name: p, listen: "0.0.0.0:1080", protocols: [socks5], allow_clients: [10.77.0.0/16], allow_destinations: [10.77.0.0/16]}
routes:
  - {dst: [10.77.3.0/24], via: ["%s", "%s", "%s"]}
`, dir, hop1, hop2, hop3))
	proxy := lab.Host("rc").AddrPort(1080)
	waitAccept(t, lab.Host("client"), proxy)
	for _, h := range []netip.AddrPort{hop1, hop2, hop3} {
		waitAccept(t, lab.Host("rc"), h.String())
	}
	ln, err := server.Listen("tcp", ":9000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveSHA(ln)
	cl := &chainLab{lab: lab, rcProxy: proxy}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, size := range []int{0, 1, 100000, 3 << 20} {
		if err := roundTrip(ctx, cl, server.AddrPort(9000), size); err != nil {
			t.Errorf("%d bytes through three relays: %v", size, err)
		}
	}
	// The server refuses port 22: the last hop's Convert error travels back
	// through two relays and reaches the client as a SOCKS reply.
	var re *socks5.ReplyError
	if _, err := cl.socksDial(ctx, "10.77.3.2:22"); !errors.As(err, &re) || re.Reply != socks5.ConnectionRefused {
		t.Errorf("refused port through three relays: %v, want reply ConnectionRefused", err)
	}
}

// TestSpoofSource: a TPROXY relay with spoof_source reaches the server
// with the client's own address, and the server's replies find their way
// back to it through the capture rules.
func TestSpoofSource(t *testing.T) {
	requireTools(t, "nft")
	labtest.RequireRoot(t)
	lab := labtest.Start(t, chainTopo)
	server := lab.Host("server")
	logPath, _ := runRelay(t, lab.Host("rc"), "rc", fmt.Sprintf(`
admin: {listen: off}
listeners:
  - name: web
    listen: 0.0.0.0:7000
    mode: tproxy
    spoof_source: true
    capture: {dst: [%s], ports: "8080", install: true}
`, server.Ifaces()[0].Addr4.Masked()))
	waitCapture(t, lab.Host("rc"), "halfway_web", "7000")
	serveSeenFrom(t, server, ":8080")
	out, err := lab.Host("client").Command(context.Background(), "curl", "-sS", "--max-time", "15", "http://server:8080/").CombinedOutput()
	if want := "seen from " + lab.Host("client").Addr().String() + ":"; err != nil || !strings.Contains(string(out), want) {
		t.Errorf("curl through a source-keeping relay: %v: %s (want %q)", err, out, want)
	}
	// The server could see the client's address without any relay too: the
	// relay's log proves the flow was split.
	time.Sleep(200 * time.Millisecond)
	if logs, _ := os.ReadFile(logPath); !strings.Contains(string(logs), "msg=flow listener=web proto=tproxy") {
		t.Errorf("the relay never carried the flow:\n%s", logs)
	}
}

// TestPlainTransparent: a transparent relay with a direct route runs its
// flows plain (halfway_flows_plain_total), on TPROXY (the destination is
// the socket's own address) and on REDIRECT (SO_ORIGINAL_DST), and the
// server sees the relay as its client.
func TestPlainTransparent(t *testing.T) {
	for _, mode := range []string{"tproxy", "redirect"} {
		t.Run(mode, func(t *testing.T) {
			requireTools(t, "nft")
			labtest.RequireRoot(t)
			lab := labtest.Start(t, chainTopo)
			rc, server := lab.Host("rc"), lab.Host("server")
			runRelay(t, rc, "rc", fmt.Sprintf(`
admin: {listen: "127.0.0.1:9191"}
listeners:
  - name: web
    listen: 0.0.0.0:7000
    mode: %s
    capture: {dst: [%s], ports: "8080", install: true}
`, mode, server.Ifaces()[0].Addr4.Masked()))
			waitCapture(t, rc, "halfway_web", "7000")
			serveSeenFrom(t, server, ":8080")
			out, err := lab.Host("client").Command(context.Background(), "curl", "-sS", "--max-time", "15", "http://server:8080/").CombinedOutput()
			rcServerSide := rc.Ifaces()[1].Addr4.Addr().String()
			if err != nil || !strings.Contains(string(out), "seen from "+rcServerSide+":") {
				t.Errorf("curl through the transparent relay: %v: %s (want the server to see %s)", err, out, rcServerSide)
			}
			if m := scrapeMetrics(t, rc, 9191); !strings.Contains(m, `halfway_flows_plain_total{listener="web"} 1`) {
				t.Errorf("no plain flow counted:\n%s", m)
			}
		})
	}
}

// TestCaptureReload: two TPROXY listeners share the default mark and
// policy route. A reload removes one while a flow through it is open: that
// flow keeps working, the other listener keeps working, and the removed
// listener's table goes when its last flow ends.
func TestCaptureReload(t *testing.T) {
	requireTools(t, "nft")
	labtest.RequireRoot(t)
	lab := labtest.Start(t, chainTopo)
	rc, server, client := lab.Host("rc"), lab.Host("server"), lab.Host("client")
	srvNet := server.Ifaces()[0].Addr4.Masked()
	listener := func(name string, port, capPort int) string {
		return fmt.Sprintf("  - {name: %s, listen: \"0.0.0.0:%d\", mode: tproxy, capture: {dst: [%s], ports: \"%d\", install: true}}\n", name, port, srvNet, capPort)
	}
	both := "admin: {listen: off}\nlisteners:\n" + listener("web1", 7001, 9001) + listener("web2", 7002, 9002)
	logPath, _ := runRelay(t, rc, "rc", both)
	tables := func() string {
		out, _ := rc.Command(context.Background(), "nft", "list", "tables").CombinedOutput()
		return string(out)
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for i := 0; !cond(); i++ {
			if i > 200 {
				t.Fatalf("%s never happened; tables:\n%s", what, tables())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("both tables", func() bool {
		s := tables()
		return strings.Contains(s, "halfway_web1") && strings.Contains(s, "halfway_web2")
	})
	serveEchoOn(t, server, 9001, 9002)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	echo := echoOnce
	held, err := client.Dial(ctx, "tcp", server.AddrPort(9001))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := echo(held, "before"); err != nil {
		t.Fatal(err)
	}
	// Reload without web1.
	reloadRelay(t, ctx, rc, logPath, "rc", "admin: {listen: off}\nlisteners:\n"+listener("web2", 7002, 9002))
	if err := echo(held, "after the reload"); err != nil {
		t.Errorf("the flow through the removed listener broke: %v", err)
	}
	if !strings.Contains(tables(), "halfway_web1") {
		t.Error("web1's table went while its flow was open")
	}
	c2, err := client.Dial(ctx, "tcp", server.AddrPort(9002))
	if err != nil {
		t.Fatal(err)
	}
	if err := echo(c2, "web2"); err != nil {
		t.Errorf("web2 after web1's removal: %v", err)
	}
	c2.Close()
	held.Close()
	waitFor("web1's table to go after its last flow", func() bool { return !strings.Contains(tables(), "halfway_web1") })
	if b, _ := os.ReadFile(logPath); strings.Count(string(b), "listener=web2 proto=tproxy") == 0 {
		t.Error("web2's flow was not relayed")
	}
}

// TestCaptureSharedReload: listeners with different marks share the
// default routing table's local route, and a reload that removes one
// leaves the route to the other; a listener renamed to a name with the
// same capture table (web-1 to web_1) keeps its table.
func TestCaptureSharedReload(t *testing.T) {
	requireTools(t, "nft")
	labtest.RequireRoot(t)
	lab := labtest.Start(t, chainTopo)
	rc, server, client := lab.Host("rc"), lab.Host("server"), lab.Host("client")
	srvNet := server.Ifaces()[0].Addr4.Masked()
	listener := func(name string, port, capPort, mark int) string {
		return fmt.Sprintf("  - {name: %s, listen: \"0.0.0.0:%d\", mode: tproxy, capture: {dst: [%s], ports: \"%d\", mark: %d, install: true}}\n", name, port, srvNet, capPort, mark)
	}
	logPath, _ := runRelay(t, rc, "rc", "admin: {listen: off}\nlisteners:\n"+listener("a", 7001, 9001, 1)+listener("b", 7002, 9002, 2)+listener("web-1", 7003, 9003, 2))
	waitCapture(t, rc, "halfway_web_1", "7003")
	serveEchoOn(t, server, 9002, 9003)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reloadRelay(t, ctx, rc, logPath, "rc", "admin: {listen: off}\nlisteners:\n"+listener("b", 7002, 9002, 2)+listener("web_1", 7003, 9003, 2))
	if out, _ := rc.Command(ctx, "ip", "-4", "route", "show", "table", "100").CombinedOutput(); !strings.Contains(string(out), "local default") {
		t.Errorf("after a's removal, table 100 lost the local route that b (mark 2) uses: %q", out)
	}
	if out, _ := rc.Command(ctx, "nft", "list", "table", "inet", "halfway_web_1").CombinedOutput(); !strings.Contains(string(out), "9003") {
		t.Errorf("after renaming web-1 to web_1, its table: %s", out)
	}
	// Both still relay: each flow shows in the relay's log.
	for _, port := range []uint16{9002, 9003} {
		c, err := client.Dial(ctx, "tcp", server.AddrPort(port))
		if err != nil {
			t.Fatal(err)
		}
		if err := echoOnce(c, "hi"); err != nil {
			t.Errorf("echo on %d after the reload: %v", port, err)
		}
		c.Close()
	}
	for i := 0; ; i++ {
		b, _ := os.ReadFile(logPath)
		if strings.Count(string(b), "msg=flow") >= 2 {
			break
		}
		if i > 200 {
			t.Fatalf("the relay logged %d flows after the reload, want 2 (b's and web_1's): the capture missed them", strings.Count(string(b), "msg=flow"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTurboStart: each relay installs a host route to its peer with the
// configured initial windows; connections to the peer start with that
// congestion window, checked with TCP_INFO, and the relays' pooled
// connections run it with cubic; connections to the server keep the
// kernel's 10. Stopping a relay removes its route.
func TestTurboStart(t *testing.T) {
	cl := startChainWith(t, true)
	rc, rs, server := cl.lab.Host("rc"), cl.lab.Host("rs"), cl.lab.Host("server")
	ln, err := server.Listen("tcp", ":9000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveSHA(ln)
	rcAddr := ifaceToward(t, rc, "rs")
	rsAddr := netip.MustParseAddrPort(cl.rsHop).Addr()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, r := range []struct {
		host *netlab.Host
		peer netip.Addr
	}{{rc, rsAddr}, {rs, rcAddr}} {
		out, err := r.host.Command(ctx, "ip", "route", "show", r.peer.String()+"/32").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "proto 104") || !strings.Contains(string(out), "initcwnd 200") || !strings.Contains(string(out), "initrwnd 300") {
			t.Errorf("%s: ip route show %s: %q %v; want the turbo route", r.host.Name, r.peer, out, err)
		}
	}
	cwnd := func(h *netlab.Host, addr string) uint32 {
		t.Helper()
		c, err := h.Dial(ctx, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		info, err := sockopt.Info(c.(*net.TCPConn))
		if err != nil {
			t.Fatal(err)
		}
		return info.Snd_cwnd
	}
	for _, tc := range []struct {
		name string
		host *netlab.Host
		addr string
		want uint32
	}{
		{"rc to rs (turbo)", rc, cl.rsHop, 200},
		{"rs to rc (turbo)", rs, netip.AddrPortFrom(rcAddr, 1080).String(), 200},
		{"rc to server (default)", rc, server.AddrPort(9000), 10},
		{"rs to server (default)", rs, server.AddrPort(9000), 10},
	} {
		if got := cwnd(tc.host, tc.addr); got != tc.want {
			t.Errorf("%s: initial snd_cwnd %d, want %d", tc.name, got, tc.want)
		}
	}
	// The relays' own pooled connections, on both sides. The pool fills
	// asynchronously (and rc may have started before rs listened), so
	// wait, bounded, for the low watermark before judging them.
	for _, r := range []struct {
		host *netlab.Host
		peer string
	}{{rc, cl.rsHop}, {rs, rcAddr.String()}} {
		var lines []string
		var out []byte
		for deadline := time.Now().Add(10 * time.Second); ; {
			out, err = r.host.Command(ctx, "ss", "-tinH", "state", "established", "dst", r.peer).CombinedOutput()
			if err != nil {
				t.Fatalf("ss: %v %s", err, out)
			}
			lines = lines[:0]
			for _, line := range strings.Split(string(out), "\n") {
				if strings.Contains(line, "cwnd:") {
					lines = append(lines, line)
				}
			}
			if len(lines) >= 8 || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		for _, line := range lines {
			if !strings.Contains(line, "cubic") || !strings.Contains(line, " cwnd:200") {
				t.Errorf("%s: pooled connection %q: want cubic and cwnd 200", r.host.Name, line)
			}
		}
		if len(lines) < 8 {
			t.Errorf("%s: %d pooled connections to %s after 10 s, want at least 8:\n%s", r.host.Name, len(lines), r.peer, out)
		}
	}
	// A flow through the pool still moves every byte.
	if err := roundTrip(ctx, cl, server.AddrPort(9000), 3<<20); err != nil {
		t.Fatal(err)
	}
	if err := cl.stops["rc"](); err != nil {
		t.Errorf("stopping rc: %v", err)
	}
	out, _ := rc.Command(ctx, "ip", "route", "show", "proto", "104").CombinedOutput()
	if strings.TrimSpace(string(out)) != "" {
		t.Errorf("rc's turbo route outlived the relay: %s", out)
	}
}

// TestEarlySYN: a transparent listener with early_syn opens the next leg
// when the client's SYN arrives. Concurrent flows, through rs's pool and
// direct, each pair with their own dial and move every byte; a SYN sent
// again (its SYN-ACK lost) starts no second dial; a dial whose accept never
// comes expires; a refused destination resets the client.
func TestEarlySYN(t *testing.T) {
	requireTools(t, "nft")
	cl := startChainWith(t, true)
	rc, server, client := cl.lab.Host("rc"), cl.lab.Host("server"), cl.lab.Host("client")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "psk"), cl.psk, 0o600)
	logPath, _ := runRelay(t, rc, "early", fmt.Sprintf(`
admin: {listen: "127.0.0.1:9191"}
log: {level: debug}
auth: {psk_file: %s/psk}
listeners:
  - name: web
    listen: 0.0.0.0:7000
    mode: tproxy
    allow_clients: [10.77.1.0/24]
    capture: {dst: [%s], ports: "8080-8082", install: true}
    early_syn: true
routes:
  - {listener: web, ports: "8080", via: [%s]}
peers:
  - {address: %s, pool: {low: 4, high: 8}}
`, dir, server.Ifaces()[0].Addr4.Masked(), cl.rsHop, cl.rsHop))
	// The capture rules go in as the listener opens, the sniffer only
	// after: a SYN in between is captured but never seen (its flow dials
	// at accept, and counts as nothing). Seen in CI: 37 of 40 counted.
	waitLogged(t, logPath, `msg="relay started"`)
	waitCapture(t, rc, "halfway_web", "7000")
	for _, port := range []string{":8080", ":8081"} {
		ln, err := server.Listen("tcp", port)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go serveSHA(ln)
	}
	metric := func(result string) int { t.Helper(); return earlyMetric(t, rc, 9191, result) }
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dial := func(port uint16) (*net.TCPConn, error) {
		c, err := client.Dial(ctx, "tcp", server.AddrPort(port))
		if err != nil {
			return nil, err
		}
		return c.(*net.TCPConn), nil
	}

	// Concurrent flows, half through the chain, half direct.
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dial(8080 + uint16(i%2))
			if err == nil {
				err = roundTripOn(c, i*9973)
			}
			if err != nil {
				t.Errorf("flow %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	// Every SYN started a dial that its flow claimed, or (on a machine too
	// busy for the sniffer to see it before the handshake ended) was seen
	// late and its flow dialed after accept. A sniffer that busy may not
	// have read them all yet when the flows end: it is given time (20 s;
	// in a CI run under -race it had read 32 of 40 after 5 s, 17 of them
	// late).
	// Those its socket dropped, its buffer full, are counted missed.
	var d0, c0, late, missed int
	for i := 0; ; i++ {
		d0, c0, late, missed = metric("dialed"), metric("claimed"), metric("late"), metric("missed")
		if d0+late+missed >= 40 || i == 400 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if c0 != d0 || d0+late+missed != 40 || d0 == 0 {
		t.Errorf("after 40 flows: %d dialed, %d claimed early, %d late, %d missed; want dialed = claimed, 40 in all, some dialed", d0, c0, late, missed)
		// Every result, for the next such failure.
		m := scrapeMetrics(t, rc, 9191)
		t.Logf("%s\n%s", grepLines(m, "early_syn_total{"), grepLines(m, "halfway_flows_total{"))
	}

	// The client's first SYN-ACK is lost, so it sends its SYN again.
	const dropSynAck = `table inet hwtest {
  chain in {
    type filter hook input priority 0
    tcp sport 8081 tcp flags & (syn|ack) == syn|ack drop
  }
}
`
	nft := func(script string) {
		t.Helper()
		cmd := client.Command(ctx, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nft: %v: %s", err, out)
		}
	}
	nft(dropSynAck)
	t.Cleanup(func() { client.Command(context.Background(), "nft", "delete", "table", "inet", "hwtest").Run() })
	done := make(chan error, 1)
	go func() {
		c, err := dial(8081)
		if err == nil {
			err = roundTripOn(c, 100_000)
		}
		done <- err
	}()
	for i := 0; metric("retransmission") == 0; i++ {
		if i > 100 {
			t.Fatal("no SYN retransmission seen")
		}
		time.Sleep(50 * time.Millisecond)
	}
	nft("delete table inet hwtest")
	if err := <-done; err != nil {
		t.Errorf("flow after a SYN retransmission: %v", err)
	}
	if d, c := metric("dialed"), metric("claimed"); d != d0+1 || c != c0+1 {
		t.Errorf("after the retransmitted SYN: %d dialed, %d claimed; want one more of each than %d and %d", d, c, d0, c0)
	}

	// A client that never completes its handshake: the dial expires.
	nft(dropSynAck)
	dctx, dcancel := context.WithTimeout(ctx, time.Second)
	if c, err := client.Dial(dctx, "tcp", server.AddrPort(8081)); err == nil {
		c.Close()
		t.Error("dial with its SYN-ACKs dropped succeeded")
	}
	dcancel()
	nft("delete table inet hwtest")
	for i := 0; metric("expired") == 0; i++ {
		if i > 200 {
			t.Fatal("the unclaimed dial never expired")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Nothing listens on 8082: the early dial is refused, the client reset.
	c, err := dial(8082)
	if err == nil {
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("flow to a refusing server: %v, want a reset", err)
	}
}

// serveEchoOn runs echo servers (serveEchoConns) in h on ports until the
// test ends.
func serveEchoOn(t *testing.T, h *netlab.Host, ports ...int) {
	t.Helper()
	for _, port := range ports {
		ln, err := h.Listen("tcp", fmt.Sprintf(":%d", port))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go serveEchoConns(ln)
	}
}

// echoOnce sends msg on c and reads it back.
func echoOnce(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	b := make([]byte, len(msg))
	if _, err := io.ReadFull(c, b); err != nil {
		return err
	}
	if string(b) != msg {
		return fmt.Errorf("echo %q", b)
	}
	return nil
}

// reloadRelay writes cfg over the configuration of the relay runRelay
// started in h as name (its log at logPath), sends it SIGHUP and waits
// until it has logged the reload.
func reloadRelay(t *testing.T, ctx context.Context, h *netlab.Host, logPath, name, cfg string) {
	t.Helper()
	before := func() int { b, _ := os.ReadFile(logPath); return strings.Count(string(b), "configuration reloaded") }
	n := before()
	file := filepath.Join(filepath.Dir(logPath), name+".yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := h.Command(ctx, "pkill", "-HUP", "-f", "halfway relay -c "+file).CombinedOutput(); err != nil {
		t.Fatalf("pkill -HUP: %v %s", err, out)
	}
	for i := 0; before() == n; i++ {
		if i > 500 {
			t.Fatal("the relay never logged the reload")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// earlyMetric reads halfway_early_syn_total{result} from the relay in h
// whose admin API is on port.
func earlyMetric(t *testing.T, h *netlab.Host, port int, result string) int {
	t.Helper()
	prefix := `halfway_early_syn_total{result="` + result + `"} `
	for _, line := range strings.Split(scrapeMetrics(t, h, port), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// TestEarlySYNRefusedFlow: a flow refused at accept (here, past
// max_flows_per_client) resets the dial its SYN started at once, rather
// than leave the server, or a pool's connection, waiting for the dial's
// expiry; and a reload that turns early SYN off drops the dials pending.
func TestEarlySYNRefusedFlow(t *testing.T) {
	requireTools(t, "nft")
	labtest.RequireRoot(t)
	lab := labtest.Start(t, chainTopo)
	rc, server, client := lab.Host("rc"), lab.Host("server"), lab.Host("client")
	cfg := fmt.Sprintf(`
admin: {listen: "127.0.0.1:9191"}
limits: {max_flows_per_client: 1}
listeners:
  - name: web
    listen: 0.0.0.0:7000
    mode: tproxy
    allow_clients: [10.77.1.0/24]
    capture: {dst: [%[1]s], ports: "8080", install: true}
    early_syn: true
  - name: other # keeps the sniffer open when web stops early SYN
    listen: 0.0.0.0:7001
    mode: tproxy
    allow_clients: [10.77.1.0/24]
    capture: {dst: [%[1]s], ports: "8081", install: true}
    early_syn: true
`, server.Ifaces()[0].Addr4.Masked())
	logPath, _ := runRelay(t, rc, "early", cfg)
	waitCapture(t, rc, "halfway_web", "7000")
	ln, err := server.Listen("tcp", ":8080")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveEchoConns(ln)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	first, err := client.Dial(ctx, "tcp", server.AddrPort(8080))
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	first.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := first.Write([]byte("x")); err == nil {
		_, err = io.ReadFull(first, make([]byte, 1))
	}
	if err != nil {
		t.Fatalf("first flow: %v", err)
	}
	dialed := earlyMetric(t, rc, 9191, "dialed")
	second, err := client.Dial(ctx, "tcp", server.AddrPort(8080))
	if err == nil {
		second.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, err = second.Read(make([]byte, 1))
		second.Close()
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("second flow, past max_flows_per_client: %v, want a reset", err)
	}
	if earlyMetric(t, rc, 9191, "dialed") == dialed {
		t.Skip("skipped: the sniffer read the second SYN after its accept (a busy machine), so it started no dial")
	}
	for i := 0; earlyMetric(t, rc, 9191, "dropped") != 1; i++ {
		if i > 100 {
			t.Fatalf("the refused flow's early dial was not dropped (expired: %d)", earlyMetric(t, rc, 9191, "expired"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := earlyMetric(t, rc, 9191, "expired"); n != 0 {
		t.Errorf("%d early dials expired; want none", n)
	}
	first.Close()

	// A client whose handshake never ends (its SYN-ACKs dropped) leaves
	// its dial pending; a reload that turns early SYN off drops it.
	dropSYNACKs(t, ctx, client)
	dialed = earlyMetric(t, rc, 9191, "dialed")
	stuck := make(chan struct{})
	go func() {
		defer close(stuck)
		dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
		defer dcancel()
		if c, err := client.Dial(dctx, "tcp", server.AddrPort(8080)); err == nil {
			c.Close()
		}
	}()
	defer func() { <-stuck }()
	for i := 0; earlyMetric(t, rc, 9191, "dialed") == dialed; i++ {
		if i > 100 {
			t.Fatal("the stuck client's SYN started no dial")
		}
		time.Sleep(10 * time.Millisecond)
	}
	reloadRelay(t, ctx, rc, logPath, "early", strings.Replace(cfg, "early_syn: true", "early_syn: false", 1))
	if n := earlyMetric(t, rc, 9191, "expired"); n != 0 {
		t.Skipf("skipped: the pending dial expired (%d) before the reload took effect (a busy machine)", n)
	}
	if n := earlyMetric(t, rc, 9191, "dropped"); n != 2 {
		t.Errorf("after the reload that turned early SYN off: %d dials dropped, want 2 (the refused flow's and the stuck client's)", n)
	}
}

// TestEarlySYNReloadBetween: a dial that a SYN started before a reload
// is not the accepted flow's when the reload changed the configuration: it
// followed the old one (here, no PROXY header), so it is dropped and the
// flow connects as the new one says.
func TestEarlySYNReloadBetween(t *testing.T) {
	requireTools(t, "nft")
	labtest.RequireRoot(t)
	lab := labtest.Start(t, chainTopo)
	rc, server, client := lab.Host("rc"), lab.Host("server"), lab.Host("client")
	cfg := fmt.Sprintf(`
admin: {listen: "127.0.0.1:9191"}
listeners:
  - name: web
    listen: 0.0.0.0:7000
    mode: tproxy
    allow_clients: [10.77.1.0/24]
    capture: {dst: [%s], ports: "8080", install: true}
    early_syn: true
`, server.Ifaces()[0].Addr4.Masked())
	logPath, _ := runRelay(t, rc, "early", cfg)
	waitCapture(t, rc, "halfway_web", "7000")
	for i := 0; ; i++ { // the admin API starts after the capture rules
		resp, err := adminClient(rc).Get("http://127.0.0.1:9191/metrics")
		if err == nil {
			resp.Body.Close()
			break
		}
		if i > 200 {
			t.Fatalf("admin API: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	ln, err := server.Listen("tcp", ":8080")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveEchoConns(ln)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The client's handshake waits (its SYN-ACKs dropped) while its SYN's
	// dial is made and the relay reloads.
	dropSYNACKs(t, ctx, client)
	type result struct {
		got string
		err error
	}
	res := make(chan result, 1)
	go func() {
		dctx, dcancel := context.WithTimeout(ctx, 20*time.Second)
		defer dcancel()
		c, err := client.Dial(dctx, "tcp", server.AddrPort(8080))
		if err != nil {
			res <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := c.Write([]byte("x\n")); err != nil {
			res <- result{err: err}
			return
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		res <- result{line, err}
	}()
	for i := 0; earlyMetric(t, rc, 9191, "dialed") == 0; i++ {
		if i > 200 {
			t.Fatal("the client's SYN started no dial")
		}
		time.Sleep(10 * time.Millisecond)
	}
	reloadRelay(t, ctx, rc, logPath, "early", strings.Replace(cfg, "early_syn: true", "early_syn: true\n    proxy_protocol: true", 1))
	if out, err := client.Command(ctx, "nft", "delete", "table", "inet", "hwtest").CombinedOutput(); err != nil {
		t.Fatalf("nft delete: %v: %s", err, out)
	}
	r := <-res
	if r.err != nil {
		t.Fatalf("flow: %v", r.err)
	}
	if n := earlyMetric(t, rc, 9191, "expired"); n != 0 {
		t.Skipf("skipped: the pending dial expired (%d) before the client's handshake ended (a busy machine)", n)
	}
	// The echoed header's first line: the PROXY v2 signature begins "\r\n";
	// a flow without it echoes "x\n".
	if r.got != "\r\n" {
		t.Errorf("the server's first line %q, want the PROXY header the reload turned on (claimed %d, dropped %d)",
			r.got, earlyMetric(t, rc, 9191, "claimed"), earlyMetric(t, rc, 9191, "dropped"))
	}
}

// dropSYNACKs has h drop the SYN-ACKs of port 8080, so its handshakes
// there wait, until the test deletes nft table inet hwtest or ends.
func dropSYNACKs(t *testing.T, ctx context.Context, h *netlab.Host) {
	t.Helper()
	nft := h.Command(ctx, "nft", "-f", "-")
	nft.Stdin = strings.NewReader(`table inet hwtest { chain in { type filter hook input priority 0; tcp sport 8080 tcp flags & (syn|ack) == syn|ack drop; }; }`)
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	t.Cleanup(func() { h.Command(context.Background(), "nft", "delete", "table", "inet", "hwtest").Run() })
}

// poolStatus reads the pools from a relay's admin API.
func poolStatus(t *testing.T, h *netlab.Host) []relay.PoolStatus {
	t.Helper()
	resp, err := adminClient(h).Get("http://127.0.0.1:9190/api/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		Pools []relay.PoolStatus `json:"pools"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st.Pools
}

// serveEchoConns echoes each connection's bytes back, and closes it after
// the client's FIN.
func serveEchoConns(ln net.Listener) {
	relay.AcceptEach(ln, func(c net.Conn) { io.Copy(c, c); c.Close() })
}

// requireTools skips the test when a tool it drives is missing.
func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipped: %s is not installed (make test installs it)", tool)
		}
	}
}

// waitCapture waits until a relay in h has installed its capture table,
// steering to port.
func waitCapture(t *testing.T, h *netlab.Host, table, port string) {
	t.Helper()
	for i := 0; ; i++ {
		out, _ := h.Command(context.Background(), "nft", "list", "table", "inet", table).CombinedOutput()
		if strings.Contains(string(out), port) {
			return
		}
		if i > 100 {
			t.Fatalf("capture table %s never appeared: %s", table, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// serveSeenFrom runs, until the test ends, an HTTP server in h that answers
// "seen from ADDR:PORT" with the address its client came from.
func serveSeenFrom(t *testing.T, h *netlab.Host, addr string) {
	t.Helper()
	ln, err := h.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "seen from %s", r.RemoteAddr)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// TestConvertDestinationUnreachable: a hop whose connect finds no way to
// the destination answers Destination Unreachable with, as RFC 8803 asks,
// the ICMP code as its value: 1 (host unreachable) for a host on the
// server's link that does not answer ARP, 0 (net unreachable) for a
// network rs has no route to.
func TestConvertDestinationUnreachable(t *testing.T) {
	cl := startChain(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	serverNet := cl.lab.Host("server").Ifaces()[0].Addr4.Masked().Addr().As4()
	serverNet[3] = 99
	hop := netip.MustParseAddrPort(cl.rsHop)
	for _, tc := range []struct {
		name string
		dst  netip.AddrPort
		icmp byte
	}{
		{"host", netip.AddrPortFrom(netip.AddrFrom4(serverNet), 9000), 1},
		{"net", netip.MustParseAddrPort("10.77.250.1:9000"), 0},
	} {
		c, err := cl.lab.Host("rc").Dial(ctx, "tcp", cl.rsHop)
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := convert.AppendMessage(nil, &convert.Message{
			Connect: &convert.Connect{Dst: tc.dst}, Cookie: relay.HopCookie(cl.psk, hop, tc.dst)})
		c.Write(msg)
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		m, err := convert.ReadMessage(bufio.NewReader(c))
		c.Close()
		if err != nil || m.Error == nil || m.Error.Code != convert.DestinationUnreachable || len(m.Error.Value) == 0 || m.Error.Value[0] != tc.icmp {
			t.Errorf("%s unreachable (%s): reply %+v, %v; want %v with value %d", tc.name, tc.dst, m.Error, err, convert.DestinationUnreachable, tc.icmp)
		}
	}
}
