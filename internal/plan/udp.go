package plan

import (
	"fmt"
	"net/netip"

	"github.com/tulle-net/tulle/internal/config"
	"github.com/tulle-net/tulle/internal/lease"
	"github.com/tulle-net/tulle/internal/udptun"
)

// computeUDP is the udp backend's rule set (issue 5). The kernel only
// routes the whole cluster network into the TUN device; which peer a packet
// goes to is the engine's decision, from st.UDP.Peers:
//
//	container -> tulle0 -> route <cluster> dev tulle-udp -> engine -> UDP to peer
//	UDP from peer -> engine -> tulle-udp -> route <own subnet> dev tulle0 -> container
//
// The bridge's connected route (own subnet, /24) is more specific than the
// cluster route (/16), so traffic between local workloads never enters the
// tunnel. The TUN device holds the own subnet's .0 as a /32, as the VXLAN
// device does.
func computeUDP(st *State, in Input) error {
	cfg, self := in.Config, in.Self
	if !self.PublicIP.Is4() {
		return fmt.Errorf("%w: udp needs this node's IPv4 public IP to listen on, got %q", ErrInput, self.PublicIP)
	}
	if cfg.Backend.Port < 1 || cfg.Backend.Port > 65535 {
		return fmt.Errorf("%w: udp backend.port %d is outside 1-65535", ErrInput, cfg.Backend.Port)
	}
	if cfg.Backend.VNI < 1 || cfg.Backend.VNI > config.MaxNetworkID {
		return fmt.Errorf("%w: udp backend.vni %d is outside 1-%d", ErrInput, cfg.Backend.VNI, config.MaxNetworkID)
	}
	tun := &TUN{
		Name: TUNName,
		MTU:  in.Local.UnderlayMTU - UDPOverhead,
		Addr: netip.PrefixFrom(lease.VTEPAddr(self.Subnet), 32),
		// IPv4 only: no IPv6 chatter for the engine to drop.
		DisableIPv6: true,
	}
	st.TUN = tun
	st.WorkloadGSOMaxSize = udptun.MaxSuperPacket(tun.MTU)
	if st.WorkloadMTU > tun.MTU {
		st.Warnings = append(st.Warnings, fmt.Sprintf("mtu %d is above the udp tunnel's %d (underlay %d - %d): larger packets are dropped with ICMP fragmentation-needed",
			st.WorkloadMTU, tun.MTU, in.Local.UnderlayMTU, UDPOverhead))
	}
	u := &UDP{
		Listen:    netip.AddrPortFrom(self.PublicIP, uint16(cfg.Backend.Port)),
		NetworkID: uint32(cfg.Backend.VNI),
		Local:     self.Subnet,
		Cluster:   cfg.Network,
	}
	if in.Local.BigTCP {
		u.MaxRXPacket = BigTCPPacket
		st.Bridge.GSOMaxSize = BigTCPPacket
	}
	st.UDP = u
	st.Routes = append(st.Routes, Route{Dst: cfg.Network, Dev: tun.Name})
	for _, p := range in.Peers {
		if !usablePeer(st, in, p) {
			continue
		}
		if p.BackendType != config.BackendUDP {
			st.Warnings = append(st.Warnings, fmt.Sprintf("udp peer %s (%s) runs backend %q, not udp: skipped (restart its agent after changing the backend)", p.Node, p.Subnet, p.BackendType))
			continue
		}
		port := p.BackendData.Port
		if port == 0 {
			port = cfg.Backend.Port // a lease that does not say: the cluster's port
		}
		if port < 1 || port > 65535 {
			st.Warnings = append(st.Warnings, fmt.Sprintf("udp peer %s (%s) has port %d outside 1-65535: skipped", p.Node, p.Subnet, port))
			continue
		}
		u.Peers = append(u.Peers, UDPPeer{Node: p.Node, Subnet: p.Subnet, PublicIP: p.PublicIP, Port: uint16(port)})
	}
	return nil
}
