package udptun

import (
	"context"
	"log/slog"
	"net/netip"
)

// DefaultPort is the udp backend's default UDP port (Flannel's 8285).
const DefaultPort = 8285

// HeaderLen is the size of the tulle header before the inner IP packet.
const HeaderLen = 8

// Overhead is what the udp backend takes from the underlay MTU:
// outer IPv4 (20) + UDP (8) + the tulle header.
const Overhead = 28 + HeaderLen

// Peer is one remote node's subnet and the underlay address its datagrams
// come from and go to.
type Peer struct {
	Subnet   netip.Prefix
	PublicIP netip.Addr
	// Port is the peer's backend port (from its lease); 0 means the
	// port of Config.Listen.
	Port uint16
}

// Config configures an Engine.
type Config struct {
	// TUNName is the TUN device (<= 15 bytes), created persistent if it
	// does not exist and re-attached if it does, so that routes through
	// it survive an agent restart.
	TUNName string
	// MTU of the TUN device: underlay MTU - Overhead.
	MTU int
	// Listen is the node's public IP and the backend port.
	Listen netip.AddrPort
	// NetworkID goes into every header; datagrams with another id are dropped.
	NetworkID uint32
	// Local is the node's own subnet; Cluster the whole cluster network.
	// The dataplane puts Local's first address (the .0) on the TUN device
	// as a /32; ICMP errors the engine generates come from it.
	Local, Cluster netip.Prefix
	// MaxRXPacket is the largest packet (IPv4 bytes) the engine writes into
	// the TUN device when it merges received TSO super-packets of one TCP
	// flow (coalesce.go); 0 means 65535. A larger value makes BIG TCP
	// packets (IPv4 total length 0, Linux >= 6.3): every device between
	// the TUN device and the local workloads (the bridge and its ports)
	// must then have a gso_max_size and gso_ipv4_max_size at least this
	// large, or the kernel cuts each such packet into segments in software
	// (correct, but slower than not merging). At most MaxRXPacketLimit.
	MaxRXPacket int
	Logger      *slog.Logger
}

// BigRXPacket is the MaxRXPacket the agent uses where the kernel has IPv4
// BIG TCP (three 64 KiB super-packets; Cilium's BIG TCP default too).
const BigRXPacket = 196608

// MaxRXPacketLimit bounds Config.MaxRXPacket (Linux's GSO_MAX_SIZE is
// 512 KiB; a TUN write that large also needs an skb with that many
// fragments, which fails more often as memory fragments).
const MaxRXPacketLimit = 262144

// Engine is a running data path. Its methods are safe for concurrent use.
type Engine struct{ e *engine }

// Open creates or re-attaches the TUN device and binds the UDP socket in
// the calling thread's network namespace.
//
// The caller must run Open on a thread that is in the node's network
// namespace (the agent's own, or netns.Do in tests). The engine's
// goroutines may run anywhere afterwards: the file descriptors keep their
// namespace. Open sets accept_local on the TUN device so that the ICMP
// errors the engine writes into it from Local's .0 (an address of the
// device itself) are not dropped as martians.
func Open(cfg Config) (*Engine, error) { return open(cfg) }

// SetPeers replaces the route table atomically; packets in flight see
// either the old or the new table. Peers that are not IPv4, overlap Local,
// or repeat an earlier peer's subnet are skipped (and logged).
func (e *Engine) SetPeers(peers []Peer) { e.e.setPeers(peers) }

// Run moves packets until ctx ends (it then returns nil), Close is called
// (nil), or the TUN device or socket fails (the error). Run may be called
// again after it returned, but not concurrently, and not after Close
// (ErrClosed).
func (e *Engine) Run(ctx context.Context) error { return e.e.run(ctx) }

// Stats returns the counters so far.
func (e *Engine) Stats() Stats { return e.e.stats() }

// Close releases the socket and the TUN file descriptor; the persistent
// device and its routes stay. A running Run returns. Close is idempotent.
func (e *Engine) Close() error { return e.e.close() }

// Stats are monotonically increasing counters.
type Stats struct {
	PacketsIn, BytesIn   uint64 // decapsulated from peers, written to TUN
	PacketsOut, BytesOut uint64 // read from TUN, sent to peers
	Drops                [NumDropReasons]uint64
	// ICMPSent counts ICMP errors written back into the TUN device;
	// ICMPRateLimited those suppressed by the rate limit.
	ICMPSent, ICMPRateLimited uint64
	// SuperPacketsOut counts TSO super-packets read from the TUN device and
	// tunnelled whole; SuperPacketsIn those reassembled and written.
	SuperPacketsOut, SuperPacketsIn uint64
	// Coalesced counts received super-packets written merged into the one
	// before them (one TUN write, one skb, for several); CoalesceFailed
	// the merged packets the TUN device refused, which were then written
	// part by part.
	Coalesced, CoalesceFailed uint64
}

// DropReason says why a packet was dropped.
type DropReason int

// Drop reasons; String gives the metric label.
const (
	DropUnknownSender DropReason = iota // datagram from a non-peer address
	DropBadHeader                       // short, wrong magic or version
	DropWrongNetwork                    // header network id is not ours
	DropNoRoute                         // inner destination in no peer subnet (ICMP sent)
	DropTTLExceeded                     // TTL reached 0 (ICMP sent)
	DropTooBig                          // DF packet over the MTU (ICMP sent)
	DropMalformed                       // inner packet not IPv4 or truncated
	DropSendError                       // socket or TUN write failed
	DropNotLocal                        // decapsulated packet not for Local (a peer's routing is wrong)
	DropIncomplete                      // super-packet given up: a chunk lost or out of order (counted once per super-packet)
	NumDropReasons
)

var dropNames = [NumDropReasons]string{"unknown_sender", "bad_header", "wrong_network", "no_route", "ttl_exceeded", "too_big", "malformed", "send_error", "not_local", "incomplete"}

func (r DropReason) String() string {
	if r < 0 || r >= NumDropReasons {
		return "unknown"
	}
	return dropNames[r]
}
