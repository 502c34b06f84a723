package plan

import (
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tulle-net/tulle/internal/config"
	"github.com/tulle-net/tulle/internal/lease"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

func mustCfg(t *testing.T, js string) config.Network {
	t.Helper()
	c, err := config.Parse([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mkLease(subnet, node, ip string) lease.Lease {
	return lease.Lease{
		Subnet: netip.MustParsePrefix(subnet),
		Attrs: lease.Attrs{
			Node: node, PublicIP: netip.MustParseAddr(ip), BackendType: "vxlan",
			BackendData: lease.BackendData{VtepMAC: VTEPMAC("default", node).String()},
		},
	}
}

// mkUDPLease is a udp node's lease; port 0 leaves the port out.
func mkUDPLease(subnet, node, ip string, port int) lease.Lease {
	return lease.Lease{
		Subnet: netip.MustParsePrefix(subnet),
		Attrs: lease.Attrs{
			Node: node, PublicIP: netip.MustParseAddr(ip), BackendType: "udp",
			BackendData: lease.BackendData{Port: port},
		},
	}
}

func local() Local {
	return Local{
		Underlay:         "ul0",
		UnderlayMTU:      1500,
		UnderlayPrefixes: []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")},
		VTEPMAC:          VTEPMAC("default", "node1"),
		IPMasq:           true,
	}
}

func TestComputeGolden(t *testing.T) {
	self := mkLease("10.244.1.0/24", "node1", "192.168.1.11")
	peers := []lease.Lease{
		mkLease("10.244.3.0/24", "node3", "10.9.0.13"), // behind a router
		self,
		mkLease("10.244.2.0/24", "node2", "192.168.1.12"),
	}
	noMAC := mkLease("10.244.4.0/24", "node4", "192.168.1.14")
	noMAC.BackendData.VtepMAC = ""
	sameIP := mkLease("10.244.5.0/24", "node5", "192.168.1.11")
	outside := mkLease("10.99.0.0/24", "node6", "192.168.1.16")
	udpSelf := mkUDPLease("10.244.1.0/24", "node1", "192.168.1.11", 8285)
	udpPeers := []lease.Lease{
		mkUDPLease("10.244.3.0/24", "node3", "10.9.0.13", 8285), // behind a router: fine for udp
		udpSelf,
		mkUDPLease("10.244.2.0/24", "node2", "192.168.1.12", 9000),
	}
	udpBad := append([]lease.Lease{
		mkLease("10.244.4.0/24", "node4", "192.168.1.14"),           // still on vxlan
		mkUDPLease("10.244.5.0/24", "node5", "192.168.1.11", 8285),  // shares our IP
		mkUDPLease("10.99.0.0/24", "node6", "192.168.1.16", 8285),   // outside
		mkUDPLease("10.244.7.0/24", "node7", "192.168.1.17", 0),     // no port: the cluster's
		mkUDPLease("10.244.8.0/24", "node8", "192.168.1.18", 70000), // bad port
	}, udpPeers...)

	tests := []struct {
		name  string
		cfg   string
		peers []lease.Lease
		mod   func(*Local)
	}{
		{"vxlan", `{"network":"10.244.0.0/16","backend":{"type":"vxlan"}}`, peers, nil},
		{"vxlan-direct", `{"network":"10.244.0.0/16","backend":{"type":"vxlan","directRouting":true}}`, peers, nil},
		{"hostgw", `{"network":"10.244.0.0/16","backend":{"type":"host-gw"}}`, peers, nil},
		{"vxlan-mtu-override-nomasq", `{"network":"10.244.0.0/16","mtu":1400,"backend":{"type":"vxlan","vni":7,"port":4789}}`, peers, func(l *Local) { l.IPMasq = false }},
		{"vxlan-bad-peers", `{"network":"10.244.0.0/16","backend":{"type":"vxlan"}}`, append([]lease.Lease{noMAC, sameIP, outside}, peers...), nil},
		{"alone", `{"network":"10.244.0.0/16","backend":{"type":"vxlan"}}`, nil, nil},
		{"udp", `{"network":"10.244.0.0/16","backend":{"type":"udp"}}`, udpPeers, nil},
		{"udp-bad-peers", `{"network":"10.244.0.0/16","backend":{"type":"udp"}}`, udpBad, nil},
		{"udp-vni-port-mtu-nomasq", `{"network":"10.244.0.0/16","mtu":1480,"backend":{"type":"udp","vni":42,"port":9000}}`, udpPeers, func(l *Local) { l.IPMasq = false; l.UnderlayMTU = 9000 }},
		{"udp-mtu-over-tunnel", `{"network":"10.244.0.0/16","mtu":1480,"backend":{"type":"udp"}}`, nil, nil},
		{"udp-alone", `{"network":"10.244.0.0/16","backend":{"type":"udp"}}`, nil, nil},
		{"udp-bigtcp", `{"network":"10.244.0.0/16","backend":{"type":"udp"}}`, udpPeers[:1], func(l *Local) { l.BigTCP = true }},
		{"vxlan-bigtcp", `{"network":"10.244.0.0/16","backend":{"type":"vxlan"}}`, nil, func(l *Local) { l.BigTCP = true }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := local()
			if tc.mod != nil {
				tc.mod(&l)
			}
			me := self
			if strings.HasPrefix(tc.name, "udp") {
				me = udpSelf
			}
			st, err := Compute(Input{Config: mustCfg(t, tc.cfg), Self: me, Peers: tc.peers, Local: l})
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.name, st.String())
		})
	}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden %s (run go test -update to create it): %v", path, err)
	}
	if got != string(want) {
		t.Errorf("state differs from %s (go test -update to accept):\n--- got\n%s--- want\n%s", path, got, want)
	}
}

func TestComputeDeterministic(t *testing.T) {
	cfg := mustCfg(t, `{"network":"10.244.0.0/16","backend":{"type":"vxlan"}}`)
	self := mkLease("10.244.0.0/24", "node0", "192.168.2.10")
	var a, b []lease.Lease
	for i := 1; i < 200; i++ {
		l := mkLease(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24).String(), "n"+string(rune('a'+i%26))+strings.Repeat("x", i%7), "192.168.1.1")
		l.PublicIP = netip.AddrFrom4([4]byte{192, 168, 1, byte(i)})
		l.Node = "node" + l.Subnet.String()
		a = append(a, l)
		b = append([]lease.Lease{l}, b...)
	}
	s1, err1 := Compute(Input{Config: cfg, Self: self, Peers: a, Local: local()})
	s2, err2 := Compute(Input{Config: cfg, Self: self, Peers: b, Local: local()})
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if s1.String() != s2.String() {
		t.Fatal("peer order changed the plan")
	}
	if len(s1.Routes) != 199 || len(s1.Neighbors) != 199 || len(s1.FDB) != 199 {
		t.Fatalf("want 199 routes/neighbours/fdb, got %d/%d/%d", len(s1.Routes), len(s1.Neighbors), len(s1.FDB))
	}
}

func TestComputeErrors(t *testing.T) {
	cfg := mustCfg(t, `{"network":"10.244.0.0/16","backend":{"type":"vxlan"}}`)
	tests := []struct {
		name string
		in   Input
		want string
	}{
		{"subnet outside", Input{Config: cfg, Self: mkLease("10.1.0.0/24", "n", "1.1.1.1"), Local: local()}, "not a /24 inside 10.244.0.0/16"},
		{"wrong subnet len", Input{Config: cfg, Self: mkLease("10.244.0.0/25", "n", "1.1.1.1"), Local: local()}, "not a /24"},
		{"no mtu", Input{Config: cfg, Self: mkLease("10.244.0.0/24", "n", "1.1.1.1"), Local: Local{Underlay: "ul0", VTEPMAC: VTEPMAC("c", "n")}}, `underlay "ul0" MTU 0`},
		{"no mac", Input{Config: cfg, Self: mkLease("10.244.0.0/24", "n", "1.1.1.1"), Local: Local{Underlay: "ul0", UnderlayMTU: 1500}}, "VTEP MAC"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Compute(tc.in)
			if !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrInput containing %q", err, tc.want)
			}
		})
	}
}

// TestComputeUDP checks the udp rule set's invariants beyond the golden
// files: one cluster route into the TUN device, none per peer, no VXLAN
// objects, the TUN MTU is the underlay's minus UDPOverhead and equals the
// workload MTU.
func TestComputeUDP(t *testing.T) {
	cfg := mustCfg(t, `{"network":"10.244.0.0/16","backend":{"type":"udp"}}`)
	self := mkUDPLease("10.244.0.0/24", "node0", "192.168.1.10", 8285)
	var peers []lease.Lease
	for i := 1; i < 50; i++ {
		peers = append(peers, mkUDPLease(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24).String(),
			"n"+strings.Repeat("x", i), netip.AddrFrom4([4]byte{192, 168, 1, byte(10 + i)}).String(), 8285))
	}
	for _, mtu := range []int{576, 1500, 9000} {
		l := local()
		l.UnderlayMTU = mtu
		l.VTEPMAC = nil // udp needs no MAC
		st, err := Compute(Input{Config: cfg, Self: self, Peers: peers, Local: l})
		if err != nil {
			t.Fatal(err)
		}
		if st.TUN == nil || st.TUN.Name != TUNName || !st.TUN.DisableIPv6 || st.TUN.MTU != mtu-UDPOverhead || st.WorkloadMTU != st.TUN.MTU || st.Bridge.MTU != st.TUN.MTU {
			t.Fatalf("underlay %d: tun %+v workload %d bridge %d; want tun and workload MTU %d", mtu, st.TUN, st.WorkloadMTU, st.Bridge.MTU, mtu-UDPOverhead)
		}
		want := Route{Dst: cfg.Network, Dev: TUNName}
		if len(st.Routes) != 1 || st.Routes[0] != want {
			t.Fatalf("routes %v, want only %v", st.Routes, want)
		}
		if st.VXLAN != nil || len(st.Neighbors) != 0 || len(st.FDB) != 0 {
			t.Fatalf("udp plan has vxlan objects: %v", st)
		}
		if len(st.UDP.Peers) != 49 || len(st.Warnings) != 0 {
			t.Fatalf("%d udp peers, warnings %v; want 49 and none", len(st.UDP.Peers), st.Warnings)
		}
		if st.UDP.Listen != netip.MustParseAddrPort("192.168.1.10:8285") || st.UDP.NetworkID != 1 || st.UDP.Local != self.Subnet || st.UDP.Cluster != cfg.Network {
			t.Fatalf("udp engine config %+v", st.UDP)
		}
	}
	if len(TUNName) > 15 || strings.HasPrefix(TUNName, VXLANPrefix) || TUNName == BridgeName || strings.HasPrefix(TUNName, "tl") {
		t.Fatalf("TUN name %q must fit IFNAMSIZ and not look like the VXLAN device, the bridge or a plugin veth", TUNName)
	}
	// A udp plan needs the node's public IP to listen on.
	noIP := self
	noIP.PublicIP = netip.Addr{}
	if _, err := Compute(Input{Config: cfg, Self: noIP, Local: local()}); !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), "public IP") {
		t.Fatalf("udp without public IP: %v", err)
	}
}

func TestVTEPMAC(t *testing.T) {
	a, b := VTEPMAC("default", "node1"), VTEPMAC("default", "node2")
	if a.String() == b.String() {
		t.Fatal("distinct nodes share a MAC")
	}
	if a.String() != VTEPMAC("default", "node1").String() {
		t.Fatal("MAC not stable")
	}
	if a[0]&0x02 == 0 || a[0]&0x01 != 0 {
		t.Fatalf("MAC %s is not locally administered unicast", a)
	}
}

func BenchmarkCompute1000Peers(b *testing.B) {
	cfg, _ := config.Parse([]byte(`{"network":"10.0.0.0/8","backend":{"type":"vxlan"}}`))
	self := mkLease("10.0.0.0/24", "self", "192.168.0.1")
	var peers []lease.Lease
	for i := 1; i <= 1000; i++ {
		l := mkLease(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24).String(), "", "192.168.0.1")
		l.Node = l.Subnet.String()
		l.PublicIP = netip.AddrFrom4([4]byte{192, 168, byte(i >> 8), byte(i)})
		peers = append(peers, l)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Compute(Input{Config: cfg, Self: self, Peers: peers, Local: local()}); err != nil {
			b.Fatal(err)
		}
	}
}
