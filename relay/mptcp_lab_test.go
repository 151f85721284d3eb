package relay_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"halfway/netlab"
	"halfway/netlab/labtest"
	"halfway/relay"
	"halfway/socks5"
)

// The client has two links to rc (MPTCP endpoints on the second); rc and
// the server accept subflows.
const mptcpTopo = `
name: mptcp
nodes:
  - {name: client, mptcp: {endpoints: subflow}}
  - {name: rc, mptcp: {}}
  - {name: server, mptcp: {}}
links:
  - {a: client, b: rc, delay: 5ms, rate: 20mbit}
  - {a: client, b: rc, delay: 10ms, rate: 20mbit}
  - {a: rc, b: server, delay: 2ms}
`

type mptcpLab struct {
	lab                *netlab.Lab
	client, rc, server *netlab.Host
	socks              string
	log, cfg           string // rc's relay's log file and configuration
}

// startMPTCP runs rc with an MPTCP SOCKS5 listener; flows to the server's
// port 9001 leave rc over MPTCP, others over TCP. The server answers on
// 9000 (TCP) and 9001 (MPTCP) with SHA-256 and an echo.
func startMPTCP(t *testing.T) *mptcpLab { return startMPTCPAfter(t, nil) }

// startMPTCPAfter is startMPTCP with prep run on the lab before rc's
// relay starts.
func startMPTCPAfter(t *testing.T, prep func(m *mptcpLab)) *mptcpLab {
	labtest.RequireRoot(t)
	lab := labtest.Start(t, mptcpTopo)
	m := &mptcpLab{lab: lab, client: lab.Host("client"), rc: lab.Host("rc"), server: lab.Host("server")}
	if prep != nil {
		prep(m)
	}
	m.socks = m.rc.AddrPort(1080)
	srvNet := m.server.Ifaces()[0].Addr4.Masked()
	m.cfg = fmt.Sprintf(`
admin: {listen: "127.0.0.1:9190"}
listeners:
  - {name: socks, listen: "0.0.0.0:1080", protocols: [socks5], mptcp: true, allow_clients: [10.77.0.0/16], allow_destinations: ["%s"]}
routes:
  - {dst: [%s], ports: "9001", mptcp: true}
`, srvNet, srvNet)
	m.log, _ = runRelay(t, m.rc, "rc", m.cfg)
	waitAccept(t, m.client, m.socks)
	for _, p := range []struct {
		port  string
		mptcp bool
	}{{":9000", false}, {":9001", true}} {
		var ln net.Listener
		err := m.server.Do(func() (err error) {
			lc := net.ListenConfig{}
			lc.SetMultipathTCP(p.mptcp)
			ln, err = lc.Listen(context.Background(), "tcp", p.port)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go serveSHA(ln)
	}
	return m
}

// dial opens a SOCKS5 flow to the server's port, from an MPTCP or a TCP
// client socket.
func (m *mptcpLab) dial(t *testing.T, ctx context.Context, port uint16, mptcp bool) *net.TCPConn {
	t.Helper()
	d := &net.Dialer{}
	d.SetMultipathTCP(mptcp)
	c, err := m.client.DialWith(ctx, d, "tcp", m.socks)
	if err != nil {
		t.Fatal(err)
	}
	dst := netip.MustParseAddrPort(m.server.AddrPort(port))
	if _, err := socks5.ClientHandshake(c, c, socks5.Addr{IP: dst.Addr(), Port: dst.Port()}, "", ""); err != nil {
		c.Close()
		t.Fatal(err)
	}
	return c.(*net.TCPConn)
}

// sawTwoSubflows watches the flow status for up to 4 s until a flow's
// client leg shows two active MPTCP subflows.
func (m *mptcpLab) sawTwoSubflows(t *testing.T) bool {
	t.Helper()
	for range 200 {
		for _, f := range m.flows(t) {
			if f.ClientMPTCP != nil && f.ClientMPTCP.Active && f.ClientMPTCP.Subflows == 2 {
				return true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

func (m *mptcpLab) flows(t *testing.T) []relay.FlowStatus {
	t.Helper()
	resp, err := adminClient(m.rc).Get("http://127.0.0.1:9190/api/flows")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var fs []relay.FlowStatus
	if err := json.NewDecoder(resp.Body).Decode(&fs); err != nil {
		t.Fatal(err)
	}
	return fs
}

// TestMPTCPClientToTCPServer: an MPTCP client with two paths reaches a TCP
// server through rc; both paths carry the flow's bytes, the status shows
// two subflows, and every byte arrives.
func TestMPTCPClientToTCPServer(t *testing.T) {
	m := startMPTCP(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	before, _ := m.lab.LinkStats()
	c := m.dial(t, ctx, 9000, true)
	if ok, err := c.MultipathTCP(); !ok || err != nil {
		t.Fatalf("client leg MPTCP: %v %v", ok, err)
	}
	done := make(chan error, 1)
	go func() { done <- roundTripOn(c, 6<<20) }()
	sawTwo := m.sawTwoSubflows(t)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !sawTwo {
		t.Errorf("the flow never showed two active subflows on the client leg")
	}
	// Both directions splice: into and out of the MPTCP socket.
	if body := scrapeMetrics(t, m.rc, 9190); !strings.Contains(body, `halfway_datapath_total{path="splice"} 2`) {
		t.Errorf("want both directions spliced:\n%s", grepLines(body, "halfway_datapath_total"))
	}
	after, _ := m.lab.LinkStats()
	for link := range 2 {
		up := after[link].AB.TxIPBytes - before[link].AB.TxIPBytes
		down := after[link].BA.TxIPBytes - before[link].BA.TxIPBytes
		if up < 500_000 || down < 500_000 {
			t.Errorf("client link %d carried %d bytes up and %d down: want both paths used", link, up, down)
		}
	}
}

// serverLegFlow makes a TCP client's round trip of 2 MB to the server's
// MPTCP port (9001) and returns the flow's status as seen during it, once
// its server leg showed MPTCP state, or nil.
func (m *mptcpLab) serverLegFlow(t *testing.T, ctx context.Context) *relay.FlowStatus {
	t.Helper()
	c := m.dial(t, ctx, 9001, false)
	done := make(chan error, 1)
	go func() { done <- roundTripOn(c, 2<<20) }()
	var seen *relay.FlowStatus
	for i := 0; i < 100 && seen == nil; i++ {
		for _, f := range m.flows(t) {
			if f.ServerMPTCP != nil {
				seen = &f
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return seen
}

// TestTCPClientToMPTCPServer: a plain TCP client reaches an MPTCP server:
// rc's route opens the server leg with MPTCP; a TCP client on the MPTCP
// listener falls back without noticing.
func TestTCPClientToMPTCPServer(t *testing.T) {
	m := startMPTCP(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	seen := m.serverLegFlow(t, ctx)
	if seen == nil || !seen.ServerMPTCP.Active || seen.ClientMPTCP != nil && seen.ClientMPTCP.Active {
		t.Errorf("flow status %+v: want an active MPTCP server leg and no active MPTCP client leg", seen)
	}
}

// TestMPTCPDialUnavailable: where rc's kernel refuses MPTCP sockets
// (net.mptcp.enabled 0), Go dials the route's MPTCP server leg as plain
// TCP without a word; the flow still works, and its status and the
// metrics call the leg a fallback.
func TestMPTCPDialUnavailable(t *testing.T) {
	m := startMPTCP(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := m.rc.Command(ctx, "sysctl", "-w", "net.mptcp.enabled=0").CombinedOutput(); err != nil {
		t.Skipf("skipped: no MPTCP sysctl here: %v %s", err, out)
	}
	reloadRelay(t, ctx, m.rc, m.log, "rc", m.cfg)
	if b, _ := os.ReadFile(m.log); !strings.Contains(string(b), "the kernel makes no Multipath TCP socket") {
		t.Errorf("the reload gave no warning that MPTCP legs are dialed as TCP:\n%s", b)
	}
	seen := m.serverLegFlow(t, ctx)
	if seen == nil || seen.ServerMPTCP.Active {
		t.Errorf("flow status %+v: want a server leg that fell back to TCP", seen)
	}
	want := `halfway_mptcp_legs_total{leg="server",listener="socks",result="fallback"} 1`
	if got := scrapeMetrics(t, m.rc, 9190); !strings.Contains(got, want) {
		t.Errorf("metrics lack %s:\n%s", want, grepLines(got, "halfway_mptcp_legs_total"))
	}
}

// TestMPTCPPathLoss: the path of the first subflow goes down in the middle
// of a transfer; the other carries the rest, byte-exact.
func TestMPTCPPathLoss(t *testing.T) {
	m := startMPTCP(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := m.dial(t, ctx, 9000, true)
	done := make(chan error, 1)
	go func() { done <- roundTripOn(c, 8<<20) }()
	time.Sleep(700 * time.Millisecond)
	if out, err := m.client.Command(ctx, "ip", "link", "set", "eth0", "down").CombinedOutput(); err != nil {
		t.Fatalf("ip link set eth0 down: %v %s", err, out)
	}
	if err := <-done; err != nil {
		t.Fatalf("transfer across the loss of a path: %v", err)
	}
}

// TestMPTCPTransparent: an MPTCP client with two paths connects to the
// server's address; rc's TPROXY listener with mptcp: true takes the flow,
// both subflows included, and relays it byte-exact to the TCP server. The
// listener is on the captured port: the kernel refuses a subflow join
// whose listener's port differs from the connection's
// (MPTcpExtMismatchPortSynRx).
func TestMPTCPTransparent(t *testing.T) {
	labtest.RequireRoot(t)
	lab := labtest.Start(t, mptcpTopo)
	client, rc, server := lab.Host("client"), lab.Host("rc"), lab.Host("server")
	srvNet := server.Ifaces()[0].Addr4.Masked()
	// Debug: a flow refused at accept is logged only there (this test
	// failed once under load with a reset and no flow in the log).
	runRelay(t, rc, "rc", fmt.Sprintf(`
admin: {listen: "127.0.0.1:9190"}
log: {level: debug}
listeners:
  - name: web
    listen: "0.0.0.0:9000"
    mode: tproxy
    mptcp: true
    capture: {dst: ["%s"], ports: "9000", install: true}
`, srvNet))
	waitCapture(t, rc, "halfway_web", "9000")
	ln, err := server.Listen("tcp", ":9000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveSHA(ln)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := dialMPTCP(t, ctx, client, server.AddrPort(9000))
	done := make(chan error, 1)
	go func() { done <- roundTripOn(c, 6<<20) }()
	m := &mptcpLab{rc: rc}
	sawTwo := m.sawTwoSubflows(t)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !sawTwo {
		t.Errorf("the captured flow never showed two active subflows on the client leg")
	}
}

// TestMPTCPListenerEnabledOnReload: rc's relay starts while its kernel
// makes no MPTCP sockets (net.mptcp.enabled 0), so its MPTCP listener
// takes TCP only, and says so, at start and on a reload; once MPTCP is
// enabled again, a reload of the same configuration gives the listener
// an MPTCP socket, and an MPTCP client's flow is MPTCP on its client leg.
func TestMPTCPListenerEnabledOnReload(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sysctl := func(m *mptcpLab, v string) {
		if out, err := m.rc.Command(ctx, "sysctl", "-w", "net.mptcp.enabled="+v).CombinedOutput(); err != nil {
			t.Skipf("skipped: no MPTCP sysctl here: %v %s", err, out)
		}
	}
	m := startMPTCPAfter(t, func(m *mptcpLab) { sysctl(m, "0") })
	if b, _ := os.ReadFile(m.log); !strings.Contains(string(b), "this listener takes TCP only") {
		t.Fatalf("the relay gave no warning that its MPTCP listener takes TCP only:\n%s", b)
	}
	reloadRelay(t, ctx, m.rc, m.log, "rc", m.cfg) // MPTCP still off: the reload says so again
	if b, _ := os.ReadFile(m.log); !strings.Contains(string(b), "this listener still takes TCP only") {
		t.Errorf("a reload with MPTCP still off gave no warning that the listener takes TCP only:\n%s", b)
	}
	sysctl(m, "1")
	reloadRelay(t, ctx, m.rc, m.log, "rc", m.cfg)
	c := m.dial(t, ctx, 9000, true)
	defer c.Close()
	if fs := m.flows(t); len(fs) != 1 || fs[0].ClientMPTCP == nil || !fs[0].ClientMPTCP.Active {
		b, _ := os.ReadFile(m.log)
		t.Errorf("flows %+v: want one with an active MPTCP client leg; rc's log:\n%s", fs, b)
	}
	if err := roundTripOn(c, 64<<10); err != nil {
		t.Fatal(err)
	}
}

// TestMPTCPDialUnavailableDetached: a flow whose server leg was dialed as
// MPTCP and is plain TCP (rc's kernel makes no MPTCP sockets), from a TCP
// client on a listener without mptcp, leaves Go's poller once idle
// (detach_after); its status still shows the server leg's fallback.
func TestMPTCPDialUnavailableDetached(t *testing.T) {
	m := startMPTCP(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := m.rc.Command(ctx, "sysctl", "-w", "net.mptcp.enabled=0").CombinedOutput(); err != nil {
		t.Skipf("skipped: no MPTCP sysctl here: %v %s", err, out)
	}
	srvNet := m.server.Ifaces()[0].Addr4.Masked()
	cfg := strings.Replace(m.cfg, "routes:", fmt.Sprintf(`  - {name: tcp, listen: "0.0.0.0:1081", protocols: [socks5], allow_clients: [10.77.0.0/16], allow_destinations: ["%s"]}
routes:`, srvNet), 1)
	reloadRelay(t, ctx, m.rc, m.log, "rc", cfg)
	m.socks = m.rc.AddrPort(1081)
	c := m.dial(t, ctx, 9001, false)
	defer c.Close()
	for i := 0; ; i++ { // until the idle flow has left Go's poller
		if strings.Contains(scrapeMetrics(t, m.rc, 9190), "halfway_datapath_detached 1") {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the flow never detached")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if fs := m.flows(t); len(fs) != 1 || fs[0].ServerMPTCP == nil || fs[0].ServerMPTCP.Active {
		t.Errorf("flows %+v: want one whose server leg fell back to TCP", fs)
	}
}

// TestMPTCPReloadDuringHandshake: an MPTCP client's SOCKS5 handshake
// spans a reload that leaves no MPTCP anywhere in the configuration (its
// listener turns mptcp off, and is replaced). The flow goes on over the
// connection the old listener accepted, MPTCP, and its log line and the
// metrics say so.
func TestMPTCPReloadDuringHandshake(t *testing.T) {
	m := startMPTCP(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := dialMPTCP(t, ctx, m.client, m.socks)
	defer c.Close()
	for len(m.flows(t)) == 0 { // accepted
		if ctx.Err() != nil {
			t.Fatal("rc never accepted the connection")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cfg := strings.Replace(m.cfg, "mptcp: true, allow_clients", "allow_clients", 1)
	cfg = cfg[:strings.Index(cfg, "routes:")]
	reloadRelay(t, ctx, m.rc, m.log, "rc", cfg)
	dst := netip.MustParseAddrPort(m.server.AddrPort(9000))
	if _, err := socks5.ClientHandshake(c, c, socks5.Addr{IP: dst.Addr(), Port: dst.Port()}, "", ""); err != nil {
		t.Fatal(err)
	}
	if err := roundTripOn(c, 64<<10); err != nil {
		t.Fatal(err)
	}
	for { // until the flow has ended
		if b, _ := os.ReadFile(m.log); strings.Contains(string(b), "dst="+dst.String()) {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the flow never ended")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if b, _ := os.ReadFile(m.log); !strings.Contains(string(b), "client_mptcp=mptcp") {
		t.Errorf("the flow's log line does not call its client leg MPTCP:\n%s", b)
	}
	want := `halfway_mptcp_legs_total{leg="client",listener="socks",result="mptcp"} 1`
	if body := scrapeMetrics(t, m.rc, 9190); !strings.Contains(body, want) {
		t.Errorf("metrics lack %s:\n%s", want, grepLines(body, "halfway_mptcp_legs_total"))
	}
}

// dialMPTCP connects from h to addr asking for Multipath TCP.
func dialMPTCP(t *testing.T, ctx context.Context, h *netlab.Host, addr string) *net.TCPConn {
	t.Helper()
	d := &net.Dialer{}
	d.SetMultipathTCP(true)
	nc, err := h.DialWith(ctx, d, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return nc.(*net.TCPConn)
}
