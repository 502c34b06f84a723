package dataplane

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/tulle-net/tulle/internal/netns/nstest"
)

func TestUnderlay(t *testing.T) {
	t.Parallel()
	n := newNode(t) // ul0 192.168.0.1/24
	n.run(t, "ip", "addr", "add", "10.1.0.5/16", "dev", "ul0")
	n.run(t, "ip", "link", "set", "ul0", "mtu", "9000")
	nstest.Veth(t,
		nstest.End{NS: n.ns, Name: "wan0", Addr: netip.MustParsePrefix("203.0.113.7/24")},
		nstest.End{NS: n.ns, Name: "wan0p"})
	n.run(t, "ip", "route", "add", "default", "via", "203.0.113.1", "dev", "wan0")

	ul0 := UnderlayInfo{
		Name: "ul0", Index: n.link(t, "ul0").Attrs().Index, MTU: 9000, Addr: netip.MustParseAddr("192.168.0.1"),
		Prefixes: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("192.168.0.0/24")},
	}
	withAddr := func(u UnderlayInfo, a string) UnderlayInfo { u.Addr = netip.MustParseAddr(a); return u }
	wan0 := UnderlayInfo{
		Name: "wan0", Index: n.link(t, "wan0").Attrs().Index, MTU: 1500, Addr: netip.MustParseAddr("203.0.113.7"),
		Prefixes: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")},
	}
	tests := []struct {
		name  string
		iface string
		ip    string
		want  UnderlayInfo
		err   bool
	}{
		{name: "by name", iface: "ul0", want: ul0},
		{name: "by name with a NAT public IP", iface: "ul0", ip: "198.51.100.9", want: withAddr(ul0, "198.51.100.9")},
		{name: "by address", ip: "10.1.0.5", want: withAddr(ul0, "10.1.0.5")},
		{name: "by default route", want: wan0},
		{name: "unknown name", iface: "nope0", err: true},
		{name: "address nobody holds", ip: "192.0.2.1", err: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ip netip.Addr
			if tc.ip != "" {
				ip = netip.MustParseAddr(tc.ip)
			}
			got, err := Underlay(n.ns, tc.iface, ip)
			if tc.err {
				if !errors.Is(err, ErrUnderlayNotFound) {
					t.Fatalf("err = %v, want ErrUnderlayNotFound", err)
				}
				t.Log(err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Name != tc.want.Name || got.Index != tc.want.Index || got.MTU != tc.want.MTU ||
				got.Addr != tc.want.Addr || !slices.Equal(got.Prefixes, tc.want.Prefixes) {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}
