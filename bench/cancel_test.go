package bench

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"halfway/netlab/labtest"
)

// buildHalfway builds the halfway binary the benchmarks run as relays and
// lab daemons.
func buildHalfway(t *testing.T) string {
	t.Helper()
	exe := filepath.Join(t.TempDir(), "halfway")
	if out, err := exec.Command("go", "build", "-o", exe, "../cmd/halfway").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return exe
}

// onLine is a progress log that calls f with each line written to it.
type onLine func(line string)

func (f onLine) Write(p []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		f(l)
	}
	return len(p), nil
}

// TestRunFootprintCancelled: a run cancelled (Ctrl-C) while it measures
// ends with the context's error, not a report of what a killed relay
// reads (0 KiB) for `bench footprint --out` to write over the results.
func TestRunFootprintCancelled(t *testing.T) {
	exe := buildHalfway(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o := FootprintOptions{Flows: 20, Repeats: 1, Exe: exe, Log: onLine(func(l string) {
		if strings.HasPrefix(l, "with 20 flows") {
			cancel()
		}
	})}
	start := time.Now()
	r, err := RunFootprint(ctx, o)
	if err == nil {
		t.Fatalf("cancelled run returned a report and no error: idle again %.0f KiB, halfway help %.2f ms, /bin/true %.2f ms",
			r.AfterFlowsRSSKiB, r.BinaryFloorMS, r.TrueFloorMS)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the cancelled run took %v to end", d)
	}
}

// TestRunPeersCancelled: a run cancelled during the memory rounds ends
// with the context's error, not a report whose rows read "failed: context
// canceled" for `bench peers --out` to write over the results.
func TestRunPeersCancelled(t *testing.T) {
	labtest.RequireRoot(t)
	exe := buildHalfway(t)
	// RunPeers pins this process to CPU 0: undo it for the tests after.
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		tasks, _ := os.ReadDir("/proc/self/task")
		for _, task := range tasks {
			tid, _ := strconv.Atoi(task.Name())
			unix.SchedSetaffinity(tid, &set)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	o := PeersOptions{Exe: exe, Repeats: 2, Peers: []string{"halfway"}, Parts: []string{"memory"},
		Flows: 50, SocatFlows: 10, Window: time.Second, Clients: 1, Requests: 1,
		Log: onLine(func(l string) {
			if strings.HasPrefix(l, "halfway: 50 flows") { // the first round's
				cancel()
			}
		})}
	r, err := RunPeers(ctx, o)
	if err == nil {
		var errs []string
		for _, row := range r.Rows {
			errs = append(errs, row.Name+": "+row.Err)
		}
		t.Fatalf("cancelled run returned a report and no error; rows: %s", strings.Join(errs, "; "))
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want context.Canceled", err)
	}
}
