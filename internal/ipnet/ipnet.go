// Package ipnet converts between net/netip (used by tulle's own types) and
// *net.IPNet (used by netlink and the CNI types). It has no dependencies of
// ours and holds no state.
package ipnet

import (
	"net"
	"net/netip"
)

// From converts a prefix to a *net.IPNet, keeping the host bits (an
// interface address such as 10.244.3.2/24 stays as it is).
func From(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Prefix converts a *net.IPNet to a prefix without masking the address. An
// IPv4 address in 16-byte form with a 128-bit mask is unmapped to IPv4. It
// returns false for nil, a malformed address or a non-canonical mask.
func Prefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false // non-canonical mask
	}
	a = a.Unmap()
	if bits == 128 && a.Is4() {
		ones -= 96
	}
	if ones < 0 || ones > a.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}
