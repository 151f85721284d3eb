package relay_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"halfway/netlab"
	"halfway/netlab/labtest"
)

// chainTopo6 is chainTopo with IPv6 on every link.
const chainTopo6 = `
name: chain6
ipv6: true
nodes: [client, rc, rs, server]
links:
  - {a: client, b: rc, delay: 2ms}
  - {a: rc, b: rs, delay: 2ms}
  - {a: rs, b: server, delay: 2ms}
`

// TestCaptureOtherFamily: a transparent listener's socket is of one
// family (Go's tcp4 or a v6-only tcp6), so capture without dst must leave
// the other family's flows alone: steered to a port where nothing of their
// family listens, they would be refused.
func TestCaptureOtherFamily(t *testing.T) {
	requireTools(t, "nft")
	labtest.RequireRoot(t)
	for _, tc := range []struct {
		mode, listen string
		v6           bool // the flow tried is IPv6 (else IPv4)
	}{
		{"redirect", "0.0.0.0:7000", true},
		{"redirect", "[::]:7000", false},
		{"tproxy", "0.0.0.0:7000", true},
		{"tproxy", "[::]:7000", false},
	} {
		t.Run(fmt.Sprintf("%s %s", tc.mode, tc.listen), func(t *testing.T) {
			lab := labtest.Start(t, chainTopo6)
			rc, server, client := lab.Host("rc"), lab.Host("server"), lab.Host("client")
			runRelay(t, rc, "rc", fmt.Sprintf("admin: {listen: off}\nlisteners:\n  - {name: web, listen: %q, mode: %s, capture: {ports: \"8080\", install: true}}\n", tc.listen, tc.mode))
			waitCapture(t, rc, "halfway_web", "7000")
			serveEchoOn(t, server, 8080)
			dst := server.AddrPort(8080)
			if tc.v6 {
				dst = net.JoinHostPort(server.Addr6().String(), "8080")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := client.Dial(ctx, "tcp", dst)
			if err == nil {
				err = echoOnce(c, "hi")
				c.Close()
			}
			if err != nil {
				out, _ := rc.Command(ctx, "nft", "list", "table", "inet", "halfway_web").CombinedOutput()
				t.Errorf("flow to %s, of the family the listener does not take: %v\n%s", dst, err, strings.TrimSpace(string(out)))
			}
		})
	}
}

// TestCaptureSparesOwnHost: capture without dst takes flows through the
// relay's host, not those addressed to the host itself: its own admin API
// (reached from inside the host, over lo) and a local service reached
// from outside keep working on captured ports.
func TestCaptureSparesOwnHost(t *testing.T) {
	requireTools(t, "nft")
	labtest.RequireRoot(t)
	for _, mode := range []string{"tproxy", "redirect"} {
		t.Run(mode, func(t *testing.T) {
			lab := labtest.Start(t, chainTopo)
			rc, client := lab.Host("rc"), lab.Host("client")
			runRelay(t, rc, "rc", fmt.Sprintf("admin: {listen: \"127.0.0.1:9191\"}\nlisteners:\n  - {name: web, listen: \"0.0.0.0:7000\", mode: %s, capture: {ports: \"9000-9999\", install: true}}\n", mode))
			waitCapture(t, rc, "halfway_web", "7000")
			serveEchoOn(t, rc, 9500)
			for i := 0; ; i++ { // the admin API listens (connecting would be the test)
				out, _ := rc.Command(context.Background(), "ss", "-ltnH", "sport", "9191").CombinedOutput()
				if strings.Contains(string(out), "9191") {
					break
				}
				if i > 200 {
					t.Fatal("the admin API never listened")
				}
				time.Sleep(20 * time.Millisecond)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			rcAddr := ifaceToward(t, rc, "client")
			c, err := client.Dial(ctx, "tcp", net.JoinHostPort(rcAddr.String(), "9500"))
			if err == nil {
				err = echoOnce(c, "hi")
				c.Close()
			}
			if err != nil {
				t.Errorf("a service of the relay's host, from the client: %v", err)
			}
			resp, err := adminClient(rc).Get("http://127.0.0.1:9191/metrics")
			if err == nil {
				resp.Body.Close()
			}
			if err != nil {
				t.Errorf("the relay's admin API, from its own host: %v", err)
			}
		})
	}
}

// TestCaptureTwoRelays: two relays on one host, each with its own
// TPROXY listener and the default mark and table, share the policy route;
// the one that stops first leaves it to the other, whose flows still
// reach it.
func TestCaptureTwoRelays(t *testing.T) {
	requireTools(t, "nft")
	labtest.RequireRoot(t)
	lab := labtest.Start(t, chainTopo)
	rc, server, client := lab.Host("rc"), lab.Host("server"), lab.Host("client")
	srvNet := server.Ifaces()[0].Addr4.Masked()
	relayCfg := func(name string, port, capPort int) string {
		return fmt.Sprintf("admin: {listen: off}\nlisteners:\n  - {name: %s, listen: \"0.0.0.0:%d\", mode: tproxy, capture: {dst: [%s], ports: \"%d\", install: true}}\n", name, port, srvNet, capPort)
	}
	logA, _ := runRelay(t, rc, "a", relayCfg("a", 7001, 9001))
	waitCapture(t, rc, "halfway_a", "7001")
	_, stopB := runRelay(t, rc, "b", relayCfg("b", 7002, 9002))
	waitCapture(t, rc, "halfway_b", "7002")
	serveEchoOn(t, server, 9001)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := stopB(); err != nil {
		t.Fatal(err)
	}
	if out, _ := rc.Command(ctx, "ip", "-4", "rule", "show").CombinedOutput(); !strings.Contains(string(out), "fwmark 0x1 lookup 100") {
		t.Errorf("relay b's stop took relay a's ip rule:\n%s", out)
	}
	if out, _ := rc.Command(ctx, "ip", "-4", "route", "show", "table", "100").CombinedOutput(); !strings.Contains(string(out), "local default") {
		t.Errorf("relay b's stop took relay a's local route: %q", out)
	}
	c, err := client.Dial(ctx, "tcp", server.AddrPort(9001))
	if err != nil {
		t.Fatal(err)
	}
	err = echoOnce(c, "hi")
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ { // the relay logs a flow when it ends
		if b, _ := os.ReadFile(logA); strings.Contains(string(b), "msg=flow listener=a") {
			break
		}
		if i > 100 {
			t.Fatal("relay a never carried the flow: its capture went with relay b")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCaptureRefusedReloadClaimsNothing: a listener of a reload that is
// refused (its port taken by another relay's listener of that name) is
// not this relay's: the capture table of that name stays another relay's,
// whose policy rule a later listener of this relay's with the same mark
// does not take for a leftover of its own, and its stop leaves it. The
// refused reload's table names stayed among the relay's own: the later
// listener adopted the other relay's rule, and its stop removed it.
func TestCaptureRefusedReloadClaimsNothing(t *testing.T) {
	requireTools(t, "nft")
	labtest.RequireRoot(t)
	rc := labtest.Start(t, chainTopo).Host("rc")
	listener := func(name string, port int) string {
		return fmt.Sprintf("  - {name: %s, listen: \"0.0.0.0:%d\", mode: tproxy, capture: {ports: \"%d\", install: true}}\n", name, port, port+2000)
	}
	const head = "admin: {listen: off}\nlisteners:\n"
	other := "  - {name: other, listen: \"0.0.0.0:7003\", mode: tproxy}\n"
	runRelay(t, rc, "b", head+listener("b", 7002))
	waitCapture(t, rc, "halfway_b", "7002")
	logA, stopA := runRelay(t, rc, "a", head+other)
	waitLogged(t, logA, "relay started")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	reloadRefused(t, ctx, rc, logA, "a", head+other+listener("b", 7002))
	reloadRelay(t, ctx, rc, logA, "a", head+other+listener("a", 7001))
	waitCapture(t, rc, "halfway_a", "7001")
	if err := stopA(); err != nil {
		t.Fatal(err)
	}
	if out, _ := rc.Command(ctx, "ip", "-4", "rule", "show").CombinedOutput(); !strings.Contains(string(out), "fwmark 0x1 lookup 100") {
		t.Errorf("relay a's stop took relay b's ip rule:\n%s", out)
	}
	if out, _ := rc.Command(ctx, "ip", "-4", "route", "show", "table", "100").CombinedOutput(); !strings.Contains(string(out), "local default") {
		t.Errorf("relay a's stop took relay b's local route: %q", out)
	}
}

// reloadRefused is reloadRelay for a reload the relay must refuse.
func reloadRefused(t *testing.T, ctx context.Context, h *netlab.Host, logPath, name, cfg string) {
	t.Helper()
	before := func() int { b, _ := os.ReadFile(logPath); return strings.Count(string(b), "reload refused") }
	n := before()
	file := strings.TrimSuffix(logPath, ".log") + ".yaml"
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := h.Command(ctx, "pkill", "-HUP", "-f", "halfway relay -c "+file).CombinedOutput(); err != nil {
		t.Fatalf("pkill -HUP: %v %s", err, out)
	}
	for i := 0; before() == n; i++ {
		if b, _ := os.ReadFile(logPath); strings.Contains(string(b), "reload incomplete") {
			t.Fatal("the reload was applied in part, not refused")
		}
		if i > 500 {
			t.Fatal("the relay never logged the refused reload")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCaptureAfterKill: a relay killed with SIGKILL leaves its capture
// behind; the next start takes it over, and its stop leaves no policy
// rule or route.
func TestCaptureAfterKill(t *testing.T) {
	rc, logPath, _ := startCaptureRelay(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	file := strings.TrimSuffix(logPath, ".log") + ".yaml"
	if out, err := rc.Command(ctx, "pkill", "-KILL", "-f", "halfway relay -c "+file).CombinedOutput(); err != nil {
		t.Fatalf("pkill -KILL: %v %s", err, out)
	}
	time.Sleep(200 * time.Millisecond)
	_, stop := runRelay(t, rc, "again", captureWebConfig)
	for i := 0; ; i++ { // the new start listens once its capture is in
		out, _ := rc.Command(ctx, "ss", "-ltnH", "sport", "7000").CombinedOutput()
		if strings.Contains(string(out), "7000") {
			break
		}
		if i > 200 {
			t.Fatal("the relay never listened again")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	wantNoCaptureLeft(t, ctx, rc, "after a kill, a start and a stop")
}

// TestCaptureListenAddress: a transparent listener bound to one address
// of the relay's (here its address on the server's link, not that of the
// interface the client's packets come in on) gets its captured flows: the
// rules send them to that address, not to the incoming interface's.
func TestCaptureListenAddress(t *testing.T) {
	for _, mode := range []string{"tproxy", "redirect"} {
		t.Run(mode, func(t *testing.T) {
			requireTools(t, "nft", "curl")
			labtest.RequireRoot(t)
			lab := labtest.Start(t, chainTopo)
			rc, server, client := lab.Host("rc"), lab.Host("server"), lab.Host("client")
			listen := rc.Ifaces()[1].Addr4.Addr()
			runRelay(t, rc, "listen-"+mode, fmt.Sprintf(`
admin: {listen: off}
listeners:
  - name: web
    listen: %s:7000
    mode: %s
    allow_clients: [10.77.1.0/24]
    capture: {dst: [%s], ports: "8080", install: true}
`, listen, mode, server.Ifaces()[0].Addr4.Masked()))
			waitCapture(t, rc, "halfway_web", "7000")
			serveSeenFrom(t, server, ":8080")
			out, err := client.Command(context.Background(), "curl", "-sS", "--max-time", "10", "http://"+server.AddrPort(8080)+"/").CombinedOutput()
			// Split at rc: the server sees rc's address on its link.
			if want := "seen from " + rc.Ifaces()[1].Addr4.Addr().String() + ":"; err != nil || !strings.Contains(string(out), want) {
				t.Errorf("curl through a relay listening on %s: %v: %s (want %q)", listen, err, out, want)
			}
		})
	}
}

// TestSecondSignal: a second SIGTERM during a drain closes the flows at
// once, and the relay still removes its capture rules and policy routes
// before it exits.
func TestSecondSignal(t *testing.T) {
	requireTools(t, "nft")
	labtest.RequireRoot(t)
	lab := labtest.Start(t, chainTopo)
	rc, server, client := lab.Host("rc"), lab.Host("server"), lab.Host("client")
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	file := dir + "/sig.yaml"
	os.WriteFile(file, []byte(captureServerConfig(server)), 0o644)
	logf, _ := os.Create(dir + "/sig.log")
	cmd := rc.Command(context.Background(), bin, "relay", "-c", file, "--grace", "10m")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("relay log:\n%s", b)
		}
	})
	waitCapture(t, rc, "halfway_web", "7000")
	serveEchoOn(t, server, 8080)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := client.Dial(ctx, "tcp", server.AddrPort(8080))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte("x")); err == nil {
		_, err = c.Read(make([]byte, 1))
	}
	if err != nil {
		t.Fatalf("flow: %v", err)
	}
	// The flow stays open: the drain would wait its 10 minutes.
	cmd.Process.Signal(os.Interrupt)
	for i := 0; ; i++ {
		if b, _ := os.ReadFile(logf.Name()); strings.Contains(string(b), "draining") {
			break
		}
		if i > 500 {
			t.Fatal("the relay never began to drain")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("the relay exited with %v after a second signal, want a clean exit", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the relay was still draining 30 s after a second signal")
	}
	if out, err := rc.Command(context.Background(), "nft", "list", "table", "inet", "halfway_web").CombinedOutput(); err == nil {
		t.Errorf("the capture table outlived the relay:\n%s", out)
	}
	if out, _ := rc.Command(context.Background(), "ip", "rule", "show").CombinedOutput(); strings.Contains(string(out), "fwmark") {
		t.Errorf("the policy rule outlived the relay:\n%s", out)
	}
}

// TestStopCleanupFails: a stop that cannot remove its capture rules (here,
// someone deleted its table first) exits with an error that says so, so a
// supervisor does not take it for a clean stop. It exited 0.
func TestStopCleanupFails(t *testing.T) {
	rc, _, stop := startCaptureRelay(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := rc.Command(ctx, "nft", "delete", "table", "inet", "halfway_web").CombinedOutput(); err != nil {
		t.Fatalf("nft delete table: %v %s", err, out)
	}
	if err := stop(); err == nil {
		t.Error("the relay stopped with exit status 0 though it could not remove its capture rules")
	}
}

// captureServerConfig is a relay with one tproxy listener, web, on port
// 7000, that captures the clients' flows to server's network on port 8080.
func captureServerConfig(server *netlab.Host) string {
	return fmt.Sprintf(`
admin: {listen: off}
listeners:
  - name: web
    listen: 0.0.0.0:7000
    mode: tproxy
    allow_clients: [10.77.1.0/24]
    capture: {dst: [%s], ports: "8080", install: true}
`, server.Ifaces()[0].Addr4.Masked())
}

// captureWebConfig is a relay with one tproxy listener, web, that installs
// its capture of port 8080.
const captureWebConfig = "admin: {listen: off}\nlisteners:\n  - {name: web, listen: \"0.0.0.0:7000\", mode: tproxy, capture: {ports: \"8080\", install: true}}\n"

// startCaptureRelay runs captureWebConfig on rc of a chain lab and waits
// for its capture rules; it returns rc and runRelay's log path and stop.
func startCaptureRelay(t *testing.T) (rc *netlab.Host, logPath string, stop func() error) {
	t.Helper()
	requireTools(t, "nft")
	labtest.RequireRoot(t)
	rc = labtest.Start(t, chainTopo).Host("rc")
	logPath, stop = runRelay(t, rc, "rc", captureWebConfig)
	waitCapture(t, rc, "halfway_web", "7000")
	return rc, logPath, stop
}

// TestCaptureInherited: a tproxy listener on a socket passed as systemd
// socket activation passes it (opened without IP_TRANSPARENT, and kept
// open by this test as systemd keeps it) gets its captured flows: the
// relay sets IP_TRANSPARENT on the socket after its listen. A relay that
// opened its own socket could not bind the port.
func TestCaptureInherited(t *testing.T) {
	requireTools(t, "nft", "curl")
	labtest.RequireRoot(t)
	lab := labtest.Start(t, chainTopo)
	rc, server, client := lab.Host("rc"), lab.Host("server"), lab.Host("client")
	f := systemdSocket(t, rc, "0.0.0.0:7000")
	logPath, stop := runRelayWith(t, rc, "inherit", captureServerConfig(server), f)
	defer func() {
		if err := stop(); err != nil {
			t.Errorf("relay after SIGINT: %v", err)
		}
	}()
	waitCapture(t, rc, "halfway_web", "7000")
	serveSeenFrom(t, server, ":8080")
	out, err := client.Command(context.Background(), "curl", "-sS", "--max-time", "10", "http://"+server.AddrPort(8080)+"/").CombinedOutput()
	// Split at rc: the server sees rc's address on its link.
	if want := "seen from " + rc.Ifaces()[1].Addr4.Addr().String() + ":"; err != nil || !strings.Contains(string(out), want) {
		t.Errorf("curl through a relay on an inherited socket: %v: %s (want %q)", err, out, want)
	}
	if b, _ := os.ReadFile(logPath); !strings.Contains(string(b), "inherited=true") {
		t.Error("the relay did not say it listens on the inherited socket")
	}
}

// systemdSocket is a listening TCP socket on addr in h, opened as systemd
// opens a .socket unit's (no IP_TRANSPARENT, plain TCP) and kept open
// until the test ends, as systemd keeps it: the file to pass the relay.
func systemdSocket(t *testing.T, h *netlab.Host, addr string) *os.File {
	t.Helper()
	var ln net.Listener
	if err := h.Do(func() (err error) {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		ln, err = lc.Listen(context.Background(), "tcp4", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// wantNoCaptureLeft checks that rc's namespace holds no policy rule,
// table-100 route or nftables table of a capture, after what when says.
func wantNoCaptureLeft(t *testing.T, ctx context.Context, rc *netlab.Host, when string) {
	t.Helper()
	for _, c := range [][]string{{"ip", "-4", "rule", "show"}, {"ip", "-4", "route", "show", "table", "100"}, {"nft", "list", "tables"}} {
		out, _ := rc.Command(ctx, c[0], c[1:]...).CombinedOutput()
		if s := string(out); strings.Contains(s, "fwmark") || strings.Contains(s, "local") && c[2] == "route" || strings.Contains(s, "halfway_") {
			t.Errorf("%s, %s:\n%s", when, strings.Join(c, " "), s)
		}
	}
}
