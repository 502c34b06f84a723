package config

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseDefaults(t *testing.T) {
	n, err := Parse([]byte(`{"network":"10.244.0.0/16"}`))
	if err != nil {
		t.Fatal(err)
	}
	if n.SubnetLen != 24 || n.Backend.Type != "vxlan" || n.Backend.VNI != 1 || n.Backend.Port != 8472 {
		t.Fatalf("defaults not applied: %+v", n)
	}
	if n.SubnetMin != netip.MustParseAddr("10.244.0.0") || n.SubnetMax != netip.MustParseAddr("10.244.255.0") {
		t.Fatalf("range: %s..%s", n.SubnetMin, n.SubnetMax)
	}
	if n.SubnetCount() != 256 {
		t.Fatalf("count %d", n.SubnetCount())
	}
	if got := n.WorkloadMTU(1500); got != 1450 {
		t.Fatalf("vxlan mtu %d", got)
	}
	again, err := Parse(n.Marshal())
	if err != nil || again != n {
		t.Fatalf("round trip: %+v %v", again, err)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"missing network", `{}`, `network "": required`},
		{"ipv6", `{"network":"fd00::/64"}`, "network fd00::/64: must be an IPv4"},
		{"host bits", `{"network":"10.244.1.0/16"}`, "host bits are set; use 10.244.0.0/16"},
		{"too small", `{"network":"10.244.0.0/24","subnetLen":24}`, "subnetLen 24: network 10.244.0.0/24 is too small for two subnets"},
		{"subnetLen range", `{"network":"10.0.0.0/8","subnetLen":31}`, "subnetLen 31: must be between 9 and 30"},
		{"min>max", `{"network":"10.244.0.0/16","subnetMin":"10.244.9.0","subnetMax":"10.244.2.0"}`, "subnetMin 10.244.9.0: greater than subnetMax 10.244.2.0"},
		{"min outside", `{"network":"10.244.0.0/16","subnetMin":"10.9.0.0"}`, "subnetMin 10.9.0.0: outside network"},
		{"max unaligned", `{"network":"10.244.0.0/16","subnetMax":"10.244.9.7"}`, "subnetMax 10.244.9.7: not on a /24 boundary; use 10.244.9.0"},
		{"one subnet", `{"network":"10.244.0.0/16","subnetMin":"10.244.3.0","subnetMax":"10.244.3.0"}`, "holds 1 subnet(s)"},
		{"unknown backend", `{"network":"10.244.0.0/16","backend":{"type":"ipip"}}`, `backend.type "ipip": unknown; use one of vxlan, host-gw, udp`},
		{"unknown field", `{"network":"10.244.0.0/16","subnetlength":24}`, `unknown field "subnetlength"`},
		{"unknown backend field", `{"network":"10.244.0.0/16","backend":{"type":"vxlan","VNIs":2}}`, `unknown field "VNIs"`},
		{"vni range", `{"network":"10.244.0.0/16","backend":{"type":"vxlan","vni":16777216}}`, "backend.vni 16777216"},
		{"port range", `{"network":"10.244.0.0/16","backend":{"type":"vxlan","port":70000}}`, "backend.port 70000"},
		{"hostgw with vni", `{"network":"10.244.0.0/16","backend":{"type":"host-gw","vni":3}}`, "takes no vni"},
		{"mtu", `{"network":"10.244.0.0/16","mtu":100}`, "mtu 100"},
		{"udp directRouting", `{"network":"10.244.0.0/16","backend":{"type":"udp","directRouting":true}}`, "backend.directRouting true: is a vxlan option"},
		{"udp vni range", `{"network":"10.244.0.0/16","backend":{"type":"udp","vni":16777216}}`, "backend.vni 16777216: must be between 1 and 16777215"},
		{"udp vni negative", `{"network":"10.244.0.0/16","backend":{"type":"udp","vni":-1}}`, "backend.vni -1"},
		{"udp port range", `{"network":"10.244.0.0/16","backend":{"type":"udp","port":65536}}`, "backend.port 65536: must be between 1 and 65535"},
		{"udp port negative", `{"network":"10.244.0.0/16","backend":{"type":"udp","port":-5}}`, "backend.port -5"},
		{"udp unknown field", `{"network":"10.244.0.0/16","backend":{"type":"udp","prot":8285}}`, `unknown field "prot"`},
		{"trailing", `{"network":"10.244.0.0/16"} {}`, "trailing data"},
		{"bad json", `{"network":`, "decode"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.in))
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("got %v, want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestParseUDP(t *testing.T) {
	n, err := Parse([]byte(`{"network":"10.244.0.0/16","backend":{"type":"udp"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if n.Backend.Type != BackendUDP || n.Backend.Port != DefaultUDPPort || n.Backend.VNI != 1 || n.Backend.DirectRouting {
		t.Fatalf("udp defaults not applied: %+v", n.Backend)
	}
	if n.Backend.Port != 8285 {
		t.Fatalf("udp default port %d, want Flannel's 8285", n.Backend.Port)
	}
	if got := n.WorkloadMTU(1500); got != 1500-36 {
		t.Fatalf("udp workload mtu %d, want 1464", got)
	}
	again, err := Parse(n.Marshal())
	if err != nil || again != n {
		t.Fatalf("round trip: %+v %v", again, err)
	}
	c, err := Parse([]byte(`{"network":"10.244.0.0/16","mtu":1400,"backend":{"type":"udp","vni":7,"port":9000}}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Backend.Port != 9000 || c.Backend.VNI != 7 || c.WorkloadMTU(1500) != 1400 {
		t.Fatalf("udp explicit values: %+v mtu %d", c.Backend, c.WorkloadMTU(1500))
	}
}

func TestSubnetsAndContains(t *testing.T) {
	n, err := Parse([]byte(`{"network":"10.0.0.0/28","subnetLen":30,"subnetMin":"10.0.0.4","subnetMax":"10.0.0.12","backend":{"type":"host-gw"}}`))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	n.Subnets(func(p netip.Prefix) bool { got = append(got, p.String()); return true })
	if strings.Join(got, " ") != "10.0.0.4/30 10.0.0.8/30 10.0.0.12/30" {
		t.Fatalf("subnets %v", got)
	}
	for p, want := range map[string]bool{"10.0.0.4/30": true, "10.0.0.0/30": false, "10.0.0.5/30": false, "10.0.0.8/29": false} {
		if n.Contains(netip.MustParsePrefix(p)) != want {
			t.Errorf("Contains(%s) != %v", p, want)
		}
	}
	if n.WorkloadMTU(1500) != 1500 {
		t.Fatal("host-gw has no overhead")
	}
	// The whole of 0.0.0.0/0 in /30s must not overflow.
	w, err := Parse([]byte(`{"network":"0.0.0.0/0","subnetLen":30}`))
	if err != nil || w.SubnetCount() != 1<<30 {
		t.Fatalf("wide network: %v %d", err, w.SubnetCount())
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"network":"10.244.0.0/16","subnetLen":26,"backend":{"type":"host-gw"}}`))
	f.Add([]byte(`{"network":"10.0.0.0/30","subnetLen":31}`))
	f.Add([]byte(`{"network":"10.244.0.0/16","backend":{"type":"udp","vni":5,"port":8285}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := Parse(b)
		if err != nil {
			return
		}
		// Invariant: a valid config has >= 2 subnets, all inside the network.
		count := 0
		n.Subnets(func(p netip.Prefix) bool {
			if !n.Network.Contains(p.Addr()) || !n.Contains(p) {
				t.Fatalf("subnet %s escapes %s", p, n.Network)
			}
			count++
			return count < 4
		})
		if count < 2 {
			t.Fatalf("valid config with %d subnets: %s", count, b)
		}
		// Invariant: a valid udp config has a usable port and network id
		// and never asks for directRouting.
		if bk := n.Backend; bk.Type == BackendUDP && (bk.Port < 1 || bk.Port > 65535 || bk.VNI < 1 || bk.VNI > MaxNetworkID || bk.DirectRouting) {
			t.Fatalf("accepted invalid udp backend %+v: %s", bk, b)
		}
	})
}
