package relay

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	active  *prometheus.GaugeVec
	flows   *prometheus.CounterVec
	ended   sync.Map // listener → *[2]atomic.Int64: bytes up, down of ended flows
	connect *prometheus.HistogramVec
	errors  *prometheus.CounterVec
	refused *prometheus.CounterVec
	path    *prometheus.CounterVec
	early   *prometheus.CounterVec
	mptcp   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, s *Server) (*metrics, error) {
	m := &metrics{
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "halfway_flows_active", Help: "Flows being relayed, by listener and route.",
		}, []string{"listener", "route"}),
		flows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "halfway_flows_total", Help: "Flows ended, by listener, route and how they ended.",
		}, []string{"listener", "route", "result"}),
		connect: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "halfway_connect_seconds", Help: "Time to open the next leg, to a server or through relays.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"leg"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "halfway_errors_total", Help: "Errors by kind.",
		}, []string{"kind"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "halfway_refused_total", Help: "Connections refused before relaying, by listener and reason.",
		}, []string{"listener", "reason"}),
	}
	m.path = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "halfway_datapath_total", Help: "Flow directions by the mechanism that moved their bytes (splice or copy).",
	}, []string{"path"})
	m.early = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "halfway_early_syn_total", Help: "Clients' SYNs seen by early-SYN listeners: dialed (next leg started), claimed (by the accepted flow), retransmission (dial already pending), skipped (table or connects full), expired (no accept claimed it).",
	}, []string{"result"})
	m.mptcp = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "halfway_mptcp_legs_total", Help: "Flow legs that asked for Multipath TCP, by listener, leg (client, server) and result (mptcp, fallback to TCP).",
	}, []string{"listener", "leg", "result"})
	pending := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "halfway_connects_pending", Help: "Next-leg connects in progress.",
	}, func() float64 { return float64(s.pending.Load()) })
	bytes := &bytesCollector{s: s, m: m}
	pools := &poolCollector{s: s}
	for _, c := range []prometheus.Collector{m.active, m.flows, bytes, m.connect, m.errors, m.refused, m.path, m.early, m.mptcp, pending, pools} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// addEnded adds an ended flow's bytes to its listener's totals.
func (m *metrics) addEnded(listener string, up, down int64) {
	v, _ := m.ended.LoadOrStore(listener, new([2]atomic.Int64))
	t := v.(*[2]atomic.Int64)
	t[0].Add(up)
	t[1].Add(down)
}

// bytesCollector reports halfway_bytes_total as it grows: the ended flows'
// totals plus what the active flows have moved so far, read at scrape time
// from the counters the data path keeps, so long flows show progress.
type bytesCollector struct {
	s *Server
	m *metrics
}

var bytesDesc = prometheus.NewDesc("halfway_bytes_total",
	"Bytes relayed, up (client to server) and down, by listener; active flows included.", []string{"listener", "direction"}, nil)

func (b *bytesCollector) Describe(ch chan<- *prometheus.Desc) { ch <- bytesDesc }

func (b *bytesCollector) Collect(ch chan<- prometheus.Metric) {
	sums := map[string]*[2]int64{}
	get := func(l string) *[2]int64 {
		if sums[l] == nil {
			sums[l] = new([2]int64)
		}
		return sums[l]
	}
	// Under the lock that moves an ending flow from the active set to the
	// totals (Server.finish), so each byte is counted exactly once and the
	// counter never goes backwards.
	b.s.mu.Lock()
	for _, f := range b.s.flows {
		t := get(f.listener)
		t[0] += f.up.Load()
		t[1] += f.down.Load()
	}
	b.m.ended.Range(func(k, v any) bool {
		t, e := get(k.(string)), v.(*[2]atomic.Int64)
		t[0] += e[0].Load()
		t[1] += e[1].Load()
		return true
	})
	b.s.mu.Unlock()
	for l, t := range sums {
		ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(t[0]), l, "up")
		ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(t[1]), l, "down")
	}
}

// poolCollector reports the connection pools at scrape time.
type poolCollector struct{ s *Server }

var (
	poolIdleDesc = prometheus.NewDesc("halfway_pool_idle",
		"Pre-established connections waiting in a peer's pool.", []string{"peer"}, nil)
	poolOpeningDesc = prometheus.NewDesc("halfway_pool_opening",
		"Pool connections being opened to a peer.", []string{"peer"}, nil)
	poolEventsDesc = prometheus.NewDesc("halfway_pool_connections_total",
		"Pool connections by event: opened, failed (to open), taken (by a flow), missed (a flow found none), dead (found closed), expired (idle too long).",
		[]string{"peer", "event"}, nil)
)

func (p *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- poolIdleDesc
	ch <- poolOpeningDesc
	ch <- poolEventsDesc
}

func (p *poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range p.s.Pools() {
		ch <- prometheus.MustNewConstMetric(poolIdleDesc, prometheus.GaugeValue, float64(st.Idle), st.Peer)
		ch <- prometheus.MustNewConstMetric(poolOpeningDesc, prometheus.GaugeValue, float64(st.Opening), st.Peer)
		for _, e := range []struct {
			name string
			v    int64
		}{{"opened", st.Opened}, {"failed", st.Failed}, {"taken", st.Taken}, {"missed", st.Missed}, {"dead", st.Dead}, {"expired", st.Expired}} {
			ch <- prometheus.MustNewConstMetric(poolEventsDesc, prometheus.CounterValue, float64(e.v), st.Peer, e.name)
		}
	}
}
