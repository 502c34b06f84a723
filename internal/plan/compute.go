package plan

import (
	"cmp"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"

	"github.com/tulle-net/tulle/internal/config"
	"github.com/tulle-net/tulle/internal/lease"
)

// ErrInput is wrapped when Compute is given input it cannot plan for.
var ErrInput = errors.New("plan: bad input")

// Compute returns the desired kernel state for one node. It is pure: the
// same input always gives the same, sorted output.
func Compute(in Input) (State, error) {
	cfg := in.Config
	self := in.Self
	if !cfg.Contains(self.Subnet) {
		return State{}, fmt.Errorf("%w: own subnet %s is not a /%d inside %s", ErrInput, self.Subnet, cfg.SubnetLen, cfg.Network)
	}
	if in.Local.UnderlayMTU < 576 {
		return State{}, fmt.Errorf("%w: underlay %q MTU %d is below 576", ErrInput, in.Local.Underlay, in.Local.UnderlayMTU)
	}
	mtu := cfg.WorkloadMTU(in.Local.UnderlayMTU)
	st := State{
		Forwarding: true,
		Bridge: &Bridge{
			Name: BridgeName,
			Addr: netip.PrefixFrom(lease.Gateway(self.Subnet), self.Subnet.Bits()),
			MTU:  mtu,
		},
		WorkloadMTU: mtu,
	}
	if in.Local.IPMasq {
		st.Masquerade = &Masquerade{Network: cfg.Network, Source: self.Subnet}
	}
	var vx *VXLAN
	if cfg.Backend.Type == config.BackendVXLAN {
		if len(in.Local.VTEPMAC) != 6 {
			return State{}, fmt.Errorf("%w: vxlan needs a 6-byte VTEP MAC, got %q", ErrInput, in.Local.VTEPMAC)
		}
		vx = &VXLAN{
			Name:     VXLANPrefix + strconv.Itoa(cfg.Backend.VNI),
			VNI:      cfg.Backend.VNI,
			Port:     cfg.Backend.Port,
			Local:    self.PublicIP,
			Underlay: in.Local.Underlay,
			MTU:      in.Local.UnderlayMTU - config.VXLANOverhead,
			MAC:      in.Local.VTEPMAC,
			Addr:     netip.PrefixFrom(lease.VTEPAddr(self.Subnet), 32),
		}
		st.VXLAN = vx
	}

	if cfg.Backend.Type == config.BackendUDP {
		if err := computeUDP(&st, in); err != nil {
			return State{}, err
		}
		st.sort()
		return st, nil
	}
	for _, p := range in.Peers {
		if !usablePeer(&st, in, p) {
			continue
		}
		onLink := in.Local.onLink(p.PublicIP)
		switch {
		case cfg.Backend.Type == config.BackendHostGW || (cfg.Backend.DirectRouting && onLink):
			if !onLink {
				st.Warnings = append(st.Warnings, fmt.Sprintf("host-gw peer %s public IP %s is not on the underlay's L2 segment %v: no route installed (use the vxlan backend, or directRouting, across routers)", p.Node, p.PublicIP, in.Local.UnderlayPrefixes))
				continue
			}
			st.Routes = append(st.Routes, Route{Dst: p.Subnet, Gw: p.PublicIP, Dev: in.Local.Underlay})
		default:
			mac, err := net.ParseMAC(p.BackendData.VtepMAC)
			if err != nil || len(mac) != 6 {
				st.Warnings = append(st.Warnings, fmt.Sprintf("vxlan peer %s (%s) has no valid vtepMAC %q (backend %q): skipped", p.Node, p.Subnet, p.BackendData.VtepMAC, p.BackendType))
				continue
			}
			gw := lease.VTEPAddr(p.Subnet)
			st.Neighbors = append(st.Neighbors, Neighbor{Dev: vx.Name, IP: gw, MAC: mac})
			st.FDB = append(st.FDB, FDB{Dev: vx.Name, MAC: mac, Dst: p.PublicIP})
			st.Routes = append(st.Routes, Route{Dst: p.Subnet, Gw: gw, Dev: vx.Name, Onlink: true})
		}
	}
	st.sort()
	return st, nil
}

// usablePeer reports whether p is a peer every backend can plan for: not
// this node, inside the cluster network, and not sharing this node's public
// IP. It adds a warning for a peer it rejects.
func usablePeer(st *State, in Input, p lease.Lease) bool {
	cfg, self := in.Config, in.Self
	if p.Node == self.Node || p.Subnet == self.Subnet {
		return false
	}
	if !cfg.Network.Contains(p.Subnet.Addr()) || p.Subnet.Bits() < cfg.Network.Bits() {
		st.Warnings = append(st.Warnings, fmt.Sprintf("peer %s subnet %s is outside network %s: skipped", p.Node, p.Subnet, cfg.Network))
		return false
	}
	if p.PublicIP == self.PublicIP {
		st.Warnings = append(st.Warnings, fmt.Sprintf("peer %s has this node's public IP %s: skipped (two nodes share an address?)", p.Node, p.PublicIP))
		return false
	}
	return true
}

func (l Local) onLink(ip netip.Addr) bool {
	for _, p := range l.UnderlayPrefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func (s *State) sort() {
	slices.SortFunc(s.Neighbors, func(a, b Neighbor) int {
		return cmp.Or(cmp.Compare(a.Dev, b.Dev), a.IP.Compare(b.IP))
	})
	slices.SortFunc(s.FDB, func(a, b FDB) int {
		return cmp.Or(cmp.Compare(a.Dev, b.Dev), cmp.Compare(string(a.MAC), string(b.MAC)), a.Dst.Compare(b.Dst))
	})
	slices.SortFunc(s.Routes, func(a, b Route) int {
		return cmp.Or(a.Dst.Addr().Compare(b.Dst.Addr()), cmp.Compare(a.Dst.Bits(), b.Dst.Bits()))
	})
	if s.UDP != nil {
		slices.SortFunc(s.UDP.Peers, func(a, b UDPPeer) int {
			return cmp.Or(a.Subnet.Addr().Compare(b.Subnet.Addr()), cmp.Compare(a.Subnet.Bits(), b.Subnet.Bits()))
		})
	}
	slices.Sort(s.Warnings)
}

// VTEPMAC derives a node's VXLAN MAC from the cluster and node name: a
// locally administered unicast address that is the same on every start and
// every reboot, so peers' neighbour and FDB entries never go stale (Flannel's
// random MAC does, see flannel-study.md §3.8).
func VTEPMAC(cluster, node string) net.HardwareAddr {
	h := sha256.Sum256([]byte("tulle-vtep\x00" + cluster + "\x00" + node))
	mac := net.HardwareAddr(h[:6])
	mac[0] = (mac[0] | 0x02) &^ 0x01 // locally administered, unicast
	return mac
}
