package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics is per agent, on its own registry (no global state).
type metrics struct {
	reg        *prometheus.Registry
	lease      *prometheus.GaugeVec
	peers      prometheus.Gauge
	reconciles *prometheus.CounterVec
	changes    prometheus.Counter
	duration   prometheus.Histogram
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		lease: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tulle_lease_info", Help: "The subnet this node holds (value 1).",
		}, []string{"subnet"}),
		peers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tulle_peer_routes", Help: "Routes to peer subnets in the desired state.",
		}),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tulle_reconciles_total", Help: "Reconcile runs by result.",
		}, []string{"result"}),
		changes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tulle_reconcile_changes_total", Help: "Kernel changes made by reconciles (drift healed or peers changed).",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tulle_reconcile_duration_seconds", Help: "Time to compute and apply the desired state.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 8),
		}),
	}
	m.reg.MustRegister(m.lease, m.peers, m.reconciles, m.changes, m.duration,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) setLease(subnet string) {
	m.lease.Reset()
	m.lease.WithLabelValues(subnet).Set(1)
}

func (m *metrics) reconciled(ok bool, changes int, d time.Duration) {
	result := "ok"
	if !ok {
		result = "error"
	}
	m.reconciles.WithLabelValues(result).Inc()
	m.changes.Add(float64(changes))
	m.duration.Observe(d.Seconds())
}
