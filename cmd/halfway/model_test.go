package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int    // 0: an error is expected
		err  string // in the error
	}{
		{"1448", 1448, ""},
		{"1448B", 1448, ""},
		{" 100kb ", 100000, ""},
		{"10KB", 10000, ""},
		{"1.1KB", 1100, ""},
		{"1.5MB", 1500000, ""},
		{"0", 0, `"0"`},
		{"0KB", 0, `"0KB"`},
		{"-5KB", 0, `"-5KB"`},
		{"0.5", 0, "whole number of bytes"},
		{"0.0000001", 0, "at least 1 byte"},
		{"1.5B", 0, "whole number of bytes"},
		{"NaN", 0, `"NaN"`},
		{"Inf", 0, `"Inf"`},
		{"1e30", 0, "too large"},
		{"10GB", 0, `"10GB"`},
		{"", 0, "want a size"},
	} {
		got, err := parseSize(tc.in)
		switch {
		case tc.want != 0 && (err != nil || got != tc.want):
			t.Errorf("parseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		case tc.want == 0 && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("parseSize(%q) = %d, %v; want an error mentioning %q", tc.in, got, err, tc.err)
		}
	}
}

// Bad --sizes are usage errors (exit status 2) that name the flag.
func TestModelSizesUsage(t *testing.T) {
	topo := filepath.Join(t.TempDir(), "line.yaml")
	os.WriteFile(topo, []byte("name: line\nnodes: [client, mid, server]\nlinks:\n  - {a: client, b: mid, delay: 10ms}\n  - {a: mid, b: server, delay: 15ms}\n"), 0o644)
	for _, sizes := range []string{"10KB,1MB,1.5MB,0", "-5", "NaN", "Inf", "1e30", "0.5", "10KB,,1MB"} {
		var out, errOut bytes.Buffer
		err := run([]string{"model", "-f", topo, "--sizes", sizes}, &out, &errOut)
		if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "--sizes") {
			t.Errorf("--sizes %s: error %v, want a usage error naming --sizes", sizes, err)
		}
	}
}

func TestModelFlagsUsage(t *testing.T) {
	topo := filepath.Join(t.TempDir(), "line.yaml")
	os.WriteFile(topo, []byte("name: line\nnodes: [client, mid, server]\nlinks:\n  - {a: client, b: mid, delay: 10ms}\n  - {a: mid, b: server, delay: 15ms}\n"), 0o644)
	for _, args := range [][]string{{"--iw", "0"}, {"--turbo-iw", "-1"}, {"--from", "mid", "--to", "mid"}} {
		var out, errOut bytes.Buffer
		err := run(append([]string{"model", "-f", topo}, args...), &out, &errOut)
		if !errors.Is(err, errUsage) {
			t.Errorf("%v: error %v, want a usage error", args, err)
		}
	}
}

// The model's segments are those of the topology's links: MTU 1280 leaves
// 1228 payload bytes (IPv4, TCP, timestamps), so 100 KB is 82 segments and
// takes a fourth slow-start round (Btot_2 = 70 segments, eq. (6)): end to
// end TTC = 4D + 3·2D = 10D (eq. (9)), against 8D at MTU 1500.
func TestModelMTU(t *testing.T) {
	for _, tc := range []struct {
		mtu    string
		rounds float64 // TTC in units of D
	}{{"", 8}, {", mtu: 1500", 8}, {", mtu: 1280", 10}} {
		topo := filepath.Join(t.TempDir(), "line.yaml")
		os.WriteFile(topo, []byte("name: line\nnodes: [client, mid, server]\nlinks:\n"+
			"  - {a: client, b: mid, delay: 10ms"+tc.mtu+"}\n  - {a: mid, b: server, delay: 15ms"+tc.mtu+"}\n"), 0o644)
		var out, errOut bytes.Buffer
		if err := run([]string{"model", "-f", topo, "--sizes", "100KB", "--json"}, &out, &errOut); err != nil {
			t.Fatalf("mtu %q: %v", tc.mtu, err)
		}
		var res struct {
			Predictions []struct {
				Config string  `json:"config"`
				TTCms  float64 `json:"ttc_ms"`
			} `json:"predictions"`
		}
		if err := json.Unmarshal(out.Bytes(), &res); err != nil {
			t.Fatalf("mtu %q: %v\n%s", tc.mtu, err, out.String())
		}
		const d = 25 // ms, one way
		if got := res.Predictions[0]; got.Config != "e2e" || math.Abs(got.TTCms-tc.rounds*d) > 0.01 {
			t.Errorf("mtu %q: %s TTC %.3f ms, want %gD = %g ms", tc.mtu, got.Config, got.TTCms, tc.rounds, tc.rounds*d)
		}
	}
}
