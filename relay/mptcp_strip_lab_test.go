package relay_test

import (
	"bytes"
	"context"
	"halfway/relay"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// TestMPTCPStrippedAfterData: a middlebox between an MPTCP client and rc
// strips the MPTCP options of the client's data segments once the flow
// has started: rc's kernel falls back to TCP on that leg in the middle
// of the flow (MPTcpExtDssFallback), and the client on the echo that
// comes back without them. The metrics and the flow's log line call the
// client leg a fallback, as its status does.
func TestMPTCPStrippedAfterData(t *testing.T) {
	m := startMPTCP(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// One subflow: a connection with a join cannot fall back.
	if out, err := m.client.Command(ctx, "ip", "mptcp", "endpoint", "flush").CombinedOutput(); err != nil {
		t.Fatalf("ip mptcp endpoint flush: %v %s", err, out)
	}
	var ln net.Listener // an echo server
	if err := m.server.Do(func() (err error) { ln, err = net.Listen("tcp", ":9002"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go relay.AcceptEach(ln, func(c net.Conn) {
		defer c.Close()
		_, _ = io.Copy(c, c)
	})
	c := m.dial(t, ctx, 9002, true)
	defer c.Close()
	if fs := m.flows(t); len(fs) != 1 || fs[0].ClientMPTCP == nil || !fs[0].ClientMPTCP.Active {
		t.Fatalf("flows %+v: want one with an active MPTCP client leg", fs)
	}
	// From now on the client's full-sized segments reach rc without
	// their MPTCP options (overwritten with NOPs).
	nft := m.rc.Command(ctx, "nft", "-f", "-")
	nft.Stdin = strings.NewReader(`table inet strip {
	chain pre {
		type filter hook prerouting priority raw
		tcp dport 1080 meta length > 1000 reset tcp option mptcp
	}
}
`)
	if out, err := nft.CombinedOutput(); err != nil {
		t.Skipf("skipped: nft cannot reset TCP options here: %v %s", err, out)
	}
	// One full-sized segment, echoed at once: the client has nothing
	// left to retransmit when the echo, now without MPTCP options, makes
	// it fall back too. (With more in flight, or no answer, it retransmits
	// at the MPTCP level what rc's kernel, fallen back, takes as new
	// bytes: Linux 6.18 then corrupts the stream.)
	msg := bytes.Repeat([]byte("x"), 1200)
	_, err := c.Write(msg)
	if err == nil {
		_, err = io.ReadFull(c, make([]byte, len(msg)))
	}
	if err != nil {
		t.Fatal(err)
	}
	// The flow status, read live, shows the fallback.
	if fs := m.flows(t); len(fs) != 1 || fs[0].ClientMPTCP == nil || fs[0].ClientMPTCP.Active {
		t.Fatalf("flows %+v: want one whose client leg fell back to TCP", fs)
	}
	c.Close()
	for { // until the flow has ended
		if b, _ := os.ReadFile(m.log); strings.Contains(string(b), "dst="+m.server.AddrPort(9002)) {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the flow never ended")
		}
		time.Sleep(20 * time.Millisecond)
	}
	body := scrapeMetrics(t, m.rc, 9190)
	want := `halfway_mptcp_legs_total{leg="client",listener="socks",result="fallback"} 1`
	if !strings.Contains(body, want) {
		t.Errorf("metrics lack %s:\n%s", want, grepLines(body, "halfway_mptcp_legs_total"))
	}
	if b, _ := os.ReadFile(m.log); !strings.Contains(string(b), "client_mptcp=fallback") {
		t.Errorf("the flow's log line does not call the client leg a fallback:\n%s", b)
	}
}
