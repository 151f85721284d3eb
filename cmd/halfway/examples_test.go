package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"halfway/netlab"
)

// TestFeaturesExampleIsComplete keeps examples/features.yaml what
// docs/lab.md says it is: every topology setting, with a comment.
func TestFeaturesExampleIsComplete(t *testing.T) {
	const file = "../../examples/features.yaml"
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := netlab.ParseTopology(b); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	seen := map[reflect.Type]bool{}
	var keys []string
	var walk func(reflect.Type, string)
	walk = func(rt reflect.Type, prefix string) {
		for rt.Kind() == reflect.Pointer || rt.Kind() == reflect.Slice {
			rt = rt.Elem()
		}
		if rt.Kind() != reflect.Struct || seen[rt] {
			return
		}
		seen[rt] = true
		for i := 0; i < rt.NumField(); i++ {
			name, _, _ := strings.Cut(rt.Field(i).Tag.Get("yaml"), ",")
			if name == "" || name == "-" {
				continue
			}
			keys = append(keys, prefix+name)
			if !strings.HasPrefix(rt.Field(i).Type.Name(), "PerDir") {
				walk(rt.Field(i).Type, prefix+name+".")
			}
		}
	}
	walk(reflect.TypeFor[netlab.Topology](), "")
	for _, k := range keys {
		leaf := k[strings.LastIndex(k, ".")+1:]
		if !regexp.MustCompile(`(?m)^([^#]*[\s{,])?` + regexp.QuoteMeta(leaf) + `:`).Match(b) {
			t.Errorf("%s does not show %s", file, k)
		}
	}
}

// TestSystemdUnit has systemd-analyze verify the example units, with the
// binary the service runs at the path it names replaced by this build.
func TestSystemdUnit(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	b, err := os.ReadFile("../../examples/systemd/halfway-relay.service")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte("Type=notify")) {
		t.Error("the unit is not Type=notify: systemd would not wait for the relay's READY=1")
	}
	bin := buildBinary(t)
	unit := filepath.Join(t.TempDir(), "halfway-relay.service")
	if err := os.WriteFile(unit, bytes.ReplaceAll(b, []byte("/usr/local/bin/halfway"), []byte(bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sock, err := os.ReadFile("../../examples/systemd/halfway-relay.socket")
	if err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(filepath.Dir(unit), "halfway-relay.socket")
	if err := os.WriteFile(socket, sock, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, analyze, "verify", unit, socket).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
