package lab

import (
	"context"
	"fmt"
	"net/http"
)

// Metrics scrapes a node's agent /metrics (from inside the node's
// namespace) and returns every sample by its name and labels as written,
// e.g. `tulle_udp_drops_total{reason="unknown_sender"}`.
func (l *Lab) Metrics(ctx context.Context, node string) (map[string]float64, error) {
	i, err := l.nodeIndex(node)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	ns := l.st.Nodes[i-1].NS
	l.mu.Unlock()
	c := nsHTTPClient(ns)
	defer c.CloseIdleConnections()
	url := "http://" + agentHealthAddr() + "/metrics"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s of %s: %w", url, node, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s of %s: %s", url, node, resp.Status)
	}
	m, err := parseMetrics(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("scrape %s of %s: %w", url, node, err)
	}
	return m, nil
}
