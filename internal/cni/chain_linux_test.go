package cni

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/tulle-net/tulle/internal/netns"
)

// refMetaPluginDir is where .ci/deps installs the reference meta plugins at
// v1.9.1 (TULLE_REF_CNI_DIR overrides it).
const refMetaPluginDir = "/opt/tulle-test/cni-v1.9.1"

// findRefPlugins returns the directory holding portmap, bandwidth, tuning
// and loopback v1.9.1. Without them the test skips, but fails under CI=true.
func findRefPlugins(t *testing.T) string {
	t.Helper()
	dir := refMetaPluginDir
	if d := os.Getenv("TULLE_REF_CNI_DIR"); d != "" {
		dir = d
	}
	for _, p := range []string{"portmap", "bandwidth", "tuning", "loopback"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("reference plugin %s not found in %s, and CI=true forbids skipping: run .ci/deps", p, dir)
			}
			t.Skipf("reference plugin %s not found in %s (run .ci/deps)", p, dir)
		}
	}
	return dir
}

// chainRun drives one conflist through libcni the way a runtime does: the
// plugins execute from a thread locked in the node namespace, with the
// tulle plugin and the reference plugins on CNI_PATH, and libcni's result
// cache in a temporary directory.
type chainRun struct {
	n    *portsNode
	cni  *libcni.CNIConfig
	list *libcni.NetworkConfigList
	rt   *libcni.RuntimeConf
}

func newChainRun(t *testing.T, n *portsNode, paths []string, conflist map[string]any, cont ns.NetNS, capArgs map[string]any) *chainRun {
	t.Helper()
	list, err := libcni.ConfListFromBytes(mustMarshal(t, conflist))
	if err != nil {
		t.Fatalf("parse conflist: %v", err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	return &chainRun{
		n:    n,
		cni:  libcni.NewCNIConfigWithCacheDir(paths, t.TempDir(), nil),
		list: list,
		rt: &libcni.RuntimeConf{ContainerID: "chain-" + hex.EncodeToString(b), NetNS: cont.Path(),
			IfName: "eth0", CapabilityArgs: capArgs},
	}
}

func (c *chainRun) do(t *testing.T, what string, f func(ctx context.Context) error) {
	t.Helper()
	err := c.n.ns.Do(func(ns.NetNS) error { return f(context.Background()) })
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func (c *chainRun) add(t *testing.T) *current.Result {
	t.Helper()
	var res types.Result
	c.do(t, "ADD", func(ctx context.Context) (err error) {
		res, err = c.cni.AddNetworkList(ctx, c.list, c.rt)
		return err
	})
	r, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatalf("ADD result %v: %v", res, err)
	}
	return r
}

func (c *chainRun) check(t *testing.T) {
	t.Helper()
	c.do(t, "CHECK", func(ctx context.Context) error { return c.cni.CheckNetworkList(ctx, c.list, c.rt) })
}

func (c *chainRun) del(t *testing.T) {
	t.Helper()
	c.do(t, "DEL", func(ctx context.Context) error { return c.cni.DelNetworkList(ctx, c.list, c.rt) })
}

func (c *chainRun) status(t *testing.T) {
	t.Helper()
	c.do(t, "STATUS", func(ctx context.Context) error { return c.cni.GetStatusNetworkList(ctx, c.list) })
}

// TestChainAfterTulle runs the reference tuning, portmap (nftables backend)
// and bandwidth v1.9.1 after tulle in one 1.1.0 conflist, as a runtime
// would: on ADD they work from tulle's result (tuning changes the MAC and a
// sysctl, portmap publishes a port, bandwidth shapes the host veth), CHECK
// passes every plugin on the final result, and DEL (in reverse order, so
// they run before tulle) leaves nothing of any of them.
func TestChainAfterTulle(t *testing.T) {
	ref := findRefPlugins(t)
	n := newPortsNode(t)
	plugin := buildPlugin(t)
	cont, contH := n.container(t)
	const mac = "c2:00:5e:00:00:42"
	conflist := map[string]any{
		"cniVersion": "1.1.0",
		"name":       "tch-after",
		"plugins": []map[string]any{
			{"type": PluginType, "subnetFile": n.subnetFile, "dataDir": n.dataDir},
			{"type": "tuning", "mac": mac, "sysctl": map[string]string{"net.ipv4.conf.eth0.arp_ignore": "1"}},
			{"type": "portmap", "backend": "nftables", "capabilities": map[string]bool{"portMappings": true}},
			{"type": "bandwidth", "ingressRate": 800_000_000, "ingressBurst": 1 << 20, "egressRate": 800_000_000, "egressBurst": 1 << 20},
		},
	}
	run := newChainRun(t, n, []string{filepath.Dir(plugin), ref}, conflist, cont,
		map[string]any{"portMappings": []map[string]any{{"hostPort": 8090, "containerPort": 80, "protocol": "tcp"}}})
	hostVeth := HostVethName(run.rt.ContainerID, "eth0")
	ifbsBefore := countIFB(t, n.h)

	res := run.add(t)
	// tulle's host veth and eth0 (with tuning's MAC), then bandwidth's ifb.
	if len(res.Interfaces) != 3 || res.Interfaces[0].Name != hostVeth || res.Interfaces[1].Mac != mac ||
		!strings.HasPrefix(res.Interfaces[2].Name, "bwp") {
		t.Fatalf("final result interfaces = %v, want tulle's host veth, eth0 with tuning's MAC, bandwidth's ifb", res.Interfaces)
	}
	if len(res.IPs) != 1 || !strings.HasPrefix(res.IPs[0].Address.String(), "10.250.3.") {
		t.Fatalf("final result ips = %v", res.IPs)
	}
	// tuning: the MAC and the sysctl in the container.
	ch := handle(t, cont)
	if got := link(t, ch, "eth0").Attrs().HardwareAddr.String(); got != mac {
		t.Errorf("container eth0 mac = %s, want tuning's %s", got, mac)
	}
	if got := readSysctl(t, contH, "net/ipv4/conf/eth0/arp_ignore"); got != "1" {
		t.Errorf("container arp_ignore = %q, want tuning's 1", got)
	}
	// portmap: the port is published from tulle's address.
	mustReach(t, n.peerH, "tcp4", nodeUnderlay+":8090", "")
	// bandwidth: a tbf on the host veth (ingress) and an ifb (egress).
	if !hasTBF(t, n.h, hostVeth) {
		t.Errorf("no tbf qdisc on host veth %s after bandwidth ADD", hostVeth)
	}
	if got := countIFB(t, n.h); got != ifbsBefore+1 {
		t.Errorf("ifb devices = %d, want %d after bandwidth ADD", got, ifbsBefore+1)
	}

	run.check(t)
	run.status(t)

	run.del(t)
	run.del(t) // runtimes repeat DEL
	if link(t, n.h, hostVeth) != nil {
		t.Errorf("host veth %s left after DEL", hostVeth)
	}
	if got := countIFB(t, n.h); got != ifbsBefore {
		t.Errorf("ifb devices = %d after DEL, want %d", got, ifbsBefore)
	}
	if recs := n.records(t); len(recs) != 0 {
		t.Errorf("allocations left after DEL: %v", recs)
	}
	if _, err := dialEcho(n.peerH, "tcp4", nodeUnderlay+":8090"); err == nil {
		t.Error("port 8090 still reachable after DEL")
	}
}

// TestChainBeforeTulle puts tulle after a reference plugin: loopback
// (v1.9.1) runs first and hands tulle a prevResult with "lo", tulle adds
// its interfaces after it, tuning follows. CHECK finds tulle's address in
// the merged result; DEL removes it.
func TestChainBeforeTulle(t *testing.T) {
	ref := findRefPlugins(t)
	n := newPortsNode(t)
	plugin := buildPlugin(t)
	cont, contH := n.container(t)
	conflist := map[string]any{
		"cniVersion": "1.1.0",
		"name":       "tch-before",
		"plugins": []map[string]any{
			{"type": "loopback"},
			{"type": PluginType, "subnetFile": n.subnetFile, "dataDir": n.dataDir},
			{"type": "tuning", "sysctl": map[string]string{"net.ipv4.conf.eth0.arp_ignore": "2"}},
		},
	}
	run := newChainRun(t, n, []string{filepath.Dir(plugin), ref}, conflist, cont, nil)
	res := run.add(t)
	if len(res.Interfaces) != 3 || res.Interfaces[0].Name != "lo" || res.Interfaces[2].Name != "eth0" {
		t.Fatalf("result interfaces = %v, want lo (loopback's) then tulle's host veth and eth0", res.Interfaces)
	}
	var tulleIP *current.IPConfig
	for _, ip := range res.IPs {
		if ip.Interface != nil && *ip.Interface == 2 {
			tulleIP = ip
		}
	}
	if tulleIP == nil || !strings.HasPrefix(tulleIP.Address.String(), "10.250.3.") {
		t.Fatalf("result ips = %v, want tulle's address on interface 2", res.IPs)
	}
	if got := readSysctl(t, contH, "net/ipv4/conf/eth0/arp_ignore"); got != "2" {
		t.Errorf("container arp_ignore = %q, want tuning's 2", got)
	}
	mustReach(t, n.nodeH, "tcp4", tulleIP.Address.IP.String()+":80", "")
	run.check(t)
	run.del(t)
	if recs := n.records(t); len(recs) != 0 {
		t.Errorf("allocations left after DEL: %v", recs)
	}
}

func readSysctl(t *testing.T, h netns.NsHandle, key string) string {
	t.Helper()
	var v []byte
	err := netns.Do(h, func() (err error) {
		v, err = os.ReadFile("/proc/sys/" + key)
		return err
	})
	if err != nil {
		t.Fatalf("read sysctl %s: %v", key, err)
	}
	return strings.TrimSpace(string(v))
}

func hasTBF(t *testing.T, h *netlink.Handle, dev string) bool {
	t.Helper()
	l := link(t, h, dev)
	if l == nil {
		return false
	}
	qs, err := h.QdiscList(l)
	if err != nil {
		t.Fatalf("list qdiscs of %s: %v", dev, err)
	}
	for _, q := range qs {
		if q.Type() == "tbf" {
			return true
		}
	}
	return false
}

func countIFB(t *testing.T, h *netlink.Handle) int {
	t.Helper()
	ls, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range ls {
		if l.Type() == "ifb" {
			n++
		}
	}
	return n
}
