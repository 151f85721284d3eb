package relay

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"halfway/netlab/labtest"
)

// TestCaptureIPv6Flipped: IPv6 turned on or off in the namespace
// (net.ipv6.conf.all.disable_ipv6) between a capture's install and its
// removal changes nothing of what the removal takes away: what the
// install added, and only that. IPv6 was read again at the removal: on,
// it deleted -6 policy routes that were never added and failed; off, it
// left the -6 policy rule behind.
func TestCaptureIPv6Flipped(t *testing.T) {
	for _, tool := range []string{"nft", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s: %v", tool, err)
		}
	}
	labtest.RequireRoot(t)
	for _, tc := range []struct{ install, removal bool }{
		{install: false, removal: true},
		{install: true, removal: false},
	} {
		t.Run(fmt.Sprintf("ipv6 %v then %v", tc.install, tc.removal), func(t *testing.T) {
			labtest.InNetns(t, func() {
				setIPv6(t, tc.install)
				var routes policyRoutes
				ln := &ListenerConfig{Name: "web", Listen: "0.0.0.0:7000", Mode: "tproxy", Capture: &CaptureConfig{Ports: "8080", Install: true}}
				remove, err := installCapture(ln, &routes)
				if err != nil {
					t.Fatal(err)
				}
				setIPv6(t, tc.removal)
				if err := remove(); err != nil {
					t.Errorf("removal: %v", err)
				}
				setIPv6(t, true) // so that ip -6 shows its routes
				for _, c := range [][]string{{"-4", "rule", "show"}, {"-6", "rule", "show"}, {"-4", "route", "show", "table", "100"}, {"-6", "route", "show", "table", "100"}} {
					out, err := exec.Command("ip", c...).CombinedOutput()
					if s := string(out); strings.Contains(s, "FIB table does not exist") {
						continue // never made: no route in it
					} else if err != nil || strings.Contains(s, "fwmark") || c[1] == "route" && strings.TrimSpace(s) != "" {
						t.Errorf("after the removal, ip %s: %v\n%s", strings.Join(c, " "), err, s)
					}
				}
			})
		})
	}
}

// setIPv6 turns IPv6 on or off in the calling thread's namespace.
func setIPv6(t *testing.T, on bool) {
	t.Helper()
	v := map[bool]string{true: "0", false: "1"}[on]
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/all/disable_ipv6", []byte(v), 0o644); err != nil {
		t.Fatalf("disable_ipv6 = %s: %v", v, err)
	}
	if ipv6On() != on {
		t.Fatalf("disable_ipv6 = %s: IPv6 on is still %v", v, !on)
	}
}
