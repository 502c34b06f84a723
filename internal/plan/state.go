package plan

import (
	"net"
	"net/netip"

	"github.com/tulle-net/tulle/internal/config"
)

// Names and numbers that mark kernel objects as tulle's.
const (
	// RouteProtocol tags every route tulle installs (see /etc/iproute2/rt_protos;
	// 0xc5 is unassigned). Reconcile only reads and deletes routes with it.
	RouteProtocol = 197
	// BigTCPPacket is the packet size the udp engine coalesces received
	// super-packets up to where the kernel has BIG TCP for IPv4: three
	// 64 KiB TSO super-packets (and Cilium's BIG TCP default).
	BigTCPPacket = 196608
	// BridgeName is the local workload bridge.
	BridgeName = "tulle0"
	// VXLANPrefix + VNI names the VXLAN device ("tulle.1").
	VXLANPrefix = "tulle."
	// TUNName is the udp backend's TUN device. It shares neither the
	// VXLAN prefix "tulle." (so VXLAN cleanup never takes it for a stale
	// VXLAN device) nor the plugin's "tl" veth prefix.
	TUNName = "tulle-udp"
	// UDPOverhead is what the udp backend takes from the underlay MTU:
	// outer IPv4 (20) + UDP (8) + tulle header (8). It equals
	// udptun.Overhead (checked by the agent's tests: plan may not import
	// udptun, which imports plan).
	UDPOverhead = config.UDPOverhead
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
	// TUN is the udp backend's TUN device (nil: none, and an existing
	// tulle TUN device must be removed). The udp engine creates it; the
	// dataplane sets its MTU, address and up state.
	TUN *TUN
	// UDP is the udp backend's userspace data path: what the agent
	// configures the engine with (nil: no engine). It is not kernel
	// state; the dataplane ignores it.
	UDP *UDP
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
	// WorkloadGSOMaxSize, if not 0, is the gso_max_size workloads' eth0
	// gets (subnet.json; the CNI plugin sets it): with the udp backend,
	// the largest TSO super-packet that leaves in one UDP GSO send
	// (udptun.MaxSuperPacket).
	WorkloadGSOMaxSize int
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
	// GSOMaxSize, if not 0, is the gso_max_size and gso_ipv4_max_size the
	// bridge and every port on it (the workloads' host-side veths) get at
	// least: the udp engine writes packets that large for the workloads
	// (UDP.MaxRXPacket), which a smaller limit on the way would make the
	// kernel cut into segments in software. The CNI plugin sets it on new
	// ports (subnet.json); the dataplane on ports that predate it.
	GSOMaxSize int
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

// TUN is the udp backend's TUN device (layer 3, no MAC).
type TUN struct {
	Name string
	// MTU is the underlay MTU minus UDPOverhead.
	MTU int
	// Addr is the own subnet's .0 as a /32: the source of ICMP errors the
	// engine sends and of the node's own traffic to other nodes' workloads.
	Addr netip.Prefix
	// DisableIPv6 turns IPv6 off on the device (tulle is IPv4-only): else
	// the kernel sends router solicitations and MLD reports into it, which
	// the engine can only drop and count as malformed.
	DisableIPv6 bool
}

// UDP configures the udp backend's engine (internal/udptun).
type UDP struct {
	// Listen is the node's public IP and the backend port.
	Listen netip.AddrPort
	// NetworkID goes into every header (backend.vni).
	NetworkID uint32
	// Local is the node's subnet; Cluster the cluster network.
	Local, Cluster netip.Prefix
	// Peers are the other nodes, sorted by subnet.
	Peers []UDPPeer
	// MaxRXPacket is the largest packet the engine writes into the TUN
	// device when it coalesces received super-packets (0: 64 KiB).
	MaxRXPacket int
}

// UDPPeer is one remote node of the udp backend: packets to Subnet go in a
// datagram to PublicIP:Port, and only datagrams from PublicIP are accepted
// for it.
type UDPPeer struct {
	Node     string
	Subnet   netip.Prefix
	PublicIP netip.Addr
	Port     uint16
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

// Route is a unicast route to a peer subnet, or (without Gw) a device
// route such as the udp backend's cluster route into its TUN device.
//
//	ip route replace Dst [via Gw] dev Dev [onlink] proto 197
type Route struct {
	Dst netip.Prefix
	// Gw is the next hop; the zero Addr means none (scope link).
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
