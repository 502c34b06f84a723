package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

type healthServer struct {
	srv *http.Server
	ln  net.Listener
}

// serveHealth binds addr now, so a port clash fails the agent at start-up.
//
//	/healthz  200 while the reconcile loop has succeeded within 3 resync periods
//	/readyz   200 once the dataplane is programmed and subnet.json written
//	/metrics  Prometheus metrics
func (a *Agent) serveHealth(addr string) (*healthServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen for health on %s (choose another --health-addr): %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		last := a.lastOK.Load()
		if !a.ready.Load() {
			http.Error(w, "starting", http.StatusOK) // alive, not ready yet
			return
		}
		if age := time.Since(time.Unix(0, last)); age > 3*a.o.Resync {
			http.Error(w, fmt.Sprintf("last successful reconcile %s ago", age.Round(time.Second)), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("/metrics", promhttp.HandlerFor(a.m.reg, promhttp.HandlerOpts{}))
	return &healthServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, ln: ln}, nil
}

func (h *healthServer) run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- h.srv.Serve(h.ln) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = h.srv.Shutdown(sctx)
		<-errc
		return ctx.Err()
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("serve health: %w", err)
	}
}
