package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"halfway/netlab"
	"halfway/netlab/labtest"
)

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("name: x\nnodes: [a, b]\nlinks:\n  - {a: a, b: b, delay: 10 ms}\n"), 0o644)
	tests := []struct {
		args  []string
		usage bool   // a usage error (exit 2)
		want  string // in the error
	}{
		{nil, true, "no command"},
		{[]string{"frobnicate"}, true, `unknown command "frobnicate"`},
		{[]string{"lab"}, true, "lab needs a subcommand"},
		{[]string{"lab", "up"}, true, "lab up FILE"},
		{[]string{"lab", "up", bad}, false, `links[0].delay: "10 ms": want a duration like 10ms (line 4)`},
		{[]string{"lab", "up", filepath.Join(dir, "missing.yaml")}, false, "no such file"},
		{[]string{"lab", "exec", "client"}, true, "lab exec [--lab NAME] NODE -- CMD"},
		{[]string{"bench"}, true, "bench needs a scenario"},
		{[]string{"bench", "lab", "--repeats", "0"}, true, "--repeats must be at least 1"},
		{[]string{"bench", "lab", "--loss-datagrams", "0"}, true, "LossN 0: want at least 1 datagram"},
		{[]string{"bench", "lab", "--window", "0s"}, true, "Window 0s: want more than 0"},
		// A flag after an argument would be ignored: refused instead.
		{[]string{"bench", "lab", "extra", "--repeats", "0"}, true, `bench lab: unexpected argument "extra"`},
		{[]string{"lab", "status", "nosuch", "--json"}, true, "lab status: flag --json after an argument: flags go first"},
		{[]string{"relay", "--bogus"}, true, "relay: flag provided but not defined: -bogus"},
		{[]string{"relay", "-c"}, true, "relay: flag needs an argument: -c"},
		{[]string{"relay", "-c", "x.yaml", "--grace", "-1s"}, true, "relay: --grace -1s: want 0 (close flows at once) or more"},
	}
	for _, tt := range tests {
		var out, errOut bytes.Buffer
		err := run(tt.args, &out, &errOut)
		if err == nil {
			t.Errorf("%v: no error", tt.args)
			continue
		}
		if errors.Is(err, errUsage) != tt.usage || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: error %q (usage %v), want %q (usage %v)", tt.args, err, errors.Is(err, errUsage), tt.want, tt.usage)
		}
	}
}

// TestHelp checks that -h works for every command, as the usage says: it
// prints help and is no error (exit status 0).
func TestHelp(t *testing.T) {
	tests := []struct {
		args []string
		want string // in the output, stdout and stderr together
	}{
		{[]string{"-h"}, "relay rules -c FILE"},
		{[]string{"relay", "-h"}, "-check"},
		{[]string{"relay", "rules", "-h"}, "-c string"},
		{[]string{"lab", "-h"}, "lab up"},
		{[]string{"lab", "--help"}, "lab status"},
		{[]string{"lab", "up", "-h"}, "-foreground"},
		{[]string{"bench", "-h"}, "bench footprint"},
		{[]string{"bench", "lab", "-h"}, "-repeats"},
		{[]string{"model", "-h"}, "-sizes"},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		err := run(tt.args, &out, &out)
		if err != nil && !errors.Is(err, flag.ErrHelp) {
			t.Errorf("%v: %v (usage %v), want help", tt.args, err, errors.Is(err, errUsage))
		}
		if !strings.Contains(out.String(), tt.want) {
			t.Errorf("%v: output lacks %q:\n%s", tt.args, tt.want, out.String())
		}
	}
}

// buildBinary builds halfway once for the end-to-end tests.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "halfway")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func halfway(t *testing.T, bin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	return string(out), err
}

// TestLabCommands drives the lab as a user would: up (detached), status,
// exec with curl by host name, down; and checks nothing is left.
func TestLabCommands(t *testing.T) {
	labtest.RequireRoot(t)
	bin := buildBinary(t)
	name := fmt.Sprintf("cli%d", os.Getpid()%100000)
	file := filepath.Join(t.TempDir(), "lab.yaml")
	os.WriteFile(file, []byte(`
name: `+name+`
nodes: [client, rc, server]
links:
  - {a: client, b: rc, delay: 5ms, rate: 100mbit}
  - {a: rc, b: server, delay: 10ms, loss: 0.1%}
`), 0o644)
	t.Cleanup(func() {
		netlab.Down(name)
		if left := netlab.Remains(name); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	})

	out, err := halfway(t, bin, "lab", "up", file)
	if err != nil {
		t.Fatalf("lab up: %v\n%s", err, out)
	}
	if !strings.Contains(out, "10.77.2.2/24") || !strings.Contains(out, "is up") {
		t.Errorf("lab up output lacks addresses or state:\n%s", out)
	}
	if out, err := halfway(t, bin, "lab", "up", file); err == nil || !strings.Contains(out, "already up") {
		t.Errorf("second lab up: %v\n%s", err, out)
	}

	// A web server on the server host, served from this test process.
	lab, err := netlab.Attach(name)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := lab.Host("server").Listen("tcp", ":8080")
	lab.Release()
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("served through the lab"))
	})}
	go srv.Serve(ln)
	defer srv.Close()

	out, err = halfway(t, bin, "lab", "exec", "--lab", name, "client", "--", "curl", "-sS", "--max-time", "10", "http://server:8080/")
	if err != nil || out != "served through the lab" {
		t.Errorf("lab exec curl: %v\n%s", err, out)
	}
	out, err = halfway(t, bin, "lab", "exec", "--lab", name, "nosuch", "--", "true")
	if err == nil || !strings.Contains(out, `no node "nosuch"`) {
		t.Errorf("lab exec on a missing node: %v\n%s", err, out)
	}
	out, err = halfway(t, bin, "lab", "exec", "--lab", name, "client", "--", "sh", "-c", "exit 3")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Errorf("lab exec exit status: %v\n%s", err, out)
	}

	out, err = halfway(t, bin, "lab", "status", name)
	if err != nil || !strings.Contains(out, "up, emulator pid") || !strings.Contains(out, "client→rc") {
		t.Errorf("lab status: %v\n%s", err, out)
	}
	out, err = halfway(t, bin, "lab", "status", "--json", name)
	var st []netlab.Status
	if err != nil || json.Unmarshal([]byte(out), &st) != nil || len(st) != 1 || len(st[0].Links) != 2 {
		t.Fatalf("lab status --json: %v\n%s", err, out)
	}
	// The curl above crossed link 0 both ways: the counters show it.
	if l := st[0].Links[0]; l.AB.TxPackets == 0 || l.BA.TxPackets == 0 || l.AB.TxIPBytes == 0 {
		t.Errorf("link 0 counters after curl: %+v", l)
	}

	out, err = halfway(t, bin, "lab", "down", file)
	if err != nil || !strings.Contains(out, "removed") {
		t.Errorf("lab down: %v\n%s", err, out)
	}
	if left := netlab.Remains(name); len(left) > 0 {
		t.Errorf("after lab down: %v", left)
	}
	out, err = halfway(t, bin, "lab", "down", name)
	if err == nil || !strings.Contains(out, "no such lab") {
		t.Errorf("lab down twice: %v\n%s", err, out)
	}
}

// TestLabDownStale checks that `lab down NAME` removes a lab whose emulator
// daemon died, as the status line of a stale lab promises, and says so.
func TestLabDownStale(t *testing.T) {
	labtest.RequireRoot(t)
	bin := buildBinary(t)
	name := fmt.Sprintf("st%d", os.Getpid()%100000)
	file := filepath.Join(t.TempDir(), "lab.yaml")
	os.WriteFile(file, []byte("name: "+name+"\nnodes: [a, b]\nlinks: [{a: a, b: b, delay: 1ms}]\n"), 0o644)
	t.Cleanup(func() {
		netlab.Down(name)
		if left := netlab.Remains(name); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	})
	if out, err := halfway(t, bin, "lab", "up", file); err != nil {
		t.Fatalf("lab up: %v\n%s", err, out)
	}
	daemon := 0
	if labs, err := netlab.List(false); err == nil {
		for _, s := range labs {
			if s.Name == name && s.Daemon {
				daemon = s.Owner
			}
		}
	}
	if daemon == 0 {
		t.Fatal("no emulator daemon recorded for the lab")
	}
	syscall.Kill(daemon, syscall.SIGKILL)
	stale := false
	for i := 0; i < 200 && !stale; i++ {
		labs, _ := netlab.List(false)
		for _, s := range labs {
			stale = stale || s.Name == name && !s.Alive
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !stale {
		t.Fatal("the lab is not stale after its daemon was killed")
	}
	out, err := halfway(t, bin, "lab", "down", name)
	if err != nil || !strings.Contains(out, "lab "+name+" removed") {
		t.Errorf("lab down of a stale lab: %v\n%s", err, out)
	}
	if left := netlab.Remains(name); len(left) > 0 {
		t.Errorf("after lab down: %v", left)
	}
}

// TestLabForegroundSIGTERM checks that `lab up --foreground` removes its lab
// on SIGTERM.
func TestLabForegroundSIGTERM(t *testing.T) {
	labtest.RequireRoot(t)
	bin := buildBinary(t)
	name := fmt.Sprintf("fg%d", os.Getpid()%100000)
	file := filepath.Join(t.TempDir(), "lab.yaml")
	os.WriteFile(file, []byte("name: "+name+"\nnodes: [a, b]\nlinks: [{a: a, b: b, delay: 1ms}]\n"), 0o644)
	t.Cleanup(func() { netlab.Down(name) })
	cmd := exec.Command(bin, "lab", "up", "--foreground", file)
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200 && !strings.Contains(out.String(), "in the foreground"); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if len(netlab.Remains(name)) == 0 {
		cmd.Process.Kill()
		t.Fatalf("lab not up:\n%s", out.String())
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("lab up --foreground after SIGTERM: %v\n%s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("lab up --foreground did not exit after SIGTERM")
	}
	if left := netlab.Remains(name); len(left) > 0 {
		t.Errorf("after SIGTERM: %v", left)
	}
}

// syncBuffer collects a child's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
