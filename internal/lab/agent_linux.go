package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sync/errgroup"

	"github.com/tulle-net/tulle/internal/config"
	"github.com/tulle-net/tulle/internal/ipnet"
	"github.com/tulle-net/tulle/internal/logkey"
	"github.com/tulle-net/tulle/internal/plan"
	"github.com/tulle-net/tulle/internal/subnetfile"
	"github.com/tulle-net/tulle/internal/udppeers"
)

// agentArgs is the command line of node i's agent, exactly as on a host.
func (l *Lab) agentArgs(n *NodeState) []string {
	args := []string{l.st.TulleBin, "agent",
		"--node-name", n.Name,
		"--iface", underlayIfName,
		"--etcd-endpoints", etcdEndpoint(),
		"--cluster", l.st.Name,
		"--state-dir", n.Dir,
		"--health-addr", agentHealthAddr(),
		"--resync", time.Duration(l.st.Resync).String(),
		// The nodes share this machine's CPUs: each agent gets its share,
		// as it would have its own on a host. It matters for the udp
		// backend, whose data path runs in the agent; with more Go threads
		// than its share, the scheduler's thread handoffs cost more than
		// the parallelism gains (docs/benchmarks.md, udp backend).
		"--max-procs", strconv.Itoa(agentProcs(runtime.NumCPU(), len(l.st.Nodes))),
	}
	if l.st.ReleaseOnExit {
		args = append(args, "--release-on-exit")
	}
	return args
}

// agentProcs is each agent's share of cpus among nodes, at least 1.
func agentProcs(cpus, nodes int) int { return max(1, cpus/max(1, nodes)) }

func subnetFilePath(n *NodeState) string { return filepath.Join(n.Dir, "subnet.json") }

func agentLog(n *NodeState) string { return filepath.Join(n.Dir, "agent.log") }

// startAgent starts node i's agent process in its namespace and records it.
func (l *Lab) startAgent(i int) error {
	l.mu.Lock()
	n, err := l.st.node(i)
	if err != nil {
		l.mu.Unlock()
		return err
	}
	ns, args, logPath := n.NS, l.agentArgs(n), agentLog(n)
	l.mu.Unlock()

	p, err := l.startProc(ns, args, logPath, func(st *State) **Proc { return &st.Nodes[i-1].Agent })
	if err != nil {
		return fmt.Errorf("start agent of %s: %w", nodeName(i), err)
	}
	l.log.Debug("agent started", logkey.Node, nodeName(i), keyPID, p.PID)
	return nil
}

// waitAllReady waits for every agent's /readyz.
func (l *Lab) waitAllReady(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	for i := range l.st.Nodes {
		g.Go(func() error { return l.waitReady(gctx, i+1) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return l.save()
}

// waitReady polls node i's /readyz from inside its namespace until it
// answers 200, then reads the node's subnet from its subnet.json. It fails
// early, with the end of the agent's log, if the agent exits.
func (l *Lab) waitReady(ctx context.Context, i int) error {
	l.mu.Lock()
	n, err := l.st.node(i)
	if err != nil {
		l.mu.Unlock()
		return err
	}
	ns, agent, sfile, logPath := n.NS, n.Agent, subnetFilePath(n), agentLog(n)
	l.mu.Unlock()

	client := nsHTTPClient(ns)
	defer client.CloseIdleConnections()
	url := "http://" + agentHealthAddr() + "/readyz"
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		if !l.procs.alive(agent) {
			return fmt.Errorf("agent of %s is not running (%s); end of %s:\n%s", nodeName(i), l.procs.why(agent), logPath, logTail(logPath, 15))
		}
		if ok, _ := httpOK(ctx, client, url); ok {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for agent of %s to be ready (%s): %w; end of %s:\n%s", nodeName(i), url, ctx.Err(), logPath, logTail(logPath, 15))
		case <-t.C:
		}
	}
	info, err := subnetfile.Read(sfile)
	if err != nil {
		return fmt.Errorf("agent of %s is ready: %w", nodeName(i), err)
	}
	l.mu.Lock()
	l.st.Nodes[i-1].Subnet = info.Subnet
	l.mu.Unlock()
	return nil
}

// StopAgent stops a node's agent ("node2") with sig: SIGTERM for a graceful
// exit (kernel state stays; the lease is kept unless ReleaseOnExit),
// SIGKILL for a crash. It waits until the process is gone.
func (l *Lab) StopAgent(ctx context.Context, node string, sig syscall.Signal) error {
	i, err := l.nodeIndex(node)
	if err != nil {
		return err
	}
	l.mu.Lock()
	agent := l.st.Nodes[i-1].Agent
	l.mu.Unlock()
	if agent == nil {
		return fmt.Errorf("stop agent of %s: not started", node)
	}
	if err := l.procs.stop(ctx, agent, sig); err != nil {
		return fmt.Errorf("stop agent of %s: %w", node, err)
	}
	l.log.Info("agent stopped", logkey.Node, node, keySignal, sig.String())
	return nil
}

// StartAgent starts a node's agent again (after StopAgent) and waits until
// it is ready.
func (l *Lab) StartAgent(ctx context.Context, node string) error {
	i, err := l.nodeIndex(node)
	if err != nil {
		return err
	}
	l.mu.Lock()
	agent := l.st.Nodes[i-1].Agent
	l.mu.Unlock()
	if l.procs.alive(agent) {
		return fmt.Errorf("start agent of %s: already running as pid %d", node, agent.PID)
	}
	if err := l.startAgent(i); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, l.opts.Timeout)
	defer cancel()
	if err := l.waitReady(wctx, i); err != nil {
		return err
	}
	return l.save()
}

// Restart stops a node's agent (SIGTERM, or SIGKILL when kill is set),
// starts it again and waits until it is ready. Traffic between containers
// must keep flowing meanwhile: the kernel state stays in place.
func (l *Lab) Restart(ctx context.Context, node string, kill bool) (time.Duration, error) {
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	began := time.Now()
	if err := l.StopAgent(ctx, node, sig); err != nil {
		return 0, err
	}
	if err := l.StartAgent(ctx, node); err != nil {
		return 0, err
	}
	d := time.Since(began)
	l.log.Info("agent restarted", logkey.Node, node, logkey.Duration, d)
	return d, nil
}

func (l *Lab) nodeIndex(node string) (int, error) {
	t, err := ParseTarget(node)
	if err != nil {
		return 0, err
	}
	if t.Container != 0 {
		return 0, fmt.Errorf("%s is a container; name a node, e.g. %s", node, nodeName(t.Node))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.st.node(t.Node); err != nil {
		return 0, err
	}
	return t.Node, nil
}

// WaitConverged polls every node until it has a tulle route (protocol 197)
// to every other node's subnet, or ctx ends; the error names what is
// missing. Subnets are those the agents published in subnet.json. With the
// udp backend the kernel holds one route for the cluster network into the
// TUN device and the peers live in the engine: a node has converged when
// that route exists and its udp-peers.json (written when the engine's
// peers change) lists every other node's subnet.
func (l *Lab) WaitConverged(ctx context.Context) error {
	st := l.State()
	var handles []*netlink.Handle
	defer func() {
		for _, h := range handles {
			h.Close()
		}
	}()
	for _, n := range st.Nodes {
		h, err := handleAt(n.NS)
		if err != nil {
			return err
		}
		handles = append(handles, h)
	}
	t := time.NewTicker(pollInterval / 2)
	defer t.Stop()
	for {
		missing, err := missingRoutes(st, handles)
		if err == nil && st.Backend == config.BackendUDP {
			missing = missingUDPPeers(st, missing)
		}
		if err != nil {
			return err
		}
		if len(missing) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for routes between all nodes: %w; still missing: %s", ctx.Err(), strings.Join(missing, "; "))
		case <-t.C:
		}
	}
}

// missingRoutes lists "nodeA has no route to nodeB's 10.244.x.0/24" (udp:
// "nodeA has no route to 10.244.0.0/16 dev tulle-udp").
func missingRoutes(st State, handles []*netlink.Handle) ([]string, error) {
	var missing []string
	for i, n := range st.Nodes {
		if st.Backend == config.BackendUDP {
			ok, err := hasUDPRoute(handles[i])
			if err != nil {
				return nil, fmt.Errorf("list routes in netns %s: %w", n.NS, err)
			}
			if !ok {
				missing = append(missing, fmt.Sprintf("%s has no route to %s dev %s", n.Name, DefaultNetwork, plan.TUNName))
			}
			continue
		}
		routes, err := handles[i].RouteListFiltered(netlink.FAMILY_V4,
			&netlink.Route{Protocol: plan.RouteProtocol, Table: syscall.RT_TABLE_MAIN},
			netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, fmt.Errorf("list routes in netns %s: %w", n.NS, err)
		}
		have := map[netip.Prefix]bool{}
		for _, r := range routes {
			if r.Dst == nil {
				continue
			}
			if p, ok := ipnet.Prefix(r.Dst); ok {
				have[p] = true
			}
		}
		for j, peer := range st.Nodes {
			if i != j && !have[peer.Subnet] {
				missing = append(missing, fmt.Sprintf("%s has no route to %s's %s", n.Name, peer.Name, peer.Subnet))
			}
		}
	}
	return missing, nil
}

// hasUDPRoute reports whether the node routes the cluster network into the
// udp backend's TUN device with tulle's protocol.
func hasUDPRoute(h *netlink.Handle) (bool, error) {
	link, err := h.LinkByName(plan.TUNName)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return false, nil
		}
		return false, err
	}
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Protocol: plan.RouteProtocol, Table: syscall.RT_TABLE_MAIN, LinkIndex: link.Attrs().Index},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE|netlink.RT_FILTER_OIF)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return false, err
	}
	for _, r := range routes {
		if p, ok := ipnet.Prefix(r.Dst); ok && p.String() == DefaultNetwork {
			return true, nil
		}
	}
	return false, nil
}

// missingUDPPeers adds "nodeA's udp engine does not know nodeB's subnet"
// for every peer missing from a node's udp-peers.json.
func missingUDPPeers(st State, missing []string) []string {
	for _, n := range st.Nodes {
		f, err := udppeers.Read(filepath.Join(n.Dir, udppeers.FileName))
		if err != nil {
			missing = append(missing, fmt.Sprintf("%s has no udp peers yet (%v)", n.Name, err))
			continue
		}
		have := map[netip.Prefix]bool{}
		for _, p := range f.Peers {
			have[p.Subnet] = true
		}
		for _, peer := range st.Nodes {
			if peer.Name != n.Name && !have[peer.Subnet] {
				missing = append(missing, fmt.Sprintf("%s's udp engine does not know %s's %s", n.Name, peer.Name, peer.Subnet))
			}
		}
	}
	return missing
}

// udpPeerCount is the number of peers in a node's udp-peers.json (0 if
// unreadable).
func udpPeerCount(n NodeState) int {
	f, err := udppeers.Read(filepath.Join(n.Dir, udppeers.FileName))
	if err != nil {
		return 0
	}
	return len(f.Peers)
}

// nsHTTPClient is an HTTP client whose connections are opened inside ns.
func nsHTTPClient(ns string) *http.Client {
	return &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return dialInNS(ctx, ns, network, addr)
			},
		},
	}
}

func httpOK(ctx context.Context, c *http.Client, url string) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	return resp.StatusCode == http.StatusOK, nil
}

// waitTCP polls until addr accepts connections from inside ns, failing early
// if p exits.
func (l *Lab) waitTCP(ctx context.Context, ns, addr string, p *Proc) error {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		if !l.procs.alive(p) {
			return fmt.Errorf("%s is not running (%s); end of %s:\n%s", strings.Join(p.Args, " "), l.procs.why(p), p.Log, logTail(p.Log, 15))
		}
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		c, err := dialInNS(dctx, ns, "tcp", addr)
		cancel()
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("connect to %s in netns %s: %w; end of %s:\n%s", addr, ns, ctx.Err(), p.Log, logTail(p.Log, 15))
		case <-t.C:
		}
	}
}

func netAddr(a netip.Addr, port int) string {
	return net.JoinHostPort(a.String(), strconv.Itoa(port))
}

// logTail returns the last n lines of a log file, indented, for errors.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "    (" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "    " + strings.Join(lines, "\n    ")
}
