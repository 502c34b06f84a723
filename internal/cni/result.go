package cni

import (
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// resultInput is what ADD learned, in plain values.
type resultInput struct {
	hostName string
	hostMAC  net.HardwareAddr
	ifName   string
	contMAC  net.HardwareAddr
	sandbox  string
	addr     netip.Prefix
	gateway  netip.Addr
	routes   []netip.Prefix
	mtu      int
	dns      types.DNS
}

// buildResult renders ADD's result: the host veth (index 0), the container
// interface (index 1) with its address and the routes via the gateway.
func buildResult(in resultInput) *current.Result {
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: in.hostName, Mac: in.hostMAC.String(), Mtu: in.mtu},
			{Name: in.ifName, Mac: in.contMAC.String(), Mtu: in.mtu, Sandbox: in.sandbox},
		},
		IPs: []*current.IPConfig{{
			Interface: current.Int(1),
			Address:   *ipNet(in.addr),
			Gateway:   in.gateway.AsSlice(),
		}},
		DNS: in.dns,
	}
	for _, dst := range in.routes {
		res.Routes = append(res.Routes, &types.Route{Dst: *ipNet(dst), GW: in.gateway.AsSlice()})
	}
	return res
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}
