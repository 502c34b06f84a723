package ipam

import (
	"errors"
	"fmt"
	"net/netip"
)

// ErrExhausted is wrapped when every usable address of a pool is taken.
var ErrExhausted = errors.New("ipam: no free address")

// Pool is the set of addresses a node hands out: every address of Subnet
// except its network and broadcast addresses and the Gateway.
type Pool struct {
	// Subnet is the node subnet, e.g. 10.244.3.0/24. It is IPv4 only: the
	// cluster network is IPv4 (see DESIGN.md).
	Subnet netip.Prefix
	// Gateway is the bridge address, normally the first address (.1).
	Gateway netip.Addr
}

// NewPool returns the pool for subnet and gateway, or an error naming the
// value that makes it unusable.
func NewPool(subnet netip.Prefix, gateway netip.Addr) (Pool, error) {
	switch {
	case !subnet.IsValid() || !subnet.Addr().Is4():
		return Pool{}, fmt.Errorf("ipam: subnet %s is not an IPv4 prefix", subnet)
	case subnet.Bits() > 30:
		return Pool{}, fmt.Errorf("ipam: subnet %s is too small: need at least a /30", subnet)
	}
	p := Pool{Subnet: subnet.Masked(), Gateway: gateway}
	if !p.Subnet.Contains(gateway) || gateway == p.network() || gateway == p.broadcast() {
		return Pool{}, fmt.Errorf("ipam: gateway %s is not a host address of subnet %s", gateway, p.Subnet)
	}
	return p, nil
}

func (p Pool) network() netip.Addr { return p.Subnet.Addr() }

func (p Pool) broadcast() netip.Addr {
	a := p.Subnet.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= 1<<(32-p.Subnet.Bits()) - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Size is the number of addresses the pool can hand out.
func (p Pool) Size() int { return 1<<(32-p.Subnet.Bits()) - 3 }

// Contains reports whether a may be handed out: inside the subnet, and not
// the network, broadcast or gateway address.
func (p Pool) Contains(a netip.Addr) bool {
	return p.Subnet.Contains(a) && a != p.network() && a != p.broadcast() && a != p.Gateway
}

// Prefix returns a with the pool's prefix length, the form an interface
// address takes (10.244.3.7/24).
func (p Pool) Prefix(a netip.Addr) netip.Prefix {
	return netip.PrefixFrom(a, p.Subnet.Bits())
}

// Next returns the first address of p after last that taken reports free,
// wrapping round from the end of the subnet to its start. When last is not in
// p (none yet, or the subnet changed) the scan starts at the beginning.
// Starting after the previous allocation, as host-local does, keeps an
// address that was just released from being handed to the next container
// while peers may still hold ARP and conntrack entries for it.
//
// Next is pure: taken must not have side effects.
func Next(p Pool, last netip.Addr, taken func(netip.Addr) bool) (netip.Addr, error) {
	first := p.network().Next()
	end := p.broadcast()
	a := first
	if p.Subnet.Contains(last) && last != end {
		a = last.Next()
	}
	// Visit every address once: the subnet holds Size()+3 addresses.
	for range p.Size() + 3 {
		if a == end {
			a = first
		}
		if p.Contains(a) && !taken(a) {
			return a, nil
		}
		a = a.Next()
	}
	return netip.Addr{}, fmt.Errorf("allocate from %s: %w", p.Subnet, ErrExhausted)
}
