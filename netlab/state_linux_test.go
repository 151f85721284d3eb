package netlab

import (
	"os"
	"os/exec"
	"testing"
)

// TestStateAlive checks that a lab counts as alive only while the very
// process recorded as its owner runs.
func TestStateAlive(t *testing.T) {
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Skipf("cannot run true: %v", err)
	}
	self := os.Getpid()
	tests := []struct {
		name  string
		owner int
		start uint64
		want  bool
	}{
		{"owner running", self, procStart(self), true},
		{"owner running, another start time (pid reused)", self, procStart(self) + 1, false},
		{"owner gone", gone.Process.Pid, procStart(self), false},
		// Up records the daemon's start time after it said ready: a daemon
		// that died at once is recorded with 0, the start time procStart
		// gives every process that does not exist.
		{"owner gone, recorded without a start time", gone.Process.Pid, 0, false},
		{"no owner", 0, 0, false},
	}
	for _, tt := range tests {
		s := &state{Name: "x", Owner: tt.owner, OwnerStart: tt.start}
		if got := s.alive(); got != tt.want {
			t.Errorf("%s: alive() = %v, want %v", tt.name, got, tt.want)
		}
	}
}
