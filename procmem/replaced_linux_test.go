package procmem

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// helperEnv makes the test binary act as the process whose binary is
// replaced (TestReleaseBinaryReplaced).
const helperEnv = "PROCMEM_REPLACED_HELPER"

// work runs code the helper has not run before its release: the pages
// fault back in from the executable's inode.
func work() string {
	re := regexp.MustCompile(`^(\w+)-(\d+)$`)
	m := re.FindStringSubmatch("relay-42")
	b, _ := json.Marshal(map[string]any{"m": m, "n": 7})
	sum := sha256.Sum256(b)
	return fmt.Sprintf("%s %s", b, hex.EncodeToString(sum[:4]))
}

func TestReplacedHelper(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("helper process only")
	}
	st, err := ReleaseBinary()
	if err != nil || st.BinaryBytes == 0 {
		fmt.Printf("release: %+v %v\n", st, err)
		os.Exit(2)
	}
	fmt.Println("released")
	in := bufio.NewReader(os.Stdin)
	for range 2 {
		if _, err := in.ReadString('\n'); err != nil {
			os.Exit(3)
		}
		fmt.Println("result", work())
		if _, err := ReleaseBinary(); err != nil {
			fmt.Println("release again:", err)
			os.Exit(4)
		}
	}
	os.Exit(0)
}

// TestReleaseBinaryReplaced: a package upgrade replaces (or deletes) the
// executable on disk while the process runs; pages released before and
// after still fault back in from the old inode, and the code runs right.
func TestReleaseBinaryReplaced(t *testing.T) {
	if os.Getenv(helperEnv) != "" {
		t.Skip("in the helper")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		replace func(t *testing.T, path string)
	}{
		{"deleted", func(t *testing.T, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}},
		{"renamed over", func(t *testing.T, path string) {
			tmp := path + ".new"
			if err := os.WriteFile(tmp, []byte(strings.Repeat("\x00garbage", 1<<20)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "relay binary (copy)")
			copyFile(t, self, path)
			cmd := exec.Command(path, "-test.run=^TestReplacedHelper$")
			cmd.Env = append(os.Environ(), helperEnv+"=1")
			stdin, _ := cmd.StdinPipe()
			stdout, _ := cmd.StdoutPipe()
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			out := bufio.NewReader(stdout)
			expect := func(prefix string) string {
				t.Helper()
				line, err := out.ReadString('\n')
				if err != nil || !strings.HasPrefix(line, prefix) {
					t.Fatalf("helper said %q (%v), want %q", line, err, prefix)
				}
				return strings.TrimSpace(line)
			}
			expect("released")
			tc.replace(t, path)
			dropCaches()
			want := "result " + work()
			for range 2 {
				io.WriteString(stdin, "go\n")
				if got := expect("result"); got != want {
					t.Errorf("helper computed %q, want %q", got, want)
				}
				dropCaches()
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("helper: %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("helper did not exit")
			}
		})
	}
}

// dropCaches evicts the page cache (root only), so released pages are
// read back from the old inode's blocks rather than found in the cache.
func dropCaches() { _ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0) }

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}
