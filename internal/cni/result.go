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

// ipv4TCPHeaders is what TCP's MSS leaves out of the MTU over IPv4 (20 IP +
// 20 TCP), the advmss the kernel derives from the MTU by default.
const ipv4TCPHeaders = 40

// routeAdvMSS is the advmss tulle puts on the container's routes, and in
// the 1.1 result.
func routeAdvMSS(mtu int) int { return mtu - ipv4TCPHeaders }

// buildResult renders ADD's result: the host veth (index 0), the container
// interface (index 1) with its address and the routes via the gateway,
// each with the workload MTU and advmss (CNI 1.1 fields; forVersion drops
// them for older versions).
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
		res.Routes = append(res.Routes, &types.Route{
			Dst: *ipnet.From(dst), GW: in.gateway.AsSlice(),
			MTU: in.mtu, AdvMSS: routeAdvMSS(in.mtu),
		})
	}
	return res
}

// mergePrev appends ours to prev, the result of the plugins before tulle in
// a chain: their interfaces, addresses and routes come first and stay as
// they are; ours are renumbered after them. DNS from the config wins when it
// says anything, else prev's is kept.
func mergePrev(prev, ours *current.Result) *current.Result {
	if prev == nil {
		return ours
	}
	out := &current.Result{
		CNIVersion: ours.CNIVersion,
		Interfaces: append(append([]*current.Interface(nil), prev.Interfaces...), ours.Interfaces...),
		IPs:        append([]*current.IPConfig(nil), prev.IPs...),
		Routes:     append(append([]*types.Route(nil), prev.Routes...), ours.Routes...),
		DNS:        prev.DNS,
	}
	offset := len(prev.Interfaces)
	for _, ipc := range ours.IPs {
		c := *ipc
		if c.Interface != nil {
			c.Interface = current.Int(*c.Interface + offset)
		}
		out.IPs = append(out.IPs, &c)
	}
	if !isEmptyDNS(ours.DNS) {
		out.DNS = ours.DNS
	}
	return out
}

func isEmptyDNS(d types.DNS) bool {
	return len(d.Nameservers) == 0 && d.Domain == "" && len(d.Search) == 0 && len(d.Options) == 0
}

// forVersion drops what the result's spec version does not define: the
// interface and route mtu and the route advmss are CNI 1.1 fields, which
// libcni's converters would otherwise carry into a 1.0.0 or 0.4.0 result.
func forVersion(res *current.Result, version string) *current.Result {
	if version == current.ImplementedSpecVersion {
		return res
	}
	out := *res
	out.Interfaces = make([]*current.Interface, len(res.Interfaces))
	for i, in := range res.Interfaces {
		c := *in
		c.Mtu = 0
		out.Interfaces[i] = &c
	}
	out.Routes = make([]*types.Route, len(res.Routes))
	for i, r := range res.Routes {
		c := *r
		c.MTU, c.AdvMSS = 0, 0
		out.Routes[i] = &c
	}
	return &out
}
