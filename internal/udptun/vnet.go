package udptun

import "encoding/binary"

// vnetHdr is struct virtio_net_hdr (include/uapi/linux/virtio_net.h), the
// 10 bytes a TUN device opened with IFF_VNET_HDR puts before every packet it
// hands out and expects before every packet written to it. In the TUN
// device it is in host byte order (no TUNSETVNETLE/BE on a little-endian
// host); on the wire we carry it big endian (header.go).
type vnetHdr struct {
	flags      uint8
	gsoType    uint8
	hdrLen     uint16
	gsoSize    uint16
	csumStart  uint16
	csumOffset uint16
}

const (
	vnetHdrLen = 10

	vnetFlagNeedsCsum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM: CHECKSUM_PARTIAL
	vnetGSONone       = 0 // VIRTIO_NET_HDR_GSO_NONE
	vnetGSOTCPv4      = 1 // VIRTIO_NET_HDR_GSO_TCPV4

	ipProtoTCP = 6
	// tcpCsumOffset is the TCP checksum's offset in the TCP header.
	tcpCsumOffset = 16
	// minGSOSize bounds the segment size a peer may ask our kernel to cut a
	// super-packet into: Linux never sends an MSS under 48
	// (net.ipv4.tcp_min_snd_mss), and a tiny gso_size would make the
	// receiving kernel produce thousands of segments.
	minGSOSize = 48
)

func (v *vnetHdr) decode(b []byte) {
	_ = b[vnetHdrLen-1]
	v.flags, v.gsoType = b[0], b[1]
	v.hdrLen = binary.NativeEndian.Uint16(b[2:4])
	v.gsoSize = binary.NativeEndian.Uint16(b[4:6])
	v.csumStart = binary.NativeEndian.Uint16(b[6:8])
	v.csumOffset = binary.NativeEndian.Uint16(b[8:10])
}

func (v *vnetHdr) encode(b []byte) {
	_ = b[vnetHdrLen-1]
	b[0], b[1] = v.flags, v.gsoType
	binary.NativeEndian.PutUint16(b[2:4], v.hdrLen)
	binary.NativeEndian.PutUint16(b[4:6], v.gsoSize)
	binary.NativeEndian.PutUint16(b[6:8], v.csumStart)
	binary.NativeEndian.PutUint16(b[8:10], v.csumOffset)
}

// validateTSO checks that p, a whole IPv4 packet (checkIPv4 passed and its
// total length is len(p)), is a TCP segmentation offload super-packet that
// v describes exactly: gso_type TCPV4, a partial checksum at the TCP
// checksum (csum_start = IP header length, csum_offset = 16), a TCP header
// inside p, not an IP fragment, and a payload with a gso_size of at least
// minGSOSize. It returns the length of the IP and TCP headers (what the
// kernel repeats in every segment) and the number of segments. A received
// virtio header is written to our TUN device only after this check.
func validateTSO(p []byte, v *vnetHdr) (hdrLen, segs int, ok bool) {
	return validateTSOLen(p, len(p), v)
}

// validateTSOLen is validateTSO for a packet of size bytes of which p is
// the start (at least its IPv4 header and the fixed part of the TCP
// header; checkIPv4Len passed).
func validateTSOLen(p []byte, size int, v *vnetHdr) (hdrLen, segs int, ok bool) {
	ihl := int(p[0]&0x0f) * 4
	if v.gsoType != vnetGSOTCPv4 || v.flags != vnetFlagNeedsCsum || p[9] != ipProtoTCP ||
		int(v.csumStart) != ihl || v.csumOffset != tcpCsumOffset ||
		binary.BigEndian.Uint16(p[6:8])&(flagMF|fragOffMask) != 0 || len(p) < ihl+20 {
		return 0, 0, false
	}
	thl := int(p[ihl+12]>>4) * 4
	hdrLen = ihl + thl
	if thl < 20 || hdrLen >= size || int(v.gsoSize) < minGSOSize {
		return 0, 0, false
	}
	payload := size - hdrLen
	return hdrLen, (payload + int(v.gsoSize) - 1) / int(v.gsoSize), true
}

// tcpPseudoSum puts into the TCP checksum field of the IPv4/TCP packet p
// (header length ihl) the folded sum of the pseudo header, as the kernel
// does for CHECKSUM_PARTIAL (__tcp_v4_send_check): the device, or whoever
// segments the packet, adds the sum of the TCP header and payload.
func tcpPseudoSum(p []byte, ihl int) {
	sum := uint32(binary.BigEndian.Uint16(p[12:14])) + uint32(binary.BigEndian.Uint16(p[14:16])) +
		uint32(binary.BigEndian.Uint16(p[16:18])) + uint32(binary.BigEndian.Uint16(p[18:20])) +
		ipProtoTCP + uint32(len(p)-ihl)
	sum = (sum & 0xffff) + (sum >> 16)
	sum = (sum & 0xffff) + (sum >> 16)
	binary.BigEndian.PutUint16(p[ihl+tcpCsumOffset:], uint16(sum))
}

// finishChecksum completes a CHECKSUM_PARTIAL packet that will not be
// segmented (gso_type NONE with NEEDS_CSUM): the field at start+offset
// holds the pseudo-header sum; the checksum covers p[start:]. It reports
// false if the fields point outside p.
func finishChecksum(p []byte, start, offset uint16) bool {
	at := int(start) + int(offset)
	if int(start) >= len(p) || at+2 > len(p) {
		return false
	}
	initial := uint32(binary.BigEndian.Uint16(p[at:]))
	p[at], p[at+1] = 0, 0
	c := checksum(p[start:], initial)
	if c == 0 && offset == 6 { // UDP: 0 means "no checksum" (RFC 768)
		c = 0xffff
	}
	binary.BigEndian.PutUint16(p[at:], c)
	return true
}

// groCandidates counts the packets in bufs (IPv4, at offset) that
// wireguard-go's GRO might coalesce: TCP segments with data and no flags
// but ACK and PSH. Pure ACKs and everything else are written one by one
// either way.
func groCandidates(bufs [][]byte, offset int) int {
	n := 0
	for _, b := range bufs {
		p := b[offset:]
		if len(p) < ipv4MinHeader || p[0]>>4 != 4 || p[9] != ipProtoTCP {
			continue
		}
		ihl := int(p[0]&0x0f) * 4
		if len(p) < ihl+20 {
			continue
		}
		thl := int(p[ihl+12]>>4) * 4
		if flags := p[ihl+13]; len(p) > ihl+thl && flags&^0x08 == 0x10 { // ACK, maybe PSH
			n++
		}
	}
	return n
}
