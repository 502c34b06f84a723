package udptun

import "encoding/binary"

// IPv4 field offsets and constants used by the data path.
const (
	ipv4MinHeader = 20
	// maxTCPv4Headers is the longest IPv4 plus TCP header (both with
	// options): what must be contiguous to check a super-packet.
	maxTCPv4Headers = 60 + 60
	ipProtoICMP     = 1
	flagDF          = 0x4000
	fragOffMask     = 0x1fff
	flagMF          = 0x2000

	icmpDestUnreach   = 3
	icmpTimeExceeded  = 11
	codeNetUnreach    = 0
	codeFragNeeded    = 4
	codeTTLInTransit  = 0
	icmpErrorTTL      = 64
	icmpMaxLen        = 576 // RFC 1812 4.3.2.3: an ICMP error fits in 576 bytes
	icmpQuoteMaxBytes = icmpMaxLen - ipv4MinHeader - 8
)

// checkIPv4 validates the inner packet p and returns its total length
// (from the header; p may be longer, never shorter). ok is false for a
// packet that is not IPv4, has a bad header length or is truncated.
func checkIPv4(p []byte) (totLen int, ok bool) { return checkIPv4Len(p, len(p)) }

// checkIPv4Len is checkIPv4 for a packet of size bytes of which p is the
// start (at least its IPv4 header).
func checkIPv4Len(p []byte, size int) (totLen int, ok bool) {
	if len(p) < ipv4MinHeader || p[0]>>4 != 4 {
		return 0, false
	}
	ihl := int(p[0]&0x0f) * 4
	totLen = int(binary.BigEndian.Uint16(p[2:4]))
	if ihl < ipv4MinHeader || ihl > len(p) || totLen < ihl || totLen > size {
		return 0, false
	}
	return totLen, true
}

func ipv4Src(p []byte) uint32 { return binary.BigEndian.Uint32(p[12:16]) }
func ipv4Dst(p []byte) uint32 { return binary.BigEndian.Uint32(p[16:20]) }

// decTTL decrements the TTL of the IPv4 header in p and patches the header
// checksum incrementally (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')). The
// caller has checked that TTL > 1.
func decTTL(p []byte) {
	old := uint32(binary.BigEndian.Uint16(p[8:10])) // TTL<<8 | protocol
	p[8]--
	nw := uint32(binary.BigEndian.Uint16(p[8:10]))
	sum := uint32(^binary.BigEndian.Uint16(p[10:12])) + (^old & 0xffff) + nw
	sum = (sum & 0xffff) + (sum >> 16)
	sum = (sum & 0xffff) + (sum >> 16)
	binary.BigEndian.PutUint16(p[10:12], ^uint16(sum))
}

// checksum is the Internet checksum (RFC 1071) of b.
func checksum(b []byte, initial uint32) uint16 {
	sum := uint64(initial)
	for len(b) >= 8 {
		v := binary.BigEndian.Uint64(b)
		sum += v >> 32
		sum += v & 0xffffffff
		b = b[8:]
	}
	for len(b) >= 2 {
		sum += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = (sum & 0xffff) + (sum >> 16)
	}
	return ^uint16(sum)
}

// mayAnswerWithICMP reports whether an ICMP error may be sent about the
// packet p (RFC 1812 4.3.2.7): never about an ICMP error, a non-first
// fragment, or a packet from an address that is not a unicast host.
func mayAnswerWithICMP(p []byte) bool {
	if binary.BigEndian.Uint16(p[6:8])&fragOffMask != 0 {
		return false
	}
	src := ipv4Src(p)
	if src == 0 || src>>24 == 127 || src>>28 >= 0xe { // 0.0.0.0, loopback, multicast, class E, broadcast
		return false
	}
	if p[9] == ipProtoICMP {
		ihl := int(p[0]&0x0f) * 4
		if len(p) <= ihl {
			return false
		}
		switch p[ihl] { // only queries (echo, timestamp, ...) may be answered
		case 0, 8, 13, 14, 15, 16, 17, 18:
		default:
			return false
		}
	}
	return true
}

// buildICMPError writes into dst an IPv4 packet from src carrying an ICMP
// error of type typ and code about orig (whose header checkIPv4 accepted),
// quoting as much of orig as fits in 576 bytes. mtu fills the next-hop MTU
// field of "fragmentation needed" (RFC 1191). It returns the packet length;
// dst needs icmpMaxLen bytes.
func buildICMPError(dst, orig []byte, src uint32, typ, code uint8, mtu uint16) int {
	quote := len(orig)
	if tl := int(binary.BigEndian.Uint16(orig[2:4])); tl < quote {
		quote = tl
	}
	quote = min(quote, icmpQuoteMaxBytes)
	n := ipv4MinHeader + 8 + quote
	ip := dst[:n]
	ip[0] = 0x45
	ip[1] = 0xc0 // DSCP CS6 (network control), as Linux marks ICMP errors
	binary.BigEndian.PutUint16(ip[2:4], uint16(n))
	binary.BigEndian.PutUint32(ip[4:8], 0) // id 0, no flags
	ip[8] = icmpErrorTTL
	ip[9] = ipProtoICMP
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint32(ip[12:16], src)
	copy(ip[16:20], orig[12:16]) // back to the original sender
	binary.BigEndian.PutUint16(ip[10:12], checksum(ip[:ipv4MinHeader], 0))
	ic := ip[ipv4MinHeader:]
	ic[0], ic[1], ic[2], ic[3] = typ, code, 0, 0
	binary.BigEndian.PutUint16(ic[4:6], 0)
	binary.BigEndian.PutUint16(ic[6:8], mtu)
	copy(ic[8:], orig[:quote])
	binary.BigEndian.PutUint16(ic[2:4], checksum(ic, 0))
	return n
}
