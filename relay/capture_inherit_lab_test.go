package relay_test

import (
	"context"
	"io"
	"testing"
	"time"

	"halfway/netlab/labtest"
)

// TestCaptureInheritedDrainQueues: during the drain of a relay whose
// capturing listener is on a socket the service manager passed (and
// keeps, as this test does), a new client waits in the socket's queue and
// the next start serves it, as socket activation promises for restarts.
// The drain kept the listener accepting, to refuse every new flow with a
// reset: needed for a socket of the relay's own, which would otherwise
// close and let the TPROXY rule pass flows by, but not for this one. What
// the client sends while no relay runs and no capture is installed is
// not lost either.
func TestCaptureInheritedDrainQueues(t *testing.T) {
	requireTools(t, "nft")
	labtest.RequireRoot(t)
	lab := labtest.Start(t, chainTopo)
	rc, server, client := lab.Host("rc"), lab.Host("server"), lab.Host("client")
	f := systemdSocket(t, rc, "0.0.0.0:7000")
	logPath, stop := runRelayWith(t, rc, "first", captureServerConfig(server), f)
	waitCapture(t, rc, "halfway_web", "7000")
	serveEchoOn(t, server, 8080)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	held, err := client.Dial(ctx, "tcp", server.AddrPort(8080))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := echoOnce(held, "held"); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	waitLogged(t, logPath, "msg=draining")
	queued, err := client.Dial(ctx, "tcp", server.AddrPort(8080))
	if err != nil {
		t.Fatalf("a client during the drain: %v", err)
	}
	defer queued.Close()
	if _, err := queued.Write([]byte("queued")); err != nil {
		t.Fatal(err)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("the first relay's stop: %v", err)
	}
	// Between the relay's exit, which removed the capture, and its next
	// start, the queued client sends more, after a routing change that
	// drops the socket's cached route. Seen on 6.18: the segments do not
	// reach the server to be reset (the kernel, having found a local
	// socket for them, seems to drop rather than forward them), and the
	// client retransmits them once the next start has the capture back.
	if out, err := rc.Command(ctx, "ip", "route", "flush", "cache").CombinedOutput(); err != nil {
		t.Fatalf("ip route flush cache: %v: %s", err, out)
	}
	if _, err := queued.Write([]byte("+more")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // room for a reset to come back, if one does
	runRelayWith(t, rc, "second", captureServerConfig(server), f)
	queued.SetDeadline(time.Now().Add(20 * time.Second))
	b := make([]byte, len("queued+more"))
	if _, err := io.ReadFull(queued, b); err != nil || string(b) != "queued+more" {
		t.Errorf("a client that came during the drain, after the next start: %q, %v; want it served", b, err)
	}
}
