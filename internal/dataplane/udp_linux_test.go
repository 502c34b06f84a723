package dataplane

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/tulle-net/tulle/internal/plan"
)

// The udp backend's TUN device is made by the engine (internal/udptun), not
// by the dataplane. These tests stand in for the engine with
// 'ip tuntap add dev tulle-udp mode tun', which makes the same persistent
// device with no process attached (no carrier, as while the agent restarts).

// addTUN creates a persistent TUN device as the engine would (MTU 1500,
// down, no address).
func (n *node) addTUN(t testing.TB, name, mode string) {
	t.Helper()
	n.run(t, "ip", "tuntap", "add", "dev", name, "mode", mode)
}

// checkUDP reads back everything udpState programs.
func (n *node) checkUDP(t testing.TB) {
	t.Helper()
	want := udpState()
	l := n.link(t, plan.TUNName)
	tt, ok := l.(*netlink.Tuntap)
	if !ok || tt.Mode != netlink.TUNTAP_MODE_TUN {
		t.Fatalf("%s is a %s, want a tun device", plan.TUNName, l.Type())
	}
	if a := l.Attrs(); a.MTU != want.TUN.MTU || a.Flags&net.FlagUp == 0 {
		t.Errorf("%s: mtu %d flags %s; want mtu %d, up", plan.TUNName, a.MTU, a.Flags, want.TUN.MTU)
	}
	if got := n.addrs(t, plan.TUNName); !slices.Equal(got, []netip.Prefix{want.TUN.Addr}) {
		t.Errorf("%s addrs %v, want %v", plan.TUNName, got, want.TUN.Addr)
	}
	equalOrFatal(t, "routes", n.routes(t), []string{"10.244.0.0/16 via <nil> dev tulle-udp"})
	if v := strings.TrimSpace(n.run(t, "cat", disableIPv6Path(plan.TUNName))); v != "1" {
		t.Errorf("%s disable_ipv6 = %q, want 1", plan.TUNName, v)
	}
	if out := n.run(t, "ip", "-6", "addr", "show", "dev", plan.TUNName); strings.TrimSpace(out) != "" {
		t.Errorf("%s has IPv6 addresses:\n%s", plan.TUNName, out)
	}
	// The kernel's view: a device route, scope link, as 'ip route add
	// 10.244.0.0/16 dev tulle-udp' makes (linkdown: no engine attached).
	if out := n.run(t, "ip", "route", "show", "proto", "197"); !strings.Contains(out, "10.244.0.0/16 dev tulle-udp scope link") {
		t.Errorf("ip route show proto 197:\n%s", out)
	}
	if n.hasLink("tulle.1") {
		t.Error("a udp node has a vxlan device")
	}
	br := n.link(t, "tulle0")
	if br.Attrs().MTU != want.Bridge.MTU {
		t.Errorf("tulle0 mtu %d, want %d", br.Attrs().MTU, want.Bridge.MTU)
	}
}

func TestApplyUDP(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	n.addTUN(t, plan.TUNName, "tun")
	ch := n.applyTwice(t, udpState())
	// forwarding, bridge (3), tun (ipv6 off, mtu, addr, up), route, nft table.
	if want := 1 + 3 + 4 + 1 + 1; ch.Len() != want {
		t.Errorf("first Apply made %d changes, want %d:\n%s", ch.Len(), want, ch)
	}
	n.checkUDP(t)
}

// TestApplyUDPHeals changes the TUN device and deletes the cluster route
// behind the Dataplane's back: the next Apply restores them and logs drift.
func TestApplyUDPHeals(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	n.addTUN(t, plan.TUNName, "tun")
	n.applyTwice(t, udpState())
	n.run(t, "ip", "route", "del", "10.244.0.0/16", "dev", plan.TUNName)
	n.run(t, "ip", "addr", "flush", "dev", plan.TUNName)
	n.run(t, "ip", "addr", "add", "10.244.9.9/32", "dev", plan.TUNName)
	n.run(t, "ip", "link", "set", plan.TUNName, "mtu", "1300", "down")
	n.run(t, "sh", "-c", "echo 0 > "+disableIPv6Path(plan.TUNName))
	ch := n.applyTwice(t, udpState())
	for _, want := range []string{
		"sysctl net.ipv6.conf.tulle-udp.disable_ipv6=1",
		"set link tulle-udp mtu 1464", "add addr 10.244.1.0/32 dev tulle-udp", "set link tulle-udp up",
		"add route 10.244.0.0/16 dev tulle-udp", "del addr 10.244.9.9/32 dev tulle-udp",
	} {
		if !slices.Contains(ch.Ops, want) {
			t.Errorf("heal did not %q:\n%s", want, ch)
		}
	}
	n.checkUDP(t)
	if !strings.Contains(n.logs.String(), "healed drift") {
		t.Errorf("drift not logged:\n%s", n.logs)
	}
}

// TestApplyUDPWithoutTUN: before the engine has made the TUN device, Apply
// programs everything else, reports ErrTUNMissing and adds no route; once
// the device exists, the next Apply completes the state.
func TestApplyUDPWithoutTUN(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	ch, err := n.dp.Apply(context.Background(), udpState())
	if !errors.Is(err, ErrTUNMissing) || !strings.Contains(err.Error(), plan.TUNName) {
		t.Fatalf("Apply without the tun device: %v, want ErrTUNMissing naming %s", err, plan.TUNName)
	}
	if n.hasLink(plan.TUNName) {
		t.Fatal("the dataplane created the tun device; only the engine may")
	}
	if !n.hasLink("tulle0") || len(n.routes(t)) != 0 {
		t.Fatalf("without the tun device: bridge %t, routes %v; want the bridge and no route (changes:\n%s)", n.hasLink("tulle0"), n.routes(t), ch)
	}
	n.addTUN(t, plan.TUNName, "tun")
	n.applyTwice(t, udpState())
	n.checkUDP(t)
}

// TestApplyUDPSwitchBackends goes vxlan -> udp -> vxlan: tulle's VXLAN
// device goes when udp comes, the stale TUN device when udp goes, each with
// its routes.
func TestApplyUDPSwitchBackends(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	n.applyTwice(t, vxState(p2, p3))
	n.addTUN(t, plan.TUNName, "tun")
	n.applyTwice(t, udpState())
	n.checkUDP(t)

	n.applyTwice(t, vxState(p2))
	if n.hasLink(plan.TUNName) {
		t.Errorf("stale %s kept after the switch to vxlan", plan.TUNName)
	}
	n.checkVXLAN(t, p2)

	// To host-gw from udp: the TUN device goes too.
	n.addTUN(t, plan.TUNName, "tun")
	n.applyTwice(t, udpState())
	n.applyTwice(t, hostGWState(p2))
	if n.hasLink(plan.TUNName) || n.hasLink("tulle.1") {
		t.Errorf("host-gw node keeps tulle-udp %t or tulle.1 %t", n.hasLink(plan.TUNName), n.hasLink("tulle.1"))
	}
}

// TestApplyUDPForeignUntouched: other tun devices, a TAP device that holds
// the name tulle-udp, and routes of other protocols into them are never
// changed or deleted.
func TestApplyUDPForeignUntouched(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	n.addTUN(t, "tun9", "tun")
	n.addTUN(t, "tulle-udpx", "tun")
	n.run(t, "ip", "link", "set", "tun9", "up")
	n.run(t, "ip", "route", "add", "10.99.0.0/16", "dev", "tun9", "proto", "static")
	snapshot := func() string {
		return n.run(t, "ip", "-d", "link", "show", "tun9") + n.run(t, "ip", "-d", "link", "show", "tulle-udpx") +
			n.run(t, "ip", "route", "show", "proto", "static")
	}
	before := snapshot()
	n.addTUN(t, plan.TUNName, "tun")
	n.applyTwice(t, udpState())
	n.applyTwice(t, plan.State{})
	if after := snapshot(); after != before {
		t.Fatalf("foreign tun devices or routes changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if n.hasLink(plan.TUNName) {
		t.Error("tulle-udp kept after the plan dropped it")
	}

	// A TAP device named tulle-udp is not ours: a conflict, never deleted.
	n.addTUN(t, plan.TUNName, "tap")
	_, err := n.dp.Apply(context.Background(), udpState())
	if !errors.Is(err, errConflict) {
		t.Errorf("Apply with a tap named %s: %v, want a name conflict", plan.TUNName, err)
	}
	if _, err := n.dp.Apply(context.Background(), vxState()); err != nil {
		t.Fatal(err)
	}
	if l, err := n.nl.LinkByName(plan.TUNName); err != nil || l.(*netlink.Tuntap).Mode != netlink.TUNTAP_MODE_TAP {
		t.Errorf("the foreign tap %s was removed or changed: %v", plan.TUNName, err)
	}
}
