package relay

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	active  *prometheus.GaugeVec
	flows   *prometheus.CounterVec
	bytes   *prometheus.CounterVec
	connect *prometheus.HistogramVec
	errors  *prometheus.CounterVec
	refused *prometheus.CounterVec
	path    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, s *Server) (*metrics, error) {
	m := &metrics{
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "halfway_flows_active", Help: "Flows being relayed, by listener and route.",
		}, []string{"listener", "route"}),
		flows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "halfway_flows_total", Help: "Flows ended, by listener, route and how they ended.",
		}, []string{"listener", "route", "result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "halfway_bytes_total", Help: "Bytes relayed by ended flows, up (client to server) and down.",
		}, []string{"listener", "direction"}),
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
	pending := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "halfway_connects_pending", Help: "Next-leg connects in progress.",
	}, func() float64 { return float64(s.pending.Load()) })
	for _, c := range []prometheus.Collector{m.active, m.flows, m.bytes, m.connect, m.errors, m.refused, m.path, pending} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
