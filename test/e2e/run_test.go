package e2e

// `tulle run` on a 2-node lab: containers executed by runc from OCI bundles,
// attached by the tulle CNI plugin (bridge), or in none / host /
// container:NAME network modes. Each node has its own runner state dir and
// cgroup parent; every tulle command runs inside the node's namespace.
//
//	        rn1-n1 (node1, 10.250.0.11)                 rn1-n2 (node2, 10.250.0.12)
//	+--------------------------------------------+   +--------------------------------+
//	| web   httpd :80, -p 18091:80  (bridge)     |   | cli  sleep (bridge)            |
//	| side  container:web (shares web's netns)   |   |   nc <web IP>:80 across the    |
//	| lim   --memory/--cpus/--pids-limit         |   |   fabric                       |
//	| none / host / oom / bomb / ping containers |   | test: GET 10.250.0.11:18091    |
//	| tulle0 ---- tulle.1 ---- ul0 ==============|===|= ul0 ---- tulle.1 ---- tulle0  |
//	+--------------------------------------------+   +--------------------------------+
//
// Cgroup parents /tulle-rn1a and /tulle-rn1b are removed at the end; state
// dirs are temp dirs; nothing lands in /run/tulle/containers.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tulle-net/tulle/internal/cni"
	"github.com/tulle-net/tulle/internal/lab"
	"github.com/tulle-net/tulle/internal/netns"
	"github.com/tulle-net/tulle/internal/runner"
)

// runHTTPGet is a shell command fetching / from addr with HTTP/1.0 over nc
// (busybox-static's wget needs a libc in the rootfs).
func runHTTPGet(addr string) string {
	host, port, _ := strings.Cut(addr, ":")
	return fmt.Sprintf("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 %s %s", host, port)
}

func runBody(resp string) string {
	_, b, _ := strings.Cut(resp, "\r\n\r\n")
	return b
}

func TestRun(t *testing.T) {
	requireE2E(t)
	requireCmds(t, "runc", "nft")
	l := upLab(t, lab.Options{Name: "rn1", Nodes: 2, Backend: "vxlan"})
	nodes := labNodes(l)
	h1, h2 := runNewHost(t, nodes[0], "tulle-rn1a"), runNewHost(t, nodes[1], "tulle-rn1b")
	rootfs := buildRootfs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rf := "--rootfs=" + rootfs
	var removeAtEnd []*runner.State

	// web on node1 publishes 18091; cli on node2 reaches it across the
	// fabric, and node2 reaches the published port at node1's address.
	const webPort = 18091
	web := h1.mustRun(t, ctx, "web", "-p", fmt.Sprintf("%d:80", webPort), rf, "--", "httpd", "-f", "-p", "80", "-h", "/www")
	webIP, err := netip.ParsePrefix(web.IP)
	if err != nil || !h1.n.subnet.Contains(webIP.Addr()) {
		t.Fatalf("web's address %q (%v) is not in node1's subnet %s", web.IP, err, h1.n.subnet)
	}
	removeAtEnd = append(removeAtEnd, web)

	t.Run("two containers on two nodes reach each other", func(t *testing.T) {
		cli := h2.mustRun(t, ctx, "cli", rf, "--", "sleep", "1000")
		removeAtEnd = append(removeAtEnd, cli)
		cliIP, err := netip.ParsePrefix(cli.IP)
		if err != nil || !h2.n.subnet.Contains(cliIP.Addr()) {
			t.Fatalf("cli's address %q is not in node2's subnet %s", cli.IP, h2.n.subnet)
		}
		out, err := h2.ctl(ctx, "exec", "cli", "--", "sh", "-c", runHTTPGet(webIP.Addr().String()+":80"))
		if err != nil || runBody(out) != webPage {
			t.Errorf("node2/cli -> node1/web %s:80: %q, %v; want the page", webIP.Addr(), out, err)
		}
		if out, err := h1.ctl(ctx, "exec", "web", "--", "ping", "-c", "2", "-W", "2", cliIP.Addr().String()); err != nil || !strings.Contains(out, " 0% packet loss") {
			t.Errorf("node1/web -> node2/cli %s ping: %q, %v", cliIP.Addr(), out, err)
		}
		t.Logf("node2/cli %s fetched node1/web %s:80 across the fabric; web pinged cli", cliIP.Addr(), webIP.Addr())
	})

	t.Run("published port is reachable from another node", func(t *testing.T) {
		rules, err := portRules(ctx, h1.n, web.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(rules, func(r string) bool { return strings.Contains(r, fmt.Sprintf("dport %d dnat", webPort)) }) {
			t.Errorf("no DNAT rule for web's port %d: %q", webPort, rules)
		}
		took := waitHTTP(t, h2.n.ns, fmt.Sprintf("http://%s/", netip.AddrPortFrom(h1.n.ip, webPort)), 10*time.Second)
		t.Logf("node2 -> node1 %s:%d -> web:80 served after %s", h1.n.ip, webPort, took.Round(time.Millisecond))
	})

	t.Run("container:NAME shares localhost", func(t *testing.T) {
		side := h1.mustRun(t, ctx, "side", "--network", "container:web", rf, "--", "sleep", "1000")
		removeAtEnd = append(removeAtEnd, side)
		if side.Netns != web.Netns || side.IP != "" {
			t.Errorf("side's netns %q (ip %q), want web's %q", side.Netns, side.IP, web.Netns)
		}
		out, err := h1.ctl(ctx, "exec", "side", "--", "sh", "-c", runHTTPGet("127.0.0.1:80"))
		if err != nil || runBody(out) != webPage {
			t.Errorf("side -> 127.0.0.1:80 (web's httpd): %q, %v", out, err)
		}
		out, err = h1.ctl(ctx, "exec", "side", "--", "ip", "-o", "-4", "addr", "show", "dev", "eth0")
		if err != nil || !strings.Contains(out, web.IP) {
			t.Errorf("side's eth0: %q, %v; want web's %s", out, err, web.IP)
		}
		// A second bridge container does not share web's localhost.
		out, err = h1.run(ctx, "--rm", rf, "--", "sh", "-c", runHTTPGet("127.0.0.1:80"))
		if err == nil && runBody(out) == webPage {
			t.Errorf("a bridge container reached web's localhost: %q", out)
		}
		if _, err := h1.run(ctx, "--rm", "--network", "container:nope", rf, "--", "true"); err == nil || !strings.Contains(err.Error(), "no such container") {
			t.Errorf("--network container:nope: %v, want 'no such container'", err)
		}
	})

	t.Run("hostname and pid 1 are the container's own", func(t *testing.T) {
		out, err := h1.run(ctx, "--rm", "--hostname", "rn1-box", rf, "--", "sh", "-c", "hostname; echo pid=$$; ps -o pid,comm | wc -l")
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Fields(out)
		host, _ := os.Hostname()
		if len(lines) != 3 || lines[0] != "rn1-box" || lines[1] != "pid=1" {
			t.Errorf("container said %q, want hostname rn1-box and pid=1", out)
		} else if n, _ := strconv.Atoi(lines[2]); n > 4 { // header, sh, ps (and wc)
			t.Errorf("container sees %d lines of processes: not its own pid namespace", n)
		}
		if host == "rn1-box" {
			t.Error("the host's hostname changed")
		}
		out, err = h1.ctl(ctx, "exec", "web", "--", "cat", "/proc/1/cmdline")
		if err != nil || !strings.HasPrefix(out, "httpd\x00") {
			t.Errorf("web's pid 1 cmdline %q, %v; want httpd", out, err)
		}
		out, err = h1.ctl(ctx, "exec", "web", "--", "hostname")
		if err != nil || strings.TrimSpace(out) != "web" {
			t.Errorf("web's default hostname %q, %v; want its name", out, err)
		}
	})

	t.Run("ping needs NET_RAW", func(t *testing.T) {
		gw := h1.n.subnet.Masked().Addr().Next()
		out, err := h1.run(ctx, "--rm", "--cap-drop", "NET_RAW", rf, "--", "ping", "-c", "1", "-W", "2", gw.String())
		if runExitCode(err) <= 0 || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("ping without NET_RAW: exit %d, %v, output %q; want a permission error", runExitCode(err), err, out)
		}
		out, err = h1.run(ctx, "--rm", rf, "--", "ping", "-c", "1", "-W", "2", gw.String())
		if err != nil || !strings.Contains(out, "1 packets received") {
			t.Errorf("ping with Docker's default caps (NET_RAW): %q, %v", out, err)
		}
		// Exit codes propagate from a foreground container.
		if _, err := h1.run(ctx, "--rm", rf, "--", "sh", "-c", "exit 7"); runExitCode(err) != 7 {
			t.Errorf("tulle run -- sh -c 'exit 7': %v, want exit status 7", err)
		}
	})

	t.Run("network none and host", func(t *testing.T) {
		out, err := h1.run(ctx, "--rm", "--network", "none", rf, "--", "ip", "-o", "link")
		if err != nil || strings.Count(strings.TrimSpace(out), "\n") != 0 || !strings.Contains(out, "lo:") || !strings.Contains(out, "UP") {
			t.Errorf("--network none: links %q, %v; want only lo, up", out, err)
		}
		out, err = h1.run(ctx, "--rm", "--network", "host", rf, "--", "ip", "-o", "link")
		if err != nil || !strings.Contains(out, "ul0") || !strings.Contains(out, "tulle0") {
			t.Errorf("--network host: links %q, %v; want the node's ul0 and tulle0", out, err)
		}
	})

	t.Run("limits: CPU quota and memory limit are in the cgroup", func(t *testing.T) {
		lim := h1.mustRun(t, ctx, "lim", "--cpus", "0.5", "--memory", "32m", "--pids-limit", "20", rf, "--", "sleep", "1000")
		removeAtEnd = append(removeAtEnd, lim)
		for _, c := range []struct{ ctrl, file, want string }{
			{"cpu", "cpu.cfs_quota_us", "50000"},
			{"cpu", "cpu.cfs_period_us", "100000"},
			{"memory", "memory.limit_in_bytes", strconv.Itoa(32 << 20)},
			{"pids", "pids.max", "20"},
		} {
			p := runner.CgroupFile(c.ctrl, lim.CgroupsPath, c.file)
			if b, err := os.ReadFile(p); err != nil || strings.TrimSpace(string(b)) != c.want {
				t.Errorf("%s = %q (%v), want %s", p, b, err, c.want)
			}
		}
		// The container's own processes are in that cgroup.
		procs := cgroupProcs(runner.CgroupFile("cpu", lim.CgroupsPath, ""))
		if !slices.Contains(procs, lim.Pid) {
			t.Errorf("pid %d not in its cpu cgroup (procs %v)", lim.Pid, procs)
		}
	})

	t.Run("memory limit OOM-kills and ps shows it", func(t *testing.T) {
		// dd's 64 MB buffer cannot fit in 16 MB (no swap: swap == limit).
		h1.mustRun(t, ctx, "oom", "--memory", "16m", rf, "--", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1")
		st := h1.waitExited(t, ctx, "oom", 20*time.Second)
		if !st.OOMKilled || st.ExitCode != 137 {
			t.Errorf("oom: %s (oomKilled %v, exit %d); want OOM-killed, 137", st.StatusText(), st.OOMKilled, st.ExitCode)
		}
		out, err := h1.ctl(ctx, "ps")
		if err != nil || !strings.Contains(out, "OOM-killed") {
			t.Errorf("tulle ps does not show the OOM kill:\n%s%v", out, err)
		}
		// Control: the same dd with a 1 MB buffer fits.
		if out, err := h1.run(ctx, "--rm", "--memory", "16m", rf, "--", "dd", "if=/dev/zero", "of=/dev/null", "bs=1M", "count=1"); err != nil {
			t.Errorf("dd bs=1M under --memory 16m: %v\n%s", err, out)
		}
		if _, err := h1.ctl(ctx, "rm", "oom"); err != nil {
			t.Errorf("rm exited container: %v", err)
		}
		if left := h1.runLeftovers(ctx, st); len(left) > 0 {
			t.Errorf("after rm oom: %q", left)
		}
	})

	t.Run("pids limit stops a fork bomb", func(t *testing.T) {
		bomb := h1.mustRun(t, ctx, "bomb", "--pids-limit", "20", "--cpus", "0.2", rf, "--",
			"sh", "-c", "b() { b | b & }; b; sleep 1000")
		events := runner.CgroupFile("pids", bomb.CgroupsPath, "pids.events")
		var cur, max int
		_, ok := waitFor(15*time.Second, func() bool {
			b, _ := os.ReadFile(events)
			_, _ = fmt.Sscanf(strings.TrimSpace(string(b)), "max %d", &max)
			c, _ := os.ReadFile(runner.CgroupFile("pids", bomb.CgroupsPath, "pids.current"))
			cur, _ = strconv.Atoi(strings.TrimSpace(string(c)))
			return max > 0
		})
		if !ok {
			t.Errorf("fork bomb: pids.events max %d after 15s (pids.current %d): no fork was refused", max, cur)
		}
		if cur > 20 {
			t.Errorf("fork bomb: pids.current %d > limit 20", cur)
		}
		t.Logf("fork bomb held at %d processes, %d forks refused", cur, max)
		st := h1.inspect(t, ctx, "bomb")
		if _, err := h1.ctl(ctx, "rm", "-f", "bomb"); err != nil {
			t.Errorf("rm -f bomb: %v", err)
		}
		if left := h1.runLeftovers(ctx, st); len(left) > 0 {
			t.Errorf("after rm -f bomb: %q", left)
		}
	})

	t.Run("netns ls, netns exec, links", func(t *testing.T) {
		out, err := h1.ctl(ctx, "netns ls")
		if err != nil {
			t.Fatal(err)
		}
		var ino uint64
		if fi, err := os.Stat(web.Netns); err == nil {
			ino = runStatIno(fi)
		}
		if !strings.Contains(out, fmt.Sprintf("net:[%d]  web,side", ino)) {
			t.Errorf("netns ls has no line for web's namespace net:[%d] with web,side:\n%s", ino, out)
		}
		out, err = h1.ctl(ctx, "netns exec", "web", "--", "ip", "-o", "-4", "addr", "show", "dev", "eth0")
		if err != nil || !strings.Contains(out, web.IP) {
			t.Errorf("netns exec web -- ip addr (host's ip): %q, %v; want %s", out, err, web.IP)
		}
		iflink, err := h1.ctl(ctx, "exec", "web", "--", "cat", "/sys/class/net/eth0/iflink")
		if err != nil {
			t.Fatal(err)
		}
		out, err = h1.ctl(ctx, "links", strings.TrimSpace(iflink))
		if err != nil {
			t.Fatal(err)
		}
		veth := cni.HostVethName(web.ID, "eth0")
		found := false
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) >= 7 && f[0] == "(host)" && f[2] == veth && f[4] == "tulle0" && f[len(f)-2] == "web,side:2" && f[len(f)-1] == "eth0" {
				found = true
			}
		}
		if !found {
			t.Errorf("links %s: no (host) row for %s on tulle0 with peer web,side:2 eth0:\n%s", strings.TrimSpace(iflink), veth, out)
		}
		if _, err := h1.ctl(ctx, "links", "99999"); err == nil {
			t.Error("links 99999 succeeded")
		}
	})

	t.Run("bad input creates nothing", func(t *testing.T) {
		before := runHostSnapshot(t, h1)
		// A process listening on a host port makes it taken.
		hn, err := netns.Open(h1.n.ns)
		if err != nil {
			t.Fatal(err)
		}
		defer hn.Close()
		var ln net.Listener
		if err := netns.Do(hn, func() (err error) { ln, err = net.Listen("tcp4", ":18092"); return err }); err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"--network", "overlay", rf, "--", "true"}, `--network "overlay": unknown network mode`},
			{[]string{"--name", "web", rf, "--", "true"}, `"web" is taken`},
			{[]string{"-p", fmt.Sprintf("%d:80", webPort), rf, "--", "true"}, fmt.Sprintf("host port %d/tcp is already published by container web", webPort)},
			{[]string{"-p", "18092:80", rf, "--", "true"}, "host port 18092/tcp is in use on this node"},
			{[]string{"--memory", "lots", rf, "--", "true"}, `--memory "lots"`},
			{[]string{"--rootfs", "/nonexistent/rn1", "--", "true"}, "--rootfs /nonexistent/rn1: not a directory"},
			{[]string{"--network", "container:nope", rf, "--", "true"}, "no such container"},
			{[]string{"--cap-drop", "FLY", rf, "--", "true"}, `--cap-drop "FLY": unknown capability`},
		} {
			_, err := h1.run(ctx, append([]string{"-d"}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("tulle run %q: %v; want an error saying %q", tc.args, err, tc.want)
			}
		}
		if after := runHostSnapshot(t, h1); !slices.Equal(before, after) {
			t.Errorf("bad input changed node1:\nbefore %q\nafter  %q", before, after)
		}
	})

	t.Run("failed CNI ADD (port taken by another runtime) rolls back", func(t *testing.T) {
		// Another tulle state dir on the same node (another runtime as far
		// as this one knows) publishes 18093: the plugin refuses it (code
		// 100) after the netns was made; run must remove it all again.
		other := runNewHost(t, h1.n, "tulle-rn1c")
		o := other.mustRun(t, ctx, "holder", "-p", "18093:80", rf, "--", "sleep", "1000")
		before := runHostSnapshot(t, h1)
		_, err := h1.run(ctx, "-d", "--name", "late", "-p", "18093:80", rf, "--", "sleep", "1000")
		if err == nil || !strings.Contains(err.Error(), "host port in use") {
			t.Errorf("run -p 18093 taken by another runtime: %v; want 'host port in use'", err)
		}
		if after := runHostSnapshot(t, h1); !slices.Equal(before, after) {
			t.Errorf("failed run left state:\nbefore %q\nafter  %q", before, after)
		}
		if _, err := other.ctl(ctx, "rm", "-f", "holder"); err != nil {
			t.Error(err)
		}
		if left := other.runLeftovers(ctx, o); len(left) > 0 {
			t.Errorf("after rm -f holder: %q", left)
		}
		other.assertEmpty(t)
	})

	t.Run("logs, stop, rm leave nothing behind", func(t *testing.T) {
		echo := h1.mustRun(t, ctx, "echo", rf, "--", "sh", "-c", "echo hello-rn1; echo to-stderr >&2; sleep 1000")
		_, _ = waitFor(5*time.Second, func() bool { out, _ := h1.ctl(ctx, "logs", "echo"); return strings.Contains(out, "to-stderr") })
		if out, err := h1.ctl(ctx, "logs", "echo"); err != nil || !strings.Contains(out, "hello-rn1") || !strings.Contains(out, "to-stderr") {
			t.Errorf("logs echo: %q, %v", out, err)
		}
		if _, err := h1.ctl(ctx, "rm", "echo"); err == nil || !strings.Contains(err.Error(), "is running") {
			t.Errorf("rm of a running container without -f: %v; want 'is running'", err)
		}
		began := time.Now()
		out, err := h1.ctl(ctx, "stop", "-t", "1", "echo")
		// sh as pid 1 ignores SIGTERM: SIGKILL after 1s.
		if err != nil || !strings.Contains(out, "exited (137)") {
			t.Errorf("stop -t 1 echo: %q, %v", out, err)
		}
		t.Logf("stop -t 1 took %s", time.Since(began).Round(time.Millisecond))
		if _, err := h1.ctl(ctx, "exec", "echo", "--", "true"); err == nil {
			t.Error("exec in a stopped container succeeded")
		}
		// An exited container already gave back its address and ports.
		ip, _, _ := strings.Cut(echo.IP, "/")
		if allocs, _ := allocations(h1.n); slices.Contains(allocs, ip) {
			t.Errorf("exited container still holds %s", ip)
		}
		removeAtEnd = append(removeAtEnd, echo)
		// web's namespace is shared by running side: rm -f web still works.
		if _, err := h1.ctl(ctx, "rm", "-f", "web"); err == nil {
			t.Log("rm -f web while side runs in its netns: allowed with -f")
		}
		for _, st := range removeAtEnd {
			h := h1
			if st.Name == "cli" {
				h = h2
			}
			if _, err := h.ctl(ctx, "rm", "-f", st.Name); err != nil && !strings.Contains(err.Error(), "no such container") {
				t.Errorf("rm -f %s: %v", st.Name, err)
			}
			if left := h.runLeftovers(ctx, st); len(left) > 0 {
				t.Errorf("after rm %s: %q", st.Name, left)
			}
		}
		h1.assertEmpty(t)
		h2.assertEmpty(t)
		assertNodeEmpty(t, h1.n)
		assertNodeEmpty(t, h2.n)
		if _, err := os.Stat("/run/tulle/containers/web"); err == nil {
			t.Error("the default state dir was used")
		}
	})
}

// runHostSnapshot is what a run may change on a node: container dirs,
// netns mounts under the state dir, cgroups, allocations, plugin veths and
// port rules.
func runHostSnapshot(t *testing.T, h *runHost) []string {
	t.Helper()
	var s []string
	ents, _ := os.ReadDir(h.stateDir)
	for _, e := range ents {
		if sub, _ := os.ReadDir(h.stateDir + "/" + e.Name()); e.Name() != "runc" && e.Name() != "cni-cache" || len(sub) > 0 {
			s = append(s, "dir "+e.Name())
		}
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], h.stateDir) {
				s = append(s, "mount "+f[4])
			}
		}
	}
	for _, hier := range cgroupHierarchies() {
		kids, _ := os.ReadDir(hier + "/" + h.cgroupParent)
		for _, k := range kids {
			if k.IsDir() {
				s = append(s, "cgroup "+hier+"/"+h.cgroupParent+"/"+k.Name())
			}
		}
	}
	allocs, err := allocations(h.n)
	if err != nil {
		t.Fatal(err)
	}
	veths, err := pluginVeths(h.n)
	if err != nil {
		t.Fatal(err)
	}
	rules, _ := portRules(context.Background(), h.n, "tulle-cni")
	for _, a := range allocs {
		s = append(s, "alloc "+a)
	}
	for _, v := range veths {
		s = append(s, "veth "+v)
	}
	for _, r := range rules {
		s = append(s, "rule "+r)
	}
	slices.Sort(s)
	return s
}

// TestRunStartLatency measures start-to-running latency with bridge
// networking through the tulle plugin: the wall time of `tulle run -d`
// against `podman run -d --rootfs` (CNI backend, same conflist and plugin),
// interleaved in ABBA order on one lab node, each container removed before
// the next pair. It reports medians and their ratio; it asserts nothing
// about speed. TULLE_RUN_BENCH_N sets the number of pairs (default 10, plus
// one warm-up pair that is not counted).
func TestRunStartLatency(t *testing.T) {
	requireE2E(t)
	requireCmds(t, "runc", "podman", "conmon")
	n := 10
	if s := os.Getenv("TULLE_RUN_BENCH_N"); s != "" {
		if v, err := strconv.Atoi(s); err == nil && v > 0 {
			n = v
		}
	}
	l := upLab(t, lab.Options{Name: "rn3", Nodes: 1, Backend: "vxlan"})
	node := labNodes(l)[0]
	const podCgroup = "tulle-rn3p"
	cleanupCgroups(t, podCgroup, "libpod_parent")
	cleanupCreatedDirs(t, "/run/runc", "/run/libpod", "/run/containers", "/var/lib/containers")
	checkNoNewNetns(t)
	h := runNewHost(t, node, "tulle-rn3t")
	p := newPodmanHost(t, node, h.cniPath)
	rootfs := buildRootfs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	timeIt := func(f func() error) time.Duration {
		began := time.Now()
		if err := f(); err != nil {
			t.Fatal(err)
		}
		return time.Since(began)
	}
	var tulleD, podmanD []time.Duration
	for i := 0; i <= n; i++ {
		tname, pname := fmt.Sprintf("rn3-t%d", i), fmt.Sprintf("rn3-p%d", i)
		runTulle := func() error {
			_, err := h.run(ctx, "-d", "--name", tname, "--rootfs", rootfs, "--", "sleep", "1000")
			return err
		}
		runPodman := func() error {
			_, err := p.podman(ctx, "run", "-d", "--name", pname, "--network", cniNetwork, "--cgroup-parent=/"+podCgroup,
				"--rootfs", rootfs, "sleep", "1000")
			return err
		}
		var dt, dp time.Duration
		if i%2 == 0 {
			dt, dp = timeIt(runTulle), timeIt(runPodman)
		} else {
			dp, dt = timeIt(runPodman), timeIt(runTulle)
		}
		if i > 0 { // i == 0 warms podman's storage and both binaries' page cache
			tulleD, podmanD = append(tulleD, dt), append(podmanD, dp)
		}
		if _, err := h.ctl(ctx, "rm", "-f", tname); err != nil {
			t.Fatal(err)
		}
		if _, err := p.podman(ctx, "rm", "-f", "-t", "0", pname); err != nil {
			t.Fatal(err)
		}
	}
	mt, mp := runMedian(tulleD), runMedian(podmanD)
	t.Logf("start-to-running, bridge via tulle-cni, %d interleaved pairs:", n)
	t.Logf("| runtime | median | min | max |")
	t.Logf("| `tulle run -d` | %s | %s | %s |", mt.Round(time.Millisecond), slices.Min(tulleD).Round(time.Millisecond), slices.Max(tulleD).Round(time.Millisecond))
	t.Logf("| `podman run -d --rootfs` | %s | %s | %s |", mp.Round(time.Millisecond), slices.Min(podmanD).Round(time.Millisecond), slices.Max(podmanD).Round(time.Millisecond))
	t.Logf("tulle/podman median ratio: %.2f", float64(mt)/float64(mp))
	h.assertEmpty(t)
	assertNodeEmpty(t, node)
}

func runMedian(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
