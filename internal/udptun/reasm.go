package udptun

// Reassembly of tunnelled super-packets (header.go) on the receive side.
//
// A sender's chunks of one super-packet leave in one or two UDP GSO sends
// and arrive, in order, in one or two UDP GRO messages. The reassembler
// files each chunk in a slot and hands back the slot when the last byte
// has arrived. A chunk is not copied: the slot keeps a reference to it in
// the receive buffer (a piece), and the complete super-packet goes into
// the TUN device with one writev of its pieces. Only what is still
// incomplete when the receive batch ends (the rest of the super-packet is
// in the next batch, which reuses the receive buffers), or has more than
// reasmMaxPieces pieces, is copied into the slot's own buffer (settle).
// It accepts chunks only in order (offset == bytes so far): anything else
// is a lost or reordered chunk, and the super-packet is dropped whole and
// counted once (DropIncomplete); TCP retransmits it. In-order-only also means a
// duplicate or overlapping chunk can never leave a hole of stale bytes in
// a "complete" buffer.
//
//	        chunk off 0                 chunk off == next
//	free ───────────────▶ filling ─────────────────────────┐
//	  ▲                     │  │ ◀────────────────────────┘
//	  │   last byte in      │  │ chunk off != next, eviction, timeout
//	  └─────────────────────┘  ▼  (counted once)
//	  ▲                      poisoned ── later chunks of the same id are
//	  └── last chunk seen, ─────┘        discarded silently
//	      eviction, timeout
//
// A chunk that is not at offset 0 and matches no slot also poisons a slot,
// so a super-packet whose first chunk was lost is counted once, not once
// per chunk.
//
// Memory is bounded: reasmSlots slots of 64 KiB per RX pipeline, allocated
// once. Slots are keyed by (sender IP, super-packet id); a sender holds at
// most reasmPerSender of them (its oldest is evicted first), so a peer --
// or someone spoofing its address -- can only disturb reassembly from that
// address, unless more than reasmSlots/reasmPerSender peers have partial
// super-packets at the same time, when the globally oldest slot goes.
// Slots older than the timeout are given up whenever a slot is taken.

const (
	reasmSlots     = 16
	reasmPerSender = 4
	// reasmTimeout: all chunks of a super-packet leave in one sendmmsg;
	// one still incomplete after this is not going to complete.
	reasmTimeout = int64(200e6) // ns
	// reasmMaxPieces is how many chunks a slot references before it
	// copies them into its buffer: a 64 KiB super-packet in chunks of a
	// 1500-byte underlay is 46; a sender with a tiny MTU gets copied.
	reasmMaxPieces = 64
)

type slotState uint8

const (
	slotFree slotState = iota
	slotFilling
	slotPoisoned
)

type reasmSlot struct {
	buf []byte // tunOffset headroom + up to maxPacket bytes
	// The bytes received so far are buf[tunOffset:tunOffset+copied]
	// followed by pieces, which alias the current receive batch.
	copied int
	pieces [][]byte
	state  slotState
	src    uint32
	id     uint32
	total  int
	next   int // bytes received so far, in order
	born   int64
	v      vnetHdr
}

// head is the first contiguous part of what was received: the start of
// the super-packet (its IPv4 and TCP headers, unless the chunks are tiny).
func (s *reasmSlot) head() []byte {
	if s.copied > 0 || len(s.pieces) == 0 {
		return s.buf[tunOffset : tunOffset+s.copied]
	}
	return s.pieces[0]
}

// iovecs appends to iov the complete super-packet as pieces to write one
// after the other, led by the vnetHdrLen bytes of headroom in front of it.
func (s *reasmSlot) iovecs(iov [][]byte) [][]byte {
	iov = append(iov, s.buf[tunOffset-vnetHdrLen:tunOffset+s.copied])
	return append(iov, s.pieces...)
}

// settle copies the slot's pieces into its buffer.
func (s *reasmSlot) settle() {
	for _, p := range s.pieces {
		s.copied += copy(s.buf[tunOffset+s.copied:], p)
	}
	s.dropPieces()
}

func (s *reasmSlot) dropPieces() {
	clear(s.pieces)
	s.pieces = s.pieces[:0]
}

type reassembler struct {
	slots []reasmSlot
	last  int // slot of the previous chunk: the next one is usually its successor
}

func newReassembler() *reassembler {
	r := &reassembler{slots: make([]reasmSlot, reasmSlots)}
	slab := make([]byte, reasmSlots*bufSize)
	for i := range r.slots {
		r.slots[i].buf = slab[i*bufSize : (i+1)*bufSize : (i+1)*bufSize]
		r.slots[i].pieces = make([][]byte, 0, reasmMaxPieces)
	}
	return r
}

// settle copies every incomplete super-packet's pieces into its slot: the
// receive buffers they alias are about to be reused. The RX pipeline calls
// it at the end of each receive batch.
func (r *reassembler) settle() {
	for i := range r.slots {
		if s := &r.slots[i]; len(s.pieces) > 0 {
			if s.state == slotFilling {
				s.settle()
			} else {
				s.dropPieces()
			}
		}
	}
}

// add files chunk c from src at time now (ns). It returns the slot if this
// chunk completed its super-packet (the caller writes it out, then calls
// release), and how many super-packets were given up (lost).
func (r *reassembler) add(src uint32, c *chunk, now int64) (done *reasmSlot, lost uint64) {
	s := r.find(src, c.id)
	if s == nil {
		if c.off != 0 {
			// The first chunk was lost (or reordered): give the
			// super-packet up now; the poisoned slot swallows the rest.
			s, lost = r.take(src, c.id, now)
			s.state, s.total = slotPoisoned, c.total
			lost++
			r.endIfLast(s, c)
			return nil, lost
		}
		s, lost = r.take(src, c.id, now)
		s.state, s.total, s.next, s.v = slotFilling, c.total, 0, c.v
	}
	switch {
	case s.state == slotPoisoned:
		r.endIfLast(s, c)
		return nil, lost
	case c.off != s.next || c.total != s.total:
		s.state = slotPoisoned
		s.dropPieces()
		r.endIfLast(s, c)
		return nil, lost + 1
	}
	if len(s.pieces) == cap(s.pieces) {
		s.settle()
	}
	s.pieces = append(s.pieces, c.data)
	s.next += len(c.data)
	if s.next == s.total {
		return s, lost
	}
	return nil, lost
}

// endIfLast frees a poisoned slot when the chunk that ends its
// super-packet went by: nothing more of it is expected.
func (r *reassembler) endIfLast(s *reasmSlot, c *chunk) {
	if c.off+len(c.data) == c.total {
		s.state = slotFree
	}
}

func (r *reassembler) release(s *reasmSlot) {
	s.state = slotFree
	s.dropPieces()
}

func (r *reassembler) find(src, id uint32) *reasmSlot {
	if s := &r.slots[r.last]; s.state != slotFree && s.src == src && s.id == id {
		return s
	}
	for i := range r.slots {
		if s := &r.slots[i]; s.state != slotFree && s.src == src && s.id == id {
			r.last = i
			return s
		}
	}
	return nil
}

// take returns a slot for (src, id), freeing expired slots and, if needed,
// the sender's oldest or else the globally oldest one. lost counts the
// incomplete super-packets given up.
func (r *reassembler) take(src, id uint32, now int64) (s *reasmSlot, lost uint64) {
	free, mine, oldestMine, oldest := -1, 0, -1, -1
	for i := range r.slots {
		x := &r.slots[i]
		if x.state != slotFree && now-x.born > reasmTimeout {
			lost += r.evict(x)
		}
		if x.state == slotFree {
			if free < 0 {
				free = i
			}
			continue
		}
		if x.src == src {
			mine++
			if oldestMine < 0 || x.born < r.slots[oldestMine].born {
				oldestMine = i
			}
		}
		if oldest < 0 || x.born < r.slots[oldest].born {
			oldest = i
		}
	}
	i := free
	switch {
	case mine >= reasmPerSender:
		i = oldestMine
		lost += r.evict(&r.slots[i])
	case free < 0:
		i = oldest
		lost += r.evict(&r.slots[i])
	}
	s = &r.slots[i]
	s.src, s.id, s.born, s.next, s.copied = src, id, now, 0, 0
	s.dropPieces()
	r.last = i
	return s, lost
}

// evict frees s and reports 1 if it was an incomplete super-packet not yet
// counted.
func (r *reassembler) evict(s *reasmSlot) uint64 {
	n := uint64(0)
	if s.state == slotFilling {
		n = 1
	}
	s.state = slotFree
	s.dropPieces()
	return n
}
