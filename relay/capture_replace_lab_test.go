package relay_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"halfway/netlab"
	"halfway/netlab/labtest"
)

// TestCaptureReplacedKeepsFlows: a reload that turns a tproxy listener
// with capture into an explicit one of the same name keeps its capture
// while the flows it took last, as a reload that removes or renames it
// does: the established flow still passes. Its table and policy routes
// went at once, and the flow's packets passed the relay by.
func TestCaptureReplacedKeepsFlows(t *testing.T) {
	requireTools(t, "nft")
	labtest.RequireRoot(t)
	rw := startHeldWeb(t)
	explicit := fmt.Sprintf("admin: {listen: off}\nlisteners:\n  - {name: web, listen: \"0.0.0.0:7001\", allow_clients: [10.77.0.0/16], allow_destinations: [%s]}\n", rw.srvNet)
	reloadRelay(t, rw.ctx, rw.rc, rw.logPath, "rc", explicit)
	if err := echoOnce(rw.held, "after the reload"); err != nil {
		t.Errorf("the flow of the replaced tproxy listener broke: %v", err)
	}
	rw.held.Close()
	rw.waitTableGone(t)
}

// TestStopCleanupFailsRetired: a stop that cannot remove the capture of
// a listener a reload removed, or replaced under its name (with another
// mark and table), while it still had a flow exits with an error, as it
// does for a listener still configured (TestStopCleanupFails). Here
// someone deleted first what that listener alone still held: its table,
// or its policy rule. The removal ran when the flow ended, and its error
// was only logged: exit status 0.
func TestStopCleanupFailsRetired(t *testing.T) {
	requireTools(t, "nft")
	labtest.RequireRoot(t)
	for _, tc := range []struct {
		name  string
		web   string // web in the reload (%s: the server's net), or ""
		taken []string
	}{
		{"removed", "", []string{"nft", "delete", "table", "inet", "halfway_web"}},
		{"replaced", "  - {name: web, listen: \"0.0.0.0:7001\", mode: tproxy, capture: {dst: [%s], ports: \"9001, 8080\", mark: 2, table: 101, install: true}}\n",
			[]string{"ip", "-4", "rule", "del", "fwmark", "1", "lookup", "100"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rw := startHeldWeb(t)
			rc, ctx, stop := rw.rc, rw.ctx, rw.stop
			web := ""
			if tc.web != "" {
				web = fmt.Sprintf(tc.web, rw.srvNet)
			}
			reloadRelay(t, ctx, rc, rw.logPath, "rc", "admin: {listen: off}\nlisteners:\n"+web+rw.other)
			if web != "" {
				waitCapture(t, rc, "halfway_web", "8080")
			}
			if out, err := rc.Command(ctx, tc.taken[0], tc.taken[1:]...).CombinedOutput(); err != nil {
				t.Fatalf("%s (what web's flow alone needs): %v %s", strings.Join(tc.taken, " "), err, out)
			}
			if err := stop(); err == nil {
				t.Errorf("the relay stopped with exit status 0 though it could not remove the capture rules of a %s listener", tc.name)
			}
		})
	}
}

// TestCaptureAfterKillShared: as TestCaptureAfterKill, with two
// listeners that share the default mark: the start after the kill takes
// over the policy rule their capture left, and its stop leaves no policy
// rule or route. The leftover table of the second listener made the
// first take the rule for another relay's, and add one more, which
// stayed after the stop with the local route it looks up.
func TestCaptureAfterKillShared(t *testing.T) {
	requireTools(t, "nft")
	labtest.RequireRoot(t)
	rc := labtest.Start(t, chainTopo).Host("rc")
	cfg := "admin: {listen: off}\nlisteners:\n" +
		"  - {name: a, listen: \"0.0.0.0:7001\", mode: tproxy, capture: {ports: \"9001\", install: true}}\n" +
		"  - {name: b, listen: \"0.0.0.0:7002\", mode: tproxy, capture: {ports: \"9002\", install: true}}\n"
	logPath, _ := runRelay(t, rc, "rc", cfg)
	waitCapture(t, rc, "halfway_b", "7002")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	file := strings.TrimSuffix(logPath, ".log") + ".yaml"
	if out, err := rc.Command(ctx, "pkill", "-KILL", "-f", "halfway relay -c "+file).CombinedOutput(); err != nil {
		t.Fatalf("pkill -KILL: %v %s", err, out)
	}
	for i := 0; rc.Command(ctx, "pgrep", "-f", "halfway relay -c "+file).Run() == nil; i++ {
		if i > 200 {
			t.Fatal("the killed relay never exited")
		}
		time.Sleep(20 * time.Millisecond)
	}
	logPath, stop := runRelay(t, rc, "again", cfg)
	waitLogged(t, logPath, "relay started")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	wantNoCaptureLeft(t, ctx, rc, "after a kill, a start and a stop")
}

// TestCaptureRetiredRemovalTakenOver: the capture of a removed listener
// goes when its last flow ends; a reload that adds the listener back at
// that moment rebuilds the table, and the removal, which had started
// before, must not take the new table away. Here nft is slowed down for
// that removal alone. The removal checked that the table was still its
// own, then deleted it after the new listener had installed it: the host
// was left without the capture the running configuration has.
func TestCaptureRetiredRemovalTakenOver(t *testing.T) {
	requireTools(t, "nft")
	labtest.RequireRoot(t)
	// The first "nft delete table" once armed sleeps, then runs.
	realNft, arm, sleeping := slowedCommand(t, "nft", "$1 $2", "delete table", 2)
	rw := startRetiredWeb(t)
	rc, ctx := rw.rc, rw.ctx
	rw.endHeldSlowed(t, arm, sleeping, "table")
	reloadRelay(t, ctx, rc, rw.logPath, "rc", "admin: {listen: off}\nlisteners:\n"+rw.web+rw.other)
	for i := 0; sleeping(); i++ {
		if i > 500 {
			t.Fatal("the slowed nft never finished")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if out, err := rc.Command(ctx, realNft, "list", "table", "inet", "halfway_web").CombinedOutput(); err != nil || !strings.Contains(string(out), "7001") {
		t.Errorf("after web came back, its capture table: %v %s", err, out)
	}
}

// TestCaptureRetiredGoneReloadRefused: once a removed listener's last
// flow has ended and its capture is gone, a reload that adds it back but
// cannot open it (its port taken) is refused whole, as docs/relay.md
// says, not applied without it. The removed listener stayed on record as
// holding its table, so the new one opened only after the commit, and
// its failure left a half-applied reload ("reload incomplete").
func TestCaptureRetiredGoneReloadRefused(t *testing.T) {
	requireTools(t, "nft")
	labtest.RequireRoot(t)
	rw := startRetiredWeb(t)
	rw.held.Close()
	rw.waitTableGone(t)
	rw.wantReAddRefused(t)
}

// TestCaptureRetiredReleasingReloadRefused: as
// TestCaptureRetiredGoneReloadRefused, with the reload coming while the
// removed listener's capture is still being taken away: its table is
// gone, its policy rule is going (ip is slowed down for that alone). It
// has no flow left to keep its table for, so it holds back no listener
// that takes the table over: a reload that adds it back but cannot open
// it (its port taken) is refused whole, not applied without it.
func TestCaptureRetiredReleasingReloadRefused(t *testing.T) {
	requireTools(t, "nft", "ip")
	labtest.RequireRoot(t)
	// The first "ip -4 rule del" once armed sleeps, then runs.
	_, arm, sleeping := slowedCommand(t, "ip", "$1 $2 $3", "-4 rule del", 3)
	rw := startRetiredWeb(t)
	rc, ctx := rw.rc, rw.ctx
	defer func() {
		for i := 0; sleeping() && i < 500; i++ {
			time.Sleep(20 * time.Millisecond)
		}
	}()
	rw.endHeldSlowed(t, arm, sleeping, "policy rule")
	if out, _ := rc.Command(ctx, "nft", "list", "tables").CombinedOutput(); strings.Contains(string(out), "halfway_web") {
		t.Fatalf("web's table stayed after its last flow, its policy rule going:\n%s", out)
	}
	rw.wantReAddRefused(t)
}

// slowedCommand puts a wrapper of the command name first in PATH for the
// test: once armed, the first call whose words (args, a shell expression
// such as "$1 $2") read match sleeps secs seconds, then runs; sleeping
// says whether it is asleep. It returns the real command's path.
func slowedCommand(t *testing.T, name, args, match string, secs int) (path string, arm func(), sleeping func() bool) {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("no %s: %v", name, err)
	}
	bin := t.TempDir()
	wrapper := fmt.Sprintf("#!/bin/sh\nif [ \"%[3]s\" = \"%[4]s\" ] && mv %[1]s/armed %[1]s/sleeping 2>/dev/null; then\n\tsleep %[5]d\n\t%[2]s \"$@\"; rc=$?\n\trm -f %[1]s/sleeping\n\texit $rc\nfi\nexec %[2]s \"$@\"\n", bin, path, args, match, secs)
	if err := os.WriteFile(filepath.Join(bin, name), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	arm = func() {
		if err := os.WriteFile(filepath.Join(bin, "armed"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sleeping = func() bool { _, err := os.Stat(filepath.Join(bin, "sleeping")); return err == nil }
	return path, arm, sleeping
}

// retiredWeb is a relay on rc with a capturing listener web that a reload
// has removed while a flow it took, held, still runs, beside a listener
// other.
//
// startHeldWeb starts it with both, the flow held; startRetiredWeb
// reloads it without web then.
type retiredWeb struct {
	lab                 *netlab.Lab
	rc                  *netlab.Host
	ctx                 context.Context
	held                net.Conn
	stop                func() error
	logPath, web, other string
	srvNet              netip.Prefix
}

func startRetiredWeb(t *testing.T) *retiredWeb {
	t.Helper()
	rw := startHeldWeb(t)
	reloadRelay(t, rw.ctx, rw.rc, rw.logPath, "rc", "admin: {listen: off}\nlisteners:\n"+rw.other)
	return rw
}

func startHeldWeb(t *testing.T) *retiredWeb {
	t.Helper()
	return startHeldWebAs(t, "tproxy")
}

// startHeldWebAs is startHeldWeb with web in mode.
func startHeldWebAs(t *testing.T, mode string) *retiredWeb {
	t.Helper()
	return startHeldWebOn(t, mode, nil)
}

// startHeldWebOn is startHeldWebAs with setup, if not nil, run on rc
// before the relay starts.
func startHeldWebOn(t *testing.T, mode string, setup func(t *testing.T, rc *netlab.Host)) *retiredWeb {
	t.Helper()
	lab := labtest.Start(t, chainTopo)
	rc, server, client := lab.Host("rc"), lab.Host("server"), lab.Host("client")
	if setup != nil {
		setup(t, rc)
	}
	srvNet := server.Ifaces()[0].Addr4.Masked()
	rw := &retiredWeb{lab: lab, rc: rc, srvNet: srvNet,
		other: "  - {name: other, listen: \"0.0.0.0:7002\", mode: tproxy}\n",
		web:   fmt.Sprintf("  - {name: web, listen: \"0.0.0.0:7001\", mode: %s, capture: {dst: [%s], ports: \"9001\", install: true}}\n", mode, srvNet),
	}
	rw.logPath, rw.stop = runRelay(t, rc, "rc", "admin: {listen: off}\nlisteners:\n"+rw.web+rw.other)
	waitCapture(t, rc, "halfway_web", "7001")
	serveEchoOn(t, server, 9001)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	rw.ctx = ctx
	held, err := client.Dial(ctx, "tcp", server.AddrPort(9001))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { held.Close() })
	rw.held = held
	if err := echoOnce(held, "before"); err != nil {
		t.Fatal(err)
	}
	return rw
}

// endHeldSlowed arms the slowed command, ends web's last flow, and waits
// until that flow's capture removal sleeps in it (what it removes).
func (rw *retiredWeb) endHeldSlowed(t *testing.T, arm func(), sleeping func() bool, what string) {
	t.Helper()
	arm()
	rw.held.Close() // the removed listener's last flow ends: its removal starts
	for i := 0; !sleeping(); i++ {
		if i > 500 {
			t.Fatalf("the removed listener's %s removal never started", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitTableGone waits for web's capture table to go, its last flow ended.
func (rw *retiredWeb) waitTableGone(t *testing.T) {
	t.Helper()
	for i := 0; ; i++ {
		out, _ := rw.rc.Command(rw.ctx, "nft", "list", "tables").CombinedOutput()
		if !strings.Contains(string(out), "halfway_web") {
			return
		}
		if i > 200 {
			t.Fatalf("web's table stayed after its last flow:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// wantReAddRefused checks that a reload adding web back, whose port is
// taken, is refused whole, not applied without it.
func (rw *retiredWeb) wantReAddRefused(t *testing.T) {
	t.Helper()
	taken, err := rw.rc.Listen("tcp4", "0.0.0.0:7001")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	file := filepath.Join(filepath.Dir(rw.logPath), "rc.yaml")
	extra := "  - {name: extra, listen: \"0.0.0.0:7003\", mode: tproxy}\n"
	if err := os.WriteFile(file, []byte("admin: {listen: off}\nlisteners:\n"+rw.web+rw.other+extra), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := rw.rc.Command(rw.ctx, "pkill", "-HUP", "-f", "halfway relay -c "+file).CombinedOutput(); err != nil {
		t.Fatalf("pkill -HUP: %v %s", err, out)
	}
	for i := 0; ; i++ {
		b, _ := os.ReadFile(rw.logPath)
		if strings.Contains(string(b), "reload refused") {
			break
		}
		if strings.Contains(string(b), "reload incomplete") {
			t.Fatal("a reload that cannot open web (its port taken) was applied without it, not refused")
		}
		if i > 500 {
			t.Fatal("the relay logged neither a refused nor an incomplete reload")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCaptureReAddedRemovedKeepsFlows: web, removed while its flow is
// held, comes back with a reload (which rebuilds its table) and goes
// again with the next, before the first web's flow has ended: that flow
// still needs the table, whichever listener installed it last. The
// second web, which had no flow, took the table away, and the first
// web's flow passed the relay by once the routes changed.
func TestCaptureReAddedRemovedKeepsFlows(t *testing.T) {
	requireTools(t, "nft")
	labtest.RequireRoot(t)
	rw := startRetiredWeb(t)
	reloadRelay(t, rw.ctx, rw.rc, rw.logPath, "rc", "admin: {listen: off}\nlisteners:\n"+rw.web+rw.other)
	waitCapture(t, rw.rc, "halfway_web", "7001")
	reloadRelay(t, rw.ctx, rw.rc, rw.logPath, "rc", "admin: {listen: off}\nlisteners:\n"+rw.other)
	// The flow's socket keeps the route its packets came by (TCP's early
	// demux) until a routing change anywhere in the namespace: make one.
	if out, err := rw.rc.Command(rw.ctx, "ip", "-4", "route", "flush", "cache").CombinedOutput(); err != nil {
		t.Fatalf("ip route flush cache: %v %s", err, out)
	}
	if err := echoOnce(rw.held, "after web came back and went again"); err != nil {
		out, _ := rw.rc.Command(rw.ctx, "nft", "list", "tables").CombinedOutput()
		t.Errorf("the first web's flow: %v; tables:\n%s", err, out)
	}
	rw.held.Close()
	rw.waitTableGone(t)
	if err := rw.stop(); err != nil {
		t.Errorf("the relay's stop: %v", err)
	}
	wantNoCaptureLeft(t, rw.ctx, rw.rc, "after the last flow and a stop")
}

// TestCaptureRebuiltNoGap: a reload that rebuilds a listener's capture
// under the same table name (here its ports change) replaces the table in
// one nftables transaction: a flow that starts while the new table is
// being installed (nft is slowed down for that install) is still taken
// by the relay. The old table was deleted first, and the flow went past
// the relay, straight to the server.
func TestCaptureRebuiltNoGap(t *testing.T) {
	requireTools(t, "nft", "curl")
	labtest.RequireRoot(t)
	// The first "nft -f -" once armed sleeps, then runs.
	_, arm, sleeping := slowedCommand(t, "nft", "$1 $2", "-f -", 2)
	lab := labtest.Start(t, chainTopo)
	rc, server, client := lab.Host("rc"), lab.Host("server"), lab.Host("client")
	srvNet := server.Ifaces()[0].Addr4.Masked()
	web := func(ports string) string {
		return fmt.Sprintf("admin: {listen: off}\nlisteners:\n  - {name: web, listen: \"0.0.0.0:7001\", mode: tproxy, capture: {dst: [%s], ports: %q, install: true}}\n", srvNet, ports)
	}
	logPath, stop := runRelay(t, rc, "rc", web("8080"))
	waitCapture(t, rc, "halfway_web", "7001")
	serveSeenFrom(t, server, ":8080")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	defer func() {
		for i := 0; sleeping() && i < 500; i++ {
			time.Sleep(20 * time.Millisecond)
		}
	}()
	arm()
	reloaded := func() int { b, _ := os.ReadFile(logPath); return strings.Count(string(b), "configuration reloaded") }
	n := reloaded()
	file := filepath.Join(filepath.Dir(logPath), "rc.yaml")
	if err := os.WriteFile(file, []byte(web("8080, 8081")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := rc.Command(ctx, "pkill", "-HUP", "-f", "halfway relay -c "+file).CombinedOutput(); err != nil {
		t.Fatalf("pkill -HUP: %v %s", err, out)
	}
	for i := 0; !sleeping(); i++ {
		if i > 500 {
			t.Fatal("the reload's table install never started")
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, err := client.Command(ctx, "curl", "-sS", "--max-time", "15", "http://"+server.AddrPort(8080)+"/").CombinedOutput()
	// Split at rc: the server sees rc's address on its link.
	if want := "seen from " + rc.Ifaces()[1].Addr4.Addr().String() + ":"; err != nil || !strings.Contains(string(out), want) {
		t.Errorf("a flow started while the reload rebuilt web's capture: %v: %s (want %q)", err, out, want)
	}
	for i := 0; reloaded() == n; i++ {
		if i > 500 {
			t.Fatal("the relay never logged the reload")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Errorf("the relay's stop: %v", err)
	}
	wantNoCaptureLeft(t, ctx, rc, "after the stop")
}

// TestCaptureModeChangedKeepsFlows: a reload that changes web from one
// capture mode to the other under the same name rebuilds its table for
// the new mode; the flow web took before still passes (after a routing
// change too: ip route flush cache), new flows are taken in the new
// mode, what the table kept for the old flow goes with it, and the
// relay's stop leaves nothing. The table of the new mode was built
// alone: a redirect table has neither the rule that marks the packets of
// the relay's transparent sockets nor the policy route that delivers
// them, and a tproxy table takes a redirected flow's packets to its
// listener and, with no nat chain left, the kernel translates them no
// more. With a firewall on rc that accepts on input only tracked
// flows (and new ones to the listener and the captured ports), the old
// tproxy flow's packets, which the redirect table left untracked, were
// dropped.
func TestCaptureModeChangedKeepsFlows(t *testing.T) {
	requireTools(t, "nft", "curl")
	labtest.RequireRoot(t)
	for _, tc := range []struct {
		from, to string
		firewall bool
	}{
		{"tproxy", "redirect", false},
		{"redirect", "tproxy", false},
		{"tproxy", "redirect", true},
		{"redirect", "tproxy", true},
	} {
		name := tc.from + "-" + tc.to
		var setup func(t *testing.T, rc *netlab.Host)
		if tc.firewall {
			name += "-firewall"
			setup = func(t *testing.T, rc *netlab.Host) { inputFirewall(t, rc, "7001, 9001, 8080") }
		}
		t.Run(name, func(t *testing.T) {
			rw := startHeldWebOn(t, tc.from, setup)
			rc, ctx := rw.rc, rw.ctx
			web := fmt.Sprintf("  - {name: web, listen: \"0.0.0.0:7001\", mode: %s, capture: {dst: [%s], ports: \"9001, 8080\", install: true}}\n", tc.to, rw.srvNet)
			reloadRelay(t, ctx, rc, rw.logPath, "rc", "admin: {listen: off}\nlisteners:\n"+web+rw.other)
			waitCapture(t, rc, "halfway_web", "8080")
			if out, err := rc.Command(ctx, "ip", "-4", "route", "flush", "cache").CombinedOutput(); err != nil {
				t.Fatalf("ip route flush cache: %v %s", err, out)
			}
			if err := echoOnce(rw.held, "after web changed its mode"); err != nil {
				out, _ := rc.Command(ctx, "nft", "list", "ruleset").CombinedOutput()
				t.Errorf("the flow web took as a %s listener: %v; ruleset:\n%s", tc.from, err, out)
			}
			server := rw.lab.Host("server")
			serveSeenFrom(t, server, ":8080")
			out, err := rw.lab.Host("client").Command(ctx, "curl", "-sS", "--max-time", "10", "http://"+server.AddrPort(8080)+"/").CombinedOutput()
			// Split at rc: the server sees rc's address on its link.
			if want := "seen from " + rc.Ifaces()[1].Addr4.Addr().String() + ":"; err != nil || !strings.Contains(string(out), want) {
				t.Errorf("a new flow through web, now %s: %v: %s (want %q)", tc.to, err, out, want)
			}
			rw.held.Close()
			for i := 0; ; i++ {
				out, _ := rc.Command(ctx, "nft", "list", "table", "inet", "halfway_web").CombinedOutput()
				if !strings.Contains(string(out), "chain kept") {
					break
				}
				if i > 200 {
					t.Fatalf("what web's table kept for its old flow stayed after it:\n%s", out)
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err := rw.stop(); err != nil {
				t.Errorf("the relay's stop: %v", err)
			}
			wantNoCaptureLeft(t, ctx, rc, "after the stop")
		})
	}
}

// inputFirewall installs on h, until the test ends, the input firewall
// many hosts have: policy drop, accepting tracked flows, loopback, and new
// flows to ports.
func inputFirewall(t *testing.T, h *netlab.Host, ports string) {
	t.Helper()
	nft := h.Command(context.Background(), "nft", "-f", "-")
	nft.Stdin = strings.NewReader(fmt.Sprintf("table inet hwfirewall {\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\t\tct state established,related accept\n\t\tiif lo accept\n\t\tct state new tcp dport { %s } accept\n\t}\n}\n", ports))
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("install the input firewall: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := h.Command(context.Background(), "nft", "delete", "table", "inet", "hwfirewall").CombinedOutput(); err != nil {
			t.Errorf("remove the input firewall: %v %s", err, out)
		}
	})
}

// TestCaptureReplacedRemovedKeepsMark: web (mark 1, table 100) is
// replaced under its name by one with mark 2 and table 101 while its flow
// is held; the next reload removes the successor, which had no flow. The
// first web's flow still needs the table, and a mark its own policy route
// delivers: the table is rebuilt from its rules. The table kept the
// successor's rules, which mark with 2, whose route went with it, and
// the flow's packets passed the relay by.
func TestCaptureReplacedRemovedKeepsMark(t *testing.T) {
	requireTools(t, "nft")
	labtest.RequireRoot(t)
	rw := startHeldWeb(t)
	rc, ctx := rw.rc, rw.ctx
	web2 := fmt.Sprintf("  - {name: web, listen: \"0.0.0.0:7001\", mode: tproxy, capture: {dst: [%s], ports: \"9001\", mark: 2, table: 101, install: true}}\n", rw.srvNet)
	reloadRelay(t, ctx, rc, rw.logPath, "rc", "admin: {listen: off}\nlisteners:\n"+web2+rw.other)
	waitCapture(t, rc, "halfway_web", "mark set 0x00000002")
	if err := echoOnce(rw.held, "after web's mark changed"); err != nil {
		t.Fatalf("the first web's flow, web replaced: %v", err)
	}
	reloadRelay(t, ctx, rc, rw.logPath, "rc", "admin: {listen: off}\nlisteners:\n"+rw.other)
	// The flow's socket keeps the route its packets came by (TCP's early
	// demux) until a routing change anywhere in the namespace: make one.
	if out, err := rc.Command(ctx, "ip", "-4", "route", "flush", "cache").CombinedOutput(); err != nil {
		t.Fatalf("ip route flush cache: %v %s", err, out)
	}
	if err := echoOnce(rw.held, "after web's successor went"); err != nil {
		out, _ := rc.Command(ctx, "nft", "list", "ruleset").CombinedOutput()
		rules, _ := rc.Command(ctx, "ip", "-4", "rule", "show").CombinedOutput()
		t.Errorf("the first web's flow, its successor removed: %v; ruleset:\n%s\nrules:\n%s", err, out, rules)
	}
	rw.held.Close()
	rw.waitTableGone(t)
	if err := rw.stop(); err != nil {
		t.Errorf("the relay's stop: %v", err)
	}
	wantNoCaptureLeft(t, ctx, rc, "after the last flow and a stop")
}
