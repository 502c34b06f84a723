package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tulle-net/tulle/internal/lab"
	"github.com/tulle-net/tulle/internal/netns"
	"github.com/tulle-net/tulle/internal/netns/nstest"
	"github.com/tulle-net/tulle/internal/plan"
)

// requireE2E skips under -short, and without root (failing when CI=true).
func requireE2E(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end lab test: skipped with -short")
	}
	nstest.RequireRoot(t)
	if bins.tulle == "" {
		t.Fatal("binaries were not built (see TestMain)")
	}
}

// hostState is what the lab must never change in the root namespace.
type hostState struct {
	links, addrs, routes []string
}

func snapshotHost(t *testing.T) hostState {
	t.Helper()
	var s hostState
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		s.links = append(s.links, l.Attrs().Name)
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		s.addrs = append(s.addrs, a.IPNet.String())
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		s.routes = append(s.routes, r.String())
	}
	for _, l := range [][]string{s.links, s.addrs, s.routes} {
		slices.Sort(l)
	}
	return s
}

// assertClean fails if any namespace or state of lab name remains, or the
// root namespace changed.
func assertClean(t *testing.T, name string, before hostState) {
	t.Helper()
	ents, err := os.ReadDir(netns.RunDir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), name+"-") {
			t.Errorf("namespace %s remains after down", e.Name())
		}
	}
	if _, err := os.Stat(filepath.Join(lab.DefaultStateRoot, name)); err == nil {
		t.Errorf("state dir %s remains after down", filepath.Join(lab.DefaultStateRoot, name))
	}
	after := snapshotHost(t)
	for _, c := range []struct {
		what      string
		was, isNw []string
	}{{"links", before.links, after.links}, {"addresses", before.addrs, after.addrs}, {"routes", before.routes, after.routes}} {
		if !slices.Equal(c.was, c.isNw) {
			t.Errorf("root namespace %s changed:\nbefore %q\nafter  %q", c.what, c.was, c.isNw)
		}
	}
}

// upLab builds a lab with the test binaries and tears it down in cleanup,
// then checks nothing is left.
func upLab(t *testing.T, o lab.Options) *lab.Lab {
	t.Helper()
	before := snapshotHost(t)
	o.TulleBin, o.CNIBin = bins.tulle, bins.cni
	o.Logger = testLogger(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, o)
	t.Cleanup(func() {
		if l != nil {
			if err := l.Down(context.Background()); err != nil {
				t.Errorf("lab down: %v", err)
			}
		}
		assertClean(t, o.Name, before)
	})
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	return l
}

// handle opens a netlink handle in a lab namespace, closed in cleanup.
func handle(t *testing.T, ns string) *netlink.Handle {
	t.Helper()
	h, err := netns.Open(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nl.Close)
	return nl
}

// tulleRoutes returns the tulle routes (protocol 197) of a node by
// destination.
func tulleRoutes(nl *netlink.Handle) (map[netip.Prefix]netlink.Route, error) {
	rs, err := nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: plan.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return nil, err
	}
	m := map[netip.Prefix]netlink.Route{}
	for _, r := range rs {
		if r.Dst != nil {
			m[prefixOf(r.Dst)] = r
		}
	}
	return m, nil
}

func prefixOf(n *net.IPNet) netip.Prefix {
	a, _ := netip.AddrFromSlice(n.IP)
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits)
}

// vxlanFDB returns the FDB entries (MAC -> dst) of the VXLAN device in nl.
func vxlanFDB(nl *netlink.Handle, dev string) (map[string]netip.Addr, int, error) {
	l, err := nl.LinkByName(dev)
	if err != nil {
		return nil, 0, err
	}
	ns, err := nl.NeighList(l.Attrs().Index, unix.AF_BRIDGE)
	if err != nil {
		return nil, 0, err
	}
	m := map[string]netip.Addr{}
	for _, n := range ns {
		if a, ok := netip.AddrFromSlice(n.IP); ok && n.HardwareAddr != nil {
			m[n.HardwareAddr.String()] = a.Unmap()
		}
	}
	return m, l.Attrs().Index, nil
}

// waitFor polls cond every 10ms until it holds or d passes; it returns how
// long it took and whether it held.
func waitFor(d time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for {
		if cond() {
			return time.Since(start), true
		}
		if time.Since(start) > d {
			return time.Since(start), false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rssMB is a process's resident set size in MB.
func rssMB(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb float64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%f kB", &kb); err != nil {
				return 0, err
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// processesMentioning lists "pid: cmdline" of processes whose command line
// contains s (ps -eo pid,args | grep s, without needing procps).
func processesMentioning(s string) []string {
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(b), s) {
			continue
		}
		out = append(out, e.Name()+": "+strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " "))
	}
	return out
}

// pingAcrossRestarts pings node1/c1 -> node2/c1 at 100 pps while each
// node in restarts has its agent killed with SIGKILL and started again,
// with settle after each restart and tail after the last, and returns
// what the ping saw.
func pingAcrossRestarts(t *testing.T, l *lab.Lab, restarts []string, settle, tail time.Duration) lab.PingResult {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		r   lab.PingResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := l.Ping(ctx, "node1/c1", "node2/c1", lab.PingOptions{Interval: 10 * time.Millisecond, Wait: 2 * time.Second})
		done <- result{r, err}
	}()
	time.Sleep(time.Second)
	for _, node := range restarts {
		d, err := l.Restart(context.Background(), node, true)
		if err != nil {
			cancel()
			<-done
			t.Fatalf("restart %s: %v", node, err)
		}
		t.Logf("%s: agent killed (SIGKILL), restarted and ready in %s", node, d.Round(time.Millisecond))
		time.Sleep(settle)
	}
	time.Sleep(tail)
	cancel()
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	return res.r
}
