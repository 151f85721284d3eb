package relay

import (
	"os"
	goruntime "runtime"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"halfway/netlab/labtest"
)

// TestConfigCongestionNotAllowed: a congestion control the kernel has but
// will not let this relay choose (not in
// net.ipv4.tcp_allowed_congestion_control, and no CAP_NET_ADMIN) is a
// configuration error, as fixed buffers without the capability are: the
// relay would start, and then every dial of the leg fail while its
// accepted connections silently kept the default.
func TestConfigCongestionNotAllowed(t *testing.T) {
	labtest.RequireRoot(t)
	list := func(name string) []string {
		b, err := os.ReadFile("/proc/sys/net/ipv4/" + name)
		if err != nil {
			t.Skipf("skipped: %v", err)
		}
		return strings.Fields(string(b))
	}
	allowed := list("tcp_allowed_congestion_control")
	name := ""
	for _, cc := range list("tcp_available_congestion_control") {
		if !slices.Contains(allowed, cc) {
			name = cc
			break
		}
	}
	if name == "" {
		t.Skip("skipped: every available congestion control is allowed here")
	}
	cfg := "legs: {relay: {congestion: " + name + "}}\nlisteners:\n" +
		`  - {name: a, listen: "127.0.0.1:1080", protocols: [socks5], allow_clients: ["10.0.0.0/8"], allow_destinations: ["10.0.0.0/8"]}` + "\n"
	if _, err := ParseConfig([]byte(cfg)); err != nil {
		t.Fatalf("with CAP_NET_ADMIN: %v", err)
	}
	var perr error
	withoutNetAdmin(t, func() { _, perr = ParseConfig([]byte(cfg)) })
	if perr == nil || !strings.Contains(perr.Error(), "legs.relay.congestion") {
		t.Errorf("without CAP_NET_ADMIN, congestion %s (not in %v): %v, want legs.relay.congestion refused", name, allowed, perr)
	}
}

// withoutNetAdmin runs f on a thread of its own without CAP_NET_ADMIN in
// its effective set; the thread ends with f.
func withoutNetAdmin(t *testing.T, f func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		goruntime.LockOSThread() // never unlocked: the thread goes with the goroutine
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- err
			return
		}
		data[unix.CAP_NET_ADMIN/32].Effective &^= 1 << (unix.CAP_NET_ADMIN % 32)
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- err
			return
		}
		f()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatalf("dropping CAP_NET_ADMIN: %v", err)
	}
}
