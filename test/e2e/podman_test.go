package e2e

// podman 4.3 (Debian 12, CNI backend) driving the tulle plugin on a 2-node
// lab. Each lab node plays one host: its own podman storage, config and
// conflist, and every podman command runs inside the node's namespace
// (where tulle0 and the agent live), so the plugin podman executes does too.
//
//	      pd1-n1 (node1, 10.250.0.11)             pd1-n2 (node2, 10.250.0.12)
//	+----------------------------------+    +----------------------------------+
//	| podman run -d -p 18080:80 A      |    | podman run --rm B                |
//	|   A: httpd :80, 10.244.x.y       |    |   B: wget http://<A>/            |
//	|   nft inet tulle: :18080 -> A:80 |    |                                  |
//	| tulle0 ---- tulle.1 ---- ul0 ====|====| ul0 ---- tulle.1 ---- tulle0     |
//	+----------------------------------+    +----------------------------------+
//	                                          test: GET http://<A>:80/ and
//	                                          GET http://10.250.0.11:18080/
//	                                          from node2's namespace
//
// podman's own state stays in per-node temp dirs (CONTAINERS_CONF, --root,
// --runroot, vfs storage); only /run/runc (runc's state) and the cgroup
// parent /tulle-pd1 live outside, and both are removed at the end.

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tulle-net/tulle/internal/cni"
	"github.com/tulle-net/tulle/internal/lab"
)

// podmanHost is podman configured for one lab node.
type podmanHost struct {
	n    node
	env  []string // CONTAINERS_CONF
	args []string // podman global flags: private root, runroot, storage
}

// podmanCgroupParent holds every podman container's cgroup (and conmon's,
// in <parent>/conmon) instead of the default /libpod_parent.
const podmanCgroupParent = "tulle-pd1"

// newPodmanHost writes a containers.conf for node n (REAL-CLIENTS.md §2):
// rlimits within this machine's hard limits (root lacks CAP_SYS_RESOURCE),
// cgroupfs, the CNI backend with a network_config_dir holding only the
// node's tulle conflist, and the plugin from binDir. Containers left at the
// end of the test are removed with `podman rm -af`.
func newPodmanHost(t *testing.T, n node, binDir string) *podmanHost {
	t.Helper()
	dir := t.TempDir()
	netd := writeConfDir(t, n)
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
cgroupns = "private"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q
runtime = "runc"
tmp_dir = %q

[network]
network_backend = "cni"
network_config_dir = %q
cni_plugin_dirs = [%q]
`, filepath.Join(dir, "events.log"), filepath.Join(dir, "tmp"), netd, binDir)
	confPath := filepath.Join(dir, "containers.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &podmanHost{
		n:   n,
		env: []string{"CONTAINERS_CONF=" + confPath},
		args: []string{
			"--root", filepath.Join(dir, "root"), "--runroot", filepath.Join(dir, "run"),
			"--storage-driver", "vfs", // no overlay mounts left in the temp dir
		},
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := p.podman(ctx, "rm", "-af", "-t", "0"); err != nil {
			t.Errorf("%s: podman rm -af: %v", n.name, err)
		} else if s := strings.TrimSpace(out); s != "" {
			t.Logf("%s: removed leftover containers %s", n.name, strings.Fields(s))
		}
		if err := unmountUnder(dir); err != nil {
			t.Errorf("%s: %v", n.name, err)
		}
	})
	return p
}

// podman runs podman with args inside the node's namespace.
func (p *podmanHost) podman(ctx context.Context, args ...string) (string, error) {
	argv := append([]string{"podman"}, p.args...)
	return nsCommand(ctx, p.n.ns, p.env, append(argv, args...)...)
}

// TestPodman runs podman containers on two lab nodes through the tulle
// plugin: a container on node2 fetches a page from a container on node1
// across the fabric; node1's `podman run -p 18080:80` is reachable from
// node2 at node1's underlay address through the plugin's nftables DNAT;
// `podman rm -f` (and `run --rm`) runs the plugin's DEL, leaving no
// address, host veth or port rule on the node.
func TestPodman(t *testing.T) {
	requireE2E(t)
	requireCmds(t, "podman", "runc", "conmon", "nft", "ping")
	l := upLab(t, lab.Options{Name: "pd1", Nodes: 2, Backend: "vxlan"})
	nodes := labNodes(l)
	n1, n2 := nodes[0], nodes[1]
	cleanupCgroups(t, podmanCgroupParent, "libpod_parent")
	cleanupCreatedDirs(t, "/run/runc", "/run/libpod", "/run/containers", "/var/lib/containers")
	checkNoNewNetns(t)
	rootfs := buildRootfs(t)
	binDir := cniBinDir(t)
	p1, p2 := newPodmanHost(t, n1, binDir), newPodmanHost(t, n2, binDir)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cg := "--cgroup-parent=/" + podmanCgroupParent

	// A: a web server on node1, its port 80 published on node1 as 18080.
	const hostPort = 18080
	began := time.Now()
	out, err := p1.podman(ctx, "run", "-d", "--name", "pd1-a", "--network", cniNetwork, cg,
		"-p", fmt.Sprintf("%d:80", hostPort), "--rootfs", rootfs, "httpd", "-f", "-p", "80", "-h", "/www")
	if err != nil {
		t.Fatalf("node1: podman run A: %v", err)
	}
	idA := lastLine(out)
	t.Logf("node1: podman run -d -p %d:80 A (%.12s) took %s", hostPort, idA, time.Since(began).Round(time.Millisecond))
	out, err = p1.podman(ctx, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "pd1-a")
	if err != nil {
		t.Fatalf("node1: podman inspect A: %v", err)
	}
	ipA, err := netip.ParseAddr(strings.TrimSpace(out))
	if err != nil || !n1.subnet.Contains(ipA) {
		t.Fatalf("A's address %q (%v) is not in node1's subnet %s", strings.TrimSpace(out), err, n1.subnet)
	}
	veths, err := pluginVeths(n1)
	if err != nil {
		t.Fatal(err)
	}
	if want := cni.HostVethName(idA, "eth0"); !slices.Contains(veths, want) {
		t.Errorf("node1: host veth %s of A missing (plugin veths %q)", want, veths)
	}
	rules, err := portRules(ctx, n1, idA)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(rules, func(r string) bool { return strings.Contains(r, fmt.Sprintf("dport %d dnat", hostPort)) }) {
		t.Errorf("node1: no tulle DNAT rule for A's port %d in table inet tulle; A's rules: %q", hostPort, rules)
	}
	t.Logf("node1: A is %s, published by tulle with %d nft rules", ipA, len(rules))

	// From node2's namespace: A directly across the fabric, then A's
	// published port at node1's underlay address.
	took := waitHTTP(t, n2.ns, "http://"+netip.AddrPortFrom(ipA, 80).String()+"/", 15*time.Second)
	t.Logf("node2 -> A %s:80 across the fabric: served after %s", ipA, took.Round(time.Millisecond))
	published := netip.AddrPortFrom(n1.ip, hostPort)
	took = waitHTTP(t, n2.ns, "http://"+published.String()+"/", 10*time.Second)
	t.Logf("node2 -> node1's published port %s -> A:80: served after %s", published, took.Round(time.Millisecond))

	// B: a container on node2 fetches A's page.
	began = time.Now()
	out, err = p2.podman(ctx, "run", "--rm", "--name", "pd1-b", "--network", cniNetwork, cg, "--rootfs", rootfs,
		// busybox-static's wget segfaults without a libc in the rootfs
		// (exit 139), so speak HTTP/1.0 with nc.
		"sh", "-c", "ip -o -4 addr show dev eth0 && printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 "+ipA.String()+" 80")
	if err != nil {
		t.Fatalf("node2: podman run B (GET A): %v\noutput: %s", err, out)
	}
	ipB, resp := parseIPAddrLine(out)
	_, body, _ := strings.Cut(resp, "\r\n\r\n")
	if !n2.subnet.Contains(ipB) {
		t.Errorf("B's address %s is not in node2's subnet %s (output %q)", ipB, n2.subnet, out)
	}
	if body != webPage {
		t.Errorf("B got %q from A, want the page %q", resp, webPage)
	}
	t.Logf("node2: B %s fetched A's page from %s (podman run --rm took %s)", ipB, ipA, time.Since(began).Round(time.Millisecond))
	assertNodeEmpty(t, n2) // `run --rm` removed B: DEL ran

	began = time.Now()
	if _, err := p1.podman(ctx, "rm", "-f", "-t", "0", "pd1-a"); err != nil {
		t.Fatalf("node1: podman rm -f A: %v", err)
	}
	t.Logf("node1: podman rm -f A took %s", time.Since(began).Round(time.Millisecond))
	assertDetached(t, n1, idA)
	assertNodeEmpty(t, n1)
}

// lastLine is the last non-empty line of s (podman run -d prints the
// container ID last).
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// parseIPAddrLine splits the output of `ip -o -4 addr show dev eth0 &&
// ... | nc`: busybox prints "2: eth0    inet 10.244.2.2/24 brd ... \ ..."
// first, then the HTTP response.
func parseIPAddrLine(out string) (netip.Addr, string) {
	first, rest, _ := strings.Cut(out, "\n")
	f := strings.Fields(first)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "inet" {
			if p, err := netip.ParsePrefix(f[i+1]); err == nil {
				return p.Addr(), rest
			}
		}
	}
	return netip.Addr{}, rest
}

// assertNodeEmpty fails unless node n holds no allocation and no plugin
// veth at all (polling up to 10s).
func assertNodeEmpty(t *testing.T, n node) {
	t.Helper()
	var allocs, veths []string
	_, ok := waitFor(10*time.Second, func() bool {
		var err1, err2 error
		allocs, err1 = allocations(n)
		veths, err2 = pluginVeths(n)
		return err1 == nil && err2 == nil && len(allocs) == 0 && len(veths) == 0
	})
	if !ok {
		t.Errorf("%s after its containers were removed: allocations %q, plugin veths %q", n.name, allocs, veths)
	}
}
