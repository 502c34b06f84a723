package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tulle-net/tulle/internal/config"
	"github.com/tulle-net/tulle/internal/lease"
	"github.com/tulle-net/tulle/internal/plan"
	"github.com/tulle-net/tulle/internal/udppeers"
	"github.com/tulle-net/tulle/internal/udptun"
)

// TestUDPConstantsAgree: config and plan may not import udptun (udptun
// imports plan), so they carry copies of its numbers; this package may
// import all three.
func TestUDPConstantsAgree(t *testing.T) {
	if plan.UDPOverhead != udptun.Overhead || config.UDPOverhead != udptun.Overhead {
		t.Errorf("overhead: plan %d, config %d, udptun %d", plan.UDPOverhead, config.UDPOverhead, udptun.Overhead)
	}
	if config.DefaultUDPPort != udptun.DefaultPort {
		t.Errorf("default port: config %d, udptun %d", config.DefaultUDPPort, udptun.DefaultPort)
	}
	if len(plan.TUNName) > 15 {
		t.Errorf("TUN name %q is longer than IFNAMSIZ-1", plan.TUNName)
	}
	seen := map[string]bool{}
	for r := range udptun.NumDropReasons {
		if s := r.String(); s == "unknown" || seen[s] {
			t.Errorf("drop reason %d has label %q (unknown or duplicate)", r, s)
		} else {
			seen[s] = true
		}
	}
}

// fakeEngine stands in for *udptun.Engine: it records its peers and Close,
// and its Run fails when told to.
type fakeEngine struct {
	cfg  udptun.Config
	fail chan error

	mu     sync.Mutex
	peers  []udptun.Peer
	stats  udptun.Stats
	closed bool
	runs   int // Run calls returned
}

func (f *fakeEngine) SetPeers(p []udptun.Peer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.peers = p
}

func (f *fakeEngine) Run(ctx context.Context) error {
	defer func() { f.mu.Lock(); f.runs++; f.mu.Unlock() }()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case err := <-f.fail:
		return err
	}
}

func (f *fakeEngine) Stats() udptun.Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats
}

func (f *fakeEngine) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

func (f *fakeEngine) state() (peers []udptun.Peer, closed bool, runs int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.peers), f.closed, f.runs
}

// fakeOpener records every engine opened.
type fakeOpener struct {
	mu      sync.Mutex
	engines []*fakeEngine
	err     error
}

func (o *fakeOpener) open(cfg udptun.Config) (udpEngine, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		return nil, o.err
	}
	e := &fakeEngine{cfg: cfg, fail: make(chan error, 1)}
	o.engines = append(o.engines, e)
	return e, nil
}

func (o *fakeOpener) all() []*fakeEngine {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.engines)
}

// udpPlan computes node1's udp state with peers node2 and node3.
func udpPlan(t *testing.T, underlayMTU int, peers ...int) plan.State {
	t.Helper()
	cfg, err := config.Parse([]byte(`{"network":"10.244.0.0/16","backend":{"type":"udp"}}`))
	if err != nil {
		t.Fatal(err)
	}
	mk := func(n int) lease.Lease {
		return lease.Lease{Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(n), 0}), 24), Attrs: lease.Attrs{
			Node: "node" + string(rune('0'+n)), PublicIP: netip.AddrFrom4([4]byte{10, 250, 0, byte(10 + n)}),
			BackendType: "udp", BackendData: lease.BackendData{Port: 8285},
		}}
	}
	in := plan.Input{Config: cfg, Self: mk(1), Local: plan.Local{Underlay: "ul0", UnderlayMTU: underlayMTU, IPMasq: true}}
	for _, n := range peers {
		in.Peers = append(in.Peers, mk(n))
	}
	st, err := plan.Compute(in)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// startUDPPath runs a udpPath with fake engines until the test ends, and
// checks then that run returned and closed its engine.
func startUDPPath(t *testing.T) (*udpPath, *fakeOpener, *atomic.Int32) {
	t.Helper()
	kicks := &atomic.Int32{}
	u := newUDPPath(slog.New(slog.DiscardHandler), filepath.Join(t.TempDir(), udppeers.FileName), func() { kicks.Add(1) })
	op := &fakeOpener{}
	u.open, u.retry = op.open, 10*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- u.run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("run returned %v, want context.Canceled", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("udpPath.run did not return after cancel")
		}
		for i, e := range op.all() {
			if _, closed, runs := e.state(); !closed || runs != 1 {
				t.Errorf("engine %d: closed %t, Run returned %d times; want closed, 1 (goroutine leak?)", i, closed, runs)
			}
		}
	})
	return u, op, kicks
}

func TestUDPPathApply(t *testing.T) {
	u, op, _ := startUDPPath(t)
	ctx := context.Background()
	st := udpPlan(t, 1500, 2, 3)
	if err := u.apply(ctx, st); err != nil {
		t.Fatal(err)
	}
	es := op.all()
	if len(es) != 1 {
		t.Fatalf("%d engines opened, want 1", len(es))
	}
	c := es[0].cfg
	if c.TUNName != plan.TUNName || c.MTU != 1464 || c.Listen != netip.MustParseAddrPort("10.250.0.11:8285") ||
		c.NetworkID != 1 || c.Local != netip.MustParsePrefix("10.244.1.0/24") || c.Cluster != netip.MustParsePrefix("10.244.0.0/16") {
		t.Errorf("engine config %+v", c)
	}
	peers, _, _ := es[0].state()
	want := []udptun.Peer{
		{Subnet: netip.MustParsePrefix("10.244.2.0/24"), PublicIP: netip.MustParseAddr("10.250.0.12"), Port: 8285},
		{Subnet: netip.MustParsePrefix("10.244.3.0/24"), PublicIP: netip.MustParseAddr("10.250.0.13"), Port: 8285},
	}
	if !slices.Equal(peers, want) {
		t.Errorf("engine peers %v, want %v", peers, want)
	}
	f, err := udppeers.Read(u.file)
	if err != nil || f.Engine.MTU != 1464 || len(f.Peers) != 2 || f.Peers[1].Node != "node3" {
		t.Fatalf("udp-peers.json: %+v %v", f, err)
	}

	// Same configuration, fewer peers: same engine, new peers, file rewritten.
	if err := u.apply(ctx, udpPlan(t, 1500, 3)); err != nil {
		t.Fatal(err)
	}
	if n := len(op.all()); n != 1 {
		t.Fatalf("a peer change reopened the engine (%d engines)", n)
	}
	if peers, _, _ := es[0].state(); len(peers) != 1 || peers[0].Subnet.Addr().As4()[2] != 3 {
		t.Errorf("peers after the change: %v", peers)
	}
	if f, _ := udppeers.Read(u.file); len(f.Peers) != 1 {
		t.Errorf("udp-peers.json not rewritten: %+v", f)
	}

	// The underlay MTU changed: the engine is reopened with the new MTU
	// and keeps its peers; counters carry over.
	es[0].mu.Lock()
	es[0].stats.PacketsIn, es[0].stats.Drops[udptun.DropUnknownSender], es[0].stats.ICMPSent = 7, 2, 1
	es[0].mu.Unlock()
	if err := u.apply(ctx, udpPlan(t, 9000, 3)); err != nil {
		t.Fatal(err)
	}
	es = op.all()
	if len(es) != 2 || es[1].cfg.MTU != 9000-36 {
		t.Fatalf("engines %d, want a second one with MTU 8964", len(es))
	}
	if _, closed, runs := es[0].state(); !closed || runs != 1 {
		t.Errorf("replaced engine: closed %t, runs %d", closed, runs)
	}
	if peers, _, _ := es[1].state(); len(peers) != 1 {
		t.Errorf("reopened engine has peers %v", peers)
	}
	es[1].mu.Lock()
	es[1].stats.PacketsIn = 3
	es[1].mu.Unlock()
	s, n, used := u.stats()
	if s.PacketsIn != 10 || s.Drops[udptun.DropUnknownSender] != 2 || s.ICMPSent != 1 || n != 1 || !used {
		t.Errorf("stats across the reopen: %+v peers %d used %t; want 10 packets in, 2 unknown_sender", s, n, used)
	}

	// Backend no longer udp: engine closed, file gone.
	if err := u.close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, closed, _ := es[1].state(); !closed || u.isOpen() {
		t.Error("engine still open after close")
	}
	if _, err := udppeers.Read(u.file); !errors.Is(err, udppeers.ErrMissing) {
		t.Errorf("udp-peers.json after close: %v", err)
	}
	if u.needsClose() {
		t.Error("nothing left to close, but needsClose")
	}
	// A udp plan again: a new engine, and a later non-udp plan closes it.
	if err := u.apply(ctx, udpPlan(t, 1500, 3)); err != nil || !u.needsClose() {
		t.Fatalf("apply after close: %v, needsClose %t", err, u.needsClose())
	}
}

// TestUDPPathResume: a restarted agent opens the engine from udp-peers.json
// with the saved peers before it talks to etcd; the first plan with the
// same configuration keeps that engine.
func TestUDPPathResume(t *testing.T) {
	u, op, _ := startUDPPath(t)
	ctx := context.Background()
	u.resume(ctx) // no file: nothing
	if len(op.all()) != 0 {
		t.Fatal("resume without a file opened an engine")
	}
	st := udpPlan(t, 1500, 2, 3)
	if err := udppeers.Write(u.file, udppeers.File{Engine: engineOf(st), Peers: []udppeers.Peer{
		{Node: "node2", Subnet: netip.MustParsePrefix("10.244.2.0/24"), PublicIP: netip.MustParseAddr("10.250.0.12"), Port: 8285},
	}}); err != nil {
		t.Fatal(err)
	}
	u.resume(ctx)
	es := op.all()
	if len(es) != 1 {
		t.Fatalf("resume opened %d engines, want 1", len(es))
	}
	if peers, _, _ := es[0].state(); len(peers) != 1 || peers[0].PublicIP != netip.MustParseAddr("10.250.0.12") {
		t.Fatalf("resumed engine peers %v", peers)
	}
	if err := u.apply(ctx, st); err != nil {
		t.Fatal(err)
	}
	if len(op.all()) != 1 {
		t.Error("the first plan reopened the resumed engine")
	}
	if peers, _, _ := es[0].state(); len(peers) != 2 {
		t.Errorf("peers from etcd not applied: %v", peers)
	}
}

// TestUDPPathRunFails: when Run fails on its own, the engine is closed and
// reopened with the same configuration and peers, and a reconcile is asked
// for (the TUN device may be new).
func TestUDPPathRunFails(t *testing.T) {
	u, op, kicks := startUDPPath(t)
	if err := u.apply(context.Background(), udpPlan(t, 1500, 2)); err != nil {
		t.Fatal(err)
	}
	op.all()[0].fail <- errors.New("read tun: file descriptor in bad state")
	deadline := time.Now().Add(5 * time.Second)
	for len(op.all()) < 2 || kicks.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("engine not reopened after Run failed (%d engines, %d kicks)", len(op.all()), kicks.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	es := op.all()
	if _, closed, _ := es[0].state(); !closed {
		t.Error("failed engine not closed")
	}
	if peers, _, _ := es[1].state(); len(peers) != 1 || es[1].cfg != es[0].cfg {
		t.Errorf("reopened engine: cfg %+v peers %v", es[1].cfg, peers)
	}
}

// TestUDPPathOpenFails: a failed open is returned to the reconcile (which
// retries on its next trigger) and leaves nothing open.
func TestUDPPathOpenFails(t *testing.T) {
	u, op, _ := startUDPPath(t)
	op.err = errors.ErrUnsupported
	err := u.apply(context.Background(), udpPlan(t, 1500, 2))
	if !errors.Is(err, errors.ErrUnsupported) || !strings.Contains(err.Error(), "open udp engine") {
		t.Fatalf("apply with a failing open: %v", err)
	}
	if u.isOpen() {
		t.Error("an engine is open")
	}
	op.mu.Lock()
	op.err = nil
	op.mu.Unlock()
	if err := u.apply(context.Background(), udpPlan(t, 1500, 2)); err != nil || !u.isOpen() {
		t.Fatalf("second apply: %v, open %t", err, u.isOpen())
	}
}

// gather renders every sample of reg as `name{k="v"} value`, sorted.
func gather(t *testing.T, reg *prometheus.Registry) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			name := mf.GetName()
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			out = append(out, fmt.Sprintf("%s %g", name, v))
		}
	}
	slices.Sort(out)
	return out
}

func TestUDPMetrics(t *testing.T) {
	u, _, _ := startUDPPath(t)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(newUDPCollector(u))
	if got := gather(t, reg); len(got) != 0 {
		t.Fatalf("udp metrics before any engine: %v; want none", got)
	}
	if err := u.apply(context.Background(), udpPlan(t, 1500, 2, 3)); err != nil {
		t.Fatal(err)
	}
	u.mu.Lock()
	e := u.eng.(*fakeEngine)
	u.mu.Unlock()
	e.mu.Lock()
	e.stats = udptun.Stats{PacketsIn: 5, BytesIn: 500, PacketsOut: 6, BytesOut: 600, ICMPSent: 4, ICMPRateLimited: 9,
		SuperPacketsIn: 7, SuperPacketsOut: 8, Coalesced: 2, CoalesceFailed: 1}
	e.stats.Drops[udptun.DropUnknownSender] = 3
	e.stats.Drops[udptun.DropNoRoute] = 1
	e.mu.Unlock()
	want := []string{
		`tulle_udp_bytes_total{direction="in"} 500`,
		`tulle_udp_bytes_total{direction="out"} 600`,
		`tulle_udp_coalesced_total{result="merged"} 2`,
		`tulle_udp_coalesced_total{result="refused"} 1`,
		`tulle_udp_super_packets_total{direction="in"} 7`,
		`tulle_udp_super_packets_total{direction="out"} 8`,
		`tulle_udp_icmp_errors_total{result="rate_limited"} 9`,
		`tulle_udp_icmp_errors_total{result="sent"} 4`,
		`tulle_udp_packets_total{direction="in"} 5`,
		`tulle_udp_packets_total{direction="out"} 6`,
		`tulle_udp_peers 2`,
	}
	// Every reason is exported, also at 0, so a rate() never starts empty.
	for r := range udptun.NumDropReasons {
		v := 0
		switch r {
		case udptun.DropUnknownSender:
			v = 3
		case udptun.DropNoRoute:
			v = 1
		}
		want = append(want, fmt.Sprintf("tulle_udp_drops_total{reason=%q} %d", r.String(), v))
	}
	slices.Sort(want)
	if got := gather(t, reg); !slices.Equal(got, want) {
		t.Fatalf("metrics:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func TestRetryBackoff(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want time.Duration
	}{
		{1, 100 * time.Millisecond}, {2, 200 * time.Millisecond}, {4, 800 * time.Millisecond},
		{9, 25600 * time.Millisecond}, {10, 30 * time.Second}, {1000, 30 * time.Second},
	} {
		if got := retryBackoff(tc.n, 30*time.Second); got != tc.want {
			t.Errorf("retryBackoff(%d) = %s, want %s", tc.n, got, tc.want)
		}
	}
}
