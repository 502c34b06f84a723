// Package udptun is the userspace data path of the udp backend: a TUN device
// hands container packets to this process, which wraps each in a small
// header inside a UDP datagram to the peer node that owns the destination
// subnet, and unwraps what peers send back.
//
// See docs/udp.md for the design, the header, the drop reasons and
// measurements. In short:
//
//	TX: raw TUN read (virtio_net_hdr; a TSO super-packet arrives whole)
//	    -> IPv4 check -> route lookup (immutable table behind an
//	    atomic.Pointer) -> TTL-1 (RFC 1624) -> MTU/DF check (per TSO
//	    segment) -> a whole packet gets the header in its 16-byte
//	    headroom; a super-packet is cut into chunk datagrams of MTU+8
//	    bytes, each a chunk header plus a slice of the read buffer ->
//	    runs of equal-size datagrams to one peer become one UDP GSO send
//	    (iovecs, no copy) -> sendmmsg.
//	RX: recvmmsg (UDP GRO: up to 64 KiB of same-size datagrams per
//	    message) -> sender must be a peer's public IP -> per datagram:
//	    header, network id; a whole packet: IPv4 check, destination in
//	    Local, copy to a TUN buffer, TUN write with GRO (wireguard-go); a
//	    chunk: into its reassembly slot (in order only, bounded, keyed by
//	    sender) -> the complete super-packet is checked like a packet, its
//	    virtio fields validated, and written with one raw TUN write as a
//	    GSO packet with a partial checksum (no userspace checksum, split or
//	    coalescing on either side).
//
// Unknown destinations, expiring TTLs and too-big DF packets get ICMP
// errors from Local's .0, written back into the TUN and rate-limited.
// Nothing on the packet path allocates, logs or takes a lock of its own.
//
// The TUN device is persistent (TUNSETPERSIST): Close leaves it, its
// addresses and its routes in place, and the next Open re-attaches to it,
// so an agent restart costs only the packets sent while no process reads
// the device.
//
// Kernel-facing code is in *_linux.go; everything else builds and tests
// anywhere. Only the agent (and its tests) import this package; it imports
// nothing of tulle's.
package udptun
