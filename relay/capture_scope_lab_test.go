package relay_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"halfway/netlab/labtest"
)

// TestCaptureOnlyAskedPorts: a tproxy listener on 0.0.0.0:7000 that
// captures port 8080 leaves a client's flow to another host's port 7000
// alone. Its rule for the relay's own flows ("socket transparent 1")
// looked sockets up by the packet's destination, and the listener's
// wildcard socket matched every address on its port: such flows were
// marked, delivered to the listener and relayed.
func TestCaptureOnlyAskedPorts(t *testing.T) {
	requireTools(t, "nft", "curl")
	labtest.RequireRoot(t)
	lab := labtest.Start(t, chainTopo)
	rc, server, client := lab.Host("rc"), lab.Host("server"), lab.Host("client")
	logPath, _ := runRelay(t, rc, "rc", captureServerConfig(server))
	waitCapture(t, rc, "halfway_web", "7000")
	serveSeenFrom(t, server, ":7000")
	out, err := client.Command(context.Background(), "curl", "-sS", "--max-time", "10", "http://"+server.AddrPort(7000)+"/").CombinedOutput()
	if want := "seen from " + client.Ifaces()[0].Addr4.Addr().String() + ":"; err != nil || !strings.Contains(string(out), want) {
		t.Errorf("a flow to port 7000, which the listener does not capture: %v: %s (want %q: not relayed)", err, out, want)
	}
	if b, _ := os.ReadFile(logPath); strings.Contains(string(b), "msg=flow") {
		t.Errorf("the relay took a flow it was not asked to capture:\n%s", grepLines(string(b), "msg=flow"))
	}
}
