package netlab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// StateDir holds one record per lab that is up, so that status, exec and
// down find it, and so that a lab whose owner died is recognised as stale.
var StateDir = "/run/halfway/lab"

// state is the record of a lab, written before anything is created.
type state struct {
	Name       string    `json:"name"`
	ID         string    `json:"id"`    // random, so a Lab only ever removes its own lab
	Owner      int       `json:"owner"` // the process whose death makes the lab stale
	OwnerStart uint64    `json:"owner_start"`
	Daemon     bool      `json:"daemon"` // Owner is a `halfway lab emulate` daemon
	Created    time.Time `json:"created"`
	File       string    `json:"file,omitempty"`
	Topology   string    `json:"topology"` // YAML
}

func statePath(name string) string    { return filepath.Join(StateDir, name+".json") }
func stateTmpPath(name string) string { return statePath(name) + ".tmp" }
func logPath(name string) string      { return filepath.Join(StateDir, name+".log") }
func socketPath(name string) string   { return filepath.Join(StateDir, name+".sock") }

// alive tells whether the owner runs. procStart is 0 for a process that
// does not exist, so a record with no start time (a daemon that died before
// Up read it) must not match that: it is never alive.
func (s *state) alive() bool {
	return s.Owner > 0 && s.OwnerStart != 0 && procStart(s.Owner) == s.OwnerStart
}

func writeState(s *state) error {
	if err := os.MkdirAll(StateDir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := stateTmpPath(s.Name)
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, statePath(s.Name))
}

func readState(name string) (*state, error) {
	b, err := os.ReadFile(statePath(name))
	if err != nil {
		return nil, err
	}
	var s state
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("lab state %s: %w", statePath(name), err)
	}
	return &s, nil
}

// labNames lists labs that have a record or a namespace.
func labNames() ([]string, error) {
	set := map[string]bool{}
	ents, err := os.ReadDir(StateDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	for _, e := range ents {
		n := strings.TrimSuffix(e.Name(), ".tmp")
		if n, ok := strings.CutSuffix(n, ".json"); ok {
			set[n] = true
		}
	}
	nss, err := labNamespaces("")
	if err != nil {
		return nil, err
	}
	for _, ns := range nss {
		n, _, _ := strings.Cut(strings.TrimPrefix(ns, Prefix), ".")
		set[n] = true
	}
	for _, dir := range etcNetnsDirs("") {
		n, _, _ := strings.Cut(strings.TrimPrefix(dir, Prefix), ".")
		set[n] = true
	}
	var names []string
	for n := range set {
		// Only names a topology could have: nothing else is ours to remove.
		if validName(n) {
			names = append(names, n)
		}
	}
	return names, nil
}

// lockLabs serializes lab creation and removal between processes.
func lockLabs() (unlock func(), err error) {
	if err := os.MkdirAll(StateDir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(StateDir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}

const etcNetns = "/etc/netns"

// etcNetnsDirs lists /etc/netns entries of a lab, or of every lab.
func etcNetnsDirs(name string) []string {
	ents, _ := os.ReadDir(etcNetns)
	var out []string
	for _, e := range ents {
		n := e.Name()
		if name == "" && strings.HasPrefix(n, Prefix) || name != "" && strings.HasPrefix(n, WireNS(name)+".") {
			out = append(out, n)
		}
	}
	return out
}
