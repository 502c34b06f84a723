package dataplane

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/tulle-net/tulle/internal/plan"
)

var (
	macA = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0a}
	macB = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0b}
	macC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0c}
	macX = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xff}
)

// peer is one remote node of the test cluster.
type peer struct {
	n   int // 10.244.n.0/24, public 192.168.0.n
	mac net.HardwareAddr
}

func (p peer) subnet() netip.Prefix { return netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", p.n)) }
func (p peer) vtep() netip.Addr     { return netip.MustParseAddr(fmt.Sprintf("10.244.%d.0", p.n)) }
func (p peer) public() netip.Addr   { return netip.MustParseAddr(fmt.Sprintf("192.168.0.%d", p.n)) }

// vxState is node 1's state with VXLAN peers, as plan.Compute makes it.
func vxState(peers ...peer) plan.State {
	s := plan.State{
		Forwarding: true,
		Bridge:     &plan.Bridge{Name: "tulle0", Addr: netip.MustParsePrefix("10.244.1.1/24"), MTU: 1450},
		VXLAN: &plan.VXLAN{
			Name: "tulle.1", VNI: 1, Port: 8472, Local: netip.MustParseAddr("192.168.0.1"),
			Underlay: "ul0", MTU: 1450, MAC: macA, Addr: netip.MustParsePrefix("10.244.1.0/32"),
		},
		Masquerade: &plan.Masquerade{Network: netip.MustParsePrefix("10.244.0.0/16"), Source: netip.MustParsePrefix("10.244.1.0/24")},
	}
	for _, p := range peers {
		s.Neighbors = append(s.Neighbors, plan.Neighbor{Dev: "tulle.1", IP: p.vtep(), MAC: p.mac})
		s.FDB = append(s.FDB, plan.FDB{Dev: "tulle.1", MAC: p.mac, Dst: p.public()})
		s.Routes = append(s.Routes, plan.Route{Dst: p.subnet(), Gw: p.vtep(), Dev: "tulle.1", Onlink: true})
	}
	return s
}

// hostGWState is node 1's state with host-gw peers.
func hostGWState(peers ...peer) plan.State {
	s := vxState()
	s.VXLAN = nil
	for _, p := range peers {
		s.Routes = append(s.Routes, plan.Route{Dst: p.subnet(), Gw: p.public(), Dev: "ul0"})
	}
	return s
}

// udpState is node 1's state with the udp backend: peers live in the
// engine, so the kernel holds one cluster route into the TUN device.
func udpState() plan.State {
	s := vxState()
	s.VXLAN = nil
	s.Bridge.MTU = 1464
	s.TUN = &plan.TUN{Name: plan.TUNName, MTU: 1464, Addr: netip.MustParsePrefix("10.244.1.0/32"), DisableIPv6: true}
	s.Routes = []plan.Route{{Dst: netip.MustParsePrefix("10.244.0.0/16"), Dev: plan.TUNName}}
	return s
}

// inSync is what observe would read after s was applied to a namespace
// holding only lo and the underlay ul0.
func inSync(s plan.State) observed {
	o := observed{Forwarding: s.Forwarding, Kinds: map[string]string{"lo": "device", "ul0": "veth"}}
	if b := s.Bridge; b != nil {
		o.Kinds[b.Name] = "bridge"
		o.Bridge = &obsLink{Name: b.Name, MTU: b.MTU, Up: true, Addrs: []netip.Prefix{b.Addr}, GSO: max(b.GSOMaxSize, 65536)}
	}
	if v := s.VXLAN; v != nil {
		o.Kinds[v.Name] = "vxlan"
		o.VXLANs = []obsVXLAN{{
			obsLink: obsLink{Name: v.Name, MTU: v.MTU, Up: true, MAC: v.MAC, Addrs: []netip.Prefix{v.Addr}},
			VNI:     v.VNI, Port: v.Port, Local: v.Local, Underlay: v.Underlay,
		}}
	}
	if u := s.TUN; u != nil {
		o.Kinds[u.Name] = "tuntap"
		o.TUN = &obsLink{Name: u.Name, MTU: u.MTU, Up: true, Addrs: []netip.Prefix{u.Addr}}
		o.TUNIPv6Off = u.DisableIPv6
	}
	for _, n := range s.Neighbors {
		o.Neighbors = append(o.Neighbors, obsNeigh{Neighbor: n, Permanent: true})
	}
	o.FDB = slices.Clone(s.FDB)
	for _, r := range s.Routes {
		o.Routes = append(o.Routes, obsRoute{Route: r})
	}
	if s.Masquerade != nil {
		t := nftText(s.Masquerade)
		o.NFT = &t
	}
	return o
}

func opStrings(ops []op) []string {
	var s []string
	for _, o := range ops {
		s = append(s, o.String())
	}
	return s
}

func TestDiff(t *testing.T) {
	p2, p3, p4 := peer{2, macB}, peer{3, macC}, peer{4, macX}
	otherTable := "chain postrouting type \"nat\" hook 4 priority 100 policy 1\n\trule *expr.Masq&{}\n"
	tests := []struct {
		name     string
		have     func() observed
		want     plan.State
		ops      []string
		conflict bool
		missing  bool // ErrTUNMissing
	}{
		{
			name: "empty namespace: everything, peers' neighbour and fdb before routes",
			have: func() observed { return inSync(plan.State{}) },
			want: vxState(p2, p3),
			ops: []string{
				"sysctl net.ipv4.ip_forward=1",
				"add link tulle0 type bridge mtu 1450",
				"add addr 10.244.1.1/24 dev tulle0",
				"set link tulle0 up",
				"add link tulle.1 type vxlan id 1 local 192.168.0.1 dev ul0 dstport 8472 nolearning mtu 1450 address 02:00:00:00:00:0a",
				"add addr 10.244.1.0/32 dev tulle.1",
				"set link tulle.1 up",
				"replace neigh 10.244.2.0 lladdr 02:00:00:00:00:0b dev tulle.1 nud permanent",
				"replace neigh 10.244.3.0 lladdr 02:00:00:00:00:0c dev tulle.1 nud permanent",
				"replace fdb 02:00:00:00:00:0b dev tulle.1 dst 192.168.0.2 self permanent",
				"replace fdb 02:00:00:00:00:0c dev tulle.1 dst 192.168.0.3 self permanent",
				"add route 10.244.2.0/24 via 10.244.2.0 dev tulle.1 onlink",
				"add route 10.244.3.0/24 via 10.244.3.0 dev tulle.1 onlink",
				"add chain inet tulle postrouting: ip saddr 10.244.1.0/24 ip daddr != 10.244.0.0/16 masquerade",
			},
		},
		{
			name: "in sync: nothing",
			have: func() observed { return inSync(vxState(p2, p3)) },
			want: vxState(p2, p3),
		},
		{
			name: "forwarding is never turned off",
			have: func() observed { return inSync(vxState(p2)) },
			want: func() plan.State { s := vxState(p2); s.Forwarding = false; return s }(),
		},
		{
			name: "bridge: mtu, exact address, up",
			have: func() observed {
				o := inSync(vxState(p2))
				o.Bridge.MTU = 1500
				o.Bridge.Up = false
				o.Bridge.Addrs = []netip.Prefix{netip.MustParsePrefix("10.244.9.1/24"), netip.MustParsePrefix("10.244.1.1/24")}
				return o
			},
			want: vxState(p2),
			ops: []string{
				"set link tulle0 mtu 1450",
				"set link tulle0 up",
				"del addr 10.244.9.1/24 dev tulle0",
			},
		},
		{
			name: "bridge gso (udp coalescing): not on a new bridge (no ports: 64 KiB at most)",
			have: func() observed { return inSync(plan.State{}) },
			want: func() plan.State { s := hostGWState(); s.Bridge.GSOMaxSize = 196608; return s }(),
			ops: []string{
				"sysctl net.ipv4.ip_forward=1",
				"add link tulle0 type bridge mtu 1450",
				"add addr 10.244.1.1/24 dev tulle0",
				"set link tulle0 up",
				"add chain inet tulle postrouting: ip saddr 10.244.1.0/24 ip daddr != 10.244.0.0/16 masquerade",
			},
		},
		{
			name: "bridge gso: raised on the bridge and its ports, to what each driver takes, never lowered",
			have: func() observed {
				o := inSync(hostGWState())
				o.Bridge.GSO, o.Bridge.TSOMax = 65536, 524280
				o.BridgePorts = []obsLink{
					{Name: "tlaaa", GSO: 65536, TSOMax: 524280},
					{Name: "tlbbb", GSO: 196608, TSOMax: 524280},
					{Name: "tlccc", GSO: 262144, TSOMax: 524280},
					{Name: "tap0", GSO: 65536, TSOMax: 65536},
					{Name: "tap1", GSO: 16384, TSOMax: 65536},
					{Name: "old", GSO: 65536},
				}
				return o
			},
			want: func() plan.State { s := hostGWState(); s.Bridge.GSOMaxSize = 196608; return s }(),
			ops: []string{
				"set link tulle0 gso_max_size 196608 gso_ipv4_max_size 196608",
				"set link tlaaa gso_max_size 196608 gso_ipv4_max_size 196608",
				"set link tap1 gso_max_size 65536 gso_ipv4_max_size 65536",
				"set link old gso_max_size 196608 gso_ipv4_max_size 196608",
			},
		},
		{
			name: "bridge gso not wanted: ports left alone",
			have: func() observed {
				o := inSync(hostGWState())
				o.BridgePorts = []obsLink{{Name: "tlaaa", GSO: 65536, TSOMax: 524280}}
				return o
			},
			want: hostGWState(),
		},
		{
			name: "bridge name held by another kind of link: reported, rest done",
			have: func() observed {
				o := inSync(plan.State{})
				o.Kinds["tulle0"] = "veth"
				return o
			},
			want:     func() plan.State { s := vxState(); s.VXLAN = nil; s.Masquerade = nil; return s }(),
			ops:      []string{"sysctl net.ipv4.ip_forward=1"},
			conflict: true,
		},
		{
			name: "vxlan: MAC and MTU changed in place, address made exact",
			have: func() observed {
				o := inSync(vxState(p2))
				o.VXLANs[0].MAC = macX
				o.VXLANs[0].MTU = 1400
				o.VXLANs[0].Addrs = []netip.Prefix{netip.MustParsePrefix("10.244.7.0/32")}
				return o
			},
			want: vxState(p2),
			ops: []string{
				"set link tulle.1 address 02:00:00:00:00:0a",
				"set link tulle.1 mtu 1450",
				"add addr 10.244.1.0/32 dev tulle.1",
				"del addr 10.244.7.0/32 dev tulle.1",
			},
		},
		{
			name: "vxlan with another port is recreated with all its entries",
			have: func() observed {
				o := inSync(vxState(p2))
				o.VXLANs[0].Port = 4789
				return o
			},
			want: vxState(p2),
			ops: []string{
				"del link tulle.1",
				"add link tulle.1 type vxlan id 1 local 192.168.0.1 dev ul0 dstport 8472 nolearning mtu 1450 address 02:00:00:00:00:0a",
				"add addr 10.244.1.0/32 dev tulle.1",
				"set link tulle.1 up",
				"replace neigh 10.244.2.0 lladdr 02:00:00:00:00:0b dev tulle.1 nud permanent",
				"replace fdb 02:00:00:00:00:0b dev tulle.1 dst 192.168.0.2 self permanent",
				"add route 10.244.2.0/24 via 10.244.2.0 dev tulle.1 onlink",
			},
		},
		{
			name: "vxlan that learns is recreated",
			have: func() observed {
				o := inSync(vxState())
				o.VXLANs[0].Learning = true
				return o
			},
			want: vxState(),
			ops: []string{
				"del link tulle.1",
				"add link tulle.1 type vxlan id 1 local 192.168.0.1 dev ul0 dstport 8472 nolearning mtu 1450 address 02:00:00:00:00:0a",
				"add addr 10.244.1.0/32 dev tulle.1",
				"set link tulle.1 up",
			},
		},
		{
			name: "name tulle.1 held by a bridge: reported, never deleted",
			have: func() observed {
				o := inSync(vxState())
				o.VXLANs = nil
				o.Kinds["tulle.1"] = "bridge"
				return o
			},
			want:     vxState(),
			conflict: true,
		},
		{
			name: "stale vxlan device of another VNI is deleted last, without its entries",
			have: func() observed {
				o := inSync(vxState(p2))
				o.Kinds["tulle.7"] = "vxlan"
				o.VXLANs = append(o.VXLANs, obsVXLAN{obsLink: obsLink{Name: "tulle.7"}, VNI: 7, Port: 8472})
				o.Routes = append(o.Routes, obsRoute{Route: plan.Route{Dst: p4.subnet(), Gw: p4.vtep(), Dev: "tulle.7", Onlink: true}})
				return o
			},
			want: vxState(p2),
			ops: []string{
				"del route 10.244.4.0/24 via 10.244.4.0 dev tulle.7 onlink",
				"del link tulle.7",
			},
		},
		{
			name: "peer removed: route, then fdb, then neighbour",
			have: func() observed { return inSync(vxState(p2, p3)) },
			want: vxState(p2),
			ops: []string{
				"del route 10.244.3.0/24 via 10.244.3.0 dev tulle.1 onlink",
				"del fdb 02:00:00:00:00:0c dev tulle.1 dst 192.168.0.3 self",
				"del neigh 10.244.3.0 dev tulle.1",
			},
		},
		{
			name: "peer added and peer removed: adds first",
			have: func() observed { return inSync(vxState(p2, p3)) },
			want: vxState(p2, p4),
			ops: []string{
				"replace neigh 10.244.4.0 lladdr 02:00:00:00:00:ff dev tulle.1 nud permanent",
				"replace fdb 02:00:00:00:00:ff dev tulle.1 dst 192.168.0.4 self permanent",
				"add route 10.244.4.0/24 via 10.244.4.0 dev tulle.1 onlink",
				"del route 10.244.3.0/24 via 10.244.3.0 dev tulle.1 onlink",
				"del fdb 02:00:00:00:00:0c dev tulle.1 dst 192.168.0.3 self",
				"del neigh 10.244.3.0 dev tulle.1",
			},
		},
		{
			name: "neighbour: wrong MAC and not permanent are replaced, kernel's own entries kept",
			have: func() observed {
				o := inSync(vxState(p2, p3))
				o.Neighbors[0].MAC = macX
				o.Neighbors[1].Permanent = false
				o.Neighbors = append(o.Neighbors, obsNeigh{Neighbor: plan.Neighbor{Dev: "tulle.1", IP: p4.vtep()}})
				return o
			},
			want: vxState(p2, p3),
			ops: []string{
				"replace neigh 10.244.2.0 lladdr 02:00:00:00:00:0b dev tulle.1 nud permanent",
				"replace neigh 10.244.3.0 lladdr 02:00:00:00:00:0c dev tulle.1 nud permanent",
			},
		},
		{
			name: "fdb: peer's public IP changed, extra remote removed",
			have: func() observed {
				o := inSync(vxState(p2))
				o.FDB[0].Dst = netip.MustParseAddr("192.168.0.99")
				o.FDB = append(o.FDB, plan.FDB{Dev: "tulle.1", MAC: macB, Dst: netip.MustParseAddr("192.168.0.98")})
				return o
			},
			want: vxState(p2),
			ops: []string{
				"replace fdb 02:00:00:00:00:0b dev tulle.1 dst 192.168.0.2 self permanent",
				"del fdb 02:00:00:00:00:0b dev tulle.1 dst 192.168.0.98 self",
				"del fdb 02:00:00:00:00:0b dev tulle.1 dst 192.168.0.99 self",
			},
		},
		{
			name: "route: changed gateway replaced, duplicate at another metric removed",
			have: func() observed {
				o := inSync(vxState(p2, p3))
				o.Routes[0].Gw = netip.MustParseAddr("10.244.9.0")
				o.Routes = append(o.Routes, obsRoute{Route: o.Routes[1].Route, Priority: 100})
				return o
			},
			want: vxState(p2, p3),
			ops: []string{
				"replace route 10.244.2.0/24 via 10.244.2.0 dev tulle.1 onlink",
				"del route 10.244.3.0/24 via 10.244.3.0 dev tulle.1 onlink metric 100",
			},
		},
		{
			name: "route only at another metric: added at 0, old one removed",
			have: func() observed {
				o := inSync(vxState(p2))
				o.Routes[0].Priority = 5
				return o
			},
			want: vxState(p2),
			ops: []string{
				"add route 10.244.2.0/24 via 10.244.2.0 dev tulle.1 onlink",
				"del route 10.244.2.0/24 via 10.244.2.0 dev tulle.1 onlink metric 5",
			},
		},
		{
			name: "vxlan to host-gw: routes replaced, vxlan device removed with its entries",
			have: func() observed { return inSync(vxState(p2, p3)) },
			want: hostGWState(p2, p3),
			ops: []string{
				"replace route 10.244.2.0/24 via 192.168.0.2 dev ul0",
				"replace route 10.244.3.0/24 via 192.168.0.3 dev ul0",
				"del link tulle.1",
			},
		},
		{
			name: "host-gw to vxlan",
			have: func() observed { return inSync(hostGWState(p2)) },
			want: vxState(p2),
			ops: []string{
				"add link tulle.1 type vxlan id 1 local 192.168.0.1 dev ul0 dstport 8472 nolearning mtu 1450 address 02:00:00:00:00:0a",
				"add addr 10.244.1.0/32 dev tulle.1",
				"set link tulle.1 up",
				"replace neigh 10.244.2.0 lladdr 02:00:00:00:00:0b dev tulle.1 nud permanent",
				"replace fdb 02:00:00:00:00:0b dev tulle.1 dst 192.168.0.2 self permanent",
				"replace route 10.244.2.0/24 via 10.244.2.0 dev tulle.1 onlink",
			},
		},
		{
			name: "udp: tun tuned in place, cluster route added",
			have: func() observed {
				o := inSync(vxState())
				o.VXLANs, o.Routes = nil, nil
				delete(o.Kinds, "tulle.1")
				o.Bridge.MTU = 1464
				o.Kinds[plan.TUNName] = "tuntap"
				o.TUN = &obsLink{Name: plan.TUNName, MTU: 1500} // as the engine made it
				return o
			},
			want: udpState(),
			ops: []string{
				"sysctl net.ipv6.conf.tulle-udp.disable_ipv6=1",
				"set link tulle-udp mtu 1464",
				"add addr 10.244.1.0/32 dev tulle-udp",
				"set link tulle-udp up",
				"add route 10.244.0.0/16 dev tulle-udp",
			},
		},
		{
			name: "udp in sync: nothing",
			have: func() observed { return inSync(udpState()) },
			want: udpState(),
		},
		{
			name: "udp: tun missing is reported, its route waits, the rest is done",
			have: func() observed { return inSync(plan.State{}) },
			want: udpState(),
			ops: []string{
				"sysctl net.ipv4.ip_forward=1",
				"add link tulle0 type bridge mtu 1464",
				"add addr 10.244.1.1/24 dev tulle0",
				"set link tulle0 up",
				"add chain inet tulle postrouting: ip saddr 10.244.1.0/24 ip daddr != 10.244.0.0/16 masquerade",
			},
			missing: true,
		},
		{
			name: "udp: name tulle-udp held by a veth: reported, never touched",
			have: func() observed {
				o := inSync(udpState())
				o.TUN, o.Routes = nil, nil
				o.Kinds[plan.TUNName] = "veth"
				return o
			},
			want:     udpState(),
			conflict: true,
		},
		{
			name: "vxlan to udp: cluster route added, peer routes go with the vxlan device",
			have: func() observed {
				o := inSync(vxState(p2, p3))
				o.Kinds[plan.TUNName] = "tuntap"
				o.TUN = &obsLink{Name: plan.TUNName, MTU: 1464, Up: true}
				o.TUNIPv6Off = true
				return o
			},
			want: udpState(),
			ops: []string{
				"set link tulle0 mtu 1464",
				"add addr 10.244.1.0/32 dev tulle-udp",
				"add route 10.244.0.0/16 dev tulle-udp",
				"del route 10.244.2.0/24 via 10.244.2.0 dev tulle.1 onlink",
				"del route 10.244.3.0/24 via 10.244.3.0 dev tulle.1 onlink",
				"del link tulle.1",
			},
		},
		{
			name: "udp to vxlan: cluster route, then the stale tun device removed",
			have: func() observed { return inSync(udpState()) },
			want: vxState(p2),
			ops: []string{
				"set link tulle0 mtu 1450",
				"add link tulle.1 type vxlan id 1 local 192.168.0.1 dev ul0 dstport 8472 nolearning mtu 1450 address 02:00:00:00:00:0a",
				"add addr 10.244.1.0/32 dev tulle.1",
				"set link tulle.1 up",
				"replace neigh 10.244.2.0 lladdr 02:00:00:00:00:0b dev tulle.1 nud permanent",
				"replace fdb 02:00:00:00:00:0b dev tulle.1 dst 192.168.0.2 self permanent",
				"add route 10.244.2.0/24 via 10.244.2.0 dev tulle.1 onlink",
				"del route 10.244.0.0/16 dev tulle-udp",
				"del link tulle-udp",
			},
		},
		{
			name: "nft table changed behind our back is replaced",
			have: func() observed { o := inSync(vxState()); o.NFT = &otherTable; return o },
			want: vxState(),
			ops:  []string{"replace chain inet tulle postrouting: ip saddr 10.244.1.0/24 ip daddr != 10.244.0.0/16 masquerade"},
		},
		{
			name: "no masquerade wanted: table deleted",
			have: func() observed { return inSync(vxState()) },
			want: func() plan.State { s := vxState(); s.Masquerade = nil; return s }(),
			ops:  []string{"del chain inet tulle postrouting"},
		},
		{
			name: "no bridge wanted: an existing bridge is left alone",
			have: func() observed { o := inSync(vxState()); o.Bridge.MTU = 9000; return o },
			want: func() plan.State { s := vxState(); s.Bridge = nil; return s }(),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := validate(tc.want); err != nil {
				t.Fatalf("test state invalid: %v", err)
			}
			ops, err := diff(tc.have(), tc.want)
			if got := opStrings(ops); !slices.Equal(got, tc.ops) {
				t.Errorf("ops:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tc.ops, "\n  "))
			}
			if errors.Is(err, errConflict) != tc.conflict || errors.Is(err, ErrTUNMissing) != tc.missing || (err != nil) != (tc.conflict || tc.missing) {
				t.Errorf("err = %v, want conflict %t, tun missing %t", err, tc.conflict, tc.missing)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*plan.State)
	}{
		{"vxlan name without prefix", func(s *plan.State) { s.VXLAN.Name = "flannel.1" }},
		{"vxlan name too long", func(s *plan.State) { s.VXLAN.Name = "tulle.123456789012" }},
		{"vni zero", func(s *plan.State) { s.VXLAN.VNI = 0 }},
		{"ipv6 local", func(s *plan.State) { s.VXLAN.Local = netip.MustParseAddr("fd00::1") }},
		{"short MAC", func(s *plan.State) { s.VXLAN.MAC = net.HardwareAddr{1, 2} }},
		{"neighbour off the vxlan device", func(s *plan.State) { s.Neighbors[0].Dev = "ul0" }},
		{"fdb off the vxlan device", func(s *plan.State) { s.FDB[0].Dev = "ul0" }},
		{"neighbours without vxlan", func(s *plan.State) { s.VXLAN = nil }},
		{"unmasked route", func(s *plan.State) { s.Routes[0].Dst = netip.MustParsePrefix("10.244.2.1/24") }},
		{"route without device", func(s *plan.State) { s.Routes[0].Dev = "" }},
		{"duplicate route", func(s *plan.State) { s.Routes = append(s.Routes, s.Routes[0]) }},
		{"bridge without address", func(s *plan.State) { s.Bridge.Addr = netip.Prefix{} }},
		{"bridge named like the vxlan", func(s *plan.State) { s.Bridge.Name = "tulle.1" }},
		{"masquerade without network", func(s *plan.State) { s.Masquerade.Network = netip.Prefix{} }},
		{"tun not ours", func(s *plan.State) {
			s.TUN = &plan.TUN{Name: "tun0", MTU: 1464, Addr: netip.MustParsePrefix("10.244.1.0/32")}
		}},
		{"tun mtu", func(s *plan.State) {
			s.TUN = &plan.TUN{Name: plan.TUNName, MTU: 20, Addr: netip.MustParsePrefix("10.244.1.0/32")}
		}},
		{"tun without address", func(s *plan.State) { s.TUN = &plan.TUN{Name: plan.TUNName, MTU: 1464} }},
		{"onlink route without gateway", func(s *plan.State) { s.Routes[0].Gw = netip.Addr{} }},
		{"ipv6 gateway", func(s *plan.State) { s.Routes[0].Gw = netip.MustParseAddr("fe80::1") }},
	}
	if err := validate(udpState()); err != nil {
		t.Fatalf("valid udp state rejected: %v", err)
	}
	if err := validate(vxState(peer{2, macB})); err != nil {
		t.Fatalf("valid state rejected: %v", err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := vxState(peer{2, macB})
			tc.mutate(&s)
			if err := validate(s); !errors.Is(err, ErrBadState) {
				t.Errorf("validate = %v, want ErrBadState", err)
			}
		})
	}
}

// sim is a dumb model of the kernel objects tulle owns, with the kernel's
// semantics for each op: a deleted link takes its entries and routes along,
// fdb replace rewrites a MAC's first remote, route add is exclusive.
type sim struct {
	o      observed
	neighs map[string][]obsNeigh // by device
	fdb    map[string][]plan.FDB // by device, in insertion order
}

func newSim(o observed) *sim {
	s := &sim{o: o, neighs: map[string][]obsNeigh{}, fdb: map[string][]plan.FDB{}}
	s.o.Kinds = map[string]string{}
	for k, v := range o.Kinds {
		s.o.Kinds[k] = v
	}
	for _, n := range o.Neighbors {
		s.neighs[n.Dev] = append(s.neighs[n.Dev], n)
	}
	for _, f := range o.FDB {
		s.fdb[f.Dev] = append(s.fdb[f.Dev], f)
	}
	s.o.Routes = slices.Clone(o.Routes)
	s.o.VXLANs = slices.Clone(o.VXLANs)
	if o.Bridge != nil {
		b := *o.Bridge
		s.o.Bridge = &b
	}
	if o.TUN != nil {
		u := *o.TUN
		s.o.TUN = &u
	}
	return s
}

func (s *sim) link(name string) *obsLink {
	if s.o.Bridge != nil && s.o.Bridge.Name == name {
		return s.o.Bridge
	}
	for i := range s.o.VXLANs {
		if s.o.VXLANs[i].Name == name {
			return &s.o.VXLANs[i].obsLink
		}
	}
	if s.o.TUN != nil && s.o.TUN.Name == name {
		return s.o.TUN
	}
	return nil
}

func (s *sim) apply(o op) error {
	l := s.link(o.dev)
	needLink := func() error {
		if l == nil {
			return fmt.Errorf("%s: no link %s", o, o.dev)
		}
		return nil
	}
	switch o.kind {
	case opForwarding:
		s.o.Forwarding = true
	case opAddBridge:
		if _, ok := s.o.Kinds[o.dev]; ok {
			return fmt.Errorf("%s: exists", o)
		}
		s.o.Kinds[o.dev] = "bridge"
		s.o.Bridge = &obsLink{Name: o.dev, MTU: o.bridge.MTU}
	case opAddVXLAN:
		if _, ok := s.o.Kinds[o.dev]; ok {
			return fmt.Errorf("%s: exists", o)
		}
		v := o.vxlan
		s.o.Kinds[o.dev] = "vxlan"
		s.o.VXLANs = append(s.o.VXLANs, obsVXLAN{
			obsLink: obsLink{Name: v.Name, MTU: v.MTU, MAC: v.MAC},
			VNI:     v.VNI, Port: v.Port, Local: v.Local, Underlay: v.Underlay,
		})
	case opDelLink:
		delete(s.o.Kinds, o.dev)
		s.o.VXLANs = slices.DeleteFunc(s.o.VXLANs, func(v obsVXLAN) bool { return v.Name == o.dev })
		if s.o.TUN != nil && s.o.TUN.Name == o.dev {
			s.o.TUN, s.o.TUNIPv6Off = nil, false
		}
		delete(s.neighs, o.dev)
		delete(s.fdb, o.dev)
		s.o.Routes = slices.DeleteFunc(s.o.Routes, func(r obsRoute) bool { return r.Dev == o.dev })
	case opSetMTU, opSetMAC, opSetUp, opAddAddr, opDelAddr:
		if err := needLink(); err != nil {
			return err
		}
		switch o.kind {
		case opSetMTU:
			l.MTU = o.mtu
		case opSetMAC:
			l.MAC = o.mac
		case opSetUp:
			l.Up = true
		case opAddAddr:
			if slices.Contains(l.Addrs, o.addr) {
				return fmt.Errorf("%s: exists", o)
			}
			l.Addrs = append(l.Addrs, o.addr)
		case opDelAddr:
			l.Addrs = slices.DeleteFunc(slices.Clone(l.Addrs), func(a netip.Prefix) bool { return a == o.addr })
		}
	case opSetNeigh:
		if err := needLink(); err != nil {
			return err
		}
		ns := slices.DeleteFunc(s.neighs[o.dev], func(n obsNeigh) bool { return n.IP == o.neigh.IP })
		s.neighs[o.dev] = append(ns, obsNeigh{Neighbor: o.neigh, Permanent: true})
	case opDelNeigh:
		s.neighs[o.dev] = slices.DeleteFunc(s.neighs[o.dev], func(n obsNeigh) bool { return n.IP == o.neigh.IP })
	case opSetFDB:
		if err := needLink(); err != nil {
			return err
		}
		fs := s.fdb[o.dev]
		first := -1
		for i, f := range fs {
			if string(f.MAC) == string(o.fdb.MAC) {
				if f.Dst == o.fdb.Dst {
					return nil
				}
				if first < 0 {
					first = i
				}
			}
		}
		if first >= 0 {
			fs[first].Dst = o.fdb.Dst
		} else {
			s.fdb[o.dev] = append(fs, o.fdb)
		}
	case opDelFDB:
		s.fdb[o.dev] = slices.DeleteFunc(s.fdb[o.dev], func(f plan.FDB) bool {
			return string(f.MAC) == string(o.fdb.MAC) && f.Dst == o.fdb.Dst
		})
	case opAddRoute, opReplaceRoute:
		if _, ok := s.o.Kinds[o.dev]; !ok {
			return fmt.Errorf("%s: no link", o)
		}
		i := slices.IndexFunc(s.o.Routes, func(r obsRoute) bool { return r.Dst == o.route.Dst && r.Priority == 0 })
		switch {
		case i >= 0 && o.kind == opAddRoute:
			return fmt.Errorf("%s: exists", o)
		case i >= 0:
			s.o.Routes[i].Route = o.route
		default:
			s.o.Routes = append(s.o.Routes, obsRoute{Route: o.route})
		}
	case opDelRoute:
		s.o.Routes = slices.DeleteFunc(s.o.Routes, func(r obsRoute) bool { return r.Dst == o.route.Dst && r.Priority == o.prio })
	case opDisableIPv6:
		if s.o.TUN == nil || s.o.TUN.Name != o.dev {
			return fmt.Errorf("%s: no tun", o)
		}
		s.o.TUNIPv6Off = true
	case opSetNFT:
		t := nftText(o.masq)
		s.o.NFT = &t
	case opDelNFT:
		s.o.NFT = nil
	default:
		return fmt.Errorf("unknown op %s", o)
	}
	return nil
}

// observe is what Dataplane.observe would read from the model: entries of
// the wanted VXLAN device only.
func (s *sim) observe(want plan.State) observed {
	o := s.o
	o.Neighbors, o.FDB = nil, nil
	if want.VXLAN != nil {
		o.Neighbors = slices.Clone(s.neighs[want.VXLAN.Name])
		o.FDB = slices.Clone(s.fdb[want.VXLAN.Name])
	}
	if want.Bridge == nil {
		o.Bridge = nil
	}
	return o
}

// randomObserved is a namespace after some earlier tulle run plus drift.
func randomObserved(r *rand.Rand, pool []peer) observed {
	var s plan.State
	switch r.IntN(3) {
	case 0:
		s = vxState(pick(r, pool)...)
	case 1:
		s = hostGWState(pick(r, pool)...)
	default:
		s = udpState()
	}
	if r.IntN(4) == 0 {
		s = plan.State{}
	}
	o := inSync(s)
	o.Forwarding = r.IntN(2) == 0
	if o.Bridge != nil && r.IntN(3) == 0 {
		o.Bridge.MTU, o.Bridge.Up = 1500, false
		o.Bridge.Addrs = append(o.Bridge.Addrs, netip.MustParsePrefix("10.244.99.1/24"))
	}
	if len(o.VXLANs) > 0 {
		switch r.IntN(4) {
		case 0:
			o.VXLANs[0].Port = 4789
		case 1:
			o.VXLANs[0].MAC = macX
		}
	}
	if r.IntN(3) == 0 {
		o.Kinds["tulle.9"] = "vxlan"
		o.VXLANs = append(o.VXLANs, obsVXLAN{obsLink: obsLink{Name: "tulle.9"}, VNI: 9})
		o.Routes = append(o.Routes, obsRoute{Route: plan.Route{Dst: netip.MustParsePrefix("10.244.200.0/24"), Gw: netip.MustParseAddr("10.244.200.0"), Dev: "tulle.9"}})
	}
	for i := range o.Neighbors {
		if r.IntN(5) == 0 {
			o.Neighbors[i].MAC = macX
		}
		if r.IntN(5) == 0 {
			o.Neighbors[i].Permanent = false
		}
	}
	for i := range o.FDB {
		if r.IntN(5) == 0 {
			o.FDB[i].Dst = netip.MustParseAddr("192.168.9.9")
		}
	}
	for i := range o.Routes {
		if r.IntN(6) == 0 {
			o.Routes[i].Priority = 7
		}
		if r.IntN(6) == 0 {
			o.Routes[i].Onlink = !o.Routes[i].Onlink
		}
	}
	if r.IntN(4) == 0 {
		x := "garbage"
		o.NFT = &x
	}
	// The engine keeps its TUN device whatever the plan was: a leftover
	// of an earlier udp run, or the device of the running engine,
	// possibly as the engine created it (MTU 1500, down, no address).
	if o.TUN == nil && r.IntN(2) == 0 {
		o.Kinds[plan.TUNName] = "tuntap"
		o.TUN = &obsLink{Name: plan.TUNName, MTU: 1500}
	} else if o.TUN != nil && r.IntN(3) == 0 {
		o.TUN.MTU, o.TUN.Up, o.TUN.Addrs = 1400, false, []netip.Prefix{netip.MustParsePrefix("10.244.99.0/32")}
		o.TUNIPv6Off = false
	}
	return o
}

func pick(r *rand.Rand, pool []peer) []peer {
	var ps []peer
	for _, p := range pool {
		if r.IntN(2) == 0 {
			ps = append(ps, p)
		}
	}
	return ps
}

// TestDiffConverges checks diff against the dumb model: from random drifted
// states, executing diff's ops reaches a state whose diff is empty, ops on a
// peer come in the safe order, and every add precedes every delete (except
// the delete that makes room for recreating a device).
func TestDiffConverges(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var pool []peer
	for n := 2; n < 12; n++ {
		pool = append(pool, peer{n, net.HardwareAddr{2, 0, 0, 0, 1, byte(n)}})
	}
	for i := range 2000 {
		have := randomObserved(r, pool)
		var want plan.State
		switch r.IntN(4) {
		case 0:
			want = vxState(pick(r, pool)...)
		case 1:
			want = hostGWState(pick(r, pool)...)
		case 2:
			if have.TUN == nil { // the engine would have made it
				have.Kinds[plan.TUNName] = "tuntap"
				have.TUN = &obsLink{Name: plan.TUNName, MTU: 1500}
			}
			want = udpState()
		default:
			want = vxState(pick(r, pool)...)
			want.Masquerade = nil
			want.Bridge = nil
		}
		ops, err := diff(have, want)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		checkOrder(t, i, ops)
		m := newSim(have)
		for _, o := range ops {
			if err := m.apply(o); err != nil {
				t.Fatalf("case %d: %v\nops:\n%s", i, err, strings.Join(opStrings(ops), "\n"))
			}
		}
		again, _ := diff(m.observe(want), want)
		if len(again) > 0 {
			t.Fatalf("case %d: not converged, second diff:\n%s\nfirst:\n%s", i,
				strings.Join(opStrings(again), "\n"), strings.Join(opStrings(ops), "\n"))
		}
	}
}

func checkOrder(t *testing.T, i int, ops []op) {
	t.Helper()
	isDel := func(k opKind) bool {
		return k == opDelAddr || k == opDelNeigh || k == opDelFDB || k == opDelRoute || k == opDelNFT || k == opDelLink
	}
	lastAdd, firstDel := -1, len(ops)
	for j, o := range ops {
		if !isDel(o.kind) {
			lastAdd = j
		} else if o.kind != opDelLink || o.drift == "stale" {
			firstDel = min(firstDel, j)
		}
	}
	if lastAdd > firstDel {
		t.Fatalf("case %d: add %q after delete %q", i, ops[lastAdd], ops[firstDel])
	}
	// Per peer (keyed by its VTEP/gateway IP): neighbour before route on
	// add; route before neighbour on delete.
	pos := map[string]int{}
	for j, o := range ops {
		switch o.kind {
		case opSetNeigh:
			pos["set "+o.neigh.IP.String()] = j
		case opAddRoute, opReplaceRoute:
			if k, ok := pos["set "+o.route.Gw.String()]; ok && k > j {
				t.Fatalf("case %d: route %q before its neighbour", i, o)
			}
		case opDelRoute:
			pos["del "+o.route.Gw.String()] = j
		case opDelNeigh:
			if k, ok := pos["del "+o.neigh.IP.String()]; ok && k > j {
				t.Fatalf("case %d: neighbour %q deleted before its route", i, o)
			}
		}
	}
}

func TestSameKernelState(t *testing.T) {
	own := slices.Clone(macB) // mutated below; macB is shared by other tests
	a := vxState(peer{2, own}, peer{3, macC})
	c := cloneKernelState(a)
	if !sameKernelState(&a, &c) {
		t.Fatal("clone differs")
	}
	own[5] = 0x77 // caller reuses memory: the clone must not see it
	if sameKernelState(&a, &c) {
		t.Fatal("clone shares MAC memory with the original")
	}
	b := vxState(peer{2, macB}, peer{3, macC})
	b.WorkloadMTU, b.Warnings = 1234, []string{"x"}
	b.UDP = &plan.UDP{NetworkID: 9}
	if !sameKernelState(&b, &c) {
		t.Error("WorkloadMTU, Warnings and the udp engine config must not count")
	}
	u := udpState()
	uc := cloneKernelState(u)
	u.TUN.MTU = 1
	if sameKernelState(&u, &uc) {
		t.Error("clone shares the TUN with the original, or a TUN MTU change is not noticed")
	}
	for name, mutate := range map[string]func(*plan.State){
		"forwarding": func(s *plan.State) { s.Forwarding = false },
		"bridge":     func(s *plan.State) { s.Bridge.MTU = 1 },
		"vxlan mac":  func(s *plan.State) { s.VXLAN.MAC = macX },
		"vxlan port": func(s *plan.State) { s.VXLAN.Port = 1 },
		"neighbour":  func(s *plan.State) { s.Neighbors = s.Neighbors[1:] },
		"route":      func(s *plan.State) { s.Routes[0].Onlink = false },
		"masq":       func(s *plan.State) { s.Masquerade = nil },
		"tun":        func(s *plan.State) { s.TUN = &plan.TUN{Name: plan.TUNName, MTU: 1464} },
	} {
		d := vxState(peer{2, macB}, peer{3, macC})
		mutate(&d)
		if sameKernelState(&d, &c) {
			t.Errorf("%s change not noticed", name)
		}
	}
}
