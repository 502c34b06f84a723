package ipnet

import (
	"net"
	"net/netip"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	for _, s := range []string{"10.244.3.2/24", "10.244.0.0/16", "0.0.0.0/0", "192.168.1.1/32", "fd00::1/64"} {
		p := netip.MustParsePrefix(s)
		got, ok := Prefix(From(p))
		if !ok || got != p {
			t.Errorf("%s -> %v %v", s, got, ok)
		}
	}
}

func TestPrefixEdgeCases(t *testing.T) {
	if _, ok := Prefix(nil); ok {
		t.Error("nil accepted")
	}
	v4in16 := &net.IPNet{IP: net.ParseIP("10.1.2.3"), Mask: net.CIDRMask(120, 128)}
	if got, ok := Prefix(v4in16); !ok || got != netip.MustParsePrefix("10.1.2.3/24") {
		t.Errorf("mapped v4: %v %v", got, ok)
	}
	if _, ok := Prefix(&net.IPNet{IP: net.ParseIP("10.1.2.3").To4(), Mask: net.IPMask{255, 0, 255, 0}}); ok {
		t.Error("non-canonical mask accepted")
	}
	if _, ok := Prefix(&net.IPNet{IP: net.IP{1, 2, 3}, Mask: net.CIDRMask(8, 32)}); ok {
		t.Error("3-byte IP accepted")
	}
}
