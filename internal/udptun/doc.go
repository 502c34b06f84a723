// Package udptun is the userspace data path of the udp backend: a TUN device
// hands container packets to this process, which wraps each in a small
// header inside a UDP datagram to the peer node that owns the destination
// subnet, and unwraps what peers send back.
//
// See docs/udp.md for the design, the header, the drop reasons and
// measurements. In short:
//
//	TX: TUN read (TSO super-packet split into segments, in place after a
//	    16-byte headroom) -> IPv4 check -> route lookup (immutable table
//	    behind an atomic.Pointer) -> TTL-1 (RFC 1624) -> MTU/DF check ->
//	    header written into the headroom -> runs of equal-size segments
//	    to one peer become one UDP GSO send (one iovec per segment) ->
//	    sendmmsg.
//	RX: recvmmsg (UDP GRO: up to 64 KiB of same-size datagrams per
//	    message) -> sender must be a peer's public IP -> per segment:
//	    header, network id, IPv4 check, destination in Local -> copy to a
//	    TUN buffer -> TUN write with GRO (segments of one TCP flow become
//	    one virtio GSO super-packet again).
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
