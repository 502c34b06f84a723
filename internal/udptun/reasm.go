package udptun

// Reassembly of tunnelled super-packets (header.go) on the receive side.
//
// A sender's chunks of one super-packet leave in one or two UDP GSO sends
// and arrive, in order, in one or two UDP GRO messages. The reassembler
// copies each chunk into a slot (which is also the TUN write buffer) and
// hands back the slot when the last byte has arrived. It accepts chunks
// only in order (offset == bytes so far): anything else is a lost or
// reordered chunk, and the super-packet is dropped whole and counted once
// (DropIncomplete); TCP retransmits it. In-order-only also means a
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
)

type slotState uint8

const (
	slotFree slotState = iota
	slotFilling
	slotPoisoned
)

type reasmSlot struct {
	buf   []byte // tunOffset headroom + up to maxPacket bytes
	state slotState
	src   uint32
	id    uint32
	total int
	next  int // bytes received so far, in order
	born  int64
	v     vnetHdr
}

// packet is the reassembled super-packet (valid once complete).
func (s *reasmSlot) packet() []byte { return s.buf[tunOffset : tunOffset+s.total] }

type reassembler struct {
	slots []reasmSlot
	last  int // slot of the previous chunk: the next one is usually its successor
}

func newReassembler() *reassembler {
	r := &reassembler{slots: make([]reasmSlot, reasmSlots)}
	slab := make([]byte, reasmSlots*bufSize)
	for i := range r.slots {
		r.slots[i].buf = slab[i*bufSize : (i+1)*bufSize : (i+1)*bufSize]
	}
	return r
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
		r.endIfLast(s, c)
		return nil, lost + 1
	}
	copy(s.buf[tunOffset+c.off:], c.data)
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

func (r *reassembler) release(s *reasmSlot) { s.state = slotFree }

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
	s.src, s.id, s.born, s.next = src, id, now, 0
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
	return n
}
