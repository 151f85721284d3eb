package relay_test

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestMPTCPFirstSubflowGone: an MPTCP client with two subflows loses its
// first one (reset: its path went away); the flow goes on over the join,
// and the flow status counts the one subflow left.
func TestMPTCPFirstSubflowGone(t *testing.T) {
	m := startMPTCP(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := m.dial(t, ctx, 9000, true)
	defer c.Close()
	if !m.sawTwoSubflows(t) {
		t.Fatal("the flow never showed two active subflows on the client leg")
	}
	first := m.client.Ifaces()[0].Addr4.Addr().String()
	if out, err := m.client.Command(ctx, "ss", "-K", "-tn", "state", "established", "src", first, "dport", "= :1080").CombinedOutput(); err != nil {
		t.Fatalf("ss -K: %v %s", err, out)
	}
	// rc's kernel closes its side of the subflow on the client's reset.
	for {
		out, err := m.rc.Command(ctx, "ss", "-tnH", "state", "established", "sport", "= :1080").CombinedOutput()
		if err != nil {
			t.Fatalf("ss: %v %s", err, out)
		}
		if lines := strings.TrimSpace(string(out)); lines != "" && !strings.Contains(lines, "\n") {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("rc still has these subflows:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, f := range m.flows(t) {
		if f.ClientMPTCP == nil || !f.ClientMPTCP.Active || f.ClientMPTCP.Subflows != 1 {
			t.Errorf("flow status %+v, client leg %+v: want an active MPTCP client leg with 1 subflow", f, f.ClientMPTCP)
		}
	}
	// The flow goes on over the join.
	if err := roundTripOn(c, 1<<20); err != nil {
		t.Fatal(err)
	}
}
