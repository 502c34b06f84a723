package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tulle-net/tulle/internal/lab"
	"github.com/tulle-net/tulle/internal/plan"
)

// Lab names are unique per test (<= 4 bytes): te1, te2, ...

// TestDemo runs what `tulle demo` runs, for each backend: 3 nodes, 2
// containers each, every ordered pair checked with ping and TCP, then
// teardown, after which no namespace, state or root-namespace change may
// remain.
func TestDemo(t *testing.T) {
	requireE2E(t)
	for _, tc := range []struct{ name, backend string }{
		{"te1", "vxlan"},
		{"te2", "host-gw"},
	} {
		t.Run(tc.backend, func(t *testing.T) {
			before := snapshotHost(t)
			var out bytes.Buffer
			began := time.Now()
			r, err := lab.Demo(context.Background(), lab.DemoOptions{Lab: lab.Options{
				Name: tc.name, Backend: tc.backend, TulleBin: bins.tulle, CNIBin: bins.cni, Logger: testLogger(t),
			}}, &out)
			t.Logf("demo output:\n%s", out.String())
			if err != nil {
				_, _ = lab.Down(context.Background(), lab.Options{Name: tc.name})
				t.Fatalf("demo: %v", err)
			}
			if len(r.Pairs) != 30 || r.Failed() != 0 {
				t.Errorf("pairs: %d, failed %d; want 30 and 0", len(r.Pairs), r.Failed())
			}
			t.Logf("demo %s: %.2fs in all (up %.2fs, converged %.2fs after agent start, teardown %.2fs)",
				tc.backend, time.Since(began).Seconds(), r.Timings.Total.Seconds(), r.Timings.Converged.Seconds(), r.Teardown.Seconds())
			assertClean(t, tc.name, before)
		})
	}
}

// TestRestartKill9IsHitless kills each node's agent with SIGKILL and starts
// it again while container traffic between the two nodes runs at 100 pps:
// the kernel state stays, and a restart is a resync, so no ping may be lost.
func TestRestartKill9IsHitless(t *testing.T) {
	requireE2E(t)
	for _, tc := range []struct{ name, backend string }{
		{"te3", "vxlan"},
		{"te4", "host-gw"},
	} {
		t.Run(tc.backend, func(t *testing.T) {
			l := upLab(t, lab.Options{Name: tc.name, Nodes: 2, Containers: 1, Backend: tc.backend})
			r := pingAcrossRestarts(t, l, []string{"node2", "node1"}, 500*time.Millisecond, time.Second)
			t.Logf("ping node1/c1 -> node2/c1 at 100 pps across 2 kill -9 restarts: sent %d, received %d, lost %d, p50 %s, p99 %s",
				r.Sent, r.Received, r.Lost(), r.Percentile(50), r.Percentile(99))
			if r.Sent < 200 {
				t.Errorf("only %d pings sent", r.Sent)
			}
			if r.Lost() != 0 {
				t.Errorf("%d of %d pings lost during the restarts", r.Lost(), r.Sent)
			}
		})
	}
}

// TestReleaseOnExitRemovesPeer stops an agent started with
// --release-on-exit (SIGTERM): every peer must drop its route (and, for
// vxlan, its FDB entry) within 2 s.
func TestReleaseOnExitRemovesPeer(t *testing.T) {
	requireE2E(t)
	l := upLab(t, lab.Options{Name: "te5", Nodes: 3, Backend: "vxlan", ReleaseOnExit: true})
	st := l.State()
	gone := st.Nodes[2]
	peers := []*netlink.Handle{handle(t, st.Nodes[0].NS), handle(t, st.Nodes[1].NS)}
	vtep := vtepMAC(t, gone.NS)
	for i, h := range peers {
		rs, err := tulleRoutes(h)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := rs[gone.Subnet]; !ok {
			t.Fatalf("%s has no route to %s's %s before the stop", st.Nodes[i].Name, gone.Name, gone.Subnet)
		}
	}
	start := time.Now()
	if err := l.StopAgent(context.Background(), gone.Name, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stopped := time.Since(start)
	took, ok := waitFor(2*time.Second-stopped, func() bool {
		for _, h := range peers {
			rs, err := tulleRoutes(h)
			if err != nil {
				return false
			}
			if _, ok := rs[gone.Subnet]; ok {
				return false
			}
			fdb, _, err := vxlanFDB(h, vxlanDev)
			if err != nil {
				return false
			}
			if _, ok := fdb[vtep]; ok {
				return false
			}
		}
		return true
	})
	t.Logf("%s released its lease: peers dropped its route and FDB entry %s after SIGTERM (agent exit took %s)",
		gone.Name, (stopped + took).Round(time.Millisecond), stopped.Round(time.Millisecond))
	if !ok {
		t.Errorf("peers still have %s's route or FDB entry 2s after its agent stopped", gone.Name)
	}
}

const vxlanDev = plan.VXLANPrefix + "1"

func vtepMAC(t *testing.T, ns string) string {
	t.Helper()
	l, err := handle(t, ns).LinkByName(vxlanDev)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().HardwareAddr.String()
}

// TestResyncHealsDeletedEntries deletes a peer route and a peer FDB entry
// by hand in a node: the agent (resync 2s) must restore both within one
// resync period.
func TestResyncHealsDeletedEntries(t *testing.T) {
	requireE2E(t)
	const resync = 2 * time.Second
	l := upLab(t, lab.Options{Name: "te6", Nodes: 2, Containers: 1, Backend: "vxlan", Resync: resync})
	st := l.State()
	n1, peer := st.Nodes[0], st.Nodes[1]
	h := handle(t, n1.NS)
	peerMAC := vtepMAC(t, peer.NS)

	rs, err := tulleRoutes(h)
	if err != nil {
		t.Fatal(err)
	}
	route, ok := rs[peer.Subnet]
	if !ok {
		t.Fatalf("%s has no route to %s", n1.Name, peer.Subnet)
	}
	fdb, vxIndex, err := vxlanFDB(h, vxlanDev)
	if err != nil {
		t.Fatal(err)
	}
	dst, ok := fdb[peerMAC]
	if !ok {
		t.Fatalf("%s has no FDB entry for %s's VTEP %s: %v", n1.Name, peer.Name, peerMAC, fdb)
	}
	mac, _ := net.ParseMAC(peerMAC)
	// ip -n te6-n1 route del <peer subnet>; bridge -n te6-n1 fdb del <mac> dev tulle.1 dst <ip> self
	if err := h.RouteDel(&route); err != nil {
		t.Fatalf("delete route: %v", err)
	}
	if err := h.NeighDel(&netlink.Neigh{
		LinkIndex: vxIndex, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
		State: netlink.NUD_PERMANENT, HardwareAddr: mac, IP: dst.AsSlice(),
	}); err != nil {
		t.Fatalf("delete fdb entry: %v", err)
	}
	took, ok := waitFor(resync+500*time.Millisecond, func() bool {
		rs, err := tulleRoutes(h)
		if err != nil {
			return false
		}
		fdb, _, err := vxlanFDB(h, vxlanDev)
		if err != nil {
			return false
		}
		_, r := rs[peer.Subnet]
		_, f := fdb[peerMAC]
		return r && f
	})
	t.Logf("route %s and FDB entry %s -> %s restored %s after deletion (resync %s)", peer.Subnet, peerMAC, dst, took.Round(time.Millisecond), resync)
	if !ok {
		t.Fatalf("route or FDB entry not restored within one resync period (%s)", resync)
	}
	if took > resync+500*time.Millisecond {
		t.Errorf("restore took %s, more than one resync period", took)
	}
	// And traffic flows again.
	if res, err := l.Ping(context.Background(), "node1/c1", "node2/c1", lab.PingOptions{Count: 5}); err != nil || res.Received == 0 {
		t.Errorf("ping after heal: %+v, %v", res, err)
	}
}

// TestColdConvergence10 starts a 10-node lab from nothing and reports how
// long until every node had a route to all 9 peers (logged, not asserted:
// timing belongs in benchmarks), and the agents' memory.
func TestColdConvergence10(t *testing.T) {
	requireE2E(t)
	l := upLab(t, lab.Options{Name: "te7", Nodes: 10, Backend: "vxlan"})
	tm := l.Timings()
	t.Logf("cold 10-node vxlan lab: all agents ready %.2fs, every node routes to all 9 peers %.2fs after the agents started (underlay %.2fs, etcd %.2fs)",
		tm.Ready.Seconds(), tm.Converged.Seconds(), tm.Underlay.Seconds(), tm.Etcd.Seconds())
	var rss []string
	for _, n := range l.State().Nodes {
		if mb, err := rssMB(n.Agent.PID); err == nil {
			rss = append(rss, fmt.Sprintf("%s=%.1fMB", n.Name, mb))
		}
	}
	t.Logf("agent RSS: %s", strings.Join(rss, " "))
	for _, n := range l.State().Nodes {
		rs, err := tulleRoutes(handle(t, n.NS))
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) != 9 {
			t.Errorf("%s has %d tulle routes, want 9", n.Name, len(rs))
		}
	}
}

// TestDownAfterCrash kills `tulle lab up` with SIGKILL in the middle of its
// work; `tulle lab down` must still stop every process it started and
// remove every namespace, from the state it recorded before each step.
func TestDownAfterCrash(t *testing.T) {
	requireE2E(t)
	before := snapshotHost(t)
	const name = "tea"
	up := exec.Command(bins.tulle, "lab", "up", "--name", name, "--nodes", "3", "--containers", "2")
	var upOut bytes.Buffer
	up.Stdout, up.Stderr = &upOut, &upOut
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	// Whatever happens below, leave nothing behind.
	t.Cleanup(func() { _ = exec.Command(bins.tulle, "lab", "down", "--name", name).Run() })
	// Crash once some agent is recorded: etcd and agents are running,
	// containers are (probably) half made. Wait as long as lab up itself
	// waits for a step (60 s), so a slow machine is not a failure.
	_, ok := waitFor(60*time.Second, func() bool {
		l, err := lab.Load(lab.Options{Name: name})
		return err == nil && l.State().Nodes[0].Agent != nil && l.State().Nodes[0].Agent.PID != 0
	})
	_ = up.Process.Kill()
	_ = up.Wait()
	if !ok {
		etcdLog, _ := os.ReadFile("/run/tulle/labs/" + name + "/etcd.log")
		t.Fatalf("lab up never recorded an agent; its output:\n%s\netcd log:\n%s", upOut.String(), etcdLog)
	}
	out, err := exec.Command(bins.tulle, "lab", "down", "--name", name).CombinedOutput()
	if err != nil {
		t.Fatalf("lab down: %v\n%s", err, out)
	}
	assertClean(t, name, before)
	for _, p := range processesMentioning("/run/tulle/labs/" + name + "/") {
		t.Errorf("process of the crashed lab still runs: %s", p)
	}
}

// TestBenchShort runs `tulle lab bench` in miniature (1 s iperf3 runs, 20
// pings, the wire profile with vxlan) so the bench path and the wire
// offloads stay working; the numbers are logged, never asserted.
func TestBenchShort(t *testing.T) {
	requireE2E(t)
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Fatalf("iperf3 is required (apt-get install iperf3): %v", err)
	}
	before := snapshotHost(t)
	o := lab.BenchOptions{
		Lab:      lab.Options{Name: "te9", TulleBin: bins.tulle, CNIBin: bins.cni, Logger: testLogger(t)},
		Backends: []string{"vxlan"}, Profiles: []string{lab.ProfileWire},
		Duration: time.Second, Pings: 20,
	}
	var progress, table bytes.Buffer
	res, err := lab.Bench(context.Background(), o, &progress)
	t.Cleanup(func() { assertClean(t, "te9", before) })
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, progress.String())
	}
	if err := lab.WriteBench(&table, o, res); err != nil {
		t.Fatal(err)
	}
	t.Logf("bench:\n%s", table.String())
	if len(res) != 1 || res[0].Underlay1 <= 0 || res[0].Container1 <= 0 || res[0].Container4 <= 0 || res[0].ContainerP50 <= 0 {
		t.Errorf("incomplete results: %+v", res)
	}
}

// TestCLI drives the lab through the tulle binary as a user would, each
// command a separate process: up, refusal of a second up, status, exec in a
// container, restart --kill from another process, down.
func TestCLI(t *testing.T) {
	requireE2E(t)
	before := snapshotHost(t)
	const name = "te8"
	run := func(args ...string) (string, error) {
		cmd := exec.Command(bins.tulle, append([]string{"lab", "--name", name}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() {
		if out, err := run("down"); err != nil {
			t.Errorf("lab down: %v\n%s", err, out)
		}
		assertClean(t, name, before)
	})
	out, err := run("up", "--nodes", "2", "--containers", "1", "--backend", "host-gw")
	if err != nil {
		t.Fatalf("lab up: %v\n%s", err, out)
	}
	t.Logf("lab up:\n%s", out)
	if out, err := run("up", "--nodes", "2"); err == nil || !strings.Contains(out, "tulle lab down --name "+name) {
		t.Errorf("second lab up: %v\n%s", err, out)
	}
	l, err := lab.Load(lab.Options{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	peer, err := l.IP("node2/c1")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := run("exec", "node1/c1", "--", "busybox", "ping", "-c", "2", "-W", "2", peer.String()); err != nil || !strings.Contains(out, "2 packets received") {
		t.Errorf("lab exec ping: %v\n%s", err, out)
	}
	out, err = run("exec", "node2/c1", "ip", "-4", "-o", "addr", "show", "eth0")
	if err != nil || !strings.Contains(out, peer.String()+"/") {
		t.Errorf("lab exec ip addr: %v\n%s", err, out)
	}
	if _, err := run("exec", "node1", "false"); err == nil {
		t.Error("lab exec false succeeded")
	} else if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("lab exec false: %v, want exit status 1", err)
	}
	if out, err := run("restart", "node2", "--kill"); err != nil || !strings.Contains(out, "restarted") {
		t.Errorf("lab restart --kill: %v\n%s", err, out)
	}
	out, err = run("status")
	if err != nil {
		t.Fatalf("lab status: %v\n%s", err, out)
	}
	t.Logf("lab status:\n%s", out)
	if strings.Count(out, "yes") != 2 || !strings.Contains(out, "1/1") {
		t.Errorf("lab status does not show 2 ready agents with 1/1 routes:\n%s", out)
	}
}
