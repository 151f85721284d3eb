package relay

import (
	"errors"
	"slices"
	"strings"

	"halfway/sockopt"
)

// subflowOptions are the leg's options that Multipath TCP sockets refuse;
// the subflows of MPTCP listeners' connections get them instead.
func (leg LegConfig) subflowOptions() sockopt.SubflowOptions {
	return sockopt.SubflowOptions{RTOMin: leg.RTOMin.D(), UserTimeout: leg.UserTimeout.D(), ThinTimeouts: leg.ThinTimeouts, Pacing: leg.Pacing}
}

// wantSubflows tells whether cfg's MPTCP listeners need their subflows
// given options (sockopt.Subflows), and which.
func wantSubflows(cfg *Config) (sockopt.SubflowOptions, bool) {
	o := cfg.Legs.Client.subflowOptions()
	if o.Zero() || !slices.ContainsFunc(cfg.Listeners, func(lc ListenerConfig) bool { return lc.MPTCP }) {
		return o, false
	}
	return o, len(mptcpRefuses(cfg.Legs.Client)) > 0
}

// loadSubflows loads the iterator that gives MPTCP subflows the client
// leg's options, when cfg first needs it (want, from wantSubflows). Where
// it cannot load, the clients go without them, and the log says so.
// Under s.mu.
func (s *Server) loadSubflows(cfg *Config, want bool) {
	if !want || s.subflows != nil {
		return
	}
	sf, err := sockopt.OpenSubflows()
	if err != nil {
		for _, w := range cfg.Warnings() {
			s.log.Warn(w + "; the relay could not set them on the subflows: " + err.Error())
		}
		return
	}
	s.subflows = sf
	s.log.Info("MPTCP listeners' subflows get the client leg's options that MPTCP sockets refuse (BPF TCP iterator)")
}

// applySubflows gives the MPTCP listeners' listening subflows cfg's
// options o (want, from wantSubflows), which their connections inherit; a
// listener given some before goes back to the kernel's defaults when cfg
// has none. Under s.mu, with every listener of cfg open: a new listener's
// first connections, in the moment before, go without.
func (s *Server) applySubflows(cfg *Config, o sockopt.SubflowOptions, want bool) {
	for _, l := range s.listeners {
		if !l.cfg.MPTCP || s.subflows == nil || (l.subflowOpts == nil && !want) ||
			(l.subflowOpts != nil && *l.subflowOpts == o) {
			continue
		}
		var n int
		var err error
		if rc, cerr := l.ln.SyscallConn(); cerr != nil {
			err = cerr
		} else if cerr := rc.Control(func(fd uintptr) { n, err = s.subflows.Set(int(fd), o) }); cerr != nil {
			err = cerr
		}
		if err == nil && n == 0 {
			err = errors.New("no listening subflow at its address")
		}
		if err != nil {
			s.log.Warn("legs.client: MPTCP subflows go without "+strings.Join(mptcpRefuses(cfg.Legs.Client), ", "), "listener", l.cfg.Name, "err", err)
			continue
		}
		l.subflowOpts = &o
		if l.inherited.IsValid() {
			s.inheritedSubflows[l.inherited] = &o
		}
	}
}

// closeSubflows frees the subflow options' iterator, when loaded.
func (s *Server) closeSubflows() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.subflows != nil {
		if err := s.subflows.Close(); err != nil {
			s.log.Error("subflow options", "err", err)
		}
		s.subflows = nil
	}
}
