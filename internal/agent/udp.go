package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tulle-net/tulle/internal/logkey"
	"github.com/tulle-net/tulle/internal/plan"
	"github.com/tulle-net/tulle/internal/udppeers"
	"github.com/tulle-net/tulle/internal/udptun"
)

// udpEngine is what the agent uses of *udptun.Engine (tests use a fake).
// Contract as udptun's: methods are safe for concurrent use; Run returns
// when its ctx ends; Close releases the socket and TUN fd but leaves the
// persistent device and its routes.
type udpEngine interface {
	SetPeers([]udptun.Peer)
	Run(ctx context.Context) error
	Stats() udptun.Stats
	Close() error
}

func openUDPTun(cfg udptun.Config) (udpEngine, error) {
	e, err := udptun.Open(cfg)
	if err != nil {
		return nil, err
	}
	return e, nil
}

// udpRetry is how long udpPath.run waits before reopening an engine whose
// Run failed on its own.
const udpRetry = time.Second

// udpPath runs the udp backend's engine for the agent. With the udp backend
// the agent process is the data path, so an engine must be forwarding as
// early as possible after a restart: resume opens it from udp-peers.json
// before etcd is reachable, and the reconcile loop then replaces its
// configuration and peers with what etcd says.
//
//	reconcile loop --ensure(cfg) / stop / reopen--> reqs --> run: opens, runs and closes engines
//	reconcile loop --setPeers--> engine.SetPeers + udp-peers.json (when changed)
//	/metrics ------------------> stats: engine.Stats + counters of engines closed before
//
// run is the only goroutine that opens or closes an engine, and it owns the
// goroutine running the engine's Run. An engine is replaced only when its
// configuration changes (the backend's port or network id, the node's
// subnet or public IP, the underlay MTU), when the dataplane finds its TUN
// device gone, or when its Run fails.
type udpPath struct {
	log    *slog.Logger
	engLog *slog.Logger // the engine's (it adds its own component)
	file   string       // udp-peers.json
	// open opens an engine in the calling thread's network namespace
	// (udptun.Open; tests swap it before run starts).
	open func(udptun.Config) (udpEngine, error)
	// kick asks the agent for a reconcile: a reopened engine may have made
	// a fresh TUN device, which needs its MTU, address and route.
	kick func()
	// retry is the wait before reopening a failed engine (udpRetry).
	retry time.Duration
	reqs  chan udpReq

	mu    sync.Mutex // guards the fields below
	eng   udpEngine  // the open engine; nil: none
	peers []udptun.Peer
	// saved is what udp-peers.json holds (nil: not written by this process).
	saved *udppeers.File
	// base holds the counters of engines closed earlier, so the metrics
	// stay monotonic across a reopen.
	base udptun.Stats
	// used: an engine was open at some point; the metrics are exported.
	used bool
	// closed: close has run since the last engine was opened, so there
	// is neither an engine nor udp-peers.json to clean up.
	closed bool
}

// udpReq asks run to open (or keep) an engine with cfg, to reopen it, or
// (cfg nil) to close it.
type udpReq struct {
	cfg    *udppeers.Engine
	reopen bool
	reply  chan error
}

func newUDPPath(log *slog.Logger, file string, kick func()) *udpPath {
	return &udpPath{
		log:    log.With(logkey.Component, "udp"),
		engLog: log,
		file:   file,
		open:   openUDPTun,
		kick:   kick,
		retry:  udpRetry,
		reqs:   make(chan udpReq),
	}
}

// udpRun is one open engine and its Run goroutine.
type udpRun struct {
	eng    udpEngine
	cfg    udppeers.Engine
	cancel context.CancelFunc
	done   chan error // Run's result, then closed
}

// run owns the engines until ctx ends, then closes the open one (its TUN
// device and routes stay, so a restarted agent re-attaches to them).
func (u *udpPath) run(ctx context.Context) error {
	var (
		cur   *udpRun
		want  *udppeers.Engine // what an engine should be open with (nil: none)
		retry <-chan time.Time
	)
	defer func() { u.stop(cur) }()
	for {
		var died chan error
		if cur != nil {
			died = cur.done
		}
		select {
		case <-ctx.Done():
			return ctx.Err()

		case req := <-u.reqs:
			switch {
			case req.cfg == nil:
				u.stop(cur)
				cur, want, retry = nil, nil, nil
				req.reply <- nil
			case cur == nil || req.reopen || cur.cfg != *req.cfg:
				u.stop(cur)
				cur, retry = nil, nil
				c := *req.cfg
				want = &c
				var err error
				cur, err = u.start(ctx, c)
				req.reply <- err
			default:
				req.reply <- nil
			}

		case err := <-died:
			// Run ended by itself: the TUN device or the socket failed.
			u.log.Error("udp engine stopped; reopening", logkey.Err, err, "in", u.retry)
			u.stop(cur)
			cur, retry = nil, time.After(u.retry)

		case <-retry:
			retry = nil
			if want == nil || cur != nil {
				continue
			}
			var err error
			if cur, err = u.start(ctx, *want); err != nil {
				u.log.Error("reopen udp engine", logkey.Err, err, "retry in", u.retry)
				retry = time.After(u.retry)
				continue
			}
			u.log.Info("udp engine reopened", logkey.Ifname, want.TUN)
			u.kick()
		}
	}
}

// start opens an engine, gives it the current peers and runs it.
func (u *udpPath) start(ctx context.Context, cfg udppeers.Engine) (*udpRun, error) {
	eng, err := u.open(udptun.Config{
		TUNName: cfg.TUN, MTU: cfg.MTU, Listen: cfg.Listen, NetworkID: cfg.NetworkID,
		Local: cfg.Local, Cluster: cfg.Cluster, MaxRXPacket: cfg.MaxRXPacket, Logger: u.engLog,
	})
	if err != nil {
		return nil, fmt.Errorf("open udp engine on %s (tun %s): %w", cfg.Listen, cfg.TUN, err)
	}
	u.mu.Lock()
	eng.SetPeers(slices.Clone(u.peers))
	u.eng, u.used, u.closed = eng, true, false
	u.mu.Unlock()
	rctx, cancel := context.WithCancel(ctx)
	r := &udpRun{eng: eng, cfg: cfg, cancel: cancel, done: make(chan error, 1)}
	go func() {
		defer close(r.done)
		r.done <- eng.Run(rctx)
	}()
	u.log.Info("udp engine open", logkey.Ifname, cfg.TUN, "listen", cfg.Listen, "mtu", cfg.MTU, "network_id", cfg.NetworkID, "max_rx_packet", cfg.MaxRXPacket)
	return r, nil
}

// stop ends r's Run, waits for it and closes the engine, keeping its
// counters. A nil r is a no-op.
func (u *udpPath) stop(r *udpRun) {
	if r == nil {
		return
	}
	u.mu.Lock()
	if u.eng == r.eng {
		u.eng = nil
	}
	u.mu.Unlock()
	r.cancel()
	// Close also unblocks a Run stuck in a read that ignores ctx.
	if err := r.eng.Close(); err != nil {
		u.log.Warn("close udp engine", logkey.Err, err)
	}
	for range r.done { // Run's result, if run did not take it
	}
	s := r.eng.Stats()
	u.mu.Lock()
	u.base = addStats(u.base, s)
	u.mu.Unlock()
}

func addStats(a, b udptun.Stats) udptun.Stats {
	a.PacketsIn += b.PacketsIn
	a.BytesIn += b.BytesIn
	a.PacketsOut += b.PacketsOut
	a.BytesOut += b.BytesOut
	for i := range a.Drops {
		a.Drops[i] += b.Drops[i]
	}
	a.ICMPSent += b.ICMPSent
	a.ICMPRateLimited += b.ICMPRateLimited
	a.SuperPacketsIn += b.SuperPacketsIn
	a.SuperPacketsOut += b.SuperPacketsOut
	a.Coalesced += b.Coalesced
	a.CoalesceFailed += b.CoalesceFailed
	return a
}

// request hands req to run and waits for its answer.
func (u *udpPath) request(ctx context.Context, req udpReq) error {
	req.reply = make(chan error, 1)
	select {
	case u.reqs <- req:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-req.reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// engineOf is the engine configuration a plan asks for.
func engineOf(st plan.State) udppeers.Engine {
	return udppeers.Engine{
		TUN: st.TUN.Name, MTU: st.TUN.MTU, Listen: st.UDP.Listen, NetworkID: st.UDP.NetworkID,
		Local: st.UDP.Local, Cluster: st.UDP.Cluster, MaxRXPacket: st.UDP.MaxRXPacket,
	}
}

// apply makes the engine match a udp plan: open (or reopen, if its
// configuration changed), then the peers. It returns once the engine is
// open, so its TUN device exists before the dataplane's Apply.
func (u *udpPath) apply(ctx context.Context, st plan.State) error {
	cfg := engineOf(st)
	if err := u.request(ctx, udpReq{cfg: &cfg}); err != nil {
		return err
	}
	f := udppeers.File{Engine: cfg, Peers: make([]udppeers.Peer, 0, len(st.UDP.Peers))}
	peers := make([]udptun.Peer, 0, len(st.UDP.Peers))
	for _, p := range st.UDP.Peers {
		peers = append(peers, udptun.Peer{Subnet: p.Subnet, PublicIP: p.PublicIP, Port: p.Port})
		f.Peers = append(f.Peers, udppeers.Peer{Node: p.Node, Subnet: p.Subnet, PublicIP: p.PublicIP, Port: p.Port})
	}
	return u.setPeers(peers, f)
}

// setPeers gives the engine peers (when they changed) and persists f (when
// it changed).
func (u *udpPath) setPeers(peers []udptun.Peer, f udppeers.File) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if !slices.Equal(u.peers, peers) {
		u.peers = peers
		if u.eng != nil {
			u.eng.SetPeers(slices.Clone(peers))
		}
		u.log.Debug("udp peers set", logkey.Count, len(peers))
	}
	if u.saved != nil && u.saved.Engine == f.Engine && slices.Equal(u.saved.Peers, f.Peers) {
		return nil
	}
	if err := udppeers.Write(u.file, f); err != nil {
		return fmt.Errorf("persist udp peers for the next restart: %w", err)
	}
	u.saved = &f
	return nil
}

// reopen closes the engine and opens it again with the same configuration
// and peers: the engine re-creates a TUN device deleted behind its back.
func (u *udpPath) reopen(ctx context.Context, st plan.State) error {
	cfg := engineOf(st)
	return u.request(ctx, udpReq{cfg: &cfg, reopen: true})
}

// close stops the engine and forgets the persisted peers: the backend is no
// longer udp, so the next start must not open an engine either. The
// dataplane then removes the stale TUN device.
func (u *udpPath) close(ctx context.Context) error {
	if err := u.request(ctx, udpReq{}); err != nil {
		return err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.peers, u.saved = nil, nil
	if err := udppeers.Remove(u.file); err != nil {
		return err
	}
	u.closed = true
	return nil
}

// isOpen reports whether an engine is open.
func (u *udpPath) isOpen() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.eng != nil
}

// needsClose reports whether a plan without udp leaves something to clean
// up: an open engine, or (once per process) a udp-peers.json of an earlier
// run whose engine could not be opened.
func (u *udpPath) needsClose() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.eng != nil || !u.closed
}

// resume opens the engine from udp-peers.json, if the last run left one,
// so packets flow again before etcd answers. A missing file is normal (not
// udp, or a first start); an unusable one is logged and ignored.
func (u *udpPath) resume(ctx context.Context) {
	f, err := udppeers.Read(u.file)
	switch {
	case errors.Is(err, udppeers.ErrMissing):
		return
	case err != nil:
		u.log.Warn("ignoring the saved udp peers; the engine opens once etcd answers", logkey.Err, err)
		return
	}
	start := time.Now()
	peers := make([]udptun.Peer, 0, len(f.Peers))
	for _, p := range f.Peers {
		peers = append(peers, udptun.Peer{Subnet: p.Subnet, PublicIP: p.PublicIP, Port: p.Port})
	}
	u.mu.Lock()
	u.peers = peers // given to the engine when it opens
	u.mu.Unlock()
	if err := u.request(ctx, udpReq{cfg: &f.Engine}); err != nil {
		u.log.Warn("open udp engine from the saved peers; it opens once etcd answers", logkey.Path, u.file, logkey.Err, err)
		return
	}
	u.mu.Lock()
	u.saved = &f
	u.mu.Unlock()
	u.log.Info("udp engine resumed from the saved peers, before etcd", logkey.Path, u.file, "peers", len(peers), logkey.Duration, time.Since(start))
}

// stats returns the counters of every engine this agent opened, the number
// of peers, and whether any engine was ever open.
func (u *udpPath) stats() (udptun.Stats, int, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	s := u.base
	if u.eng != nil {
		s = addStats(s, u.eng.Stats())
	}
	return s, len(u.peers), u.used
}

// udpCollector exports the engine's counters at scrape time. Nothing is
// exported until an engine has been open (other backends show no udp
// metrics).
type udpCollector struct {
	u                                  *udpPath
	packets, bytes, drops, icmp, peers *prometheus.Desc
	super, coalesced                   *prometheus.Desc
}

func newUDPCollector(u *udpPath) *udpCollector {
	return &udpCollector{
		u:       u,
		packets: prometheus.NewDesc("tulle_udp_packets_total", "Packets of the udp backend: in = decapsulated from peers and delivered, out = sent to peers.", []string{"direction"}, nil),
		bytes:   prometheus.NewDesc("tulle_udp_bytes_total", "Inner IP bytes of the udp backend, by direction as tulle_udp_packets_total.", []string{"direction"}, nil),
		drops:   prometheus.NewDesc("tulle_udp_drops_total", "Packets the udp backend dropped, by reason (unknown_sender: a datagram from an address that is no peer).", []string{"reason"}, nil),
		icmp:    prometheus.NewDesc("tulle_udp_icmp_errors_total", "ICMP errors (no route, TTL exceeded, fragmentation needed) the udp engine sent back to local senders, or suppressed by its rate limit.", []string{"result"}, nil),
		peers:   prometheus.NewDesc("tulle_udp_peers", "Peers in the udp engine's table.", nil, nil),
		super:   prometheus.NewDesc("tulle_udp_super_packets_total", "TSO super-packets the udp backend tunnelled whole: out = read from the TUN device, in = reassembled and delivered.", []string{"direction"}, nil),
		coalesced: prometheus.NewDesc("tulle_udp_coalesced_total", "Received super-packets written merged with the one before them into one larger (BIG TCP) packet (result=merged), or merged packets the TUN device refused and that went out part by part (result=refused).",
			[]string{"result"}, nil),
	}
}

func (c *udpCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.packets
	ch <- c.bytes
	ch <- c.drops
	ch <- c.icmp
	ch <- c.peers
	ch <- c.super
	ch <- c.coalesced
}

func (c *udpCollector) Collect(ch chan<- prometheus.Metric) {
	s, peers, used := c.u.stats()
	if !used {
		return
	}
	counter := func(d *prometheus.Desc, v uint64, label string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), label)
	}
	counter(c.packets, s.PacketsIn, "in")
	counter(c.packets, s.PacketsOut, "out")
	counter(c.bytes, s.BytesIn, "in")
	counter(c.bytes, s.BytesOut, "out")
	for r := range udptun.NumDropReasons {
		counter(c.drops, s.Drops[r], r.String())
	}
	counter(c.icmp, s.ICMPSent, "sent")
	counter(c.icmp, s.ICMPRateLimited, "rate_limited")
	counter(c.super, s.SuperPacketsIn, "in")
	counter(c.super, s.SuperPacketsOut, "out")
	counter(c.coalesced, s.Coalesced, "merged")
	counter(c.coalesced, s.CoalesceFailed, "refused")
	ch <- prometheus.MustNewConstMetric(c.peers, prometheus.GaugeValue, float64(peers))
}
