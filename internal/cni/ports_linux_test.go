package cni

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/vishvananda/netlink"

	"github.com/tulle-net/tulle/internal/dataplane"
	"github.com/tulle-net/tulle/internal/ipnet"
	"github.com/tulle-net/tulle/internal/netns"
	"github.com/tulle-net/tulle/internal/netns/nstest"
	"github.com/tulle-net/tulle/internal/plan"
)

// Published-port tests. Topology (every namespace is tpm-<hex>, made by
// nstest and removed at cleanup; nothing is added to the root namespace):
//
//	 peer                      node (host side of the plugin)           container(s)
//	+-----------------+       +------------------------------------+   +-------------------+
//	| pu0 192.168.77.2|-------| nu0 192.168.77.1/24                |   | eth0 10.250.3.x   |
//	|  (another node) |       | tcnbr0 10.250.3.1/24 -- tl<hex> ---+---| echo tcp/80,udp/53|
//	+-----------------+       | ip_forward=1, table inet tulle     |   +-------------------+
//	                          +------------------------------------+
//
// Clients dial node:hostPort from the peer (prerouting), from the node
// itself (output) and from a container through the node address (hairpin).
// The echo servers answer with the source address they saw.

const (
	nodeUnderlay = "192.168.77.1"
	peerUnderlay = "192.168.77.2"
)

// portsNode is a node with an underlay veth to a peer namespace.
type portsNode struct {
	*node
	nodeH, peerH netns.NsHandle
}

func newPortsNode(t *testing.T) *portsNode {
	t.Helper()
	nodeName, nodeH := nstest.New(t, "tpm")
	_, peerH := nstest.New(t, "tpm")
	nstest.Veth(t,
		nstest.End{NS: nodeH, Name: "nu0", Addr: netip.MustParsePrefix(nodeUnderlay + "/24")},
		nstest.End{NS: peerH, Name: "pu0", Addr: netip.MustParsePrefix(peerUnderlay + "/24")})
	hostNS, err := ns.GetNS(netns.Path(nodeName))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hostNS.Close() })
	err = netns.Do(nodeH, func() error {
		// /proc/sys/net is the opening thread's namespace's.
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	})
	if err != nil {
		t.Fatalf("enable forwarding in the node: %v", err)
	}
	return &portsNode{node: newNodeIn(t, hostNS), nodeH: nodeH, peerH: peerH}
}

// container is a namespace with an echo server on tcp/80 and udp/53.
func (n *portsNode) container(t *testing.T) (ns.NetNS, netns.NsHandle) {
	t.Helper()
	name, h := nstest.New(t, "tpm")
	c, err := ns.GetNS(netns.Path(name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	startEcho(t, h, 80, 53)
	return c, h
}

// startEcho serves, in namespace h, tcp/tcpPort and udp/udpPort: each
// answers "echo <source address>" and the server stops at cleanup.
func startEcho(t *testing.T, h netns.NsHandle, tcpPort, udpPort int) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	err := netns.Do(h, func() error {
		var err error
		if ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", tcpPort)); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", udpPort))
		return err
	})
	if err != nil {
		t.Fatalf("listen in the container: %v", err)
	}
	done := make(chan struct{}, 2)
	go func() {
		defer func() { done <- struct{}{} }()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "echo %s\n", c.RemoteAddr().(*net.TCPAddr).IP)
			c.Close()
		}
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(fmt.Appendf(nil, "echo %s\n", from.(*net.UDPAddr).IP), from)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		pc.Close()
		<-done
		<-done
	})
}

// dialEcho connects from namespace h to addr over network ("tcp4" or "udp4")
// and returns the source address the echo server saw.
func dialEcho(h netns.NsHandle, network, addr string) (string, error) {
	var c net.Conn
	err := netns.Do(h, func() error {
		var err error
		c, err = net.DialTimeout(network, addr, 2*time.Second)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if network == "udp4" {
		if _, err := c.Write([]byte("ping")); err != nil {
			return "", err
		}
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read from %s %s: %w", network, addr, err)
	}
	from, ok := strings.CutPrefix(strings.TrimSpace(line), "echo ")
	if !ok {
		return "", fmt.Errorf("unexpected answer %q", line)
	}
	return from, nil
}

func mustReach(t *testing.T, h netns.NsHandle, network, addr, wantFrom string) {
	t.Helper()
	from, err := dialEcho(h, network, addr)
	if err != nil {
		t.Fatalf("%s %s: %v", network, addr, err)
	}
	if wantFrom != "" && from != wantFrom {
		t.Errorf("%s %s: the container saw source %s, want %s", network, addr, from, wantFrom)
	}
}

// portsConf is a 1.1.0 config with runtimeConfig.portMappings.
func (n *portsNode) portsConf(network string, pms ...PortMapping) []byte {
	return n.conf("1.1.0", map[string]any{
		"name":          network,
		"capabilities":  map[string]bool{"portMappings": true},
		"runtimeConfig": map[string]any{"portMappings": pms},
	})
}

// nft runs nft in the node namespace.
func (n *portsNode) nft(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("nft", args...)
	var out, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := netns.StartIn(n.nodeH, cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("nft %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return out.String()
}

// portRuleCount is the number of rules tagged by the plugin.
func (n *portsNode) portRuleCount(t *testing.T) int {
	t.Helper()
	out := n.nft(t, "list", "table", "inet", "tulle")
	return strings.Count(out, `comment "tulle-cni `) - strings.Count(out, `comment "tulle-cni localnet-guard `)
}

func TestNFTTableName(t *testing.T) {
	if nftTableName != plan.NFTTable {
		t.Fatalf("the plugin's table %q is not the agent's %q", nftTableName, plan.NFTTable)
	}
}

// TestPortsReachable: tcp and udp published ports are reachable from
// another node, from the node itself and (hairpin) from the container
// itself through the node address; CHECK sees them and notices a missing
// rule; DEL removes them, twice.
func TestPortsReachable(t *testing.T) {
	n := newPortsNode(t)
	c, ch := n.container(t)
	conf := n.portsConf("tcn-net",
		PortMapping{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"},
		PortMapping{HostPort: 5353, ContainerPort: 53, Protocol: "udp"},
		PortMapping{HostPort: 8081, ContainerPort: 80, HostIP: nodeUnderlay},
	)
	res := n.add(t, "ctr-a", c, conf)
	t.Logf("nft list table inet tulle:\n%s", n.nft(t, "list", "table", "inet", "tulle"))
	// 3 rules per mapping, and a loopback masquerade for the two on every
	// address.
	if got := n.portRuleCount(t); got != 11 {
		t.Fatalf("%d tagged rules, want 3 mappings x 3 chains + 2 loopback masquerades:\n%s", got, n.nft(t, "list", "table", "inet", "tulle"))
	}

	for _, tc := range []struct {
		name     string
		from     netns.NsHandle
		network  string
		addr     string
		wantFrom string
	}{
		{"peer tcp", n.peerH, "tcp4", nodeUnderlay + ":8080", peerUnderlay},
		{"peer udp", n.peerH, "udp4", nodeUnderlay + ":5353", peerUnderlay},
		{"peer tcp hostIP", n.peerH, "tcp4", nodeUnderlay + ":8081", peerUnderlay},
		{"node tcp", n.nodeH, "tcp4", nodeUnderlay + ":8080", nodeUnderlay},
		{"node udp", n.nodeH, "udp4", nodeUnderlay + ":5353", nodeUnderlay},
		// Masqueraded to the bridge address, so the reply comes back
		// through the node and the container sees a reply from where it
		// connected to.
		{"hairpin tcp", ch, "tcp4", nodeUnderlay + ":8080", n.info.Gateway.String()},
		{"hairpin udp", ch, "udp4", nodeUnderlay + ":5353", n.info.Gateway.String()},
		// A mapping on every address answers on the node's 127.0.0.1 too,
		// masqueraded to the bridge address (a 127.0.0.1 source cannot
		// reach the container).
		{"node loopback tcp", n.nodeH, "tcp4", "127.0.0.1:8080", n.info.Gateway.String()},
		{"node loopback udp", n.nodeH, "udp4", "127.0.0.1:5353", n.info.Gateway.String()},
	} {
		t.Run(tc.name, func(t *testing.T) { mustReach(t, tc.from, tc.network, tc.addr, tc.wantFrom) })
	}
	// A mapping on one address does not.
	if _, err := dialEcho(n.nodeH, "tcp4", "127.0.0.1:8081"); err == nil {
		t.Error("127.0.0.1:8081 answers, but 8081 is published on " + nodeUnderlay + " only")
	}

	checkConf := withPrevResult(t, conf, res)
	if err := n.plugin.Check(args("ctr-a", "eth0", c.Path(), checkConf)); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	// A rule deleted behind the plugin's back is a CHECK failure.
	out := n.nft(t, "-a", "list", "chain", "inet", "tulle", chainPortsOutput)
	handle := ""
	for line := range strings.Lines(out) {
		if strings.Contains(line, "tcp *:8080->80") {
			_, handle, _ = strings.Cut(line, "# handle ")
		}
	}
	n.nft(t, "delete", "rule", "inet", "tulle", chainPortsOutput, "handle", strings.TrimSpace(handle))
	err := n.plugin.Check(args("ctr-a", "eth0", c.Path(), checkConf))
	if err == nil || !strings.Contains(err.Error(), "rule for tcp *:8080->80 not found in chain inet tulle ports-output") {
		t.Fatalf("CHECK without the output rule = %v", err)
	}
	// A repeated ADD restores the rules.
	n.add(t, "ctr-a", c, conf)
	if err := n.plugin.Check(args("ctr-a", "eth0", c.Path(), checkConf)); err != nil {
		t.Fatalf("CHECK after a repeated ADD: %v", err)
	}

	for range 2 {
		if err := n.plugin.Del(args("ctr-a", "eth0", c.Path(), conf)); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		if got := n.portRuleCount(t); got != 0 {
			t.Fatalf("DEL left %d port rules", got)
		}
	}
	if _, err := dialEcho(n.peerH, "tcp4", nodeUnderlay+":8080"); err == nil {
		t.Fatal("port 8080 still answers after DEL")
	}
}

// TestPortsLoopback publishes a port on 127.0.0.1 only: the node reaches
// it, the peer does not, and the route_localnet the bridge needs for it
// does not let a container reach the node's own 127.0.0.1 services (the
// localnet guard drops that; the test removes the guard to show the attack
// works without it). CHECK notices a missing guard and route_localnet off.
func TestPortsLoopback(t *testing.T) {
	n := newPortsNode(t)
	c, ch := n.container(t)
	conf := n.portsConf("tcn-net", PortMapping{HostPort: 8082, ContainerPort: 80, HostIP: "127.0.0.1"})
	res := n.add(t, "ctr-lo", c, conf)
	mustReach(t, n.nodeH, "tcp4", "127.0.0.1:8082", n.info.Gateway.String())
	if _, err := dialEcho(n.peerH, "tcp4", nodeUnderlay+":8082"); err == nil {
		t.Error("the peer reaches a port published on 127.0.0.1")
	}
	checkConf := withPrevResult(t, conf, res)
	if err := n.plugin.Check(args("ctr-lo", "eth0", c.Path(), checkConf)); err != nil {
		t.Fatalf("CHECK: %v", err)
	}

	// A service of the node on its loopback only, and a container that
	// routes 127.0.0.0/8 to the node instead of its own lo.
	startEcho(t, n.nodeH, 9099, 9099)
	err := netns.Do(ch, func() error {
		h, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		lo8 := ipnet.From(netip.MustParsePrefix("127.0.0.0/8"))
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		// ip addr del 127.0.0.1/8 dev lo (and with it the local routes)
		if err := h.AddrDel(lo, &netlink.Addr{IPNet: ipnet.From(netip.MustParsePrefix("127.0.0.1/8"))}); err != nil {
			return fmt.Errorf("delete 127.0.0.1 from lo: %w", err)
		}
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/eth0/route_localnet", []byte("1"), 0o644); err != nil {
			return err
		}
		eth, err := h.LinkByName("eth0")
		if err != nil {
			return err
		}
		// ip route add 127.0.0.0/8 via GATEWAY dev eth0
		return h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: lo8, Gw: n.info.Gateway.AsSlice()})
	})
	if err != nil {
		t.Fatalf("route the container's 127/8 to the node: %v", err)
	}
	if from, err := dialEcho(ch, "tcp4", "127.0.0.1:9099"); err == nil {
		t.Fatalf("a container reached the node's 127.0.0.1:9099 (saw source %s): the localnet guard does not hold", from)
	}
	n.nft(t, "flush", "chain", "inet", "tulle", chainPortsInput)
	if _, err := dialEcho(ch, "tcp4", "127.0.0.1:9099"); err != nil {
		t.Fatalf("without the guard the container still cannot reach 127.0.0.1:9099 (%v): the test proves nothing", err)
	}
	err = n.plugin.Check(args("ctr-lo", "eth0", c.Path(), checkConf))
	if err == nil || !strings.Contains(err.Error(), "localnet guard of bridge "+testBridge+" is missing") {
		t.Fatalf("CHECK without the guard = %v", err)
	}
	n.add(t, "ctr-lo", c, conf) // a repeated ADD restores it
	if _, err := dialEcho(ch, "tcp4", "127.0.0.1:9099"); err == nil {
		t.Fatal("the guard is back, yet the container reaches 127.0.0.1:9099")
	}
	err = netns.Do(n.nodeH, func() error {
		return os.WriteFile(routeLocalnetPath(testBridge), []byte("0"), 0o644)
	})
	mustOK(t, err)
	err = n.plugin.Check(args("ctr-lo", "eth0", c.Path(), checkConf))
	if err == nil || !strings.Contains(err.Error(), "route_localnet is off") {
		t.Fatalf("CHECK with route_localnet off = %v", err)
	}
}

// TestPortsTaken: a host port another attachment publishes is refused with
// ErrPortInUse, and the failed ADD leaves no veth, allocation or rule; the
// same port over the other protocol is fine.
func TestPortsTaken(t *testing.T) {
	n := newPortsNode(t)
	a, _ := n.container(t)
	b, _ := n.container(t)
	n.add(t, "ctr-a", a, n.portsConf("tcn-net", PortMapping{HostPort: 8080, ContainerPort: 80}))
	before := n.nft(t, "list", "table", "inet", "tulle")

	for _, tc := range []struct {
		name    string
		network string
		pm      PortMapping
	}{
		{"same port", "tcn-net", PortMapping{HostPort: 8080, ContainerPort: 81, Protocol: "TCP"}},
		{"specific hostIP under a wildcard", "tcn-net", PortMapping{HostPort: 8080, ContainerPort: 80, HostIP: nodeUnderlay}},
		{"other network", "tcn-net2", PortMapping{HostPort: 8080, ContainerPort: 80}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := n.tryAdd("ctr-b", b, n.portsConf(tc.network, PortMapping{HostPort: 9000, ContainerPort: 90}, tc.pm))
			var te *types.Error
			if !errors.As(err, &te) || te.Code != ErrPortInUse || !strings.Contains(te.Msg, "host port tcp/8080 is already published on this node by ctr-a/eth0") {
				t.Fatalf("ADD of a taken port = %v, want code %d naming ctr-a/eth0", err, ErrPortInUse)
			}
			if l := link(t, n.h, HostVethName("ctr-b", "eth0")); l != nil {
				t.Error("failed ADD left its host veth")
			}
			for _, r := range n.records(t) {
				if r.ContainerID == "ctr-b" {
					t.Errorf("failed ADD left its allocation %s", r.Addr)
				}
			}
			if after := n.nft(t, "list", "table", "inet", "tulle"); after != before {
				t.Errorf("failed ADD changed the rules:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
	n.add(t, "ctr-b", b, n.portsConf("tcn-net", PortMapping{HostPort: 8080, ContainerPort: 53, Protocol: "udp"}))
	mustReach(t, n.peerH, "udp4", nodeUnderlay+":8080", peerUnderlay)
}

// TestPortsGC: GC removes the port rules of attachments not in the valid
// list (past the grace period), keeps those of valid ones and never touches
// another network's.
func TestPortsGC(t *testing.T) {
	n := newPortsNode(t)
	a, _ := n.container(t)
	b, _ := n.container(t)
	c, _ := n.container(t)
	confA := n.portsConf("tcn-net", PortMapping{HostPort: 8080, ContainerPort: 80})
	n.add(t, "ctr-a", a, confA)
	n.add(t, "ctr-b", b, n.portsConf("tcn-net", PortMapping{HostPort: 8081, ContainerPort: 80}))
	n.add(t, "ctr-c", c, n.portsConf("tcn-net2", PortMapping{HostPort: 8082, ContainerPort: 80}))

	gcConf := n.conf("1.1.0", map[string]any{"cni.dev/valid-attachments": []map[string]string{{"containerID": "ctr-a", "ifname": "eth0"}}})
	// Within the grace period B's allocation (and so its ports) stays.
	if err := n.plugin.GC(args("", "", "", gcConf)); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if got := n.portRuleCount(t); got != 12 {
		t.Fatalf("GC within the grace period left %d rules, want 3 mappings x 4", got)
	}
	later := New(Options{HostNSPath: n.ns.Path(), Now: func() time.Time { return time.Now().Add(2 * gcGrace) }})
	if err := later.GC(args("", "", "", gcConf)); err != nil {
		t.Fatalf("GC: %v", err)
	}
	out := n.nft(t, "list", "table", "inet", "tulle")
	if strings.Contains(out, "ctr-b") || !strings.Contains(out, "tcn-net ctr-a eth0") || !strings.Contains(out, "tcn-net2 ctr-c eth0") {
		t.Fatalf("after GC of ctr-b:\n%s", out)
	}
	for _, tc := range []struct {
		port string
		ok   bool
	}{{"8080", true}, {"8081", false}, {"8082", true}} {
		_, err := dialEcho(n.peerH, "tcp4", nodeUnderlay+":"+tc.port)
		if (err == nil) != tc.ok {
			t.Errorf("port %s reachable = %t after GC, want %t (%v)", tc.port, err == nil, tc.ok, err)
		}
	}
}

// TestPortsMany: one ADD publishing 300 ports (1200 rules in one
// transaction) and a GC removing them all (in several): the kernel acks
// every message before the plugin reads one, which overflowed the netlink
// socket's default receive buffer (ENOBUFS) at a few hundred rules.
func TestPortsMany(t *testing.T) {
	n := newPortsNode(t)
	a, _ := n.container(t)
	var pms []PortMapping
	for i := range 300 {
		pms = append(pms, PortMapping{HostPort: 20000 + i, ContainerPort: 80})
	}
	n.add(t, "ctr-many", a, n.portsConf("tcn-net", pms...))
	if got := n.portRuleCount(t); got != 4*len(pms) {
		t.Fatalf("ADD of %d mappings left %d rules, want %d", len(pms), got, 4*len(pms))
	}
	gcConf := n.conf("1.1.0", map[string]any{"cni.dev/valid-attachments": []map[string]string{}})
	later := New(Options{HostNSPath: n.ns.Path(), Now: func() time.Time { return time.Now().Add(2 * gcGrace) }})
	if err := later.GC(args("", "", "", gcConf)); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if got := n.portRuleCount(t); got != 0 {
		t.Fatalf("GC left %d of %d port rules", got, 4*len(pms))
	}
}

// TestPortsWithAgentMasquerade: the agent's masquerade and the plugin's
// ports share table inet tulle. The agent's Apply (first, again, changed,
// removed) leaves the port rules alone, and the ports keep working.
func TestPortsWithAgentMasquerade(t *testing.T) {
	n := newPortsNode(t)
	c, _ := n.container(t)
	conf := n.portsConf("tcn-net", PortMapping{HostPort: 8080, ContainerPort: 80})
	checkConf := withPrevResult(t, conf, n.add(t, "ctr-a", c, conf))

	dp, err := dataplane.New(dataplane.Options{NetNS: n.nodeH})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	ports := func() string {
		var b strings.Builder
		for _, ch := range []string{chainPortsPrerouting, chainPortsOutput, chainPortsPostrouting} {
			b.WriteString(n.nft(t, "list", "chain", "inet", "tulle", ch))
		}
		return b.String()
	}
	before := ports()
	apply := func(s plan.State, wantChanges int) {
		t.Helper()
		for i, want := range []int{wantChanges, 0} {
			ch, err := dp.Apply(context.Background(), s)
			if err != nil || ch.Len() != want {
				t.Fatalf("Apply #%d: %d changes (want %d), %v:\n%s", i+1, ch.Len(), want, err, ch)
			}
		}
		if after := ports(); after != before {
			t.Fatalf("Apply changed the port chains:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		mustReach(t, n.peerH, "tcp4", nodeUnderlay+":8080", peerUnderlay)
		if err := n.plugin.Check(args("ctr-a", "eth0", c.Path(), checkConf)); err != nil {
			t.Fatalf("CHECK after Apply: %v", err)
		}
	}
	m := plan.Masquerade{Network: netip.MustParsePrefix("10.250.0.0/16"), Source: n.info.Subnet}
	apply(plan.State{Masquerade: &m}, 1)
	if out := n.nft(t, "list", "chain", "inet", "tulle", "postrouting"); !strings.Contains(out, "masquerade") {
		t.Fatalf("agent chain:\n%s", out)
	}
	m2 := plan.Masquerade{Network: netip.MustParsePrefix("10.240.0.0/12"), Source: n.info.Subnet}
	apply(plan.State{Masquerade: &m2}, 1)
	apply(plan.State{}, 1)
}
