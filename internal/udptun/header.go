package udptun

import "encoding/binary"

// Header layout (HeaderLen bytes, before the inner IPv4 packet):
//
//	 0      1      2        3       4              8
//	+------+------+--------+-------+--------------+----------------
//	| 0x74 | 0x75 | ver=1  | flags | network id   | inner IPv4 ...
//	| 't'  | 'u'  |        |  = 0  | (big endian) |
//	+------+------+--------+-------+--------------+----------------
const (
	magic0        = 0x74 // 't'
	magic1        = 0x75 // 'u'
	headerVersion = 1
)

// dropNone is the "no drop" result of the per-packet checks.
const dropNone DropReason = -1

// putHeader writes the tulle header into b[:HeaderLen].
func putHeader(b []byte, netID uint32) {
	_ = b[HeaderLen-1]
	b[0], b[1], b[2], b[3] = magic0, magic1, headerVersion, 0
	binary.BigEndian.PutUint32(b[4:8], netID)
}

// checkHeader validates the header at the front of b against netID. Flags
// must be zero: a future flag may change how the payload is read, so a
// receiver that does not know it must not guess.
func checkHeader(b []byte, netID uint32) DropReason {
	if len(b) < HeaderLen || b[0] != magic0 || b[1] != magic1 || b[2] != headerVersion || b[3] != 0 {
		return DropBadHeader
	}
	if binary.BigEndian.Uint32(b[4:8]) != netID {
		return DropWrongNetwork
	}
	return dropNone
}
