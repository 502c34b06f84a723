// Package nftmatch builds nftables match expressions shared by the two
// owners of table inet tulle: the agent's dataplane (masquerade) and the CNI
// plugin (published ports). It holds no state.
package nftmatch

import (
	"net"
	"net/netip"

	"github.com/google/nftables/expr"
)

// IPv4 header offsets of the addresses.
const (
	SrcAddr = 12 // ip saddr
	DstAddr = 16 // ip daddr
)

// IPv4 compares the IPv4 header field at offset with p, the way nft
// compiles it: a byte-aligned prefix loads only its bytes, any other loads
// the whole address and masks it. Rules read back from the kernel therefore
// compare equal to rules built here.
func IPv4(offset uint32, p netip.Prefix, op expr.CmpOp) []expr.Any {
	a := p.Masked().Addr().As4()
	if p.Bits() > 0 && p.Bits()%8 == 0 {
		n := uint32(p.Bits() / 8)
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: n},
			&expr.Cmp{Op: op, Register: 1, Data: a[:n]},
		}
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: net.CIDRMask(p.Bits(), 32), Xor: make([]byte, 4)},
		&expr.Cmp{Op: op, Register: 1, Data: a[:]},
	}
}
