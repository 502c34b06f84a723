package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/tulle-net/tulle/internal/config"
	"github.com/tulle-net/tulle/internal/logkey"
)

// Lab is a lab that Up built or Load found. Its methods may be called
// concurrently.
type Lab struct {
	log   *slog.Logger
	procs *procs
	opts  Options

	mu sync.Mutex // guards st (and writes of state.json) and timings
	st *State
	// timings are measured by Up (zero for a loaded lab).
	timings Timings
}

// Timings are how long each phase of Up took.
type Timings struct {
	// Underlay: namespaces, switch and veths.
	Underlay time.Duration
	// Etcd: etcd started and the network config stored.
	Etcd time.Duration
	// Ready: from starting the agents until every /readyz answered 200.
	Ready time.Duration
	// Converged: from starting the agents until every node had a route to
	// every other node's subnet (a cold-start convergence time).
	Converged time.Duration
	// Containers: all containers attached through the plugin.
	Containers time.Duration
	// Total: the whole of Up.
	Total time.Duration
}

// Up builds a lab: the underlay, etcd, one agent per node, then the
// containers. It returns once every agent is ready, every node has routes to
// every peer and every container is attached. A lab of the same name must
// not exist. If any step fails, Up tears down whatever it made.
func Up(ctx context.Context, o Options) (*Lab, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("lab up: creating network namespaces needs root; run as root (e.g. sudo)")
	}
	netcfg, err := networkConfig(o.Backend, o.SubnetLen)
	if err != nil {
		return nil, err
	}
	if err := checkAbsent(o.StateRoot, o.Name); err != nil {
		return nil, err
	}
	dir := filepath.Join(o.StateRoot, o.Name)
	if err := os.MkdirAll(dir, labDirPermissions); err != nil {
		return nil, fmt.Errorf("create lab dir %s: %w", dir, err)
	}
	st := &State{
		Name: o.Name, Dir: dir, Created: time.Now().UTC().Truncate(time.Second),
		Backend: o.Backend, Wire: o.Wire, Resync: Duration(o.Resync), ReleaseOnExit: o.ReleaseOnExit,
		TulleBin: o.TulleBin, CNIBin: o.CNIBin,
	}
	for i := 1; i <= o.Nodes; i++ {
		st.Nodes = append(st.Nodes, NodeState{
			Name: nodeName(i), NS: nodeNS(o.Name, i), IP: nodeIP(i),
			Dir: filepath.Join(dir, nodeName(i)),
		})
	}
	l := &Lab{log: o.Logger.With(logkey.Lab, o.Name), procs: &procs{}, opts: o, st: st}
	began := time.Now()
	if err := l.build(ctx, netcfg); err != nil {
		// ctx may be the reason (Ctrl-C): clean up regardless.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 60*time.Second)
		defer cancel()
		if derr := l.Down(dctx); derr != nil {
			err = errors.Join(err, fmt.Errorf("tear down after the failure: %w", derr))
		}
		return nil, fmt.Errorf("lab up %s: %w", o.Name, err)
	}
	l.mu.Lock()
	l.timings.Total = time.Since(began)
	l.mu.Unlock()
	l.log.Info("lab up", keyNodes, o.Nodes, keyContainers, o.Containers, keyBackend, o.Backend, logkey.Duration, time.Since(began))
	return l, nil
}

// build runs the steps of Up, recording each in state.json before it acts.
func (l *Lab) build(ctx context.Context, netcfg config.Network) error {
	if err := l.save(); err != nil {
		return err
	}
	t := time.Now()
	if err := l.buildUnderlay(); err != nil {
		return err
	}
	l.setTiming(func(tm *Timings) { tm.Underlay = time.Since(t) })

	t = time.Now()
	if err := l.startEtcd(ctx, netcfg); err != nil {
		return err
	}
	l.setTiming(func(tm *Timings) { tm.Etcd = time.Since(t) })

	t = time.Now()
	for i := range l.st.Nodes {
		if err := l.startAgent(i + 1); err != nil {
			return err
		}
	}
	wctx, cancel := context.WithTimeout(ctx, l.opts.Timeout)
	defer cancel()
	if err := l.waitAllReady(wctx); err != nil {
		return err
	}
	l.setTiming(func(tm *Timings) { tm.Ready = time.Since(t) })
	if err := l.WaitConverged(wctx); err != nil {
		return err
	}
	l.setTiming(func(tm *Timings) { tm.Converged = time.Since(t) })

	t = time.Now()
	if err := l.attachContainers(ctx, l.opts.Containers); err != nil {
		return err
	}
	l.setTiming(func(tm *Timings) { tm.Containers = time.Since(t) })
	return nil
}

// buildUnderlay makes the switch and the node namespaces and wires them.
func (l *Lab) buildUnderlay() error {
	sw := switchNS(l.st.Name)
	if err := l.createNS(sw); err != nil {
		return err
	}
	if err := setupSwitch(sw); err != nil {
		return err
	}
	for i := range l.st.Nodes {
		n := &l.st.Nodes[i]
		if err := os.MkdirAll(n.Dir, labDirPermissions); err != nil {
			return fmt.Errorf("create node dir %s: %w", n.Dir, err)
		}
		if err := l.createNS(n.NS); err != nil {
			return err
		}
		if err := setupNodeLink(sw, n.NS, i+1, l.st.Wire); err != nil {
			return err
		}
	}
	l.log.Debug("underlay built", keySwitch, sw, keyNodes, len(l.st.Nodes))
	return nil
}

// createNS records the namespace in state.json, then creates it.
func (l *Lab) createNS(ns string) error {
	l.mu.Lock()
	l.st.addNS(ns)
	err := l.saveLocked()
	l.mu.Unlock()
	if err != nil {
		return err
	}
	return createNS(ns)
}

// Load finds a lab by name (o.Name, o.StateRoot and o.Logger are used).
func Load(o Options) (*Lab, error) {
	if o.Name == "" {
		o.Name = DefaultName
	}
	if err := validateName(o.Name); err != nil {
		return nil, err
	}
	if o.StateRoot == "" {
		o.StateRoot = DefaultStateRoot
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	st, err := readState(o.StateRoot, o.Name)
	if err != nil {
		return nil, err
	}
	o.Backend, o.Wire, o.Resync, o.ReleaseOnExit = st.Backend, st.Wire, time.Duration(st.Resync), st.ReleaseOnExit
	o.TulleBin, o.CNIBin, o.Nodes = st.TulleBin, st.CNIBin, len(st.Nodes)
	if o.Timeout == 0 {
		o.Timeout = defaultUpTimeout
	}
	return &Lab{log: o.Logger.With(logkey.Lab, o.Name), procs: &procs{}, opts: o, st: st}, nil
}

// Name is the lab's name.
func (l *Lab) Name() string { return l.st.Name }

// State returns a copy of the recorded state.
func (l *Lab) State() State {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := *l.st
	st.Namespaces = slices.Clone(st.Namespaces)
	st.Nodes = slices.Clone(st.Nodes)
	for i := range st.Nodes {
		st.Nodes[i].Containers = slices.Clone(st.Nodes[i].Containers)
	}
	return st
}

// Timings returns how long the phases of Up took (zero for a loaded lab).
func (l *Lab) Timings() Timings {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.timings
}

// NS returns the namespace name of a target ("node2", "node2/c1").
func (l *Lab) NS(target string) (string, error) {
	t, err := ParseTarget(target)
	if err != nil {
		return "", err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.st.nsOf(t)
}

func (l *Lab) setTiming(f func(*Timings)) {
	l.mu.Lock()
	f(&l.timings)
	l.mu.Unlock()
}

func (l *Lab) save() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.saveLocked()
}

func (l *Lab) saveLocked() error { return writeState(l.st) }

// checkAbsent fails with ErrExists if a lab of this name, or any namespace
// one would create, is present.
func checkAbsent(root, name string) error {
	path := statePath(filepath.Join(root, name))
	if _, err := os.Stat(path); err == nil {
		return fmt.Errorf("%w: lab %q (%s); run 'tulle lab down --name %s' first", ErrExists, name, path, name)
	}
	names, err := listNS()
	if err != nil {
		return err
	}
	for _, ns := range names {
		if isLabNS(name, ns) {
			return fmt.Errorf("%w: namespace %s of lab %q is present; run 'tulle lab down --name %s' first", ErrExists, ns, name, name)
		}
	}
	return nil
}
