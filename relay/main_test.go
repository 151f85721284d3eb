package relay

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	goruntime "runtime"
	"strings"
	"testing"
	"time"

	"halfway/datapath"
)

// TestMain checks, after every test of the package has run, that the
// relays they started left no goroutine and no descriptor behind.
func TestMain(m *testing.M) {
	// What lives as long as the process comes first: the runtime's
	// network poller, and what running a command keeps open.
	if ln, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		ln.Close()
	}
	_ = exec.Command("true").Run()
	g0, fd0 := goruntime.NumGoroutine(), countFDs()
	code := m.Run()
	// Fuzzing (-fuzz) leaves the engine's signal handler running.
	if fuzz := flag.Lookup("test.fuzz"); code == 0 && (fuzz == nil || fuzz.Value.String() == "") {
		if err := checkLeaks(g0, fd0); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// countFDs counts the process's descriptors, but for the sockmap
// program's (data_path: sockmap), which stay loaded for the process's life.
func countFDs() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	n := len(ents) - 1 // the directory's own descriptor
	for _, e := range ents {
		if l, _ := os.Readlink("/proc/self/fd/" + e.Name()); strings.HasPrefix(l, "anon_inode:bpf") || l == "anon_inode:btf" {
			n--
		}
	}
	return n
}

// checkLeaks waits a few seconds for what is still winding down (the data
// path's epoll sets close after half a second without flows), then
// compares with the counts from before the tests.
func checkLeaks(g0, fd0 int) error {
	var g, fd int
	for range 100 {
		http.DefaultTransport.(*http.Transport).CloseIdleConnections()
		datapath.Drain()
		// Go's own splice pipes (io.Copy in the tests' servers) sit in a
		// sync.Pool and close when collected.
		goruntime.GC()
		if g, fd = goruntime.NumGoroutine(), countFDs(); g <= g0 && fd <= fd0 {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	buf := make([]byte, 1<<20)
	var links []string
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		l, _ := os.Readlink("/proc/self/fd/" + e.Name())
		links = append(links, e.Name()+"→"+l)
	}
	return fmt.Errorf("leak check: goroutines %d → %d, descriptors %d → %d %v\n%s", g0, g, fd0, fd, links, buf[:goruntime.Stack(buf, true)])
}
