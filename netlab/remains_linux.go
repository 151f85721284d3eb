package netlab

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Remains lists whatever of a lab still exists: namespaces, processes in
// them, /etc/netns entries and state files. It is empty after Close or Down.
func Remains(name string) []string {
	if !validName(name) {
		return nil
	}
	var out []string
	nss, _ := labNamespaces(name)
	for _, ns := range nss {
		out = append(out, "namespace "+ns)
	}
	for _, pid := range pidsIn(nss) {
		out = append(out, fmt.Sprintf("process %d", pid))
	}
	for _, d := range etcNetnsDirs(name) {
		out = append(out, filepath.Join(etcNetns, d))
	}
	for _, f := range []string{statePath(name), stateTmpPath(name), logPath(name), socketPath(name)} {
		if _, err := os.Stat(f); !errors.Is(err, fs.ErrNotExist) {
			out = append(out, f)
		}
	}
	return out
}
