package relay

import (
	"sync"
	"sync/atomic"

	"halfway/datapath"
	hm "halfway/metrics"
)

type metrics struct {
	active  *hm.GaugeVec
	flows   *hm.CounterVec
	ended   sync.Map // listener → *[2]atomic.Int64: bytes up, down of ended flows
	connect *hm.HistogramVec
	errors  *hm.CounterVec
	refused *hm.CounterVec
	path    *hm.CounterVec
	early   *hm.CounterVec
	mptcp   *hm.CounterVec
	plain   *hm.CounterVec
}

func newMetrics(reg *hm.Registry, s *Server) *metrics {
	m := &metrics{
		active: reg.Gauge("halfway_flows_active", "Flows being relayed, by listener and route.", "listener", "route"),
		flows:  reg.Counter("halfway_flows_total", "Flows ended, by listener, route and how they ended.", "listener", "route", "result"),
		connect: reg.Histogram("halfway_connect_seconds", "Time to open the next leg, to a server or through relays.",
			hm.ExponentialBuckets(0.0005, 2, 16), "leg"),
		errors:  reg.Counter("halfway_errors_total", "Errors by kind.", "kind"),
		refused: reg.Counter("halfway_refused_total", "Connections refused before relaying, by listener and reason.", "listener", "reason"),
		path:    reg.Counter("halfway_datapath_total", "Flow directions by the mechanism that moved their bytes: splice, buffer (the splice path's directions that carried only messages, read and sent through a buffer), sockmap or copy.", "path"),
		early: reg.Counter("halfway_early_syn_total", "Clients' SYNs seen by early-SYN listeners: dialed (next leg started), claimed (by the accepted flow), retransmission (dial already pending), late (its flow was accepted already), missed (dropped by the sniffer's socket, its buffer full: the flow dials at accept), skipped (table, the client's share or connects full), expired (no accept claimed it), dropped (its flow was refused before it connected, its listener stopped early SYN, or a reload came between the SYN and the accept).",
			"result"),
		plain: reg.Counter("halfway_flows_plain_total", "Flows admitted as plain: accepted and connected with raw system calls, never in the Go runtime's poller; by listener.", "listener"),
		mptcp: reg.Counter("halfway_mptcp_legs_total", "Flow legs that asked for Multipath TCP, counted as their flow ends, by listener, leg (client, server) and result (mptcp, or fallback to TCP: at the start, or later, when a middlebox stripped the options of data).",
			"listener", "leg", "result"),
	}
	reg.Func("halfway_memory_releases_total", "Times the relay gave memory back (memory.release): once started, then after idle spells.", hm.CounterType, nil, func(emit func(float64, ...string)) {
		emit(float64(s.mem.releases.Load()))
	})
	reg.Func("halfway_memory_released_binary_bytes_total", "Resident pages of the relay's binary it unmapped (they stay in the page cache).", hm.CounterType, nil, func(emit func(float64, ...string)) {
		emit(float64(s.mem.binaryBytes.Load()))
	})
	reg.Func("halfway_mptcp_subflow_options_total", "MPTCP listeners' listening subflows given the client leg's options that MPTCP sockets refuse (rto_min, thin_linear_timeouts, user_timeout, pacing), which their connections inherit, at start and on reloads; by result: set, or failed (the kernel refused one or more).",
		hm.CounterType, []string{"result"}, func(emit func(float64, ...string)) {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.subflows == nil {
				return
			}
			if set, failed, err := s.subflows.Counts(); err == nil {
				emit(float64(set), "set")
				emit(float64(failed), "failed")
			}
		})
	reg.Func("halfway_connects_pending", "Next-leg connects in progress.", hm.GaugeType, nil, func(emit func(float64, ...string)) {
		emit(float64(s.pending.Load()))
	})
	reg.Func("halfway_bytes_total", "Bytes relayed, up (client to server) and down, by listener; active flows included.",
		hm.CounterType, []string{"listener", "direction"}, func(emit func(float64, ...string)) {
			for l, t := range m.bytes(s) {
				emit(float64(t[0]), l, "up")
				emit(float64(t[1]), l, "down")
			}
		})
	reg.Func("halfway_pool_idle", "Pre-established connections waiting in a peer's pool.", hm.GaugeType, []string{"peer"}, func(emit func(float64, ...string)) {
		for _, st := range s.Pools() {
			emit(float64(st.Idle), st.Peer)
		}
	})
	reg.Func("halfway_pool_opening", "Pool connections being opened to a peer.", hm.GaugeType, []string{"peer"}, func(emit func(float64, ...string)) {
		for _, st := range s.Pools() {
			emit(float64(st.Opening), st.Peer)
		}
	})
	reg.Func("halfway_pool_connections_total", "Pool connections by event: opened, failed (to open), taken (by a flow), missed (a flow found none), dead (found closed), expired (idle too long).",
		hm.CounterType, []string{"peer", "event"}, func(emit func(float64, ...string)) {
			for _, st := range s.Pools() {
				for _, e := range []struct {
					name string
					v    int64
				}{{"opened", st.Opened}, {"failed", st.Failed}, {"taken", st.Taken}, {"missed", st.Missed}, {"dead", st.Dead}, {"expired", st.Expired}} {
					emit(float64(e.v), st.Peer, e.name)
				}
			}
		})
	// The data path is the process's, shared by every Server in it.
	reg.Func("halfway_datapath_parked", "Flow directions waiting for bytes in the data path's epoll sets, holding no goroutine.", hm.GaugeType, nil, func(emit func(float64, ...string)) {
		emit(float64(datapath.ReadStats().Parked))
	})
	reg.Func("halfway_datapath_detached", "Flows whose sockets wait in the data path's epoll sets alone, out of the Go runtime's poller: plain flows, and idle ones (detach_after).", hm.GaugeType, nil, func(emit func(float64, ...string)) {
		emit(float64(datapath.ReadStats().Detached))
	})
	reg.Func("halfway_datapath_attaches_total", "Detached flows put back into the Go runtime's poller, to wait on a goroutine (a burst, a full destination).", hm.CounterType, nil, func(emit func(float64, ...string)) {
		emit(float64(datapath.ReadStats().Attaches))
	})
	reg.Func("halfway_datapath_wakes_total", "Parked flow directions woken by bytes (or a FIN or reset) on their socket.", hm.CounterType, nil, func(emit func(float64, ...string)) {
		emit(float64(datapath.ReadStats().Wakes))
	})
	reg.Func("halfway_datapath_handoffs_total", "Woken flow directions that went on on a goroutine of their own (a full destination, or a burst) rather than on their epoll set's wait loop.", hm.CounterType, nil, func(emit func(float64, ...string)) {
		emit(float64(datapath.ReadStats().Handoffs))
	})
	reg.Func("halfway_datapath_big_pipes", "Pipes grown to a megabyte for flow directions that carry bulk, in use or pooled.", hm.GaugeType, nil, func(emit func(float64, ...string)) {
		emit(float64(datapath.ReadStats().BigPipes))
	})
	reg.Func("halfway_datapath_sockmap_flows_total", "Flows whose bytes the sockmap program moved in the kernel (data_path: sockmap).", hm.CounterType, nil, func(emit func(float64, ...string)) {
		emit(float64(datapath.ReadStats().SockmapFlows))
	})
	reg.Func("halfway_datapath_sockmap_takeovers_total", "Sockmap flow directions taken over by user space: at their FIN, or held when their destination fell behind.", hm.CounterType, nil, func(emit func(float64, ...string)) {
		emit(float64(datapath.ReadStats().SockmapTakeovers))
	})
	return m
}

// addEnded adds an ended flow's bytes to its listener's totals.
func (m *metrics) addEnded(listener string, up, down int64) {
	v, ok := m.ended.Load(listener)
	if !ok {
		v, _ = m.ended.LoadOrStore(listener, new([2]atomic.Int64))
	}
	t := v.(*[2]atomic.Int64)
	t[0].Add(up)
	t[1].Add(down)
}

// bytes is halfway_bytes_total as it grows: the ended flows' totals plus
// what the active flows have moved so far, read at scrape time from the
// counters the data path keeps, so long flows show progress.
func (m *metrics) bytes(s *Server) map[string]*[2]int64 {
	sums := map[string]*[2]int64{}
	get := func(l string) *[2]int64 {
		if sums[l] == nil {
			sums[l] = new([2]int64)
		}
		return sums[l]
	}
	// Under every lock that moves an ending flow from the active set to
	// the totals (Server.finish), so each byte is counted exactly once and
	// the counter never goes backwards.
	s.table.lockAll()
	defer s.table.unlockAll()
	for i := range s.table.shards {
		for _, f := range s.table.shards[i].flows {
			t := get(f.listener)
			t[0] += f.up.Load()
			t[1] += f.down.Load()
		}
	}
	m.ended.Range(func(k, v any) bool {
		t, e := get(k.(string)), v.(*[2]atomic.Int64)
		t[0] += e[0].Load()
		t[1] += e[1].Load()
		return true
	})
	return sums
}
