// Package labtest brings netlab labs up inside Go tests:
//
//	func TestThroughLab(t *testing.T) {
//		lab := labtest.Start(t, `
//	name: line
//	nodes: [client, server]
//	links: [{a: client, b: server, delay: 5ms}]`)
//		ln, err := lab.Host("server").Listen("tcp", ":8080")
//		...
//	}
//
// Start skips the test when not root and always removes the lab when the
// test ends, also when it fails.
package labtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"halfway/netlab"
)

// RequireRoot skips the test unless it runs as root.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("skipped: needs root to create network namespaces (run `make test` as root)")
	}
}

// Start parses topology YAML, gives the lab a unique name (so tests of
// several packages can run at once), brings it up with in-process link
// emulators and registers its removal with tb.Cleanup.
func Start(tb testing.TB, topoYAML string) *netlab.Lab {
	tb.Helper()
	RequireRoot(tb)
	t, err := netlab.ParseTopology([]byte(topoYAML))
	if err != nil {
		tb.Fatalf("topology: %v", err)
	}
	return StartTopology(tb, t)
}

// StartTopology is Start for a topology built in Go.
func StartTopology(tb testing.TB, t *netlab.Topology) *netlab.Lab {
	tb.Helper()
	RequireRoot(tb)
	name := t.Name
	if len(name) > 16 {
		name = name[:16]
	}
	t.Name = fmt.Sprintf("t%06x-%s", rand.Uint32()&0xffffff, name)
	lab, err := netlab.Up(context.Background(), t, netlab.Options{})
	if err != nil {
		tb.Fatalf("lab up: %v", err)
	}
	tb.Cleanup(func() {
		if err := lab.Close(); err != nil {
			tb.Errorf("lab %s down: %v", t.Name, err)
		}
		if left := netlab.Remains(t.Name); len(left) > 0 {
			tb.Errorf("lab %s left behind: %v", t.Name, left)
		}
	})
	return lab
}

// InNetns runs f on a thread of its own inside a new network namespace
// whose loopback is up, and returns when f does. Sockets f makes stay in
// that namespace (and keep it alive while open); anything else the test
// runs, on other threads, is in the host's. The namespace takes the host's
// sysctl defaults but none of its state: routes, links, TCP metrics. f
// runs on a goroutine of its own: a tb.Fatal there stops f, and InNetns
// then stops the test.
func InNetns(tb testing.TB, f func()) {
	tb.Helper()
	RequireRoot(tb)
	done := make(chan any, 1)
	go func() {
		returned := false
		defer func() {
			p := recover()
			if p == nil && !returned {
				p = "it stopped early (a FailNow)" // the failure is already reported
			}
			done <- p
		}()
		// The thread ends with this goroutine unless it is back home.
		runtime.LockOSThread()
		host, err := netns.Get()
		if err != nil {
			panic(fmt.Sprintf("current network namespace: %v", err))
		}
		defer host.Close()
		ns, err := netns.New() // this thread moves into it
		if err != nil {
			panic(fmt.Sprintf("new network namespace: %v", err))
		}
		defer ns.Close()
		defer func() {
			if netns.Set(host) == nil {
				runtime.UnlockOSThread()
			}
		}()
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			panic(fmt.Sprintf("loopback up: %v", err))
		}
		f()
		returned = true
	}()
	if p := <-done; p != nil {
		tb.Fatalf("in a fresh network namespace: %v", p)
	}
}
