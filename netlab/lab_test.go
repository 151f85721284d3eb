package netlab_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"halfway/netlab"
	"halfway/netlab/labtest"
)

const lineYAML = `
name: line
ipv6: true
nodes: [client, mid, server]
links:
  - {a: client, b: mid, delay: 10ms}
  - {a: mid, b: server, delay: {ab: 4ms, ba: 6ms}}
`

// TestLineReachability brings up a 3-host line and checks that every host
// reaches every other over IPv4 and IPv6, that the RTT has the configured
// order of magnitude, and that names resolve through the lab's hosts file.
func TestLineReachability(t *testing.T) {
	lab := labtest.Start(t, lineYAML)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// An echo server on every host.
	for _, h := range lab.Hosts() {
		ln, err := h.Listen("tcp", ":7")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go serveEcho(ln)
	}
	for _, from := range lab.Hosts() {
		for _, to := range lab.Hosts() {
			if from == to {
				continue
			}
			for _, addr := range []string{to.AddrPort(7), net.JoinHostPort(to.Addr6().String(), "7")} {
				c, err := from.Dial(ctx, "tcp", addr)
				if err != nil {
					t.Errorf("%s → %s %s: %v", from.Name, to.Name, addr, err)
					continue
				}
				if err := echoOnce(c); err != nil {
					t.Errorf("%s → %s %s: %v", from.Name, to.Name, addr, err)
				}
				c.Close()
			}
		}
	}

	// client–server RTT is 2·10 + 4 + 6 = 30 ms. Only the order of magnitude
	// is checked here; accuracy is measured by `halfway bench lab`.
	start := time.Now()
	c, err := lab.Host("client").Dial(ctx, "tcp", lab.Host("server").AddrPort(7))
	rtt := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if rtt < 20*time.Millisecond || rtt > 3*time.Second {
		t.Errorf("client→server connect took %v; configured RTT is 30ms", rtt)
	}

	// curl by name inside a host: ip netns exec shows it the lab's hosts file.
	ln, err := lab.Host("server").Listen("tcp", ":8080")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from server, you are %s", r.RemoteAddr)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("skipped the curl check: curl is not installed (make test installs it)")
	}
	out, err := lab.Host("client").Command(ctx, "curl", "-sS", "--max-time", "10", "http://server:8080/").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "hello from server, you are ") {
		t.Errorf("curl http://server:8080/ from client: %v: %s", err, out)
	}
}

func serveEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

func echoOnce(c net.Conn) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "ping" {
		return fmt.Errorf("echo returned %q", buf)
	}
	return nil
}

// TestByteExact64MB sends 64 MB each way at once across two shaped, lossy
// links (so GSO frames are cut, queued, dropped and retransmitted) and
// checks SHA-256 on both ends.
func TestByteExact64MB(t *testing.T) {
	lab := labtest.Start(t, `
name: exact
nodes: [client, mid, server]
links:
  - {a: client, b: mid, delay: 2ms, rate: 1gbit, loss: 0.2%, queue: 2MB}
  - {a: mid, b: server, delay: 3ms, rate: 800mbit, jitter: 1ms}
sysctl:
  net.ipv4.tcp_rmem: "4096 131072 16777216"
  net.ipv4.tcp_wmem: "4096 131072 16777216"
`)
	const size = 64 << 20
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	ln, err := lab.Host("server").Listen("tcp", ":9000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		sum [32]byte
		n   int64
		err error
	}
	// Each side sends a seeded random stream and hashes what it receives.
	serverGot := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			serverGot <- result{err: err}
			return
		}
		defer c.Close()
		serverGot <- exchange(ctx, c.(*net.TCPConn), 2, size)
	}()
	c, err := lab.Host("client").Dial(ctx, "tcp", lab.Host("server").AddrPort(9000))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	clientGot := exchange(ctx, c.(*net.TCPConn), 1, size)
	sr := <-serverGot
	for _, r := range []struct {
		who  string
		res  result
		seed uint64
	}{{"client", clientGot, 2}, {"server", sr, 1}} {
		if r.res.err != nil {
			t.Fatalf("%s: %v", r.who, r.res.err)
		}
		want := sha256.Sum256(randomBytes(r.seed, size))
		if r.res.n != size || r.res.sum != want {
			t.Errorf("%s received %d bytes with SHA-256 %x; want %d bytes, %x", r.who, r.res.n, r.res.sum, size, want)
		}
	}
	stats, err := lab.LinkStats()
	if err != nil {
		t.Fatal(err)
	}
	if stats[0].AB.DropLoss == 0 || stats[0].AB.Packets <= stats[0].AB.RxFrames {
		t.Errorf("link 0 a→b neither lost nor segmented anything: %+v", stats[0].AB)
	}
}

// exchange sends size seeded random bytes, half-closes, and hashes what it
// receives until EOF, concurrently.
func exchange(ctx context.Context, c *net.TCPConn, seed uint64, size int) (res struct {
	sum [32]byte
	n   int64
	err error
}) {
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, werr = io.Copy(c, bytes.NewReader(randomBytes(seed, size))); werr == nil {
			werr = c.CloseWrite()
		}
	}()
	h := sha256.New()
	res.n, res.err = io.Copy(h, c)
	wg.Wait()
	res.err = errors.Join(res.err, werr)
	copy(res.sum[:], h.Sum(nil))
	return res
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// The helper tests below run in a child process of the test binary, so the
// parent can watch them fail or die and check what they leave behind.
const helperEnv = "HALFWAY_NETLAB_HELPER"

func TestHelperFailsOnPurpose(t *testing.T) {
	if os.Getenv(helperEnv) != "fail" {
		t.Skip("helper: runs only as a child of TestFailingTestCleansUp")
	}
	lab := labtest.Start(t, lineYAML)
	fmt.Printf("LAB=%s\n", lab.Topo.Name)
	t.Fatal("failing on purpose")
}

func TestHelperCrashes(t *testing.T) {
	if os.Getenv(helperEnv) != "crash" {
		t.Skip("helper: runs only as a child of TestCrashedOwnerIsSwept")
	}
	lab := labtest.Start(t, lineYAML)
	fmt.Printf("LAB=%s\n", lab.Topo.Name)
	// Keep a process inside a host, as a forgotten server would be.
	cmd := lab.Host("server").Command(context.Background(), "sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	fmt.Println("READY")
	time.Sleep(time.Minute) // the parent kills us with SIGKILL
}

func runHelper(t *testing.T, name, mode string, kill bool) (lab string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+name+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var seen strings.Builder
	buf := make([]byte, 4096)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		n, err := out.Read(buf)
		seen.Write(buf[:n])
		if kill && strings.Contains(seen.String(), "READY") {
			cmd.Process.Kill()
			break
		}
		if err != nil {
			break
		}
	}
	io.Copy(&seen, out)
	werr := cmd.Wait()
	if werr == nil {
		t.Fatalf("helper %s succeeded; want it to fail or die\n%s", name, seen.String())
	}
	for _, line := range strings.Split(seen.String(), "\n") {
		if v, ok := strings.CutPrefix(line, "LAB="); ok {
			lab = strings.TrimSpace(v)
		}
	}
	if lab == "" {
		t.Fatalf("helper %s never brought its lab up:\n%s", name, seen.String())
	}
	return lab
}

// TestFailingTestCleansUp runs a test that fails after bringing a lab up
// and checks that nothing of the lab is left.
func TestFailingTestCleansUp(t *testing.T) {
	labtest.RequireRoot(t)
	lab := runHelper(t, "TestHelperFailsOnPurpose", "fail", false)
	if left := netlab.Remains(lab); len(left) > 0 {
		t.Errorf("a failing test left behind: %v", left)
		netlab.Down(lab)
	}
}

// TestCrashedOwnerIsSwept kills a test process that holds a lab (and a
// process inside it) and checks that the next sweep removes all of it.
func TestCrashedOwnerIsSwept(t *testing.T) {
	labtest.RequireRoot(t)
	lab := runHelper(t, "TestHelperCrashes", "crash", true)
	if len(netlab.Remains(lab)) == 0 {
		t.Fatal("the killed process's lab vanished by itself; the test proves nothing")
	}
	if err := netlab.Sweep(); err != nil {
		t.Errorf("sweep: %v", err)
	}
	if left := netlab.Remains(lab); len(left) > 0 {
		t.Errorf("sweep left behind: %v", left)
		netlab.Down(lab)
	}
}

// TestNoLeaks brings labs up and down and checks that goroutines and file
// descriptors return to where they were.
func TestNoLeaks(t *testing.T) {
	labtest.RequireRoot(t)
	// Pipes come and go with other tests' child processes; everything else
	// (sockets, namespace handles, files) must return to where it was.
	countFDs := func() int {
		ents, _ := os.ReadDir("/proc/self/fd")
		n := 0
		for _, e := range ents {
			if l, _ := os.Readlink("/proc/self/fd/" + e.Name()); !strings.HasPrefix(l, "pipe:") {
				n++
			}
		}
		return n
	}
	settle := func(want func() bool) {
		for i := 0; i < 25 && !want(); i++ {
			time.Sleep(20 * time.Millisecond)
		}
	}
	var g0, fd0 int
	for i := 0; i < 4; i++ {
		// The first round creates what lives as long as the process (the
		// runtime's network poller): the baseline is taken after it.
		if i == 1 {
			settle(func() bool { return false })
			g0, fd0 = runtime.NumGoroutine(), countFDs()
		}
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			lab := labtest.Start(t, lineYAML)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			ln, err := lab.Host("server").Listen("tcp", ":7")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			// The test's own server connection is closed by the test: a FIN
			// still crossing the link when the lab goes away never arrives.
			accepted := make(chan net.Conn, 1)
			go func() {
				sc, err := ln.Accept()
				if err != nil {
					close(accepted)
					return
				}
				accepted <- sc
				io.Copy(sc, sc)
			}()
			c, err := lab.Host("client").Dial(ctx, "tcp", lab.Host("server").AddrPort(7))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := echoOnce(c); err != nil {
				t.Fatal(err)
			}
			if sc, ok := <-accepted; ok {
				defer sc.Close()
			}
		})
	}
	settle(func() bool { return runtime.NumGoroutine() <= g0 && countFDs() <= fd0 })
	if g, fd := runtime.NumGoroutine(), countFDs(); g > g0 || fd > fd0 {
		buf := make([]byte, 1<<20)
		t.Errorf("goroutines %d → %d, fds %d → %d\n%s", g0, g, fd0, fd, buf[:runtime.Stack(buf, true)])
	}
}

// TestSysctlDefaultsReachLinks checks that a topology's ".default." sysctls,
// which the kernel copies into an interface when it is created, are in
// force on the hosts' link interfaces, and that the other sysctls are too.
func TestSysctlDefaultsReachLinks(t *testing.T) {
	lab := labtest.Start(t, `
name: sysctl
nodes: [a, {name: b, sysctl: {net.ipv4.conf.default.arp_announce: "2"}}]
sysctl: {net.ipv4.conf.default.accept_local: "1", net.ipv4.conf.all.arp_ignore: "1"}
links: [{a: a, b: b}]
`)
	tests := []struct{ host, key, want string }{
		{"a", "ipv4/conf/eth0/accept_local", "1"},
		{"b", "ipv4/conf/eth0/accept_local", "1"},
		{"b", "ipv4/conf/eth0/arp_announce", "2"},
		{"a", "ipv4/conf/eth0/arp_announce", "0"},
		{"a", "ipv4/conf/all/arp_ignore", "1"},
	}
	for _, tt := range tests {
		var got []byte
		err := lab.Host(tt.host).Do(func() (err error) {
			got, err = os.ReadFile("/proc/sys/net/" + tt.key)
			return err
		})
		if err != nil {
			t.Errorf("%s: %s: %v", tt.host, tt.key, err)
			continue
		}
		if v := strings.TrimSpace(string(got)); v != tt.want {
			t.Errorf("%s: %s = %s, want %s", tt.host, tt.key, v, tt.want)
		}
	}
}

// TestUpFailsClean: a lab that cannot come up (a sysctl a namespace does
// not have) returns the error, and leaves nothing behind.
func TestUpFailsClean(t *testing.T) {
	labtest.RequireRoot(t)
	name := fmt.Sprintf("upfail%04x", rand.Uint32()&0xffff)
	topo, err := netlab.ParseTopology([]byte("name: " + name + "\nnodes: [a, b]\nsysctl: {net.ipv4.no_such_knob: \"1\"}\nlinks: [{a: a, b: b}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	var upErr error
	func() {
		defer func() {
			if p := recover(); p != nil {
				upErr = fmt.Errorf("panic: %v", p)
			}
		}()
		var lab *netlab.Lab
		if lab, upErr = netlab.Up(context.Background(), topo, netlab.Options{}); upErr == nil {
			lab.Close()
			upErr = errors.New("came up")
		}
	}()
	if upErr == nil || strings.HasPrefix(upErr.Error(), "panic") || upErr.Error() == "came up" {
		t.Errorf("Up with a sysctl no namespace has: %v, want its error", upErr)
	}
	if left := netlab.Remains(name); len(left) > 0 {
		t.Errorf("left behind: %v", left)
		netlab.Down(name)
	}
}
