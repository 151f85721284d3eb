package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"halfway/datapath"
	"halfway/sockopt"
)

// The admin API, on a loopback address by default:
//
//	GET /metrics           Prometheus metrics
//	GET /api/flows         active flows: 4-tuple, route, bytes, age
//	GET /api/status        listeners, counts, limits
//	GET /api/tunables      run-time settings
//	PUT /api/tunables      change them (JSON, validated; a reload resets them)
//	GET /debug/pprof/...   profiles
type adminServer struct {
	listen string // as configured
	ln     net.Listener
	srv    *http.Server
}

// adminWriteTimeout bounds an admin answer from the end of its request's
// head (net/http sets the write deadline once the head is read, before
// any body): a reader that stops reading loses its connection. pprof extends it by the
// time a profile or trace runs, which maxProfileSeconds bounds.
const adminWriteTimeout = 2 * time.Minute

// maxProfileSeconds is the longest CPU profile, trace or profile delta
// (heap?seconds=N) the admin API takes: one asked for longer is refused
// rather than run.
const maxProfileSeconds = 300

// boundedProfile is a pprof handler that refuses a duration (seconds) that
// is not a number from above 0 to maxProfileSeconds: a CPU profile, a
// trace, or a named profile's delta. Only a trace takes a fraction of a
// second; the others would take one for no duration at all (pprof's
// default, 30 s, for a CPU profile), so they are refused one.
func boundedProfile(h http.HandlerFunc, fraction bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if v := r.FormValue("seconds"); v != "" {
			sec, err := strconv.ParseFloat(v, 64)
			if !fraction && err == nil {
				var n int64
				n, err = strconv.ParseInt(v, 10, 64)
				sec = float64(n)
			}
			if err != nil || !(sec > 0 && sec <= maxProfileSeconds) {
				what := "a whole number of seconds"
				if fraction {
					what = "a number of seconds"
				}
				http.Error(w, fmt.Sprintf("admin API: seconds=%q: want %s above 0 and at most %d", v, what, maxProfileSeconds), http.StatusBadRequest)
				return
			}
		}
		h(w, r)
	}
}

func (s *Server) startAdmin(addr string) (*adminServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.reg.Handler())
	mux.HandleFunc("GET /api/flows", s.handleFlows)
	mux.HandleFunc("GET /api/status", s.handleStatus)
	mux.HandleFunc("GET /api/tunables", s.handleTunables)
	mux.HandleFunc("PUT /api/tunables", s.handleSetTunables)
	// The index serves the named profiles too, and a delta of one
	// (heap?seconds=N) runs for N seconds as a CPU profile does.
	mux.HandleFunc("GET /debug/pprof/", boundedProfile(pprof.Index, false))
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", boundedProfile(pprof.Profile, false))
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", boundedProfile(pprof.Trace, true))
	a := &adminServer{listen: addr, ln: ln, srv: &http.Server{
		Handler:           loopbackHost(mux),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      adminWriteTimeout,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    64 << 10,
	}}
	go a.srv.Serve(ln)
	s.log.Info("admin API", "addr", ln.Addr().String())
	return a, nil
}

// loopbackHost refuses requests whose Host names anything but a loopback
// address or localhost. The API listens on loopback only, so what else
// reaches it is a browser on this host that a DNS name rebound to
// 127.0.0.1 sent there.
func loopbackHost(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if hp, _, err := net.SplitHostPort(host); err == nil {
			host = hp
		}
		if a, err := netip.ParseAddr(strings.Trim(host, "[]")); (err != nil || !a.IsLoopback()) && !strings.EqualFold(host, "localhost") {
			http.Error(w, "admin API: the Host must be a loopback address or localhost", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// closeNow closes the admin API without waiting for requests in progress:
// under s.mu, which a status request may be waiting for.
func (a *adminServer) closeNow() { _ = a.srv.Close() }

func (a *adminServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = a.srv.Shutdown(ctx)
}

// FlowStatus is one active flow in /api/flows.
type FlowStatus struct {
	ID       uint64  `json:"id"`
	Listener string  `json:"listener"`
	Protocol string  `json:"protocol"`
	Client   string  `json:"client"`
	Dst      string  `json:"dst"`
	Route    string  `json:"route"`
	Up       int64   `json:"bytes_up"`
	Down     int64   `json:"bytes_down"`
	AgeS     float64 `json:"age_s"`
	// Per leg that asked for Multipath TCP: negotiated, and subflows up.
	ClientMPTCP *MPTCPStatus `json:"client_mptcp,omitempty"`
	ServerMPTCP *MPTCPStatus `json:"server_mptcp,omitempty"`
}

// MPTCPStatus is a leg's Multipath TCP: active (else fallen back to TCP)
// and its subflows.
type MPTCPStatus struct {
	Active   bool `json:"active"`
	Subflows int  `json:"subflows"`
}

// Flows lists the active flows.
func (s *Server) Flows() []FlowStatus {
	var out []FlowStatus
	s.table.each(func(f *flow) {
		fs := FlowStatus{ID: f.id, Listener: f.listener, Protocol: *f.proto.Load(), Client: f.client.String(),
			Up: f.up.Load(), Down: f.down.Load(), AgeS: time.Duration(time.Now().UnixNano() - f.start).Seconds()}
		if d := f.dst.Load(); d != nil {
			fs.Dst = d.String()
		}
		if r := f.route.Load(); r != nil {
			fs.Route = *r
		}
		if dp := f.dp.Load(); dp != nil {
			client, server := dp.Conns()
			for i, c := range []*net.TCPConn{client, server} {
				// A detached leg is a TCP socket, out of Go's poller while
				// idle: if it asked for MPTCP, it fell back.
				var st sockopt.MPTCPState
				var err error
				if !datapath.Detached(c) {
					st, err = sockopt.MPTCP(c)
				}
				if err == nil && f.askedMPTCPOn(i, st) {
					m := &MPTCPStatus{Active: st.Active, Subflows: st.Subflows}
					if i == 0 {
						fs.ClientMPTCP = m
					} else {
						fs.ServerMPTCP = m
					}
				}
			}
		}
		out = append(out, fs)
	})
	if out == nil {
		out = []FlowStatus{}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func (s *Server) handleFlows(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.Flows())
}

func (s *Server) handleStatus(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	ls := []map[string]any{} // [] in JSON, not null, when draining left none
	for name, l := range s.listeners {
		st := l.cur.Load()
		protos := st.cfg.Protocols
		if protos == nil {
			protos = []string{} // a transparent or forward listener's: [], not null
		}
		m := map[string]any{"name": name, "addr": l.ln.Addr().String(), "mode": st.cfg.Mode, "protocols": protos}
		if l.inherited.IsValid() {
			m["inherited"] = true // its socket is the service manager's (socket activation)
		}
		ls = append(ls, m)
	}
	s.mu.Unlock()
	sort.Slice(ls, func(i, j int) bool { return ls[i]["name"].(string) < ls[j]["name"].(string) })
	writeJSON(w, http.StatusOK, map[string]any{
		"listeners": ls, "active_flows": s.active.Load(), "pending_connects": s.pending.Load(),
		"draining": s.draining.Load(), "tunables": s.state.Load().tunables,
		"pools": s.Pools(), "turbo_routes": s.turbo.status(),
	})
}

func (s *Server) handleTunables(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.state.Load().tunables)
}

func (s *Server) handleSetTunables(w http.ResponseWriter, r *http.Request) {
	// The body is read before reloadMu is taken: a slow client must not
	// hold up a reload.
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<16))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("reading the request: %v", err)})
		return
	}
	// Not in the middle of a Reload, which would replace what it builds on.
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	cur := s.state.Load()
	t := cur.tunables
	t.Pools = nil // the request's pools alone; merged over the current ones below
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&t); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	// One JSON object and nothing after it: a second value or stray text
	// is a malformed request, not one to apply in part.
	if _, err := dec.Token(); err != io.EOF {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "the request holds more than one JSON value"})
		return
	}
	pools := *s.pools.Load()
	asked := t.Pools
	t.Pools = maps.Clone(cur.tunables.Pools)
	if t.Pools == nil && len(asked) > 0 {
		t.Pools = map[string]Watermarks{}
	}
	named := map[string]string{}
	for _, peer := range slices.Sorted(maps.Keys(asked)) {
		ap, err := netip.ParseAddrPort(peer)
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if err != nil || pools[ap] == nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("pools: %q is no peer with a pool", peer)})
			return
		}
		key := ap.String() // as the pool names itself
		if other, dup := named[key]; dup {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("pools: %q and %q are the same peer", other, peer)})
			return
		}
		named[key] = peer
		t.Pools[key] = asked[peer]
	}
	if err := t.validate(); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	next := *cur
	next.tunables = t
	if !s.state.CompareAndSwap(cur, &next) {
		writeJSON(w, http.StatusConflict, map[string]string{"error": "configuration changed meanwhile; retry"})
		return
	}
	for _, p := range pools {
		p.poke() // new watermarks take effect now
	}
	s.log.Info("tunables changed", "tunables", fmt.Sprintf("%+v", t))
	writeJSON(w, http.StatusOK, t)
}
