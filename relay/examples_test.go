package relay

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestExampleConfigs keeps the shipped examples valid.
func TestExampleConfigs(t *testing.T) {
	psk := filepath.Join(t.TempDir(), "psk")
	os.WriteFile(psk, []byte("0123456789abcdef0123"), 0o600)
	files, _ := filepath.Glob("../examples/relay/*.yaml")
	if len(files) == 0 {
		t.Fatal("no example configs found")
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b = []byte(strings.ReplaceAll(string(b), "/etc/halfway/psk", psk))
		c, err := ParseConfig(b)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if strings.Contains(f, "transparent") {
			if _, err := Rules(c); err != nil {
				t.Errorf("%s: rules: %v", f, err)
			}
		}
	}
}
