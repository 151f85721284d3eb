package main

import (
	"bytes"
	"errors"
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
