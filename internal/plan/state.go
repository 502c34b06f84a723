package plan

import (
	"net"
	"net/netip"
)

// Names and numbers that mark kernel objects as tulle's.
const (
	// RouteProtocol tags every route tulle installs (see /etc/iproute2/rt_protos;
	// 0xc5 is unassigned). Reconcile only reads and deletes routes with it.
	RouteProtocol = 197
	// BridgeName is the local workload bridge.
	BridgeName = "tulle0"
	// VXLANPrefix + VNI names the VXLAN device ("tulle.1").
	VXLANPrefix = "tulle."
	// NFTTable is the nftables table (family inet) tulle owns.
	NFTTable = "tulle"
)

// State is the desired kernel state of one node. Every slice is sorted so
// that equal inputs give equal states.
type State struct {
	// Forwarding turns on net.ipv4.ip_forward.
	Forwarding bool
	// Bridge is the local workload bridge (nil: none).
	Bridge *Bridge
	// VXLAN is the VXLAN device (nil: none, and an existing tulle VXLAN
	// device must be removed).
	VXLAN *VXLAN
	// Neighbors are permanent ARP entries (vxlan peers' .0 -> VTEP MAC).
	Neighbors []Neighbor
	// FDB are permanent bridge FDB entries on the VXLAN device.
	FDB []FDB
	// Routes to peer subnets, all with RouteProtocol.
	Routes []Route
	// Masquerade is the SNAT rule set in table inet tulle.
	Masquerade *Masquerade
	// WorkloadMTU is the MTU workloads get (written to subnet.json).
	WorkloadMTU int
	// Warnings are non-fatal findings the agent logs (e.g. a host-gw
	// peer that is not on-link).
	Warnings []string
}

// Bridge is the local bridge workloads attach to.
type Bridge struct {
	Name string
	// Addr is the gateway address with the subnet's prefix length (.1/24).
	Addr netip.Prefix
	MTU  int
}

// VXLAN is the node's VXLAN tunnel endpoint.
type VXLAN struct {
	Name string
	VNI  int
	Port int
	// Local is the source address of encapsulated packets (public IP).
	Local netip.Addr
	// Underlay is the name of the underlay link (vtep dev); empty: any.
	Underlay string
	MTU      int
	MAC      net.HardwareAddr
	// Addr is the own subnet's .0 as a /32.
	Addr netip.Prefix
}

// Neighbor is a permanent neighbour entry: ip neigh replace IP lladdr MAC dev Dev nud permanent.
type Neighbor struct {
	Dev string
	IP  netip.Addr
	MAC net.HardwareAddr
}

// FDB is a permanent FDB entry: bridge fdb replace MAC dev Dev dst Dst self permanent.
type FDB struct {
	Dev string
	MAC net.HardwareAddr
	Dst netip.Addr
}

// Route is a unicast route to a peer subnet.
//
//	ip route replace Dst via Gw dev Dev [onlink] proto 197
type Route struct {
	Dst    netip.Prefix
	Gw     netip.Addr
	Dev    string
	Onlink bool
}

// Masquerade SNATs traffic from the cluster network leaving it:
//
//	table inet tulle { chain postrouting { type nat hook postrouting priority srcnat;
//	  ip saddr Source ip daddr != Network masquerade } }
type Masquerade struct {
	// Network is the cluster network (never masqueraded within it).
	Network netip.Prefix
	// Source is this node's subnet.
	Source netip.Prefix
}
