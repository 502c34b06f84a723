package cni

import (
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/tulle-net/tulle/internal/ipnet"
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
			Address:   *ipnet.From(in.addr),
			Gateway:   in.gateway.AsSlice(),
		}},
		DNS: in.dns,
	}
	for _, dst := range in.routes {
		res.Routes = append(res.Routes, &types.Route{Dst: *ipnet.From(dst), GW: in.gateway.AsSlice()})
	}
	return res
}
