package relay

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// adminRequest sends a request to the admin API at addr and returns the
// answer's status and body.
func adminRequest(addr, method, path, body string) (int, string, error) {
	req, err := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		return 0, "", fmt.Errorf("admin request: %w", err)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("admin request: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, "", fmt.Errorf("admin request: reading the answer: %w", err)
	}
	return resp.StatusCode, string(b), nil
}

// adminDo is adminRequest to s's admin API, failing the test on an error.
func adminDo(t *testing.T, s *Server, method, path, body string) (int, string) {
	t.Helper()
	code, b, err := adminRequest(s.AdminAddr().String(), method, path, body)
	if err != nil {
		t.Fatal(err)
	}
	return code, b
}

// adminConf is a configuration with the admin API at admin and one
// SOCKS5 listener.
func adminConf(admin string) string {
	return fmt.Sprintf("admin: {listen: %q}\nlisteners:\n  - {name: s, listen: \"127.0.0.1:0\", protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: [127.0.0.1/32]}\n", admin)
}

// TestAdminPutDuringRefusedReload: a PUT /api/tunables that comes while a
// reload is being applied, a reload then refused, leaves the running
// configuration as it was: the refused file's limits and routes do not
// stay in force because of it.
func TestAdminPutDuringRefusedReload(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	admin := freeLoopback(t)
	conf := func(listen string, maxFlows int) string {
		return fmt.Sprintf("admin: {listen: %q}\nlimits: {max_flows: %d}\nlisteners:\n  - {name: s, listen: %q, protocols: [socks5], allow_clients: [127.0.0.1/32], allow_destinations: [127.0.0.1/32]}\n", admin, maxFlows, listen)
	}
	s := startLoopback(t, conf("127.0.0.1:0", 99))
	old := s.state.Load()
	reloaded := reloadHeld(t, s, conf(busy.Addr().String(), 10))
	type answer struct {
		code int
		body string
		err  error
	}
	put := make(chan answer, 1)
	go func() {
		code, body, err := adminRequest(admin, "PUT", "/api/tunables", `{"max_pending": 50}`)
		put <- answer{code, body, err}
	}()
	time.Sleep(300 * time.Millisecond) // the PUT answers meanwhile, or waits for the reload
	s.mu.Unlock()
	if err := <-reloaded; !errors.Is(err, ErrNotApplied) {
		t.Fatalf("reload onto a busy port: %v, want ErrNotApplied", err)
	}
	a := <-put
	if a.err != nil {
		t.Fatal(a.err)
	}
	if a.code != http.StatusOK && a.code != http.StatusConflict {
		t.Fatalf("PUT: %d %s", a.code, a.body)
	}
	rt := s.state.Load()
	if rt.cfg != old.cfg || rt.tunables.MaxFlows != 99 {
		t.Errorf("after the refused reload and a PUT (%d): running the refused file (%v), max_flows %d; want the previous configuration, max_flows 99",
			a.code, rt.cfg != old.cfg, rt.tunables.MaxFlows)
	}
	if a.code == http.StatusOK && rt.tunables.MaxPending != 50 {
		t.Errorf("PUT answered 200 but max_pending is %d, want 50", rt.tunables.MaxPending)
	}
}

// TestAdminSetTunablesRefused: PUT /api/tunables refuses what is not one
// valid JSON object of known fields and valid values, and changes nothing
// then.
func TestAdminSetTunablesRefused(t *testing.T) {
	s := startLoopback(t, adminConf(freeLoopback(t)))
	before := s.state.Load()
	for _, tc := range []struct{ name, body string }{
		{"empty", ""},
		{"not JSON", "max_flows=5"},
		{"unknown field", `{"max_flow": 5}`},
		{"trailing garbage", `{"max_flows": 5} x`},
		{"two objects", `{"max_flows": 5}{"max_flows": 6}`},
		{"wrong type", `{"max_flows": "5"}`},
		{"zero max_flows", `{"max_flows": 0}`},
		{"short connect timeout", `{"connect_timeout_ns": 1000}`},
		{"negative idle", `{"client_idle_timeout_ns": -1}`},
		{"no such pool", `{"pools": {"127.0.0.1:1": {"low": 1, "high": 2}}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := adminDo(t, s, "PUT", "/api/tunables", tc.body)
			if code != http.StatusBadRequest {
				t.Errorf("status %d (%s), want 400", code, strings.TrimSpace(body))
			}
			if s.state.Load() != before {
				t.Errorf("tunables changed to %+v", s.state.Load().tunables)
			}
		})
	}
}

// TestAdminProfileBounded: a profile or a trace that asks to run longer
// than maxProfileSeconds, or for a duration that is not one, is refused at
// once, not run for as long as asked (or for pprof's default).
func TestAdminProfileBounded(t *testing.T) {
	s := startLoopback(t, adminConf(freeLoopback(t)))
	for _, path := range []string{
		"/debug/pprof/profile?seconds=100000", "/debug/pprof/trace?seconds=100000",
		"/debug/pprof/profile?seconds=-1", "/debug/pprof/trace?seconds=NaN", "/debug/pprof/profile?seconds=x",
		"/debug/pprof/profile?seconds=0.5", "/debug/pprof/heap?seconds=1e2", // pprof would take 30 s, or refuse it without the bound
	} {
		code, body, err := adminRequest(s.AdminAddr().String(), "GET", path, "")
		if err != nil || code != http.StatusBadRequest || !strings.Contains(body, "at most 300") {
			t.Errorf("GET %s: %d %q, %v; want 400 naming the longest", path, code, body, err)
		}
	}
	// A duration within the bound runs.
	if code, body, err := adminRequest(s.AdminAddr().String(), "GET", "/debug/pprof/trace?seconds=0.1", ""); err != nil || code != http.StatusOK || len(body) == 0 {
		t.Errorf("a 0.1 s trace: %d, %d bytes, %v", code, len(body), err)
	}
}

// TestAdminStatusEmptyLists: /api/status writes its lists as JSON arrays
// when they are empty, as /api/flows does, never null.
func TestAdminStatusEmptyLists(t *testing.T) {
	s := startLoopback(t, adminConf(freeLoopback(t)))
	code, body := adminDo(t, s, "GET", "/api/status", "")
	if code != http.StatusOK {
		t.Fatalf("status %d: %s", code, body)
	}
	var st map[string]any
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"listeners", "pools", "turbo_routes"} {
		if _, ok := st[k].([]any); !ok {
			t.Errorf("%s: %v, want a JSON array", k, st[k])
		}
	}
	if code, body := adminDo(t, s, "GET", "/api/flows", ""); code != http.StatusOK || strings.TrimSpace(body) != "[]" {
		t.Errorf("/api/flows with no flow: %d %s, want 200 []", code, body)
	}
	// A forward listener speaks no protocol: its list is empty, not null.
	fwd := startLoopback(t, fmt.Sprintf("admin: {listen: %q}\nlisteners:\n  - {name: f, listen: \"127.0.0.1:0\", mode: forward, forward_to: \"127.0.0.1:9\"}\n", freeLoopback(t)))
	_, body = adminDo(t, fwd, "GET", "/api/status", "")
	var fst struct {
		Listeners []map[string]any `json:"listeners"`
	}
	if err := json.Unmarshal([]byte(body), &fst); err != nil || len(fst.Listeners) != 1 {
		t.Fatalf("status %s: %v", body, err)
	}
	if _, ok := fst.Listeners[0]["protocols"].([]any); !ok {
		t.Errorf("a forward listener's protocols: %v, want a JSON array", fst.Listeners[0]["protocols"])
	}
}

// TestAdminStatusInherited: /api/status marks a listener on a socket the
// service manager passed.
func TestAdminStatusInherited(t *testing.T) {
	f, addr := listenFile(t, false)
	s := startInherited(t, fmt.Sprintf("admin: {listen: %q}\nlisteners:\n  - {name: f, listen: %q, mode: forward, forward_to: \"127.0.0.1:9\"}\n", freeLoopback(t), addr), f)
	_, body := adminDo(t, s, "GET", "/api/status", "")
	var st struct {
		Listeners []map[string]any `json:"listeners"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil || len(st.Listeners) != 1 || st.Listeners[0]["inherited"] != true {
		t.Errorf("status %s: %v; want one listener with inherited true", body, err)
	}
}

// TestAdminDeltaProfileBounded: a delta profile (heap, allocs, block,
// mutex, goroutine, threadcreate with seconds=, served by pprof's index)
// is bounded as a CPU profile is: one asked for longer than
// maxProfileSeconds is refused at once, not run for as long as asked.
func TestAdminDeltaProfileBounded(t *testing.T) {
	s := startLoopback(t, adminConf(freeLoopback(t)))
	for _, path := range []string{"/debug/pprof/heap?seconds=100000", "/debug/pprof/goroutine?seconds=100000"} {
		code, body, err := adminRequest(s.AdminAddr().String(), "GET", path, "")
		if err != nil || code != http.StatusBadRequest || !strings.Contains(body, "at most 300") {
			t.Errorf("GET %s: %d %q, %v; want 400 naming the longest", path, code, body, err)
		}
	}
	// One within the bound runs.
	if code, body, err := adminRequest(s.AdminAddr().String(), "GET", "/debug/pprof/heap?seconds=1", ""); err != nil || code != http.StatusOK || len(body) == 0 {
		t.Errorf("a 1 s heap delta: %d, %d bytes, %v", code, len(body), err)
	}
}
