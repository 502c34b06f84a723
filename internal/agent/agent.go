package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/tulle-net/tulle/internal/config"
	"github.com/tulle-net/tulle/internal/dataplane"
	"github.com/tulle-net/tulle/internal/lease"
	"github.com/tulle-net/tulle/internal/logkey"
	"github.com/tulle-net/tulle/internal/netns"
	"github.com/tulle-net/tulle/internal/plan"
	"github.com/tulle-net/tulle/internal/subnet"
	"github.com/tulle-net/tulle/internal/subnetfile"
	"github.com/tulle-net/tulle/internal/udppeers"
)

// Defaults.
const (
	DefaultStateDir = "/run/tulle"
	DefaultResync   = 30 * time.Second
	DefaultCluster  = "default"
)

// Options configure an agent.
type Options struct {
	NodeName string // required: the node's stable name
	// Etcd is the datastore client; or DialEtcd connects one (one of them
	// is required). With DialEtcd the agent dials only after it has resumed
	// a udp engine from the last run, so the udp data path forwards while
	// etcd is still unreachable; it then keeps dialing instead of exiting.
	// A client the agent dialed is closed when Run returns.
	Etcd     *clientv3.Client
	DialEtcd func(context.Context) (*clientv3.Client, error)
	// Iface names the underlay interface; PublicIP picks it by address.
	// One of them is required.
	Iface    string
	PublicIP netip.Addr
	Cluster  string // optional: default "default"
	// StateDir holds subnet.json (optional: /run/tulle).
	StateDir string
	// HealthAddr serves /healthz, /readyz and /metrics ("" disables).
	HealthAddr string
	// Resync is the period of the full reconcile (optional: 30s).
	Resync time.Duration
	// ReleaseOnExit deletes the lease on graceful shutdown, so peers drop
	// this node at once; by default it is kept so a restart gets the same
	// subnet with no flap.
	ReleaseOnExit bool
	// IPMasq masquerades traffic leaving the cluster network.
	IPMasq bool
	// LeaseTTL is the etcd lease TTL (optional: subnet's default).
	LeaseTTL time.Duration
	Logger   *slog.Logger // optional
}

// Agent runs one node.
type Agent struct {
	o   Options
	log *slog.Logger
	m   *metrics
	// udp runs the udp backend's engine (idle with other backends).
	udp *udpPath

	ready   atomic.Bool
	lastOK  atomic.Int64 // unix nanos of the last successful reconcile
	trigger chan struct{}
}

// New checks the options; Run does the work.
func New(o Options) (*Agent, error) {
	if o.NodeName == "" {
		return nil, errors.New("agent: node name is required (--node-name)")
	}
	if o.Etcd == nil && o.DialEtcd == nil {
		return nil, errors.New("agent: an etcd client or a way to dial one is required")
	}
	if o.Iface == "" && !o.PublicIP.IsValid() {
		return nil, errors.New("agent: one of --iface or --public-ip is required to find the underlay")
	}
	if o.Cluster == "" {
		o.Cluster = DefaultCluster
	}
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if o.Resync <= 0 {
		o.Resync = DefaultResync
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	a := &Agent{
		o:       o,
		log:     o.Logger.With(logkey.Component, "agent", logkey.Node, o.NodeName),
		m:       newMetrics(),
		trigger: make(chan struct{}, 1),
	}
	a.udp = newUDPPath(o.Logger.With(logkey.Node, o.NodeName), a.UDPPeersFile(), a.kick)
	a.m.reg.MustRegister(newUDPCollector(a.udp))
	return a, nil
}

// SubnetFile is where the agent publishes the node's facts.
func (a *Agent) SubnetFile() string { return filepath.Join(a.o.StateDir, "subnet.json") }

// UDPPeersFile is where the udp backend's engine configuration and peers
// are kept for the next start.
func (a *Agent) UDPPeersFile() string { return filepath.Join(a.o.StateDir, udppeers.FileName) }

// Run acquires the lease, reconciles until ctx ends, and on a graceful exit
// keeps (or with ReleaseOnExit releases) the lease. Kernel state is left in
// place either way so traffic keeps flowing while the agent is down.
func (a *Agent) Run(ctx context.Context) error {
	dp, err := dataplane.New(dataplane.Options{Logger: a.o.Logger})
	if err != nil {
		return fmt.Errorf("open dataplane: %w", err)
	}
	defer dp.Close()

	g, gctx := errgroup.WithContext(ctx)
	if a.o.HealthAddr != "" {
		srv, err := a.serveHealth(a.o.HealthAddr)
		if err != nil {
			return err
		}
		g.Go(func() error { return srv.run(gctx) })
	}
	g.Go(func() error { return a.udp.run(gctx) })
	// Set by the goroutine below, read after g.Wait.
	var (
		cli *clientv3.Client
		mgr *subnet.Manager
	)
	g.Go(func() error {
		// With the udp backend this process is the data path: forward
		// with the peers of the last run before talking to etcd.
		a.udp.resume(gctx)
		var err error
		if cli, err = a.etcd(gctx); err != nil {
			return err
		}
		mgr, err = subnet.New(subnet.Options{
			Client: cli, Cluster: a.o.Cluster, Node: a.o.NodeName,
			TTL: a.o.LeaseTTL, Logger: a.o.Logger,
		})
		if err != nil {
			return err
		}
		in, err := a.setup(gctx, mgr)
		if err != nil {
			return err
		}
		snaps := make(chan subnet.Snapshot) // Watch keeps only the newest pending snapshot
		g.Go(func() error { return mgr.KeepAlive(gctx) })
		g.Go(func() error { return mgr.Watch(gctx, snaps) })
		g.Go(func() error { return a.watchKernel(gctx) })
		return a.loop(gctx, dp, snaps, in)
	})

	err = g.Wait()
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		err = nil // a normal shutdown
	}
	if mgr != nil {
		if own, ok := mgr.Current(); ok && a.o.ReleaseOnExit {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if rerr := mgr.Release(rctx); rerr != nil { // Release logs success itself
				err = errors.Join(err, fmt.Errorf("release lease %s: %w", own.Subnet, rerr))
			}
		}
	}
	if cli != nil && a.o.Etcd == nil {
		cli.Close() // dialed here (DialEtcd)
	}
	return err
}

// etcd returns the datastore client: Options.Etcd, or one from DialEtcd.
// A failed dial is fatal, except while a resumed udp engine forwards
// traffic: exiting would stop the data path, so the agent keeps dialing
// (and saying so) until etcd answers or ctx ends.
func (a *Agent) etcd(ctx context.Context) (*clientv3.Client, error) {
	if a.o.Etcd != nil {
		return a.o.Etcd, nil
	}
	backoff := time.Second
	for warned := false; ; {
		cli, err := a.o.DialEtcd(ctx)
		if err == nil {
			if warned {
				a.log.Info("etcd reachable again")
			}
			return cli, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !a.udp.isOpen() {
			return nil, err
		}
		if !warned {
			a.log.Warn("etcd unreachable; the udp engine keeps forwarding with the saved peers, retrying", logkey.Err, err)
			warned = true
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// setup waits for the network config, finds the underlay and acquires the
// node's lease, returning the planner input without peers.
func (a *Agent) setup(ctx context.Context, mgr *subnet.Manager) (plan.Input, error) {
	cfg, err := a.waitConfig(ctx, mgr)
	if err != nil {
		return plan.Input{}, err
	}
	under, err := dataplane.Underlay(netns.None(), a.o.Iface, a.o.PublicIP)
	if err != nil {
		return plan.Input{}, err
	}
	local := plan.Local{
		Underlay:         under.Name,
		UnderlayMTU:      under.MTU,
		UnderlayPrefixes: under.Prefixes,
		IPMasq:           a.o.IPMasq,
		BigTCP:           under.BigTCP,
	}
	attrs := lease.Attrs{Node: a.o.NodeName, PublicIP: under.Addr, BackendType: cfg.Backend.Type}
	switch cfg.Backend.Type {
	case config.BackendVXLAN:
		local.VTEPMAC = plan.VTEPMAC(a.o.Cluster, a.o.NodeName)
		attrs.BackendData.VtepMAC = local.VTEPMAC.String()
	case config.BackendUDP:
		attrs.BackendData.Port = cfg.Backend.Port
	}
	var prev netip.Prefix
	if info, err := subnetfile.Read(a.SubnetFile()); err == nil {
		prev = info.Subnet
	}
	own, err := mgr.Acquire(ctx, cfg, attrs, prev)
	if err != nil {
		return plan.Input{}, fmt.Errorf("acquire subnet for node %q: %w", a.o.NodeName, err)
	}
	a.log.Info("node set up", logkey.Subnet, own.Subnet, logkey.PublicIP, own.PublicIP,
		"backend", cfg.Backend.Type, "underlay", under.Name, "mtu", cfg.WorkloadMTU(under.MTU))
	a.m.setLease(own.Subnet.String())
	return plan.Input{Config: cfg, Self: own, Local: local}, nil
}

// waitConfig reads the network config, waiting (and saying so) while there
// is none, so agents may start before the operator runs 'tulle network set'.
func (a *Agent) waitConfig(ctx context.Context, mgr *subnet.Manager) (config.Network, error) {
	warned := false
	for {
		cfg, err := mgr.GetConfig(ctx)
		if err == nil {
			return cfg, nil
		}
		if ctx.Err() != nil {
			return config.Network{}, ctx.Err()
		}
		if !errors.Is(err, subnet.ErrNoConfig) {
			return config.Network{}, err
		}
		if !warned {
			a.log.Warn("waiting for the network config", logkey.Err, err)
			warned = true
		}
		select {
		case <-ctx.Done():
			return config.Network{}, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// loop reconciles on every lease snapshot, every resync tick and every
// kernel trigger. The first successful reconcile writes subnet.json and
// marks the agent ready.
func (a *Agent) loop(ctx context.Context, dp *dataplane.Dataplane, snaps <-chan subnet.Snapshot, in plan.Input) error {
	tick := time.NewTicker(a.o.Resync)
	defer tick.Stop()
	var have bool
	var lastWarn []string
	// A failed reconcile (a transient netlink error, the udp engine not
	// open yet) is retried with a backoff rather than left to the next
	// resync.
	var retry <-chan time.Time
	var failures int
	for {
		reason := ""
		select {
		case <-ctx.Done():
			return ctx.Err()
		case s := <-snaps:
			in.Peers = s.Leases
			have = true
			reason = "leases"
		case <-tick.C:
			reason = "resync"
		case <-a.trigger:
			reason = "kernel change"
		case <-retry:
			reason = "retry"
		}
		if !have {
			continue
		}
		st, err := a.reconcile(ctx, dp, in, reason)
		if err != nil {
			failures++
			wait := retryBackoff(failures, a.o.Resync)
			a.log.Error("reconcile failed", logkey.Reason, reason, logkey.Err, err, "retry in", wait)
			retry = time.After(wait)
			continue
		}
		failures, retry = 0, nil
		if !slices.Equal(st.Warnings, lastWarn) {
			for _, w := range st.Warnings {
				a.log.Warn("plan: " + w)
			}
			lastWarn = st.Warnings
		}
		if !a.ready.Load() {
			info := subnetfile.Info{
				Network: in.Config.Network, Subnet: in.Self.Subnet, Gateway: lease.Gateway(in.Self.Subnet),
				MTU: st.WorkloadMTU, IPMasq: a.o.IPMasq, Bridge: plan.BridgeName,
				Node: a.o.NodeName, Backend: in.Config.Backend.Type,
			}
			if st.Bridge != nil {
				info.GSOMaxSize = st.Bridge.GSOMaxSize
			}
			info.WorkloadGSOMaxSize = st.WorkloadGSOMaxSize
			if err := subnetfile.Write(a.SubnetFile(), info); err != nil {
				return err
			}
			a.ready.Store(true)
			a.log.Info("ready", logkey.Path, a.SubnetFile())
		}
	}
}

func (a *Agent) reconcile(ctx context.Context, dp *dataplane.Dataplane, in plan.Input, reason string) (plan.State, error) {
	start := time.Now()
	st, err := plan.Compute(in)
	if err != nil {
		a.m.reconciled(false, 0, time.Since(start))
		return st, err
	}
	// The udp engine makes the TUN device: open it before Apply. Without
	// udp, an engine left from the last run (resumed from udp-peers.json)
	// is closed, and Apply removes its TUN device.
	var udpErr error
	switch {
	case st.UDP != nil && st.TUN != nil:
		udpErr = a.udp.apply(ctx, st)
	case a.udp.needsClose():
		udpErr = a.udp.close(ctx)
	}
	ch, err := dp.Apply(ctx, st)
	if errors.Is(err, dataplane.ErrTUNMissing) && udpErr == nil && st.UDP != nil {
		// The TUN device went away under the open engine (deleted by
		// hand): reopen the engine, which makes it again, and finish.
		a.log.Warn("udp tun device missing: reopening the udp engine", logkey.Ifname, st.TUN.Name)
		if udpErr = a.udp.reopen(ctx, st); udpErr == nil {
			var more dataplane.Changes
			more, err = dp.Apply(ctx, st)
			ch.Ops = append(ch.Ops, more.Ops...)
		}
	}
	err = errors.Join(udpErr, err)
	d := time.Since(start)
	a.m.reconciled(err == nil, ch.Len(), d)
	a.m.peers.Set(float64(len(st.Routes)))
	if err != nil {
		return st, err
	}
	a.lastOK.Store(time.Now().UnixNano())
	peers := len(st.Routes)
	if st.UDP != nil {
		peers = len(st.UDP.Peers) // one cluster route; the peers are the engine's
	}
	// Drift (changes without a lease change) is logged by the dataplane.
	if ch.Len() > 0 && reason == "leases" {
		a.log.Info("reconciled", logkey.Reason, reason, "peers", peers, "changes", ch.Len(), logkey.Duration, d)
	} else {
		a.log.Debug("reconciled", logkey.Reason, reason, "peers", peers, "changes", ch.Len(), logkey.Duration, d)
	}
	return st, nil
}

func (a *Agent) kick() {
	select {
	case a.trigger <- struct{}{}:
	default:
	}
}

// retryBackoff is the wait before retrying after the n-th failed reconcile
// in a row: 100 ms doubling, at most max.
func retryBackoff(n int, max time.Duration) time.Duration {
	d := 100 * time.Millisecond
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}
