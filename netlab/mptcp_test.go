package netlab_test

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"halfway/netlab/labtest"
	"halfway/sockopt"
)

// TestMPTCPLimits: a node's mptcp limits reach its path manager, an
// explicit 0 too (a host that takes no extra subflows), and a node
// without them gets the documented default, 8.
func TestMPTCPLimits(t *testing.T) {
	lab := labtest.Start(t, `
name: mplimits
nodes:
  - {name: a, mptcp: {subflows: 0, add_addr_accepted: 0}}
  - {name: b, mptcp: {subflows: 3}}
links:
  - {a: a, b: b}
`)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, w := range []struct{ host, want string }{
		{"a", "add_addr_accepted 0 subflows 0"},
		{"b", "add_addr_accepted 8 subflows 3"},
	} {
		out, err := lab.Host(w.host).Command(ctx, "ip", "mptcp", "limits", "show").CombinedOutput()
		if err != nil {
			t.Fatalf("%s: ip mptcp limits show: %v %s", w.host, err, out)
		}
		if got := strings.Join(strings.Fields(string(out)), " "); got != w.want {
			t.Errorf("%s: ip mptcp limits show: %q, want %q", w.host, got, w.want)
		}
	}
}

// TestMPTCPEndpointsIPv6: in a topology with IPv6, a client whose second
// link is an MPTCP subflow endpoint opens the extra subflow for its IPv6
// connections as for its IPv4 ones.
func TestMPTCPEndpointsIPv6(t *testing.T) {
	lab := labtest.Start(t, `
name: mpv6
ipv6: true
nodes:
  - {name: client, mptcp: {endpoints: subflow}}
  - {name: server, mptcp: {}}
links:
  - {a: client, b: server, delay: 2ms}
  - {a: client, b: server, delay: 4ms}
`)
	client, server := lab.Host("client"), lab.Host("server")
	var ln net.Listener
	if err := server.Do(func() (err error) {
		var lc net.ListenConfig
		lc.SetMultipathTCP(true)
		ln, err = lc.Listen(context.Background(), "tcp", ":7000")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { // echo
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Each subflow leaves by its own link: from the second link's
	// address, by the second link.
	second := client.Ifaces()[1]
	for _, w := range []struct{ to, from string }{
		{server.Addr().String(), second.Addr4.Addr().String()},
		{server.Addr6().String(), second.Addr6.Addr().String()},
	} {
		out, err := client.Command(ctx, "ip", "route", "get", w.to, "from", w.from).CombinedOutput()
		if err != nil || !strings.Contains(string(out), " dev "+second.Name+" ") {
			t.Errorf("ip route get %s from %s: %v %s, want dev %s", w.to, w.from, err, out, second.Name)
		}
	}
	for _, addr := range []string{server.AddrPort(7000), net.JoinHostPort(server.Addr6().String(), "7000")} {
		d := &net.Dialer{}
		d.SetMultipathTCP(true)
		nc, err := client.DialWith(ctx, d, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c := nc.(*net.TCPConn)
		// Data both ways: the client's path manager opens subflows once
		// the connection is fully established.
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
			t.Fatal(err)
		}
		var st sockopt.MPTCPState
		for range 200 { // up to 4 s for the path manager's join
			if st, err = sockopt.MPTCP(c); err != nil || st.Subflows == 2 {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil || !st.Active || st.Subflows != 2 {
			out, _ := client.Command(ctx, "ip", "mptcp", "endpoint", "show").CombinedOutput()
			t.Errorf("connection to %s: MPTCP %+v %v, want 2 subflows; client's endpoints:\n%s", addr, st, err, out)
		}
		c.Close()
	}
}
