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
)

// Defaults.
const (
	DefaultStateDir = "/run/tulle"
	DefaultResync   = 30 * time.Second
	DefaultCluster  = "default"
)

// Options configure an agent.
type Options struct {
	NodeName string           // required: the node's stable name
	Etcd     *clientv3.Client // required
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

	ready   atomic.Bool
	lastOK  atomic.Int64 // unix nanos of the last successful reconcile
	trigger chan struct{}
}

// New checks the options; Run does the work.
func New(o Options) (*Agent, error) {
	if o.NodeName == "" {
		return nil, errors.New("agent: node name is required (--node-name)")
	}
	if o.Etcd == nil {
		return nil, errors.New("agent: etcd client is required")
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
	return &Agent{
		o:       o,
		log:     o.Logger.With(logkey.Component, "agent", logkey.Node, o.NodeName),
		m:       newMetrics(),
		trigger: make(chan struct{}, 1),
	}, nil
}

// SubnetFile is where the agent publishes the node's facts.
func (a *Agent) SubnetFile() string { return filepath.Join(a.o.StateDir, "subnet.json") }

// Run acquires the lease, reconciles until ctx ends, and on a graceful exit
// keeps (or with ReleaseOnExit releases) the lease. Kernel state is left in
// place either way so traffic keeps flowing while the agent is down.
func (a *Agent) Run(ctx context.Context) error {
	dp, err := dataplane.New(dataplane.Options{Logger: a.o.Logger})
	if err != nil {
		return fmt.Errorf("open dataplane: %w", err)
	}
	defer dp.Close()

	mgr, err := subnet.New(subnet.Options{
		Client: a.o.Etcd, Cluster: a.o.Cluster, Node: a.o.NodeName,
		TTL: a.o.LeaseTTL, Logger: a.o.Logger,
	})
	if err != nil {
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	if a.o.HealthAddr != "" {
		srv, err := a.serveHealth(a.o.HealthAddr)
		if err != nil {
			return err
		}
		g.Go(func() error { return srv.run(gctx) })
	}
	g.Go(func() error {
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
	if own, ok := mgr.Current(); ok && a.o.ReleaseOnExit {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if rerr := mgr.Release(rctx); rerr != nil { // Release logs success itself
			err = errors.Join(err, fmt.Errorf("release lease %s: %w", own.Subnet, rerr))
		}
	}
	return err
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
	}
	attrs := lease.Attrs{Node: a.o.NodeName, PublicIP: under.Addr, BackendType: cfg.Backend.Type}
	if cfg.Backend.Type == config.BackendVXLAN {
		local.VTEPMAC = plan.VTEPMAC(a.o.Cluster, a.o.NodeName)
		attrs.BackendData.VtepMAC = local.VTEPMAC.String()
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
		}
		if !have {
			continue
		}
		st, err := a.reconcile(ctx, dp, in, reason)
		if err != nil {
			a.log.Error("reconcile failed", logkey.Reason, reason, logkey.Err, err)
			continue
		}
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
	ch, err := dp.Apply(ctx, st)
	d := time.Since(start)
	a.m.reconciled(err == nil, ch.Len(), d)
	a.m.peers.Set(float64(len(st.Routes)))
	if err != nil {
		return st, err
	}
	a.lastOK.Store(time.Now().UnixNano())
	// Drift (changes without a lease change) is logged by the dataplane.
	if ch.Len() > 0 && reason == "leases" {
		a.log.Info("reconciled", logkey.Reason, reason, "peers", len(st.Routes), "changes", ch.Len(), logkey.Duration, d)
	} else {
		a.log.Debug("reconciled", logkey.Reason, reason, "peers", len(st.Routes), "changes", ch.Len(), logkey.Duration, d)
	}
	return st, nil
}

func (a *Agent) kick() {
	select {
	case a.trigger <- struct{}{}:
	default:
	}
}
