package dataplane

import (
	"net/netip"
	"testing"

	"github.com/tulle-net/tulle/internal/config"
	"github.com/tulle-net/tulle/internal/lease"
	"github.com/tulle-net/tulle/internal/plan"
)

// TestApplyComputedState runs the real pipeline the agent runs:
// Underlay -> plan.Compute -> Apply, for vxlan with direct routing (one
// peer on the underlay's segment, one behind a router), host-gw and udp.
func TestApplyComputedState(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	u, err := Underlay(n.ns, "", netip.MustParseAddr("192.168.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.244.1.0/24"), Attrs: lease.Attrs{
		Node: "n1", PublicIP: u.Addr, BackendType: config.BackendVXLAN,
		BackendData: lease.BackendData{VtepMAC: plan.VTEPMAC("c", "n1").String()},
	}}
	peers := []lease.Lease{
		self,
		{Subnet: netip.MustParsePrefix("10.244.2.0/24"), Attrs: lease.Attrs{
			Node: "n2", PublicIP: netip.MustParseAddr("192.168.0.2"), BackendType: config.BackendVXLAN,
			BackendData: lease.BackendData{VtepMAC: plan.VTEPMAC("c", "n2").String()},
		}},
		{Subnet: netip.MustParsePrefix("10.244.3.0/24"), Attrs: lease.Attrs{
			Node: "n3", PublicIP: netip.MustParseAddr("172.20.0.3"), BackendType: config.BackendVXLAN,
			BackendData: lease.BackendData{VtepMAC: plan.VTEPMAC("c", "n3").String()},
		}},
	}
	cfg := config.Network{
		Network: netip.MustParsePrefix("10.244.0.0/16"),
		Backend: config.Backend{Type: config.BackendVXLAN, DirectRouting: true},
	}.WithDefaults()
	in := plan.Input{Config: cfg, Self: self, Peers: peers, Local: plan.Local{
		Underlay: u.Name, UnderlayMTU: u.MTU, UnderlayPrefixes: u.Prefixes,
		VTEPMAC: plan.VTEPMAC("c", "n1"), IPMasq: true,
	}}
	want, err := plan.Compute(in)
	if err != nil {
		t.Fatal(err)
	}
	n.applyTwice(t, want)
	equalOrFatal(t, "routes", n.routes(t), []string{
		"10.244.2.0/24 via 192.168.0.2 dev ul0",
		"10.244.3.0/24 via 10.244.3.0 dev tulle.1 onlink",
	})
	if got := n.link(t, "tulle.1").Attrs().MTU; got != u.MTU-config.VXLANOverhead {
		t.Errorf("tulle.1 MTU %d, want %d", got, u.MTU-config.VXLANOverhead)
	}

	// The same cluster switched to host-gw: the routed peer is dropped (a
	// planner warning), the vxlan device goes.
	in.Config.Backend = config.Backend{Type: config.BackendHostGW}
	if want, err = plan.Compute(in); err != nil {
		t.Fatal(err)
	}
	n.applyTwice(t, want)
	equalOrFatal(t, "routes", n.routes(t), []string{"10.244.2.0/24 via 192.168.0.2 dev ul0"})
	if n.hasLink("tulle.1") {
		t.Error("tulle.1 survived the switch to host-gw")
	}

	// And to udp (the engine's TUN device stood in for by ip tuntap): one
	// cluster route into the TUN device replaces the peer routes, and
	// every workload-facing MTU is the underlay's minus the udp overhead.
	in.Config.Backend = config.Backend{Type: config.BackendUDP}
	in.Config = in.Config.WithDefaults()
	for i := range in.Peers {
		in.Peers[i].BackendType = config.BackendUDP
	}
	if want, err = plan.Compute(in); err != nil {
		t.Fatal(err)
	}
	n.addTUN(t, plan.TUNName, "tun")
	n.applyTwice(t, want)
	equalOrFatal(t, "routes", n.routes(t), []string{"10.244.0.0/16 via <nil> dev tulle-udp"})
	for _, dev := range []string{plan.TUNName, plan.BridgeName} {
		if got := n.link(t, dev).Attrs().MTU; got != u.MTU-config.UDPOverhead {
			t.Errorf("%s MTU %d, want %d", dev, got, u.MTU-config.UDPOverhead)
		}
	}
	if len(want.UDP.Peers) != 2 {
		t.Errorf("udp peers %+v, want n2 and n3 (udp crosses routers)", want.UDP.Peers)
	}
}
