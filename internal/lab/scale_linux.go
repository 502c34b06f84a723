package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tulle-net/tulle/internal/config"
	"github.com/tulle-net/tulle/internal/lease"
	"github.com/tulle-net/tulle/internal/plan"
	"github.com/tulle-net/tulle/internal/udppeers"
)

// ScaleOptions configure Scale.
type ScaleOptions struct {
	// Name prefixes the scale labs (optional, default "sc").
	Name string
	// Peers is the number of leases injected (optional, default 1000).
	Peers int
	// ColdNodes is the size of the cold-start lab (optional, default 10).
	ColdNodes int
	// Backend is "vxlan" (default) or "udp". With udp a node's entries are
	// the peers in its engine (udp-peers.json) plus its one cluster route,
	// and the device deleted is the TUN device.
	Backend string
	// TulleBin, CNIBin, StateRoot, Timeout as in Options.
	TulleBin, CNIBin, StateRoot string
	Timeout                     time.Duration
}

// ScaleResult holds what Scale measured, each against the same figure of
// Flannel measured in the same kind of lab (see docs/benchmarks.md).
type ScaleResult struct {
	Backend       string
	ColdNodes     int
	ColdConverged time.Duration // agents started -> every node routes to every peer
	Peers         int
	Absorb        time.Duration // Peers leases written -> all entries on a running node
	FromEmpty     time.Duration // fresh agent, Peers leases exist -> all its entries
	DeviceRestore time.Duration // VXLAN (udp: TUN) device deleted -> back with all entries
	RouteRestore  time.Duration // one route deleted -> back
	ResyncChanges float64       // kernel changes made by resyncs at steady state
	Resyncs       float64       // resyncs observed for ResyncChanges
	RSSIdleKB     int           // agent RSS with one peer
	RSSPeersKB    int           // agent RSS with Peers peers
}

const scaleResync = 2 * time.Second

// Scale measures convergence, healing and memory at scale: a cold lab of
// ColdNodes nodes, then a 2-node lab into whose etcd Peers leases are
// injected (addresses from 10.251.0.0/16 inside the lab only; no packet is
// sent to them).
func Scale(ctx context.Context, o ScaleOptions, w io.Writer) (ScaleResult, error) {
	if o.Name == "" {
		o.Name = "sc"
	}
	if o.Peers <= 0 {
		o.Peers = 1000
	}
	if o.ColdNodes <= 0 {
		o.ColdNodes = 10
	}
	if o.Backend == "" {
		o.Backend = config.BackendVXLAN
	}
	if o.Peers > 4000 {
		return ScaleResult{}, fmt.Errorf("%w: peers %d: at most 4000", ErrInvalid, o.Peers)
	}
	if o.Backend != config.BackendVXLAN && o.Backend != config.BackendUDP {
		return ScaleResult{}, fmt.Errorf("%w: backend %q: scale measures %s or %s", ErrInvalid, o.Backend, config.BackendVXLAN, config.BackendUDP)
	}
	res := ScaleResult{Backend: o.Backend, ColdNodes: o.ColdNodes, Peers: o.Peers}
	base := Options{TulleBin: o.TulleBin, CNIBin: o.CNIBin, StateRoot: o.StateRoot, Timeout: o.Timeout, Backend: o.Backend}

	fmt.Fprintf(w, "cold start: %d-node %s lab...\n", o.ColdNodes, o.Backend)
	cold := base
	cold.Name, cold.Nodes = o.Name+"c", o.ColdNodes
	l, err := Up(ctx, cold)
	if err != nil {
		return res, err
	}
	res.ColdConverged = l.Timings().Converged
	if err := l.Down(context.WithoutCancel(ctx)); err != nil {
		return res, err
	}

	fmt.Fprintf(w, "scale: 2-node lab, %d injected leases...\n", o.Peers)
	big := base
	big.Name, big.Nodes, big.Resync = o.Name+"p", 2, scaleResync
	big.SubnetLen = 26 // 1024 subnets in the /16: room for 4000 would need /28
	if o.Peers > 1000 {
		big.SubnetLen = 28
	}
	l, err = Up(ctx, big)
	if err != nil {
		return res, err
	}
	defer l.Down(context.WithoutCancel(ctx))
	err = l.measureScale(ctx, &res)
	return res, err
}

func (l *Lab) measureScale(ctx context.Context, res *ScaleResult) error {
	st := l.State()
	n1, n2 := st.Nodes[0], st.Nodes[1]
	h1, err := handleAt(n1.NS)
	if err != nil {
		return err
	}
	defer h1.Close()
	h2, err := handleAt(n2.NS)
	if err != nil {
		return err
	}
	defer h2.Close()
	timeout := l.opts.Timeout

	time.Sleep(time.Second) // let the idle agent settle before reading RSS
	if res.RSSIdleKB, err = rssKB(n1.Agent.PID); err != nil {
		return err
	}

	// node2 goes down and loses its kernel state: it will start fresh.
	if err := l.StopAgent(ctx, n2.Name, syscall.SIGTERM); err != nil {
		return err
	}
	if err := l.wipeNode(h2, n2); err != nil {
		return fmt.Errorf("empty %s: %w", n2.Name, err)
	}

	cli, err := l.etcdClient(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	want := res.Peers + 1 // the injected peers plus the other lab node
	start := time.Now()
	if err := injectLeases(ctx, cli, l.st.Name, res.Peers, n1.Subnet, n2.Subnet); err != nil {
		return err
	}
	if err := l.waitEntries(ctx, h1, n1, want, timeout); err != nil {
		return fmt.Errorf("%s absorbing %d leases: %w", n1.Name, res.Peers, err)
	}
	res.Absorb = time.Since(start)

	start = time.Now()
	if err := l.StartAgent(ctx, n2.Name); err != nil {
		return err
	}
	if err := l.waitEntries(ctx, h2, n2, want, timeout); err != nil {
		return fmt.Errorf("fresh %s facing %d leases: %w", n2.Name, res.Peers, err)
	}
	res.FromEmpty = time.Since(start)

	time.Sleep(time.Second)
	if res.RSSPeersKB, err = rssKB(n1.Agent.PID); err != nil {
		return err
	}

	// Steady state: resyncs must find nothing to change.
	c0, r0, err := l.reconcileCounters(ctx, n1)
	if err != nil {
		return err
	}
	time.Sleep(2*scaleResync + scaleResync/2)
	c1, r1, err := l.reconcileCounters(ctx, n1)
	if err != nil {
		return err
	}
	res.ResyncChanges, res.Resyncs = c1-c0, r1-r0

	start = time.Now()
	dev, err := l.deleteDevice(h1)
	if err != nil {
		return err
	}
	if err := l.waitEntries(ctx, h1, n1, want, timeout); err != nil {
		return fmt.Errorf("restore deleted device %s on %s: %w", dev, n1.Name, err)
	}
	res.DeviceRestore = time.Since(start)

	routes, err := ownRoutes(h1)
	if err != nil || len(routes) == 0 {
		return fmt.Errorf("list routes on %s: %v (%d routes)", n1.Name, err, len(routes))
	}
	start = time.Now()
	if err := h1.RouteDel(&routes[len(routes)/2]); err != nil {
		return fmt.Errorf("delete route %s on %s: %w", routes[len(routes)/2].Dst, n1.Name, err)
	}
	if err := l.waitEntries(ctx, h1, n1, want, timeout); err != nil {
		return fmt.Errorf("restore deleted route on %s: %w", n1.Name, err)
	}
	res.RouteRestore = time.Since(start)
	return nil
}

// injectLeases writes n leases of fake peers, 100 per transaction, each
// bound to one etcd lease, skipping the lab nodes' own subnets.
func injectLeases(ctx context.Context, cli *clientv3.Client, cluster string, n int, skip ...netip.Prefix) error {
	resp, err := cli.Get(ctx, "/tulle/"+cluster+"/config")
	if err != nil || len(resp.Kvs) == 0 {
		return fmt.Errorf("read lab network config: %v", err)
	}
	cfg, err := config.Parse(resp.Kvs[0].Value)
	if err != nil {
		return err
	}
	grant, err := cli.Grant(ctx, 3600)
	if err != nil {
		return fmt.Errorf("grant etcd lease: %w", err)
	}
	var ops []clientv3.Op
	i := 0
	var ferr error
	cfg.Subnets(func(p netip.Prefix) bool {
		for _, s := range skip {
			if s.Overlaps(p) {
				return true
			}
		}
		node := fmt.Sprintf("ghost%d", i)
		a := lease.Attrs{
			Node:        node,
			PublicIP:    netip.AddrFrom4([4]byte{10, 251, byte(i / 250), byte(i%250 + 1)}),
			BackendType: cfg.Backend.Type,
		}
		switch cfg.Backend.Type {
		case config.BackendVXLAN:
			a.BackendData.VtepMAC = plan.VTEPMAC(cluster, node).String()
		case config.BackendUDP:
			a.BackendData.Port = cfg.Backend.Port
		}
		ops = append(ops, clientv3.OpPut("/tulle/"+cluster+"/leases/"+lease.SubnetKey(p), string(a.Encode()), clientv3.WithLease(grant.ID)))
		i++
		if len(ops) == 100 || i == n {
			if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
				ferr = fmt.Errorf("write injected leases: %w", err)
				return false
			}
			ops = ops[:0]
		}
		return i < n
	})
	if ferr == nil && i < n {
		ferr = fmt.Errorf("only %d free subnets for %d injected leases", i, n)
	}
	return ferr
}

// waitEntries polls until node n has want peer entries: for vxlan, want
// tulle routes, permanent neighbours and FDB entries on the VXLAN device;
// for udp, its cluster route into the TUN device and want peers in its
// engine (udp-peers.json).
func (l *Lab) waitEntries(ctx context.Context, h *netlink.Handle, n NodeState, want int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if l.st.Backend == config.BackendUDP {
			ok, _ := hasUDPRoute(h)
			peers := udpPeerCount(n)
			if ok && peers == want {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%w: cluster route into %s %t, %d udp peers, want %d", ctx.Err(), plan.TUNName, ok, peers, want)
			case <-time.After(2 * time.Millisecond):
			}
			continue
		}
		r, nb, f := countEntries(h)
		if r == want && nb == want && f == want {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: have %d routes, %d neighbours, %d fdb entries, want %d each", ctx.Err(), r, nb, f, want)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

func countEntries(h *netlink.Handle) (routes, neighs, fdb int) {
	rs, _ := ownRoutes(h)
	link, err := h.LinkByName(plan.VXLANPrefix + "1")
	if err != nil {
		return len(rs), 0, 0
	}
	ns, _ := h.NeighList(link.Attrs().Index, netlink.FAMILY_V4)
	fs, _ := h.NeighList(link.Attrs().Index, syscall.AF_BRIDGE)
	for _, n := range ns {
		if n.State&netlink.NUD_PERMANENT != 0 {
			neighs++
		}
	}
	for _, f := range fs {
		if f.IP != nil && !f.IP.IsUnspecified() {
			fdb++
		}
	}
	return len(rs), neighs, fdb
}

// wipeNode leaves a stopped node without tulle's peer state, as on a new
// machine: no VXLAN (udp: TUN) device, so none of its entries or routes,
// and for udp no saved peers.
func (l *Lab) wipeNode(h *netlink.Handle, n NodeState) error {
	if _, err := l.deleteDevice(h); err != nil {
		return err
	}
	if l.st.Backend == config.BackendUDP {
		return udppeers.Remove(filepath.Join(n.Dir, udppeers.FileName))
	}
	return nil
}

// deleteDevice deletes the backend's device (ip link del tulle.1, or
// tulle-udp) and returns its name.
func (l *Lab) deleteDevice(h *netlink.Handle) (string, error) {
	name := plan.VXLANPrefix + "1"
	if l.st.Backend == config.BackendUDP {
		name = plan.TUNName
	}
	link, err := h.LinkByName(name)
	if err != nil {
		return name, fmt.Errorf("find %s: %w", name, err)
	}
	if err := h.LinkDel(link); err != nil {
		return name, fmt.Errorf("delete %s: %w", name, err)
	}
	return name, nil
}

func ownRoutes(h *netlink.Handle) ([]netlink.Route, error) {
	return h.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Protocol: plan.RouteProtocol, Table: syscall.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
}

// reconcileCounters reads tulle_reconcile_changes_total and the number of
// successful reconciles from the node agent's /metrics.
func (l *Lab) reconcileCounters(ctx context.Context, n NodeState) (changes, runs float64, err error) {
	conn, err := dialInNS(ctx, n.NS, "tcp", agentHealthAddr())
	if err != nil {
		return 0, 0, fmt.Errorf("reach %s metrics: %w", n.Name, err)
	}
	defer conn.Close()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+agentHealthAddr()+"/metrics", nil)
	if err := req.Write(conn); err != nil {
		return 0, 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return 0, 0, fmt.Errorf("read %s metrics: %w", n.Name, err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	found := 0
	for sc.Scan() {
		line := sc.Text()
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		switch name {
		case "tulle_reconcile_changes_total":
			changes, _ = strconv.ParseFloat(val, 64)
			found++
		case `tulle_reconciles_total{result="ok"}`:
			runs, _ = strconv.ParseFloat(val, 64)
			found++
		}
	}
	if found != 2 {
		return 0, 0, errors.New("metrics of " + n.Name + " lack tulle_reconcile_changes_total or tulle_reconciles_total")
	}
	return changes, runs, nil
}

func rssKB(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read RSS of pid %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// WriteScale prints the results beside Flannel's figures from the same
// kind of lab (flanneld v0.28.9, etcd 3.4, this machine; flannel-study.md).
func WriteScale(w io.Writer, r ScaleResult) error {
	if r.Backend != "" && r.Backend != config.BackendVXLAN {
		fmt.Fprintf(w, "backend %s\n", r.Backend)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	ms := func(d time.Duration) string { return fmt.Sprintf("%.3f s", d.Seconds()) }
	fmt.Fprintln(tw, "measure\ttulle\tflannel\tgoal")
	fmt.Fprintf(tw, "cold %d-node lab converged\t%s\t2.43 s\t< 1.5 s\n", r.ColdNodes, ms(r.ColdConverged))
	fmt.Fprintf(tw, "fresh agent, %d existing leases: all entries\t%s\t1.26 s\t< 0.5 s\n", r.Peers, ms(r.FromEmpty))
	fmt.Fprintf(tw, "%d new leases absorbed\t%s\t0.59-0.85 s\t\n", r.Peers, ms(r.Absorb))
	fmt.Fprintf(tw, "kernel changes by %0.f steady-state resyncs\t%.0f\tn/a (no resync)\t0\n", r.Resyncs, r.ResyncChanges)
	fmt.Fprintf(tw, "agent RSS idle / %d peers\t%.1f / %.1f MB\t40 / 45 MB\t< 30 MB\n", r.Peers, float64(r.RSSIdleKB)/1024, float64(r.RSSPeersKB)/1024)
	if r.Backend == config.BackendUDP {
		fmt.Fprintf(tw, "TUN device deleted: engine reopened, route back\t%s\tn/a\t< 1 resync\n", ms(r.DeviceRestore))
	} else {
		fmt.Fprintf(tw, "VXLAN device deleted: back with all %d entries\t%s\tnever (recreated empty)\t< 1 resync\n", r.Peers+1, ms(r.DeviceRestore))
	}
	fmt.Fprintf(tw, "route deleted by hand: restored\t%s\tnever\t< 1 resync\n", ms(r.RouteRestore))
	return tw.Flush()
}
