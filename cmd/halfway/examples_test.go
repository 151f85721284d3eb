package main

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

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
