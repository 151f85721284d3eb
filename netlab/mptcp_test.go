package netlab_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"halfway/netlab/labtest"
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
