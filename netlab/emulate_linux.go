package netlab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/vishvananda/netns"

	"halfway/netlab/linkem"
)

// Emulate runs the link emulators of a lab that Up created with Detach, in
// this process, which must have been started in the lab's wire namespace.
// It serves the links' counters on a unix socket in StateDir, calls ready
// once the wires are open, and returns when ctx is done.
func Emulate(ctx context.Context, name string, opt linkem.Options, ready func()) error {
	if err := checkName(name); err != nil {
		return err
	}
	s, err := readState(name)
	if err != nil {
		return fmt.Errorf("lab %s: %w", name, err)
	}
	want, err := nsInode(filepath.Join(netnsDir, WireNS(name)))
	if err != nil {
		return fmt.Errorf("lab %s: %w", name, err)
	}
	if have, err := nsInode("/proc/self/ns/net"); err != nil || have != want {
		return fmt.Errorf("lab %s: emulate must run in namespace %s", name, WireNS(name))
	}
	t, err := ParseTopology([]byte(s.Topology))
	if err != nil {
		return fmt.Errorf("lab %s: stored topology: %w", name, err)
	}
	wires, err := openWires(t.Plan(), t, opt)
	if err != nil {
		return err
	}
	_ = os.Remove(socketPath(name))
	ln, err := net.Listen("unix", socketPath(name))
	if err != nil {
		for _, w := range wires {
			w.Close()
		}
		return fmt.Errorf("stats socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(rw http.ResponseWriter, _ *http.Request) {
		out := make([]LinkStats, len(wires))
		for i, w := range wires {
			out[i].AB, out[i].BA = w.Stats()
		}
		rw.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(rw).Encode(out)
	})
	// Profiles of the emulator itself, for `go tool pprof` over the socket.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(wires))
	var wg sync.WaitGroup
	for _, w := range wires {
		wg.Add(1)
		go func() { defer wg.Done(); errc <- w.Run(ctx) }()
	}
	ready()
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc: // a wire failed: the lab cannot be trusted any more
	}
	cancel()
	wg.Wait()
	return runErr
}

func queryStats(name string) ([]LinkStats, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath(name))
		},
	}}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://lab/stats")
	if err != nil {
		return nil, fmt.Errorf("lab %s: emulator stats: %w", name, err)
	}
	defer resp.Body.Close()
	var out []LinkStats
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("lab %s: emulator stats: %w", name, err)
	}
	return out, nil
}

// Attach opens a lab that is up, e.g. one another process brought up with
// Detach. Release frees what Attach opened; Close removes the lab.
func Attach(name string) (*Lab, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	s, err := readState(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("lab %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	t, err := ParseTopology([]byte(s.Topology))
	if err != nil {
		return nil, fmt.Errorf("lab %s: stored topology: %w", name, err)
	}
	l := &Lab{Topo: t, Plan: t.Plan(), hosts: map[string]*Host{}, id: s.ID, failed: make(chan error, 1), wire: netns.None()}
	if s.Daemon {
		l.daemon = s.Owner
	}
	for _, hp := range l.Plan.Hosts {
		ns, err := netns.GetFromName(hp.NS)
		if err != nil {
			l.closeHandles()
			return nil, fmt.Errorf("lab %s: host %s: %w", name, hp.Name, err)
		}
		l.hosts[hp.Name] = &Host{Name: hp.Name, NS: hp.NS, plan: hp, ns: ns}
	}
	if l.wire, err = netns.GetFromName(WireNS(name)); err != nil {
		l.closeHandles()
		return nil, fmt.Errorf("lab %s: %w", name, err)
	}
	return l, nil
}

// Release frees the handles of an attached lab and leaves the lab up.
func (l *Lab) Release() { l.closeHandles() }

// Status describes a lab on this machine.
type Status struct {
	Name    string      `json:"name"`
	Owner   int         `json:"owner"`
	Alive   bool        `json:"alive"` // false: stale, removed by the next up or down
	Daemon  bool        `json:"daemon"`
	Created time.Time   `json:"created"`
	File    string      `json:"file,omitempty"`
	Topo    *Topology   `json:"-"`
	Plan    *Plan       `json:"-"`
	Links   []LinkStats `json:"links,omitempty"`
	Err     string      `json:"error,omitempty"`
}

// List describes every lab on this machine; with stats, it adds the live
// counters of each detached lab whose emulator daemon answers.
func List(stats bool) ([]Status, error) {
	names, err := labNames()
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	var out []Status
	for _, n := range names {
		st := Status{Name: n}
		s, err := readState(n)
		if err != nil {
			st.Err = "no state record (left over by a crash; removed by the next up or down)"
			out = append(out, st)
			continue
		}
		st.Owner, st.Alive, st.Daemon, st.Created, st.File = s.Owner, s.alive(), s.Daemon, s.Created, s.File
		if st.Topo, err = ParseTopology([]byte(s.Topology)); err == nil {
			st.Plan = st.Topo.Plan()
		}
		if stats && st.Alive && st.Daemon {
			if st.Links, err = queryStats(n); err != nil {
				st.Err = err.Error()
			}
		}
		out = append(out, st)
	}
	return out, nil
}
