package relay_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"halfway/netlab/labtest"
	"halfway/socks5"
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

// TestMPTCPIPv6: an MPTCP client with two IPv6 paths reaches the server
// through rc's IPv6 MPTCP listener, whose listening subflow takes
// legs.client.rto_min: the flow's client leg shows both subflows, and
// every byte arrives.
func TestMPTCPIPv6(t *testing.T) {
	labtest.RequireRoot(t)
	lab := labtest.Start(t, strings.Replace(mptcpTopo, "name: mptcp", "name: mptcp6\nipv6: true", 1))
	m := &mptcpLab{lab: lab, client: lab.Host("client"), rc: lab.Host("rc"), server: lab.Host("server")}
	srvNet := m.server.Ifaces()[0].Addr6.Masked()
	m.cfg = fmt.Sprintf(`
admin: {listen: "127.0.0.1:9190"}
legs: {client: {rto_min: 20ms}}
listeners:
  - {name: socks, listen: "[::]:1080", protocols: [socks5], mptcp: true, allow_clients: ["fd00::/8"], allow_destinations: ["%s"]}
`, srvNet)
	m.log, _ = runRelay(t, m.rc, "rc", m.cfg)
	m.socks = net.JoinHostPort(m.rc.Addr6().String(), "1080")
	waitAccept(t, m.client, m.socks)
	ln, err := m.server.Listen("tcp", ":9000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveSHA(ln)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := dialMPTCP(t, ctx, m.client, m.socks)
	dst := netip.AddrPortFrom(m.server.Addr6(), 9000)
	if _, err := socks5.ClientHandshake(c, c, socks5.Addr{IP: dst.Addr(), Port: dst.Port()}, "", ""); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- roundTripOn(c, 2<<20) }()
	sawTwo := m.sawTwoSubflows(t)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !sawTwo {
		b, _ := os.ReadFile(m.log)
		t.Errorf("the flow never showed two active subflows on the client leg; rc's log:\n%s", b)
	}
	// The IPv6 listening subflow took legs.client.rto_min.
	want := `halfway_mptcp_subflow_options_total{result="set"} 1`
	if body := scrapeMetrics(t, m.rc, 9190); !strings.Contains(body, want) {
		t.Errorf("metrics lack %s:\n%s", want, grepLines(body, "halfway_mptcp_subflow_options_total"))
	}
}
