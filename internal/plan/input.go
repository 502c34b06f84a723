package plan

import (
	"net"
	"net/netip"

	"github.com/tulle-net/tulle/internal/config"
	"github.com/tulle-net/tulle/internal/lease"
)

// Input is everything Compute needs.
type Input struct {
	Config config.Network
	// Self is this node's lease.
	Self lease.Lease
	// Peers are the other nodes' leases (Self may be among them; it is
	// skipped by node name and subnet).
	Peers []lease.Lease
	Local Local
}

// Local holds facts about this node that are not in the datastore.
type Local struct {
	// Underlay is the name of the underlay interface.
	Underlay string
	// UnderlayMTU is its MTU.
	UnderlayMTU int
	// UnderlayPrefixes are the on-link prefixes of the underlay; a peer
	// whose public IP is inside one is L2-adjacent (host-gw reachable).
	UnderlayPrefixes []netip.Prefix
	// VTEPMAC is the MAC of this node's VXLAN device (kept stable).
	VTEPMAC net.HardwareAddr
	// IPMasq turns on masquerading of traffic leaving the cluster network.
	IPMasq bool
	// BigTCP: the kernel takes IPv4 packets over 64 KiB (gso_ipv4_max_size,
	// Linux >= 6.3), so the udp engine may coalesce received
	// super-packets into larger ones (BigTCPPacket).
	BigTCP bool
}
