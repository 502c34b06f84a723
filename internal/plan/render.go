package plan

import (
	"fmt"
	"net/netip"
	"strings"
)

// String renders the state as iproute2/nft-like text, one object per line:
// reviewable in golden files and printed by 'tulle agent --dry-run'.
func (s State) String() string {
	var b strings.Builder
	if s.Forwarding {
		b.WriteString("sysctl net.ipv4.ip_forward=1\n")
	}
	if br := s.Bridge; br != nil {
		fmt.Fprintf(&b, "link %s type bridge mtu %d\naddr %s dev %s\n", br.Name, br.MTU, br.Addr, br.Name)
		if br.GSOMaxSize > 0 {
			fmt.Fprintf(&b, "link %s and its ports gso_max_size %d gso_ipv4_max_size %d (at least)\n", br.Name, br.GSOMaxSize, br.GSOMaxSize)
		}
	}
	if vx := s.VXLAN; vx != nil {
		fmt.Fprintf(&b, "link %s type vxlan id %d dstport %d local %s dev %s nolearning mtu %d address %s\naddr %s dev %s\n",
			vx.Name, vx.VNI, vx.Port, vx.Local, vx.Underlay, vx.MTU, vx.MAC, vx.Addr, vx.Name)
	}
	if t := s.TUN; t != nil {
		fmt.Fprintf(&b, "link %s type tun mtu %d (created by the udp engine)\naddr %s dev %s\n", t.Name, t.MTU, t.Addr, t.Name)
		if t.DisableIPv6 {
			fmt.Fprintf(&b, "sysctl net.ipv6.conf.%s.disable_ipv6=1\n", t.Name)
		}
	}
	if u := s.UDP; u != nil {
		fmt.Fprintf(&b, "udp engine listen %s network %d local %s cluster %s", u.Listen, u.NetworkID, u.Local, u.Cluster)
		if u.MaxRXPacket > 0 {
			fmt.Fprintf(&b, " coalesce %d", u.MaxRXPacket)
		}
		b.WriteString("\n")
		for _, p := range u.Peers {
			fmt.Fprintf(&b, "udp peer %s node %s at %s\n", p.Subnet, p.Node, netip.AddrPortFrom(p.PublicIP, p.Port))
		}
	}
	for _, n := range s.Neighbors {
		fmt.Fprintf(&b, "neigh %s lladdr %s dev %s nud permanent\n", n.IP, n.MAC, n.Dev)
	}
	for _, f := range s.FDB {
		fmt.Fprintf(&b, "fdb %s dev %s dst %s self permanent\n", f.MAC, f.Dev, f.Dst)
	}
	for _, r := range s.Routes {
		b.WriteString(r.String())
		b.WriteByte('\n')
	}
	if m := s.Masquerade; m != nil {
		fmt.Fprintf(&b, "nft inet %s postrouting: ip saddr %s ip daddr != %s masquerade\n", NFTTable, m.Source, m.Network)
	}
	fmt.Fprintf(&b, "workload mtu %d\n", s.WorkloadMTU)
	if s.WorkloadGSOMaxSize > 0 {
		fmt.Fprintf(&b, "workload gso_max_size %d\n", s.WorkloadGSOMaxSize)
	}
	for _, w := range s.Warnings {
		fmt.Fprintf(&b, "warning: %s\n", w)
	}
	return b.String()
}

// String renders a route like 'ip route': "10.244.2.0/24 via 10.244.2.0 dev tulle.1 onlink proto 197",
// or without a gateway "10.244.0.0/16 dev tulle-udp proto 197".
func (r Route) String() string {
	s := fmt.Sprintf("route %s dev %s", r.Dst, r.Dev)
	if r.Gw.IsValid() {
		s = fmt.Sprintf("route %s via %s dev %s", r.Dst, r.Gw, r.Dev)
	}
	if r.Onlink {
		s += " onlink"
	}
	return s + fmt.Sprintf(" proto %d", RouteProtocol)
}
