package relay_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

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
	lab := labtest.Start(t, chainTopo)
	rc, server, client := lab.Host("rc"), lab.Host("server"), lab.Host("client")
	srvNet := server.Ifaces()[0].Addr4.Masked()
	tproxy := fmt.Sprintf("admin: {listen: off}\nlisteners:\n  - {name: web, listen: \"0.0.0.0:7001\", mode: tproxy, capture: {dst: [%s], ports: \"9001\", install: true}}\n", srvNet)
	explicit := fmt.Sprintf("admin: {listen: off}\nlisteners:\n  - {name: web, listen: \"0.0.0.0:7001\", allow_clients: [10.77.0.0/16], allow_destinations: [%s]}\n", srvNet)
	logPath, _ := runRelay(t, rc, "rc", tproxy)
	waitCapture(t, rc, "halfway_web", "7001")
	serveEchoOn(t, server, 9001)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	held, err := client.Dial(ctx, "tcp", server.AddrPort(9001))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := echoOnce(held, "before"); err != nil {
		t.Fatal(err)
	}
	reloadRelay(t, ctx, rc, logPath, "rc", explicit)
	if err := echoOnce(held, "after the reload"); err != nil {
		t.Errorf("the flow of the replaced tproxy listener broke: %v", err)
	}
	held.Close()
	for i := 0; ; i++ {
		out, _ := rc.Command(ctx, "nft", "list", "tables").CombinedOutput()
		if !strings.Contains(string(out), "halfway_web") {
			break
		}
		if i > 200 {
			t.Fatalf("web's table stayed after its last flow:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestStopCleanupFailsRetired: a stop that cannot remove the capture of
// a listener a reload removed while it still had a flow (here, someone
// deleted its table first) exits with an error, as it does for a
// listener still configured (TestStopCleanupFails). The removal ran
// when the flow ended, and its error was only logged: exit status 0.
func TestStopCleanupFailsRetired(t *testing.T) {
	requireTools(t, "nft")
	labtest.RequireRoot(t)
	lab := labtest.Start(t, chainTopo)
	rc, server, client := lab.Host("rc"), lab.Host("server"), lab.Host("client")
	srvNet := server.Ifaces()[0].Addr4.Masked()
	other := "  - {name: other, listen: \"0.0.0.0:7002\", mode: tproxy}\n"
	logPath, stop := runRelay(t, rc, "rc", fmt.Sprintf("admin: {listen: off}\nlisteners:\n  - {name: web, listen: \"0.0.0.0:7001\", mode: tproxy, capture: {dst: [%s], ports: \"9001\", install: true}}\n", srvNet)+other)
	waitCapture(t, rc, "halfway_web", "7001")
	serveEchoOn(t, server, 9001)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	held, err := client.Dial(ctx, "tcp", server.AddrPort(9001))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := echoOnce(held, "before"); err != nil {
		t.Fatal(err)
	}
	reloadRelay(t, ctx, rc, logPath, "rc", "admin: {listen: off}\nlisteners:\n"+other)
	if out, err := rc.Command(ctx, "nft", "delete", "table", "inet", "halfway_web").CombinedOutput(); err != nil {
		t.Fatalf("nft delete table (the removed listener's, kept for its flow): %v %s", err, out)
	}
	if err := stop(); err == nil {
		t.Error("the relay stopped with exit status 0 though it could not remove the capture rules of a removed listener")
	}
}
