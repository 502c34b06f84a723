package udptun

import "encoding/binary"

// Header layout (HeaderLen bytes, before the inner IPv4 packet):
//
//	 0      1      2        3       4              8
//	+------+------+--------+-------+--------------+----------------
//	| 0x74 | 0x75 | ver=1  | flags | network id   | inner IPv4 ...
//	| 't'  | 'u'  |        |       | (big endian) |
//	+------+------+--------+-------+--------------+----------------
//
// flags 0: the datagram carries one whole inner IPv4 packet.
//
// flags 1 (flagChunk): the datagram carries one chunk of a TCP segmentation
// offload super-packet (up to 64 KiB, as the kernel handed it to the TUN
// device), tunnelled whole instead of being cut into MTU-sized packets. The
// chunk header follows the base header:
//
//	 8              12         14         16
//	+--------------+----------+----------+
//	| super-packet | offset   | total    |   every chunk (chunkHdrLen = 16)
//	| id (per      | of this  | length   |
//	| sender)      | chunk    |          |
//	+--------------+----------+----------+----------+---------+-------+
//	 16         18           20           22         23        24
//	| gso_size  | csum_start  | csum_offset | gso_type | vnet    |  the chunk at
//	|           |             |             |          | flags   |  offset 0 only
//	+-----------+-------------+-------------+----------+---------+  (firstChunkHdrLen = 24)
//
// then the chunk's bytes of the super-packet (its IPv4 header, TCP header and
// payload, offset..offset+len). All fields are big endian. The gso and csum
// fields are the virtio_net_hdr the sending kernel gave the super-packet;
// the receiver validates them and writes the reassembled super-packet with
// them into its TUN device, so the kernel segments it (or not, towards a
// local socket or another GSO-capable device) and completes the checksums.
// Every chunk datagram but the last of a super-packet is exactly MTU +
// HeaderLen bytes, so a sender's chunks form one UDP GSO send.
//
// Any other flag value is rejected: a future flag may change how the
// payload is read, so a receiver that does not know it must not guess.
const (
	magic0        = 0x74 // 't'
	magic1        = 0x75 // 'u'
	headerVersion = 1

	flagChunk        = 0x01
	chunkHdrLen      = HeaderLen + 8
	firstChunkHdrLen = chunkHdrLen + 8
)

// dropNone is the "no drop" result of the per-packet checks.
const dropNone DropReason = -1

// putHeader writes the tulle header into b[:HeaderLen].
func putHeader(b []byte, netID uint32) {
	_ = b[HeaderLen-1]
	b[0], b[1], b[2], b[3] = magic0, magic1, headerVersion, 0
	binary.BigEndian.PutUint32(b[4:8], netID)
}

// checkHeader validates the header of a whole-packet datagram at the front
// of b against netID. Flags must be zero (chunks go to parseChunk).
func checkHeader(b []byte, netID uint32) DropReason {
	if len(b) < HeaderLen || b[0] != magic0 || b[1] != magic1 || b[2] != headerVersion || b[3] != 0 {
		return DropBadHeader
	}
	if binary.BigEndian.Uint32(b[4:8]) != netID {
		return DropWrongNetwork
	}
	return dropNone
}

// isChunk reports whether the datagram b claims to be a super-packet chunk
// (parseChunk then checks the rest).
func isChunk(b []byte) bool { return len(b) >= HeaderLen && b[3] == flagChunk }

// chunk is one parsed chunk datagram; data aliases the datagram.
type chunk struct {
	id    uint32
	off   int
	total int
	v     vnetHdr // only in the chunk at offset 0
	data  []byte
}

// putChunkHeader writes a chunk header into b: firstChunkHdrLen bytes with
// v for the chunk at offset 0, chunkHdrLen bytes for the others.
func putChunkHeader(b []byte, netID, id uint32, off, total int, v *vnetHdr) {
	_ = b[chunkHdrLen-1]
	b[0], b[1], b[2], b[3] = magic0, magic1, headerVersion, flagChunk
	binary.BigEndian.PutUint32(b[4:8], netID)
	binary.BigEndian.PutUint32(b[8:12], id)
	binary.BigEndian.PutUint16(b[12:14], uint16(off))
	binary.BigEndian.PutUint16(b[14:16], uint16(total))
	if off == 0 {
		_ = b[firstChunkHdrLen-1]
		binary.BigEndian.PutUint16(b[16:18], v.gsoSize)
		binary.BigEndian.PutUint16(b[18:20], v.csumStart)
		binary.BigEndian.PutUint16(b[20:22], v.csumOffset)
		b[22], b[23] = v.gsoType, v.flags
	}
}

// parseChunk validates the chunk datagram b against netID and fills c. The
// virtio fields are only read here; validateTSO checks them against the
// reassembled packet.
func parseChunk(b []byte, netID uint32, c *chunk) DropReason {
	if len(b) < chunkHdrLen || b[0] != magic0 || b[1] != magic1 || b[2] != headerVersion || b[3] != flagChunk {
		return DropBadHeader
	}
	if binary.BigEndian.Uint32(b[4:8]) != netID {
		return DropWrongNetwork
	}
	c.id = binary.BigEndian.Uint32(b[8:12])
	c.off = int(binary.BigEndian.Uint16(b[12:14]))
	c.total = int(binary.BigEndian.Uint16(b[14:16]))
	hl := chunkHdrLen
	if c.off == 0 {
		if len(b) < firstChunkHdrLen {
			return DropBadHeader
		}
		c.v = vnetHdr{
			gsoSize:    binary.BigEndian.Uint16(b[16:18]),
			csumStart:  binary.BigEndian.Uint16(b[18:20]),
			csumOffset: binary.BigEndian.Uint16(b[20:22]),
			gsoType:    b[22],
			flags:      b[23],
		}
		hl = firstChunkHdrLen
	}
	c.data = b[hl:]
	if len(c.data) == 0 || c.total < ipv4MinHeader || c.off+len(c.data) > c.total {
		return DropMalformed
	}
	return dropNone
}
