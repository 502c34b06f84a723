package udptun

import "encoding/binary"

// Coalescing of received super-packets (receive-side GRO across them).
//
// A sender's TCP stack hands its TUN device TSO super-packets of at most
// 64 KiB (a TUN device's tso_max_size), so without help the receiving
// kernel forwards, tracks and delivers one skb — and the receiving TCP
// sends one ACK — per 64 KiB. When one receive batch holds several
// complete super-packets of one flow that continue each other, the RX
// pipeline writes them into the TUN device as one GSO packet of up to
// Config.MaxRXPacket bytes: a BIG TCP packet (IPv4 total length 0, the
// length is the skb's; Linux >= 6.3) once it passes 64 KiB. That divides
// the per-packet work of the forwarding path, the receiving TCP and the
// ACK stream going back by up to three.
//
// The rules are those of Linux's tcp_gro_receive, with one exception:
// same addresses, ports, IP TOS, TTL, DF and options; contiguous sequence
// numbers; equal ACK number, window, data offset and TCP options (so equal
// timestamps); the same flags but PSH and FIN; same gso_size; and no SYN,
// RST, URG, CWR or FIN before the end. The exception: a PSH in the middle
// does not end the merge. Every TSO super-packet of a bulk sender carries
// PSH (the end of a sendmsg), so Linux's rule would stop here at every
// 64 KiB; PSH asks the receiver to hand the data to the application
// without waiting for more, and a merged packet is delivered at the same
// instant its parts would have been, with PSH set.
//
// A coalescer holds only references: the headers of the first part are
// copied (they are rewritten for the merged length), the payloads stay in
// the receive buffers, which live until the end of the batch. The RX
// pipeline therefore writes every pending flow out before the batch ends,
// and merges only super-packets whose bytes are all in those buffers
// (reasmSlot.copied == 0).

// maxWriteIovs is how many pieces one WriteRaw may have (UIO_MAXIOV is
// 1024): a reassembled super-packet has at most reasmMaxPieces+1, a
// merged one at most coMaxIov+1.
const maxWriteIovs = 256

const (
	// coFlows is how many flows a batch keeps pending at once; a new
	// flow beyond that writes the oldest out.
	coFlows = 8
	// coMaxParts bounds the super-packets in one merged packet and
	// coMaxIov its pieces (with the virtio header and the headers it
	// must fit maxWriteIovs).
	coMaxParts = 8
	coMaxIov   = maxWriteIovs - 2

	tcpFlagFIN = 0x01
	tcpFlagSYN = 0x02
	tcpFlagRST = 0x04
	tcpFlagPSH = 0x08
	tcpFlagACK = 0x10
	tcpFlagURG = 0x20
	tcpFlagCWR = 0x80
	// tcpFlagsNoMerge end (or forbid) a merge wherever they appear.
	tcpFlagsNoMerge = tcpFlagSYN | tcpFlagRST | tcpFlagURG | tcpFlagCWR
)

// coPart is one super-packet in a pending flow: its own headers and where
// its payload is in the flow's iovecs, to write it alone if the merged
// write fails.
type coPart struct {
	head     []byte // its IPv4 and TCP headers (hdrLen bytes)
	from, to int    // its payload: iov[from:to]
	segs     int
	bytes    int // its inner bytes as segments (what Stats counts)
}

// coFlow is one pending (possibly merged) packet.
type coFlow struct {
	hdr    []byte // vnetHdrLen + hdrLen bytes: virtio header, then the first part's headers
	hdrLen int
	v      vnetHdr
	total  int // IPv4 bytes: headers once plus every part's payload
	segs   int
	fin    bool
	iov    [][]byte // iov[0] is hdr; then the payload pieces
	parts  []coPart
}

type coalescer struct {
	limit int // largest packet written (IPv4 bytes); <= maxPacket: no BIG TCP
	flows []coFlow
	n     int // pending flows: flows[:n]
	vbuf  [vnetHdrLen]byte
	iov   [][]byte // scratch for the fallback write of one part
}

func newCoalescer(limit int) *coalescer {
	c := &coalescer{limit: limit, flows: make([]coFlow, coFlows), iov: make([][]byte, 0, coMaxIov+2)}
	for i := range c.flows {
		c.flows[i].hdr = make([]byte, vnetHdrLen+maxTCPv4Headers)
		c.flows[i].iov = make([][]byte, 0, coMaxIov+1)
		c.flows[i].parts = make([]coPart, 0, coMaxParts)
	}
	return c
}

// writer writes one packet (its pieces, led by the virtio header) into the
// TUN device.
type writer func(iov [][]byte) error

// add takes the complete, checked super-packet whose IPv4 and TCP headers
// (hdrLen bytes) start head and whose bytes are parts, one after the
// other (head is the start of parts[0]), with virtio header v and segs
// segments. It merges it into the pending packet of its flow if that
// continues it, and else writes that flow's packet (with w) and makes it
// pending in its place. The parts must stay valid until flush. Written
// packets and failed writes are counted in bc.
func (c *coalescer) add(head []byte, hdrLen, total, segs int, v *vnetHdr, parts [][]byte, w writer, bc *batchCounters) {
	bytes := total + (segs-1)*hdrLen
	f := c.find(head)
	if f != nil && c.continues(f, head, hdrLen, total, v, len(parts)) {
		from := len(f.iov)
		f.iov = appendPayload(f.iov, parts, hdrLen)
		f.parts = append(f.parts, coPart{head: head[:hdrLen], from: from, to: len(f.iov), segs: segs, bytes: bytes})
		f.total += total - hdrLen
		f.segs += segs
		ihl := int(head[0]&0x0f) * 4
		flags := head[ihl+13]
		f.hdr[vnetHdrLen+ihl+13] |= flags & (tcpFlagPSH | tcpFlagFIN)
		f.fin = flags&tcpFlagFIN != 0
		return
	}
	if f != nil {
		c.write(f, w, bc)
	} else {
		if c.n == len(c.flows) {
			c.write(&c.flows[0], w, bc)
			c.remove(0)
		}
		f = &c.flows[c.n]
		c.n++
	}
	copy(f.hdr[vnetHdrLen:], head[:hdrLen])
	f.hdrLen, f.v, f.total, f.segs = hdrLen, *v, total, segs
	ihl := int(head[0]&0x0f) * 4
	f.fin = head[ihl+13]&tcpFlagFIN != 0
	f.iov = append(f.iov[:0], f.hdr[:vnetHdrLen+hdrLen])
	f.iov = appendPayload(f.iov, parts, hdrLen)
	f.parts = append(f.parts[:0], coPart{head: head[:hdrLen], from: 1, to: len(f.iov), segs: segs, bytes: bytes})
}

// flush writes every pending flow.
func (c *coalescer) flush(w writer, bc *batchCounters) {
	for i := 0; i < c.n; i++ {
		c.write(&c.flows[i], w, bc)
	}
	c.n = 0
}

// flushFlow writes the pending packet of head's flow, if any.
func (c *coalescer) flushFlow(head []byte, w writer, bc *batchCounters) {
	for i := 0; i < c.n; i++ {
		if c.sameFlow(&c.flows[i], head) {
			c.write(&c.flows[i], w, bc)
			c.remove(i)
			return
		}
	}
}

// find returns the pending flow with head's addresses and ports.
func (c *coalescer) find(head []byte) *coFlow {
	for i := 0; i < c.n; i++ {
		if c.sameFlow(&c.flows[i], head) {
			return &c.flows[i]
		}
	}
	return nil
}

// sameFlow reports whether f is head's flow (addresses and ports).
func (c *coalescer) sameFlow(f *coFlow, head []byte) bool {
	h := f.hdr[vnetHdrLen:]
	ihl, fihl := int(head[0]&0x0f)*4, int(h[0]&0x0f)*4
	return string(h[12:20]) == string(head[12:20]) && string(h[fihl:fihl+4]) == string(head[ihl:ihl+4])
}

func (c *coalescer) remove(i int) {
	f := c.flows[i]
	copy(c.flows[i:c.n], c.flows[i+1:c.n])
	c.flows[c.n-1] = f // keep its buffers
	c.n--
}

// continues reports whether the super-packet (head, hdrLen, total, v,
// nparts pieces) may be appended to f.
func (c *coalescer) continues(f *coFlow, head []byte, hdrLen, total int, v *vnetHdr, nparts int) bool {
	h := f.hdr[vnetHdrLen : vnetHdrLen+f.hdrLen]
	if hdrLen != f.hdrLen || v.gsoSize != f.v.gsoSize || f.fin || len(f.parts) == cap(f.parts) ||
		f.total+total-hdrLen > c.limit || len(f.iov)+nparts > coMaxIov {
		return false
	}
	ihl := int(head[0]&0x0f) * 4
	// IPv4: same header length (hdrLen and the TCP offset below), TOS,
	// DF, TTL, protocol, addresses and options.
	if h[0] != head[0] || h[1] != head[1] || (h[6]^head[6])&(flagDF>>8) != 0 || h[8] != head[8] ||
		h[9] != head[9] || string(h[12:20]) != string(head[12:20]) ||
		string(h[ipv4MinHeader:ihl]) != string(head[ipv4MinHeader:ihl]) {
		return false
	}
	th, nh := h[ihl:], head[ihl:]
	fl, nfl := th[13], nh[13]
	if string(th[0:4]) != string(nh[0:4]) || // ports
		binary.BigEndian.Uint32(th[4:8])+uint32(f.total-hdrLen) != binary.BigEndian.Uint32(nh[4:8]) ||
		string(th[8:13]) != string(nh[8:13]) || // ACK number, data offset
		(fl^nfl)&^(tcpFlagPSH|tcpFlagFIN) != 0 || (fl|nfl)&tcpFlagsNoMerge != 0 || nfl&tcpFlagACK == 0 ||
		string(th[14:16]) != string(nh[14:16]) || // window
		string(th[20:hdrLen-ihl]) != string(nh[20:hdrLen-ihl]) { // options
		return false
	}
	return true
}

// appendPayload appends to iov the pieces of parts after their first skip
// bytes.
func appendPayload(iov, parts [][]byte, skip int) [][]byte {
	for _, b := range parts {
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		iov = append(iov, b[skip:])
		skip = 0
	}
	return iov
}

// write writes f out, merged if it has several parts (falling back to one
// write per part if the merged write fails), and counts it in bc.
func (c *coalescer) write(f *coFlow, w writer, bc *batchCounters) {
	f.v.encode(f.hdr)
	if len(f.parts) > 1 {
		mergeHeaders(f.hdr[vnetHdrLen:vnetHdrLen+f.hdrLen], f.total)
	}
	if err := w(f.iov); err == nil {
		for _, p := range f.parts {
			bc.bytes += uint64(p.bytes)
		}
		bc.pkts += uint64(f.segs)
		bc.superPkts += uint64(len(f.parts))
		bc.merged += uint64(len(f.parts) - 1)
	} else if len(f.parts) == 1 {
		bc.drops[DropSendError] += uint64(f.segs)
	} else {
		// The kernel refused the merged packet (it could not allocate
		// an skb that large, say): write the parts as they came.
		bc.mergeFailed++
		for _, p := range f.parts {
			c.iov = append(c.iov[:0], f.hdr[:vnetHdrLen], p.head)
			c.iov = append(c.iov, f.iov[p.from:p.to]...)
			if w(c.iov) != nil {
				bc.drops[DropSendError] += uint64(p.segs)
				continue
			}
			bc.pkts += uint64(p.segs)
			bc.bytes += uint64(p.bytes)
			bc.superPkts++
		}
		clear(c.iov)
	}
	clear(f.iov[1:]) // drop references to the receive buffers
	f.iov = f.iov[:0]
	clear(f.parts)
	f.parts = f.parts[:0]
}

// mergeHeaders rewrites the first part's IPv4 and TCP headers h for a
// merged packet of total bytes: the total length (0 above 64 KiB, as
// BIG TCP has it: the length is the skb's), the header checksum, and the
// TCP checksum field, which for CHECKSUM_PARTIAL holds the pseudo-header
// sum over the new TCP length.
func mergeHeaders(h []byte, total int) {
	ihl := int(h[0]&0x0f) * 4
	tl := total
	if tl > maxPacket {
		tl = 0
	}
	binary.BigEndian.PutUint16(h[2:4], uint16(tl))
	h[10], h[11] = 0, 0
	binary.BigEndian.PutUint16(h[10:12], checksum(h[:ihl], 0))
	tcpLen := uint32(total - ihl)
	sum := uint32(binary.BigEndian.Uint16(h[12:14])) + uint32(binary.BigEndian.Uint16(h[14:16])) +
		uint32(binary.BigEndian.Uint16(h[16:18])) + uint32(binary.BigEndian.Uint16(h[18:20])) +
		ipProtoTCP + tcpLen>>16 + tcpLen&0xffff
	sum = (sum & 0xffff) + (sum >> 16)
	sum = (sum & 0xffff) + (sum >> 16)
	binary.BigEndian.PutUint16(h[ihl+tcpCsumOffset:], uint16(sum))
}
