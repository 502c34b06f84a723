package dataplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tulle-net/tulle/internal/ipnet"
	"github.com/tulle-net/tulle/internal/netns"
	"github.com/tulle-net/tulle/internal/netns/nstest"
	"github.com/tulle-net/tulle/internal/plan"
)

// node is one test namespace with an underlay veth ul0 (192.168.0.1/24;
// its peer ul0p has no address) and a Dataplane on it.
type node struct {
	name string
	ns   netns.NsHandle
	nl   *netlink.Handle
	dp   *Dataplane
	logs *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newNode(t testing.TB) *node {
	t.Helper()
	name, h := nstest.New(t, "tdp")
	nstest.Veth(t,
		nstest.End{NS: h, Name: "ul0", Addr: netip.MustParsePrefix("192.168.0.1/24")},
		nstest.End{NS: h, Name: "ul0p"})
	return startNode(t, name, h)
}

func startNode(t testing.TB, name string, h netns.NsHandle) *node {
	t.Helper()
	logs := &syncBuffer{}
	dp, err := New(Options{NetNS: h, Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := dp.Close(); err != nil {
			t.Error(err)
		}
	})
	return &node{name: name, ns: h, nl: nstest.Handle(t, h), dp: dp, logs: logs}
}

func (n *node) apply(t testing.TB, s plan.State) Changes {
	t.Helper()
	ch, err := n.dp.Apply(context.Background(), s)
	if err != nil {
		t.Fatalf("Apply: %v\nchanges:\n%s", err, ch)
	}
	return ch
}

// applyTwice applies s and checks that a second Apply changes nothing.
func (n *node) applyTwice(t testing.TB, s plan.State) Changes {
	t.Helper()
	ch := n.apply(t, s)
	if again := n.apply(t, s); !again.Empty() {
		t.Fatalf("second Apply made %d changes:\n%s", again.Len(), again)
	}
	return ch
}

// run runs a command inside the node's namespace (the test oracle: nft).
func (n *node) run(t testing.TB, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := netns.StartIn(n.ns, cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out.String()
}

func (n *node) link(t testing.TB, name string) netlink.Link {
	t.Helper()
	l, err := n.nl.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	return l
}

func (n *node) hasLink(name string) bool {
	_, err := n.nl.LinkByName(name)
	return err == nil
}

func (n *node) addrs(t testing.TB, dev string) []netip.Prefix {
	t.Helper()
	as, err := n.nl.AddrList(n.link(t, dev), netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var ps []netip.Prefix
	for _, a := range as {
		p, _ := ipnet.Prefix(a.IPNet)
		ps = append(ps, p)
	}
	return ps
}

// routes returns our routes as text, sorted.
func (n *node) routes(t testing.TB) []string {
	t.Helper()
	rs, err := n.nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: plan.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, r := range rs {
		l, err := n.nl.LinkByIndex(r.LinkIndex)
		if err != nil {
			t.Fatal(err)
		}
		line := fmt.Sprintf("%s via %s dev %s", r.Dst, r.Gw, l.Attrs().Name)
		if r.Flags&int(netlink.FLAG_ONLINK) != 0 {
			line += " onlink"
		}
		s = append(s, line)
	}
	slices.Sort(s)
	return s
}

func (n *node) neighbours(t testing.TB, dev string) []string {
	t.Helper()
	ns, err := n.nl.NeighList(n.link(t, dev).Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, x := range ns {
		if x.State&netlink.NUD_PERMANENT != 0 {
			s = append(s, fmt.Sprintf("%s lladdr %s", x.IP, x.HardwareAddr))
		}
	}
	slices.Sort(s)
	return s
}

func (n *node) fdb(t testing.TB, dev string) []string {
	t.Helper()
	fs, err := n.nl.NeighList(n.link(t, dev).Attrs().Index, unix.AF_BRIDGE)
	if err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, f := range fs {
		if f.IP != nil {
			s = append(s, fmt.Sprintf("%s dst %s permanent=%t", f.HardwareAddr, f.IP, f.State&netlink.NUD_PERMANENT != 0))
		}
	}
	slices.Sort(s)
	return s
}

func equalOrFatal(t testing.TB, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s:\n  %s\nwant:\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

var p2, p3, p4 = peer{2, macB}, peer{3, macC}, peer{4, macX}

// checkVXLAN reads back everything vxState(peers...) programs.
func (n *node) checkVXLAN(t testing.TB, peers ...peer) {
	t.Helper()
	want := vxState(peers...)
	vx, ok := n.link(t, "tulle.1").(*netlink.Vxlan)
	if !ok {
		t.Fatalf("tulle.1 is a %s, want vxlan", n.link(t, "tulle.1").Type())
	}
	ul := n.link(t, "ul0")
	a := vx.Attrs()
	if vx.VxlanId != 1 || vx.Port != 8472 || !vx.SrcAddr.Equal(net.ParseIP("192.168.0.1")) ||
		vx.VtepDevIndex != ul.Attrs().Index || vx.Learning || a.MTU != 1450 ||
		a.HardwareAddr.String() != macA.String() || a.Flags&net.FlagUp == 0 {
		t.Errorf("tulle.1: id %d port %d local %s vtepdev %d (ul0 is %d) learning %t mtu %d mac %s flags %s",
			vx.VxlanId, vx.Port, vx.SrcAddr, vx.VtepDevIndex, ul.Attrs().Index, vx.Learning, a.MTU, a.HardwareAddr, a.Flags)
	}
	if got := n.addrs(t, "tulle.1"); !slices.Equal(got, []netip.Prefix{want.VXLAN.Addr}) {
		t.Errorf("tulle.1 addrs %v, want %v", got, want.VXLAN.Addr)
	}
	br := n.link(t, "tulle0")
	if br.Type() != "bridge" || br.Attrs().MTU != 1450 || br.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("tulle0: %s mtu %d flags %s", br.Type(), br.Attrs().MTU, br.Attrs().Flags)
	}
	if got := n.addrs(t, "tulle0"); !slices.Equal(got, []netip.Prefix{want.Bridge.Addr}) {
		t.Errorf("tulle0 addrs %v, want %v", got, want.Bridge.Addr)
	}
	var neighs, fdb, routes []string
	for _, p := range peers {
		neighs = append(neighs, fmt.Sprintf("%s lladdr %s", p.vtep(), p.mac))
		fdb = append(fdb, fmt.Sprintf("%s dst %s permanent=true", p.mac, p.public()))
		routes = append(routes, fmt.Sprintf("%s via %s dev tulle.1 onlink", p.subnet(), p.vtep()))
	}
	slices.Sort(neighs)
	slices.Sort(fdb)
	slices.Sort(routes)
	equalOrFatal(t, "neighbours", n.neighbours(t, "tulle.1"), neighs)
	equalOrFatal(t, "fdb", n.fdb(t, "tulle.1"), fdb)
	equalOrFatal(t, "routes", n.routes(t), routes)

	out := n.run(t, "nft", "list", "table", "inet", "tulle")
	for _, line := range []string{
		"type nat hook postrouting priority srcnat; policy accept;",
		"ip saddr 10.244.1.0/24 ip daddr != 10.244.0.0/16 masquerade",
	} {
		if !strings.Contains(out, line) {
			t.Errorf("nft list table inet tulle lacks %q:\n%s", line, out)
		}
	}
	if v := strings.TrimSpace(n.run(t, "cat", ipForward)); v != "1" {
		t.Errorf("ip_forward = %q, want 1", v)
	}
}

func TestApplyVXLAN(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	ch := n.applyTwice(t, vxState(p2, p3, p4))
	// forwarding, bridge (3), vxlan (3), 3 per peer, nft table.
	if want := 1 + 3 + 3 + 3*3 + 1; ch.Len() != want {
		t.Errorf("first Apply made %d changes, want %d:\n%s", ch.Len(), want, ch)
	}
	n.checkVXLAN(t, p2, p3, p4)
	if !strings.Contains(n.logs.String(), "msg=reconciled") {
		t.Errorf("no reconcile summary logged:\n%s", n.logs)
	}
	if v := strings.TrimSpace(n.run(t, "cat", ipForward)); v != "1" {
		t.Errorf("ip_forward = %q", v)
	}
}

func TestApplyPeerChanges(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	n.applyTwice(t, vxState(p2, p3, p4))

	n.applyTwice(t, vxState(p2, p4))
	n.checkVXLAN(t, p2, p4)

	// A peer that rebooted with a new MAC and public IP.
	moved := peer{4, net.HardwareAddr{2, 0, 0, 0, 0, 0x44}}
	s := vxState(p2, moved)
	s.FDB[1].Dst = netip.MustParseAddr("192.168.0.44")
	n.applyTwice(t, s)
	equalOrFatal(t, "fdb", n.fdb(t, "tulle.1"), []string{
		"02:00:00:00:00:0b dst 192.168.0.2 permanent=true",
		"02:00:00:00:00:44 dst 192.168.0.44 permanent=true",
	})
	equalOrFatal(t, "neighbours", n.neighbours(t, "tulle.1"), []string{
		"10.244.2.0 lladdr 02:00:00:00:00:0b",
		"10.244.4.0 lladdr 02:00:00:00:00:44",
	})

	// All peers gone.
	n.applyTwice(t, vxState())
	n.checkVXLAN(t)
	if strings.Contains(n.logs.String(), "level=WARN") {
		t.Errorf("changed states logged as drift:\n%s", n.logs)
	}
}

// TestApplyHeals deletes and changes owned objects behind the Dataplane's
// back; the next Apply must restore all of them (and log a warning).
func TestApplyHeals(t *testing.T) {
	t.Parallel()
	want := vxState(p2, p3, p4)
	tests := []struct {
		name  string
		drift func(t *testing.T, n *node)
	}{
		{"route deleted", func(t *testing.T, n *node) {
			err := n.nl.RouteDel(&netlink.Route{Dst: ipnet.From(p3.subnet()), Protocol: plan.RouteProtocol})
			if err != nil {
				t.Fatal(err)
			}
		}},
		{"fdb entry deleted", func(t *testing.T, n *node) {
			n.run(t, "bridge", "fdb", "del", p3.mac.String(), "dev", "tulle.1", "dst", p3.public().String(), "self")
		}},
		{"neighbour deleted", func(t *testing.T, n *node) {
			n.run(t, "ip", "neigh", "del", p3.vtep().String(), "dev", "tulle.1")
		}},
		{"neighbour and fdb rewritten", func(t *testing.T, n *node) {
			n.run(t, "ip", "neigh", "replace", p2.vtep().String(), "lladdr", macX.String(), "dev", "tulle.1", "nud", "permanent")
			n.run(t, "bridge", "fdb", "append", p2.mac.String(), "dev", "tulle.1", "dst", "192.168.0.77", "self", "permanent")
		}},
		{"stale peer added by hand", func(t *testing.T, n *node) {
			n.run(t, "ip", "route", "add", "10.244.50.0/24", "via", "10.244.50.0", "dev", "tulle.1", "onlink", "proto", "197")
			n.run(t, "ip", "neigh", "add", "10.244.50.0", "lladdr", macX.String(), "dev", "tulle.1", "nud", "permanent")
		}},
		{"vxlan device deleted", func(t *testing.T, n *node) {
			if err := n.nl.LinkDel(n.link(t, "tulle.1")); err != nil {
				t.Fatal(err)
			}
		}},
		{"vxlan device down, MAC and MTU changed", func(t *testing.T, n *node) {
			l := n.link(t, "tulle.1")
			for _, err := range []error{
				n.nl.LinkSetDown(l), // also removes its routes
				n.nl.LinkSetHardwareAddr(l, macX),
				n.nl.LinkSetMTU(l, 1300),
			} {
				if err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"vxlan recreated with another port", func(t *testing.T, n *node) {
			n.run(t, "ip", "link", "del", "tulle.1")
			n.run(t, "ip", "link", "add", "tulle.1", "type", "vxlan", "id", "1", "dstport", "4789", "local", "192.168.0.1", "dev", "ul0")
		}},
		{"bridge address replaced", func(t *testing.T, n *node) {
			n.run(t, "ip", "addr", "flush", "dev", "tulle0")
			n.run(t, "ip", "addr", "add", "10.244.99.1/24", "dev", "tulle0")
		}},
		{"nft table deleted", func(t *testing.T, n *node) {
			n.run(t, "nft", "delete", "table", "inet", "tulle")
		}},
		{"nft chain recreated with another priority", func(t *testing.T, n *node) {
			n.run(t, "nft", "delete", "chain", "inet", "tulle", "postrouting")
			n.run(t, "nft", "add", "chain", "inet", "tulle", "postrouting", "{ type nat hook postrouting priority 50; }")
		}},
		{"nft rule added to our table", func(t *testing.T, n *node) {
			n.run(t, "nft", "add", "rule", "inet", "tulle", "postrouting", "ip", "saddr", "1.2.3.4", "accept")
		}},
		{"forwarding turned off", func(t *testing.T, n *node) {
			n.run(t, "sysctl", "-qw", "net.ipv4.ip_forward=0")
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newNode(t)
			n.applyTwice(t, want)
			tc.drift(t, n)
			if ch := n.apply(t, want); ch.Empty() {
				t.Fatal("Apply after drift made no changes")
			}
			n.checkVXLAN(t, p2, p3, p4)
			if !strings.Contains(n.logs.String(), "level=WARN msg=\"healed drift") {
				t.Errorf("drift not logged as a warning:\n%s", n.logs)
			}
			if ch := n.apply(t, want); !ch.Empty() {
				t.Fatalf("Apply after healing made %d changes:\n%s", ch.Len(), ch)
			}
		})
	}
}

// TestForeignUntouched surrounds tulle's objects with look-alikes owned by
// others; neither programming nor removing tulle's state may touch them.
func TestForeignUntouched(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	nstest.Veth(t, nstest.End{NS: n.ns, Name: "foo0"}, nstest.End{NS: n.ns, Name: "foo1"})
	n.run(t, "ip", "route", "add", "10.99.0.0/24", "via", "192.168.0.254", "dev", "ul0", "proto", "static")
	n.run(t, "ip", "route", "add", "10.244.77.0/24", "via", "192.168.0.254", "dev", "ul0", "proto", "boot")
	n.run(t, "ip", "link", "add", "vx-other", "type", "vxlan", "id", "42", "dstport", "4789", "local", "192.168.0.1", "dev", "ul0")
	n.run(t, "ip", "neigh", "add", "192.168.0.200", "lladdr", macX.String(), "dev", "ul0", "nud", "permanent")
	n.run(t, "nft", "add", "table", "inet", "other")
	n.run(t, "nft", "add", "chain", "inet", "other", "post", "{ type nat hook postrouting priority 50; }")
	n.run(t, "nft", "add", "rule", "inet", "other", "post", "ip", "saddr", "10.99.0.0/24", "masquerade")
	n.run(t, "nft", "add", "table", "ip", "tulle") // our name, another family: not ours

	snapshot := func() string {
		return strings.Join([]string{
			n.run(t, "ip", "-d", "link", "show", "foo0"),
			n.run(t, "ip", "-d", "link", "show", "vx-other"),
			n.run(t, "ip", "route", "show", "proto", "static"),
			n.run(t, "ip", "route", "show", "proto", "boot"),
			n.run(t, "ip", "neigh", "show", "dev", "ul0", "nud", "permanent"),
			n.run(t, "nft", "list", "table", "inet", "other"),
			n.run(t, "nft", "list", "table", "ip", "tulle"),
		}, "\n")
	}
	before := snapshot()

	n.applyTwice(t, vxState(p2, p3))
	n.checkVXLAN(t, p2, p3)
	if after := snapshot(); after != before {
		t.Fatalf("foreign objects changed by Apply:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	// Remove everything tulle owns (except the bridge: workloads).
	n.applyTwice(t, plan.State{})
	if n.hasLink("tulle.1") {
		t.Error("tulle.1 still exists")
	}
	if !n.hasLink("tulle0") {
		t.Error("tulle0 was deleted")
	}
	if rs := n.routes(t); len(rs) > 0 {
		t.Errorf("tulle routes left: %v", rs)
	}
	// The table stays (the CNI plugin's chains may live in it); the
	// agent's chain goes.
	if out := n.run(t, "nft", "list", "table", "inet", "tulle"); strings.Contains(out, "chain postrouting") {
		t.Errorf("chain postrouting left:\n%s", out)
	}
	if after := snapshot(); after != before {
		t.Fatalf("foreign objects changed by removal:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestNFTSharedTable: table inet tulle has two owners. Chains of the CNI
// plugin (ports-*) and their rules survive every Apply: the first one that
// creates the agent's chain in an existing table, a masquerade change, a
// healed drift and the removal of the masquerade; and they never count as
// changes.
func TestNFTSharedTable(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	n.run(t, "nft", "add", "table", "inet", "tulle")
	n.run(t, "nft", "add", "chain", "inet", "tulle", "ports-prerouting", "{ type nat hook prerouting priority dstnat; }")
	n.run(t, "nft", "add", "rule", "inet", "tulle", "ports-prerouting",
		"fib", "daddr", "type", "local", "tcp", "dport", "8080", "dnat", "ip", "to", "10.244.1.5:80", "comment", `"tulle-cni test"`)
	n.run(t, "nft", "add", "chain", "inet", "tulle", "ports-unhooked")
	n.run(t, "nft", "add", "rule", "inet", "tulle", "ports-unhooked", "counter")
	ports := func() string {
		var b strings.Builder
		for _, c := range []string{"ports-prerouting", "ports-unhooked"} {
			out := n.run(t, "nft", "list", "chain", "inet", "tulle", c)
			// Counters tick; the rule text is what must not change.
			b.WriteString(regexp.MustCompile(`counter packets \d+ bytes \d+`).ReplaceAllString(out, "counter"))
		}
		return b.String()
	}
	before := ports()
	if !strings.Contains(before, "dnat ip to 10.244.1.5:80") {
		t.Fatalf("setup: ports chain lacks its rule:\n%s", before)
	}
	check := func(step string) {
		t.Helper()
		if after := ports(); after != before {
			t.Fatalf("%s changed the plugin's chains:\nbefore:\n%s\nafter:\n%s", step, before, after)
		}
	}

	m1 := plan.Masquerade{Network: netip.MustParsePrefix("10.244.0.0/16"), Source: netip.MustParsePrefix("10.244.1.0/24")}
	if ch := n.applyTwice(t, plan.State{Masquerade: &m1}); ch.String() != "add chain inet tulle postrouting: "+masqText(&m1) {
		t.Errorf("first Apply: %q", ch)
	}
	check("adding the masquerade")

	m2 := plan.Masquerade{Network: netip.MustParsePrefix("10.240.0.0/12"), Source: netip.MustParsePrefix("10.240.3.0/24")}
	if ch := n.applyTwice(t, plan.State{Masquerade: &m2}); ch.String() != "replace chain inet tulle postrouting: "+masqText(&m2) {
		t.Errorf("masquerade change: %q", ch)
	}
	check("changing the masquerade")
	if out := n.run(t, "nft", "list", "chain", "inet", "tulle", "postrouting"); !strings.Contains(out, masqText(&m2)) || strings.Contains(out, masqText(&m1)) {
		t.Errorf("postrouting after the change:\n%s", out)
	}

	n.run(t, "nft", "add", "rule", "inet", "tulle", "postrouting", "ip", "saddr", "1.2.3.4", "accept")
	if ch := n.applyTwice(t, plan.State{Masquerade: &m2}); ch.Len() != 1 {
		t.Errorf("healing an extra rule: %d changes: %s", ch.Len(), ch)
	}
	check("healing drift")

	if ch := n.applyTwice(t, plan.State{}); ch.String() != "del chain inet tulle postrouting" {
		t.Errorf("removing the masquerade: %q", ch)
	}
	check("removing the masquerade")
	if out := n.run(t, "nft", "list", "table", "inet", "tulle"); strings.Contains(out, "chain postrouting") {
		t.Errorf("chain postrouting left:\n%s", out)
	}
}

// TestForeignRouteConflict: a route of another protocol to a peer's subnet is
// reported, not overwritten, and everything else is still programmed.
func TestForeignRouteConflict(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	n.run(t, "ip", "route", "add", p3.subnet().String(), "via", "192.168.0.254", "dev", "ul0", "proto", "static")
	ch, err := n.dp.Apply(context.Background(), vxState(p2, p3))
	if err == nil || !strings.Contains(err.Error(), "add route 10.244.3.0/24") {
		t.Fatalf("Apply error = %v, want one naming the route to 10.244.3.0/24", err)
	}
	if ch.Empty() {
		t.Fatal("Apply made no changes")
	}
	equalOrFatal(t, "routes", n.routes(t), []string{"10.244.2.0/24 via 10.244.2.0 dev tulle.1 onlink"})
	if out := n.run(t, "ip", "route", "show", "proto", "static"); !strings.Contains(out, "10.244.3.0/24 via 192.168.0.254 dev ul0") {
		t.Errorf("foreign route changed: %q", out)
	}
}

func TestApplyHostGW(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	n.applyTwice(t, vxState(p2, p3))
	// Switching backends: routes now go via the peers' public IPs, and the
	// VXLAN device (with its neighbours and FDB entries) goes away.
	n.applyTwice(t, hostGWState(p2, p3))
	if n.hasLink("tulle.1") {
		t.Error("tulle.1 survived the switch to host-gw")
	}
	equalOrFatal(t, "routes", n.routes(t), []string{
		"10.244.2.0/24 via 192.168.0.2 dev ul0",
		"10.244.3.0/24 via 192.168.0.3 dev ul0",
	})
	// And back.
	n.applyTwice(t, vxState(p2, p3))
	n.checkVXLAN(t, p2, p3)
}

// TestBridgeMadeByPlugin: the CNI plugin may create tulle0 with the same
// address first; Apply adopts it without fighting.
func TestBridgeMadeByPlugin(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	n.run(t, "ip", "link", "add", "tulle0", "mtu", "1450", "type", "bridge")
	n.run(t, "ip", "addr", "add", "10.244.1.1/24", "dev", "tulle0")
	n.run(t, "ip", "link", "set", "tulle0", "up")
	ch := n.applyTwice(t, vxState(p2))
	for _, op := range ch.Ops {
		if strings.Contains(op, "tulle0") {
			t.Errorf("Apply changed the plugin's identical bridge: %s", op)
		}
	}
	n.checkVXLAN(t, p2)
}

func TestApplyRejectsBadState(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	s := vxState(p2)
	s.Routes[0].Dev = ""
	ch, err := n.dp.Apply(context.Background(), s)
	if !errors.Is(err, ErrBadState) || !ch.Empty() {
		t.Fatalf("Apply = %v, %v; want ErrBadState and no changes", ch, err)
	}
	if n.hasLink("tulle0") {
		t.Error("a rejected state changed the kernel")
	}
}

func TestApplyAfterClose(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	if err := n.dp.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.dp.Apply(context.Background(), vxState()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Apply after Close = %v, want ErrClosed", err)
	}
}

// TestApplyCancelled: a cancelled context stops Apply before any change.
func TestApplyCancelled(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ch, err := n.dp.Apply(ctx, vxState(p2))
	if !errors.Is(err, context.Canceled) || !ch.Empty() {
		t.Fatalf("Apply = %d changes, %v; want none and context.Canceled", ch.Len(), err)
	}
}

// manyPeers is node 10.99.0.0/24's vxlan state with n peers.
func manyPeers(n int) plan.State {
	s := plan.State{
		Forwarding: true,
		Bridge:     &plan.Bridge{Name: plan.BridgeName, Addr: netip.MustParsePrefix("10.99.0.1/24"), MTU: 1450},
		VXLAN: &plan.VXLAN{
			Name: "tulle.1", VNI: 1, Port: 8472, Local: netip.MustParseAddr("192.168.0.1"),
			Underlay: "ul0", MTU: 1450, MAC: macA, Addr: netip.MustParsePrefix("10.99.0.0/32"),
		},
		Masquerade: &plan.Masquerade{Network: netip.MustParsePrefix("10.96.0.0/11"), Source: netip.MustParsePrefix("10.99.0.0/24")},
	}
	for i := range n {
		subnet := netip.AddrFrom4([4]byte{10, byte(100 + i/256), byte(i % 256), 0})
		public := netip.AddrFrom4([4]byte{172, 16, byte(i / 250), byte(i%250 + 1)})
		mac := net.HardwareAddr{2, 0, 0, 1, byte(i >> 8), byte(i)}
		s.Neighbors = append(s.Neighbors, plan.Neighbor{Dev: "tulle.1", IP: subnet, MAC: mac})
		s.FDB = append(s.FDB, plan.FDB{Dev: "tulle.1", MAC: mac, Dst: public})
		s.Routes = append(s.Routes, plan.Route{Dst: netip.PrefixFrom(subnet, 24), Gw: subnet, Dev: "tulle.1", Onlink: true})
	}
	return s
}

func TestApply1000Peers(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	s := manyPeers(1000)
	ch := n.applyTwice(t, s)
	// 3 per peer, plus forwarding, bridge (3), vxlan (3), nft.
	if want := 3000 + 1 + 3 + 3 + 1; ch.Len() != want {
		t.Errorf("first Apply made %d changes, want %d", ch.Len(), want)
	}
	if got := len(n.routes(t)); got != 1000 {
		t.Errorf("%d routes, want 1000", got)
	}
	if got := len(n.fdb(t, "tulle.1")); got != 1000 {
		t.Errorf("%d fdb entries, want 1000", got)
	}
	if got := len(n.neighbours(t, "tulle.1")); got != 1000 {
		t.Errorf("%d neighbours, want 1000", got)
	}
}

// BenchmarkApply1000Peers programs 1000 VXLAN peers (1000 neighbours, FDB
// entries and routes) into a fresh namespace ("first"), and re-applies the
// same state to a namespace that already has it ("noop"). noop also reports
// its one first Apply as a baseline and the ratio between the two.
func BenchmarkApply1000Peers(b *testing.B) {
	nstest.RequireRoot(b)
	s := manyPeers(1000)
	b.Run("first", func(b *testing.B) {
		changes := 0
		for b.Loop() {
			b.StopTimer()
			n, done := benchNode(b)
			b.StartTimer()
			ch, err := n.dp.Apply(context.Background(), s)
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			changes = ch.Len()
			done()
			b.StartTimer()
		}
		b.ReportMetric(float64(changes), "changes/op")
	})
	b.Run("noop", func(b *testing.B) {
		n := newNode(b)
		first, err := measure(func() (Changes, error) { return n.dp.Apply(context.Background(), s) })
		if err != nil {
			b.Fatal(err)
		}
		changes := 0
		b.ResetTimer()
		for b.Loop() {
			ch, err := n.dp.Apply(context.Background(), s)
			if err != nil {
				b.Fatal(err)
			}
			changes += ch.Len()
		}
		perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		b.ReportMetric(float64(changes)/float64(b.N), "changes/op")
		b.ReportMetric(float64(first.Nanoseconds())/1e6, "first-ms")
		b.ReportMetric(float64(first.Nanoseconds())/perOp, "first/noop")
	})
}

// benchNode is newNode without t.Cleanup, so a benchmark loop does not pile
// up namespaces until it ends.
func benchNode(b *testing.B) (*node, func()) {
	name := "tdp-b" + fmt.Sprint(os.Getpid()%10000)
	_ = netns.Delete(name)
	h, err := netns.Create(name)
	if err != nil {
		b.Fatal(err)
	}
	var nl *netlink.Handle
	if err := netns.Do(h, func() error { nl, err = netlink.NewHandleAt(h); return err }); err != nil {
		b.Fatal(err)
	}
	err = nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ul0"}, PeerName: "ul0p"})
	var ul netlink.Link
	if err == nil {
		ul, err = nl.LinkByName("ul0")
	}
	if err == nil {
		err = nl.AddrAdd(ul, &netlink.Addr{IPNet: ipnet.From(netip.MustParsePrefix("192.168.0.1/24"))})
	}
	if err == nil {
		err = nl.LinkSetUp(ul)
	}
	if err != nil {
		b.Fatal(err)
	}
	dp, err := New(Options{NetNS: h})
	if err != nil {
		b.Fatal(err)
	}
	return &node{name: name, ns: h, nl: nl, dp: dp}, func() {
		dp.Close()
		nl.Close()
		h.Close()
		if err := netns.Delete(name); err != nil {
			b.Error(err)
		}
	}
}

func measure(f func() (Changes, error)) (time.Duration, error) {
	start := time.Now()
	_, err := f()
	return time.Since(start), err
}

// TestNFTRoundTrip: the table read back from the kernel renders exactly as
// the one built, for byte-aligned and other prefix lengths.
func TestNFTRoundTrip(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	for _, m := range []plan.Masquerade{
		{Network: netip.MustParsePrefix("10.244.0.0/16"), Source: netip.MustParsePrefix("10.244.1.0/24")},
		{Network: netip.MustParsePrefix("10.240.0.0/12"), Source: netip.MustParsePrefix("10.240.16.0/20")},
		{Network: netip.MustParsePrefix("0.0.0.0/0"), Source: netip.MustParsePrefix("10.0.0.4/30")},
	} {
		s := plan.State{Masquerade: &m}
		if ch := n.applyTwice(t, s); ch.Len() != 1 {
			t.Errorf("%s: %d changes, want 1: %s", masqText(&m), ch.Len(), ch)
		}
		out := n.run(t, "nft", "list", "table", "inet", "tulle")
		if !strings.Contains(out, masqText(&m)) && m.Network.Bits() != 0 {
			t.Errorf("nft shows:\n%s\nwant a line %q", out, masqText(&m))
		}
	}
	// The library view agrees: exactly one chain, one rule.
	c, err := nftables.New(nftables.WithNetNSFd(int(n.ns)))
	if err != nil {
		t.Fatal(err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil || len(chains) != 1 || chains[0].Name != "postrouting" {
		t.Fatalf("chains %v, %v", chains, err)
	}
}

// TestApplyKeepsGoing: the underlay is missing, so the VXLAN device cannot be
// created; everything that does not depend on it is still programmed, and
// the error says what failed and how much was skipped.
func TestApplyKeepsGoing(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	s := vxState(p2, p3)
	s.VXLAN.Underlay = "nope0"
	ch, err := n.dp.Apply(context.Background(), s)
	if err == nil {
		t.Fatal("Apply succeeded without an underlay")
	}
	for _, want := range []string{"add link tulle.1", "underlay link nope0 not found", "skipped 8 changes"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if !n.hasLink("tulle0") || n.hasLink("tulle.1") {
		t.Errorf("want tulle0 and no tulle.1; changes:\n%s", ch)
	}
	if out := n.run(t, "nft", "list", "tables"); !strings.Contains(out, "inet tulle") {
		t.Errorf("nft table not created:\n%s", out)
	}
	// Once the state is fixed, the next Apply completes the job.
	n.applyTwice(t, vxState(p2, p3))
	n.checkVXLAN(t, p2, p3)
}

// TestBridgeGSO: with Bridge.GSOMaxSize (udp coalescing where the kernel
// has BIG TCP), Apply raises the bridge and the ports it has (workloads
// attached before) to it, and a second Apply changes nothing.
func TestBridgeGSO(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	probe := n.link(t, "ul0").Attrs()
	if probe.GSOIPv4MaxSize == 0 {
		t.Skip("kernel has no gso_ipv4_max_size (Linux < 6.3)")
	}
	s := hostGWState()
	s.Bridge.GSOMaxSize = plan.BigTCPPacket
	n.apply(t, s) // makes the bridge: no ports yet, so 64 KiB at most
	n.run(t, "ip", "link", "add", "tlport1", "type", "veth", "peer", "name", "tlport1p")
	n.run(t, "ip", "link", "set", "tlport1", "mtu", "1450", "master", "tulle0")
	ch := n.applyTwice(t, s)
	if ch.Len() != 2 {
		t.Errorf("changes %s; want gso on tulle0 and tlport1", ch)
	}
	for _, name := range []string{"tulle0", "tlport1"} {
		a := n.link(t, name).Attrs()
		if a.GSOMaxSize != plan.BigTCPPacket || a.GSOIPv4MaxSize != plan.BigTCPPacket {
			t.Errorf("%s: gso_max_size %d gso_ipv4_max_size %d, want %d", name, a.GSOMaxSize, a.GSOIPv4MaxSize, plan.BigTCPPacket)
		}
	}
	if a := n.link(t, "tlport1p").Attrs(); a.GSOMaxSize != 65536 {
		t.Errorf("the peer (not a bridge port) changed: gso_max_size %d", a.GSOMaxSize)
	}
}
