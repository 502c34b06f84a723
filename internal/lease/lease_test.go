package lease

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/tulle-net/tulle/internal/config"
)

func cfg(t *testing.T, js string) config.Network {
	t.Helper()
	c, err := config.Parse([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func l(subnet, node string) Lease {
	return Lease{Subnet: netip.MustParsePrefix(subnet), Attrs: Attrs{Node: node, PublicIP: netip.MustParseAddr("192.168.0.1")}}
}

func TestChoose(t *testing.T) {
	c := cfg(t, `{"network":"10.0.0.0/22","subnetLen":24}`) // 4 subnets
	p := netip.MustParsePrefix
	tests := []struct {
		name   string
		leases []Lease
		prev   string
		avoid  []string
		seed   uint64
		want   string
	}{
		{"own lease by node name", []Lease{l("10.0.2.0/24", "a"), l("10.0.1.0/24", "me")}, "10.0.3.0/24", nil, 0, "10.0.1.0/24"},
		{"prev when free", []Lease{l("10.0.2.0/24", "a")}, "10.0.3.0/24", nil, 0, "10.0.3.0/24"},
		{"prev taken", []Lease{l("10.0.3.0/24", "a")}, "10.0.3.0/24", nil, 0, "10.0.0.0/24"},
		{"prev invalid", nil, "10.9.0.0/24", nil, 1, "10.0.1.0/24"},
		{"seed spreads", nil, "", nil, 2, "10.0.2.0/24"},
		{"avoid", []Lease{l("10.0.0.0/24", "a")}, "", []string{"10.0.1.0/24", "10.0.2.0/24"}, 0, "10.0.3.0/24"},
		{"own lease in avoid", []Lease{l("10.0.1.0/24", "me")}, "", []string{"10.0.1.0/24"}, 0, "10.0.0.0/24"},
		{"overlap other len", []Lease{{Subnet: p("10.0.0.0/23"), Attrs: Attrs{Node: "x"}}}, "", nil, 0, "10.0.2.0/24"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var prev netip.Prefix
			if tc.prev != "" {
				prev = p(tc.prev)
			}
			avoid := map[netip.Prefix]bool{}
			for _, a := range tc.avoid {
				avoid[p(a)] = true
			}
			got, err := Choose(c, tc.leases, "me", prev, avoid, tc.seed)
			if err != nil || got != p(tc.want) {
				t.Fatalf("got %s %v, want %s", got, err, tc.want)
			}
		})
	}
}

func TestChooseExhausted(t *testing.T) {
	c := cfg(t, `{"network":"10.0.0.0/23","subnetLen":24}`)
	_, err := Choose(c, []Lease{l("10.0.0.0/24", "a"), l("10.0.1.0/24", "b")}, "me", netip.Prefix{}, nil, 0)
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("got %v", err)
	}
	for _, want := range []string{"10.0.0.0/23", "subnetLen 24", "2 of 2 subnets are taken"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestKeyAndValue(t *testing.T) {
	p := netip.MustParsePrefix("10.244.3.0/24")
	if SubnetKey(p) != "10.244.3.0-24" {
		t.Fatal(SubnetKey(p))
	}
	if got, err := ParseSubnetKey("10.244.3.0-24"); err != nil || got != p {
		t.Fatal(got, err)
	}
	for _, bad := range []string{"", "10.244.3.0", "10.244.3.1-24", "x-24", "fd00::-64"} {
		if _, err := ParseSubnetKey(bad); !errors.Is(err, ErrBadValue) {
			t.Errorf("ParseSubnetKey(%q) = %v", bad, err)
		}
	}
	a := Attrs{Node: "n1", PublicIP: netip.MustParseAddr("192.168.0.9"), BackendType: "vxlan", BackendData: BackendData{VtepMAC: "02:00:00:00:00:01"}}
	got, err := Decode(p, a.Encode())
	if err != nil || got.Attrs != a || got.Subnet != p {
		t.Fatalf("round trip %+v %v", got, err)
	}
	u := Attrs{Node: "n2", PublicIP: netip.MustParseAddr("192.168.0.10"), BackendType: "udp", BackendData: BackendData{Port: 8285}}
	if !strings.Contains(string(u.Encode()), `"backendData":{"port":8285}`) {
		t.Fatalf("udp lease encodes as %s, want backendData.port", u.Encode())
	}
	if got, err := Decode(p, u.Encode()); err != nil || got.Attrs != u {
		t.Fatalf("udp round trip %+v %v", got, err)
	}
	for _, bad := range []string{`{"node":"n","publicIP":"1.2.3.4","backendData":{"port":65536}}`, `{"node":"n","publicIP":"1.2.3.4","backendData":{"port":-1}}`, `{"node":"n","publicIP":"1.2.3.4","backendData":{"port":"x"}}`} {
		if _, err := Decode(p, []byte(bad)); !errors.Is(err, ErrBadValue) {
			t.Errorf("Decode(%s) = %v", bad, err)
		}
	}
	for _, bad := range []string{`{`, `{"node":""}`, `{"node":"n","publicIP":""}`, `{"node":"n","publicIP":"fd00::1"}`, `{"node":"n","publicIP":"1.2.3.4","backendData":{"vtepMAC":"zz"}}`} {
		if _, err := Decode(p, []byte(bad)); !errors.Is(err, ErrBadValue) {
			t.Errorf("Decode(%s) = %v", bad, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"node":"n1","publicIP":"192.168.0.9","backend":"vxlan","backendData":{"vtepMAC":"02:00:00:00:00:01"}}`))
	f.Add([]byte(`{"node":"n1","publicIP":"192.168.0.9","backend":"udp","backendData":{"port":8285}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := Decode(netip.MustParsePrefix("10.0.0.0/24"), b)
		if err == nil && (l.Node == "" || !l.PublicIP.Is4() || l.BackendData.Port < 0 || l.BackendData.Port > 65535) {
			t.Fatalf("accepted invalid lease %s", b)
		}
	})
}
