package udptun

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// Tests of the TSO super-packet path: chunk header, virtio_net_hdr checks,
// TX chunking, RX reassembly, and both over the in-memory fakes.

// tcpSuper builds an IPv4/TCP super-packet of payload bytes (DF, valid IP
// header checksum, TCP checksum field holding the pseudo-header sum, as the
// kernel hands it out) and its virtio_net_hdr for segments of mss bytes.
func tcpSuper(src, dst string, ttl uint8, payload, mss int, seed byte) ([]byte, vnetHdr) {
	const ihl, thl = 20, 32 // TCP with timestamps
	p := make([]byte, ihl+thl+payload)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:6], 0x4321)
	p[6] = 0x40
	p[8], p[9] = ttl, ipProtoTCP
	copy(p[12:16], netip.MustParseAddr(src).AsSlice())
	copy(p[16:20], netip.MustParseAddr(dst).AsSlice())
	binary.BigEndian.PutUint16(p[10:12], checksum(p[:20], 0))
	t := p[ihl:]
	binary.BigEndian.PutUint16(t[0:2], 40000)
	binary.BigEndian.PutUint16(t[2:4], 5201)
	binary.BigEndian.PutUint32(t[4:8], 1000)
	t[12] = thl / 4 << 4
	t[13] = 0x18 // PSH ACK
	for i := ihl + thl; i < len(p); i++ {
		p[i] = byte(i) + seed
	}
	tcpPseudoSum(p, ihl)
	return p, vnetHdr{flags: vnetFlagNeedsCsum, gsoType: vnetGSOTCPv4, hdrLen: ihl + thl, gsoSize: uint16(mss), csumStart: ihl, csumOffset: tcpCsumOffset}
}

// rawFrame is what the TUN device hands out: virtio_net_hdr, then the packet.
func rawFrame(v vnetHdr, p []byte) []byte {
	b := make([]byte, vnetHdrLen+len(p))
	v.encode(b)
	copy(b[vnetHdrLen:], p)
	return b
}

// dgramConn records what a TX pipeline sends as datagrams, after checking
// the GSO invariants the kernel enforces: every datagram of a message but
// the last is exactly gso bytes, at most MaxSegments of them, at most
// maxGSOBytes in all.
type dgramConn struct {
	loopConn
	t       testing.TB
	maxSegs int
	dgrams  [][]byte
	msgs    int
}

func (c *dgramConn) MaxSegments() int { return c.maxSegs }

func (c *dgramConn) WriteBatch(msgs []txMsg) error {
	for _, m := range msgs {
		c.msgs++
		var b []byte
		for _, s := range m.segs {
			b = append(b, s...)
		}
		if len(b) != m.bytes || m.dgrams > c.maxSegs || len(b) > maxGSOBytes {
			c.t.Fatalf("message of %d bytes (%d counted), %d datagrams: over the limits", len(b), m.bytes, m.dgrams)
		}
		n := 0
		for off := 0; off < len(b); off += m.gso {
			d := b[off:min(off+m.gso, len(b))]
			if len(d) != m.gso && off+m.gso < len(b) {
				c.t.Fatalf("short datagram inside a GSO message")
			}
			c.dgrams = append(c.dgrams, d)
			n++
		}
		if n != m.dgrams {
			c.t.Fatalf("message claims %d datagrams, has %d", m.dgrams, n)
		}
	}
	return nil
}

// txDatagrams runs raw TUN frames through a TX pipeline of an engine for
// tLocal with MTU 1464 and returns the datagrams it sent to tPubB.
func txDatagrams(t testing.TB, maxSegs int, frames ...[]byte) ([][]byte, *engine, *dgramConn) {
	return txDatagramsMTU(t, 1464, maxSegs, frames...)
}

// txDatagramsMTU is txDatagrams with another MTU.
func txDatagramsMTU(t testing.TB, mtu, maxSegs int, frames ...[]byte) ([][]byte, *engine, *dgramConn) {
	tun := &loopTUN{pkts: frames, raw: true}
	conn := &dgramConn{t: t, maxSegs: maxSegs}
	cfg := testConfig(tLocal, tPubA)
	cfg.MTU = mtu
	e := newEngine(cfg, tun, conn)
	e.setPeers([]Peer{{Subnet: tRemote, PublicIP: tPubB}})
	tx := newTxPipe(e)
	n, _ := tun.ReadRaw(tx.rbufs, tx.sizes)
	tx.process(n)
	return conn.dgrams, e, conn
}

// rxEngine is the receiving side: Local tRemote, peer tPubA, TUN recording.
func rxEngine(t testing.TB) (*rxPipe, *recTUN) {
	tun := &recTUN{}
	e := newEngine(testConfig(tRemote, tPubB), tun, &loopConn{})
	e.setPeers([]Peer{{Subnet: tLocal, PublicIP: tPubA}})
	return newRxPipe(e), tun
}

// recTUN records raw writes (virtio_net_hdr first) and whole packets.
type recTUN struct {
	loopTUN
	raw   [][]byte
	whole [][]byte
}

func (r *recTUN) WriteRaw(bufs [][]byte) (int, error) {
	b := bytes.Join(bufs, nil)
	r.raw = append(r.raw, b)
	return len(b), nil
}

func (r *recTUN) Write(bufs [][]byte, offset int) (int, error) {
	for _, b := range bufs {
		r.whole = append(r.whole, append([]byte(nil), b[offset:]...))
	}
	return 0, nil
}

func feed(p *rxPipe, src netip.Addr, dgrams ...[]byte) {
	tbl := p.e.table.Load()
	for _, d := range dgrams {
		m := rxMsg{buf: d, n: len(d), src: addrU32(src)}
		p.datagram(tbl, &m)
	}
	p.endBatch()
}

func TestChunkHeader(t *testing.T) {
	v := vnetHdr{flags: 1, gsoType: 1, gsoSize: 1412, csumStart: 20, csumOffset: 16}
	first := make([]byte, firstChunkHdrLen+4)
	putChunkHeader(first, 7, 0xa1b2c3d4, 0, 1000, &v)
	want := []byte{0x74, 0x75, 1, 1, 0, 0, 0, 7, 0xa1, 0xb2, 0xc3, 0xd4, 0, 0, 0x03, 0xe8, 0x05, 0x84, 0, 20, 0, 16, 1, 1}
	if !bytes.Equal(first[:firstChunkHdrLen], want) {
		t.Fatalf("first chunk header\n% x\nwant\n% x", first[:firstChunkHdrLen], want)
	}
	var c chunk
	if r := parseChunk(first, 7, &c); r != dropNone || c.id != 0xa1b2c3d4 || c.off != 0 || c.total != 1000 || c.v.gsoSize != 1412 ||
		c.v.csumStart != 20 || c.v.csumOffset != 16 || c.v.gsoType != 1 || c.v.flags != 1 || len(c.data) != 4 {
		t.Fatalf("parseChunk = %v, %+v", r, c)
	}
	later := make([]byte, chunkHdrLen+10)
	putChunkHeader(later, 7, 5, 990, 1000, &v)
	if r := parseChunk(later, 7, &c); r != dropNone || c.off != 990 || len(c.data) != 10 {
		t.Fatalf("parseChunk(later) = %v, %+v", r, c)
	}
	mod := func(b []byte, f func([]byte)) []byte { b = append([]byte(nil), b...); f(b); return b }
	cases := []struct {
		name string
		b    []byte
		want DropReason
	}{
		{"short", later[:chunkHdrLen-1], DropBadHeader},
		{"first chunk without its virtio fields", first[:chunkHdrLen+4], DropBadHeader},
		{"flags", mod(later, func(b []byte) { b[3] = 3 }), DropBadHeader},
		{"magic", mod(later, func(b []byte) { b[0] = 0 }), DropBadHeader},
		{"version", mod(later, func(b []byte) { b[2] = 2 }), DropBadHeader},
		{"network", mod(later, func(b []byte) { b[7] = 8 }), DropWrongNetwork},
		{"no data", later[:chunkHdrLen], DropMalformed},
		{"past total", mod(later, func(b []byte) { b[13] = 0xe0 }), DropMalformed}, // off 992 + 10 > 1000
		{"total under an IPv4 header", mod(first, func(b []byte) { b[14], b[15] = 0, 3 }), DropMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var c chunk
			if got := parseChunk(tc.b, 7, &c); got != tc.want {
				t.Errorf("parseChunk = %v, want %v", got, tc.want)
			}
		})
	}
	// A chunk never passes as a whole packet.
	if checkHeader(first, 7) != DropBadHeader {
		t.Error("checkHeader accepted a chunk")
	}
}

func TestValidateTSO(t *testing.T) {
	good, gv := tcpSuper("10.244.1.5", "10.244.2.9", 64, 5000, 1412, 0)
	if hl, segs, ok := validateTSO(good, &gv); !ok || hl != 52 || segs != 4 {
		t.Fatalf("validateTSO(good) = %d, %d, %v; want 52, 4, true", hl, segs, ok)
	}
	mod := func(f func(p []byte, v *vnetHdr)) ([]byte, vnetHdr) {
		p, v := append([]byte(nil), good...), gv
		f(p, &v)
		return p, v
	}
	cases := map[string]func(p []byte, v *vnetHdr){
		"gso none":             func(p []byte, v *vnetHdr) { v.gsoType = vnetGSONone },
		"gso tcpv6":            func(p []byte, v *vnetHdr) { v.gsoType = 4 },
		"gso ecn":              func(p []byte, v *vnetHdr) { v.gsoType = 0x81 },
		"no needs_csum":        func(p []byte, v *vnetHdr) { v.flags = 0 },
		"data_valid too":       func(p []byte, v *vnetHdr) { v.flags = 3 },
		"udp":                  func(p []byte, v *vnetHdr) { p[9] = 17 },
		"csum_start":           func(p []byte, v *vnetHdr) { v.csumStart = 24 },
		"csum_offset":          func(p []byte, v *vnetHdr) { v.csumOffset = 6 },
		"csum_offset past end": func(p []byte, v *vnetHdr) { v.csumOffset = 60000 },
		"fragment":             func(p []byte, v *vnetHdr) { p[6] |= 0x20 },
		"tcp header short":     func(p []byte, v *vnetHdr) { p[32] = 4 << 4 },
		"tcp header past end":  func(p []byte, v *vnetHdr) { p[32] = 15 << 4 },
		"gso_size 0":           func(p []byte, v *vnetHdr) { v.gsoSize = 0 },
		"gso_size tiny":        func(p []byte, v *vnetHdr) { v.gsoSize = 8 },
	}
	for name, f := range cases {
		p, v := mod(f)
		if name == "tcp header past end" {
			p = p[:60]
			binary.BigEndian.PutUint16(p[2:4], 60)
		}
		if _, _, ok := validateTSO(p, &v); ok {
			t.Errorf("%s: validateTSO accepted it", name)
		}
	}
}

func TestFinishChecksum(t *testing.T) {
	p, _ := tcpSuper("10.244.1.5", "10.244.2.9", 64, 333, 1412, 9)
	if !finishChecksum(p, 20, 16) {
		t.Fatal("finishChecksum refused a valid packet")
	}
	// The TCP checksum verifies: pseudo header + segment sums to 0xffff.
	ps := uint32(binary.BigEndian.Uint16(p[12:14])) + uint32(binary.BigEndian.Uint16(p[14:16])) +
		uint32(binary.BigEndian.Uint16(p[16:18])) + uint32(binary.BigEndian.Uint16(p[18:20])) + ipProtoTCP + uint32(len(p)-20)
	if c := checksum(p[20:], ps); c != 0 {
		t.Errorf("TCP checksum does not verify: %#04x", c)
	}
	if finishChecksum(p, 20, uint16(len(p))) || finishChecksum(p, uint16(len(p)), 0) {
		t.Error("finishChecksum accepted fields outside the packet")
	}
}

// TestTXChunks: a super-packet leaves as chunks of exactly MTU+HeaderLen
// bytes in GSO messages within the kernel's limits; reassembled, it is the
// packet with its TTL decremented; the stats count its segments.
func TestTXChunks(t *testing.T) {
	for _, maxSegs := range []int{64, 1} {
		p, v := tcpSuper("10.244.1.5", "10.244.2.9", 64, 65535-52, 1412, 3)
		dgrams, e, conn := txDatagrams(t, maxSegs, rawFrame(v, p))
		want := append([]byte(nil), p...)
		decTTL(want)
		var got []byte
		for i, d := range dgrams {
			var c chunk
			if r := parseChunk(d, 7, &c); r != dropNone {
				t.Fatalf("datagram %d: %v", i, r)
			}
			if i < len(dgrams)-1 && len(d) != 1464+HeaderLen {
				t.Errorf("datagram %d: %d bytes, want %d", i, len(d), 1464+HeaderLen)
			}
			if c.off != len(got) || c.total != len(p) || c.id != dgrams0id(t, dgrams) {
				t.Fatalf("datagram %d: off %d total %d id %d", i, c.off, c.total, c.id)
			}
			if i == 0 && c.v != (vnetHdr{flags: 1, gsoType: 1, gsoSize: 1412, csumStart: 20, csumOffset: 16}) {
				t.Errorf("virtio fields %+v", c.v)
			}
			got = append(got, c.data...)
		}
		if !bytes.Equal(got, want) {
			t.Fatal("chunks do not add up to the packet with TTL-1")
		}
		if maxSegs == 64 && conn.msgs != 2 {
			t.Errorf("%d GSO messages for a 64 KiB super-packet, want 2", conn.msgs)
		}
		s := e.stats()
		if segs := uint64((65535 - 52 + 1411) / 1412); s.PacketsOut != segs || s.BytesOut != uint64(65535+(segs-1)*52) {
			t.Errorf("stats %+v, want %d packets", s, segs)
		}
		if e.tx.superPkts.Load() != 1 {
			t.Error("super-packet not counted")
		}
	}
}

func dgrams0id(t testing.TB, d [][]byte) uint32 {
	var c chunk
	if parseChunk(d[0], 7, &c) != dropNone {
		t.Fatal("bad first chunk")
	}
	return c.id
}

// TestTXSuperPacketChecks: the per-packet checks apply to super-packets,
// counted per segment; a too-big one gets one ICMP error.
func TestTXSuperPacketChecks(t *testing.T) {
	p, v := tcpSuper("10.244.1.5", "10.244.2.9", 64, 10000, 1412, 0)
	cases := []struct {
		name string
		f    func(p []byte, v *vnetHdr)
		drop DropReason
	}{
		{"no route", func(p []byte, v *vnetHdr) { p[18] = 99 }, DropNoRoute},
		{"ttl", func(p []byte, v *vnetHdr) { p[8] = 1 }, DropTTLExceeded},
		{"segments over the MTU", func(p []byte, v *vnetHdr) { v.gsoSize = 1460 }, DropTooBig},
		{"bad virtio header", func(p []byte, v *vnetHdr) { v.csumOffset = 6 }, DropMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			q, w := append([]byte(nil), p...), v
			tc.f(q, &w)
			binary.BigEndian.PutUint16(q[10:12], 0)
			binary.BigEndian.PutUint16(q[10:12], checksum(q[:20], 0))
			dgrams, e, _ := txDatagrams(t, 64, rawFrame(w, q))
			if len(dgrams) != 0 {
				t.Errorf("%d datagrams sent", len(dgrams))
			}
			s := e.stats()
			if tc.drop != DropMalformed && s.Drops[tc.drop] != uint64((10000+1411)/max(int(w.gsoSize), 1)) && s.Drops[tc.drop] != 8 {
				t.Errorf("drops %v", s.Drops)
			}
			if s.Drops[tc.drop] == 0 {
				t.Errorf("%v not counted: %v", tc.drop, s.Drops)
			}
		})
	}
	// GSO without NEEDS_CSUM (a complete checksum): sent with a partial
	// one, as the kernel would have.
	q, w := append([]byte(nil), p...), v
	w.flags = 0
	dgrams, _, _ := txDatagrams(t, 64, rawFrame(w, q))
	var c chunk
	if len(dgrams) == 0 || parseChunk(dgrams[0], 7, &c) != dropNone || c.v.flags != vnetFlagNeedsCsum {
		t.Errorf("GSO packet with a full checksum not sent as partial: %+v", c.v)
	}
	// A whole packet with a partial checksum is completed and sent whole.
	small, sv := tcpSuper("10.244.1.5", "10.244.2.9", 64, 100, 1412, 0)
	sv.gsoType, sv.gsoSize = vnetGSONone, 0
	dgrams, _, _ = txDatagrams(t, 64, rawFrame(sv, small))
	if len(dgrams) != 1 || checkHeader(dgrams[0], 7) != dropNone {
		t.Fatalf("whole packet: %d datagrams", len(dgrams))
	}
	if q := dgrams[0][HeaderLen:]; !finishedTCP(q) {
		t.Error("TCP checksum not completed")
	}
}

func finishedTCP(p []byte) bool {
	ps := uint32(binary.BigEndian.Uint16(p[12:14])) + uint32(binary.BigEndian.Uint16(p[14:16])) +
		uint32(binary.BigEndian.Uint16(p[16:18])) + uint32(binary.BigEndian.Uint16(p[18:20])) + ipProtoTCP + uint32(len(p)-20)
	return checksum(p[20:], ps) == 0
}

// TestRXSuperPacket: chunks from the TX pipeline, delivered in order, come
// out as one raw TUN write with a validated virtio_net_hdr; lost, reordered
// or duplicated chunks drop the super-packet once; chunks from another
// sender with the same id do not touch it.
func TestRXSuperPacket(t *testing.T) {
	p, v := tcpSuper("10.244.1.5", "10.244.2.9", 64, 30000, 1412, 1)
	dgrams, _, _ := txDatagrams(t, 64, rawFrame(v, p))
	want := append([]byte(nil), p...)
	decTTL(want)
	n := len(dgrams)
	if n < 4 {
		t.Fatalf("%d chunks", n)
	}
	without := func(i int) [][]byte { return append(append([][]byte(nil), dgrams[:i]...), dgrams[i+1:]...) }
	swapped := append([][]byte(nil), dgrams...)
	swapped[1], swapped[2] = swapped[2], swapped[1]
	dup := append(append(append([][]byte(nil), dgrams[:2]...), dgrams[1]), dgrams[2:]...)
	cases := []struct {
		name     string
		dgrams   [][]byte
		wantOK   bool
		wantLost uint64
	}{
		{"in order", dgrams, true, 0},
		{"first lost", without(0), false, 1},
		{"middle lost", without(n / 2), false, 1},
		{"last lost (given up later)", without(n - 1), false, 0},
		{"reordered", swapped, false, 1},
		{"duplicate", dup, false, 1},
		{"twice", append(append([][]byte(nil), dgrams...), dgrams...), true, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rx, tun := rxEngine(t)
			feed(rx, tPubA, tc.dgrams...)
			s := rx.e.stats()
			if got := len(tun.raw) > 0; got != tc.wantOK {
				t.Fatalf("delivered %d, want %v (drops %v)", len(tun.raw), tc.wantOK, s.Drops)
			}
			if s.Drops[DropIncomplete] != tc.wantLost {
				t.Errorf("incomplete = %d, want %d", s.Drops[DropIncomplete], tc.wantLost)
			}
			if !tc.wantOK {
				return
			}
			var got vnetHdr
			got.decode(tun.raw[0])
			if wantV := (vnetHdr{flags: 1, gsoType: 1, hdrLen: 52, gsoSize: 1412, csumStart: 20, csumOffset: 16}); got != wantV {
				t.Errorf("virtio_net_hdr %+v, want %+v", got, wantV)
			}
			if !bytes.Equal(tun.raw[0][vnetHdrLen:], want) {
				t.Error("reassembled packet differs")
			}
			if segs := uint64((30000 + 1411) / 1412); s.PacketsIn != segs*uint64(len(tun.raw)) {
				t.Errorf("PacketsIn %d, want %d per super-packet", s.PacketsIn, segs)
			}
		})
	}

	t.Run("spoofed sender with the same id", func(t *testing.T) {
		rx, tun := rxEngine(t)
		rx.e.setPeers([]Peer{{Subnet: tLocal, PublicIP: tPubA}, {Subnet: netip.MustParsePrefix("10.244.3.0/24"), PublicIP: netip.MustParseAddr("192.168.50.3")}})
		other := netip.MustParseAddr("192.168.50.3")
		bogus := append([]byte(nil), dgrams[1]...)
		bogus[len(bogus)-1] ^= 0xff
		feed(rx, tPubA, dgrams[0])
		feed(rx, other, bogus, dgrams[2]) // an orphan from another sender
		feed(rx, tPubA, dgrams[1:]...)
		if len(tun.raw) != 1 || !bytes.Equal(tun.raw[0][vnetHdrLen:], want) {
			t.Fatalf("peer A's super-packet disturbed by another sender (%d delivered)", len(tun.raw))
		}
		if d := rx.e.stats().Drops[DropIncomplete]; d != 1 {
			t.Errorf("incomplete = %d, want 1 (the other sender's orphan)", d)
		}
	})

	t.Run("timeout and per-sender limit", func(t *testing.T) {
		rx, tun := rxEngine(t)
		// Six super-packets whose last chunk never comes: the sender's
		// oldest are evicted beyond reasmPerSender; the rest time out.
		for i := range 6 {
			q, w := tcpSuper("10.244.1.5", "10.244.2.9", 64, 5000, 1412, byte(i))
			ds, _, _ := txDatagrams(t, 64, rawFrame(w, q))
			for j := range ds { // distinct ids
				binary.BigEndian.PutUint32(ds[j][8:12], uint32(100+i))
			}
			feed(rx, tPubA, ds[:len(ds)-1]...)
		}
		if d := rx.e.stats().Drops[DropIncomplete]; d != 6-reasmPerSender {
			t.Errorf("after 6 partial super-packets: incomplete = %d, want %d evicted", d, 6-reasmPerSender)
		}
		rx.now += reasmTimeout + 1
		feed(rx, tPubA, dgrams...) // taking a slot expires the rest
		if d := rx.e.stats().Drops[DropIncomplete]; d != 6 || len(tun.raw) != 1 {
			t.Errorf("incomplete = %d, delivered %d; want 6, 1", d, len(tun.raw))
		}
	})

	t.Run("hostile virtio fields", func(t *testing.T) {
		for name, f := range map[string]func(v *vnetHdr){
			"segments over 64 KiB": func(v *vnetHdr) { v.gsoSize = 65500 },
			"gso type udp":         func(v *vnetHdr) { v.gsoType = 5 },
			"csum_start":           func(v *vnetHdr) { v.csumStart = 40 },
		} {
			rx, tun := rxEngine(t)
			ds := make([][]byte, len(dgrams))
			for i := range dgrams {
				ds[i] = append([]byte(nil), dgrams[i]...)
			}
			var c chunk
			parseChunk(ds[0], 7, &c)
			f(&c.v)
			putChunkHeader(ds[0], 7, c.id, 0, c.total, &c.v)
			feed(rx, tPubA, ds...)
			if len(tun.raw) != 0 || rx.e.stats().Drops[DropMalformed] != 1 {
				t.Errorf("%s: written %d, drops %v", name, len(tun.raw), rx.e.stats().Drops)
			}
		}
	})

	t.Run("not local", func(t *testing.T) {
		q, w := tcpSuper("10.244.1.5", "10.244.3.9", 64, 5000, 1412, 0)
		tun := &loopTUN{pkts: [][]byte{rawFrame(w, q)}, raw: true}
		conn := &dgramConn{t: t, maxSegs: 64}
		e := newEngine(testConfig(tLocal, tPubA), tun, conn)
		e.setPeers([]Peer{{Subnet: netip.MustParsePrefix("10.244.3.0/24"), PublicIP: tPubB}})
		tx := newTxPipe(e)
		tx.process(must(tun.ReadRaw(tx.rbufs, tx.sizes)))
		rx, rtun := rxEngine(t)
		feed(rx, tPubA, conn.dgrams...)
		if len(rtun.raw) != 0 || rx.e.stats().Drops[DropNotLocal] != 4 {
			t.Errorf("written %d, drops %v", len(rtun.raw), rx.e.stats().Drops)
		}
	})
}

// TestRXSuperPacketAcrossBatches: the reassembler keeps references to
// chunks in the receive buffers, so a super-packet whose chunks arrive in
// several receive batches must survive the buffer being reused in between
// (settle), also with more chunks than reasmMaxPieces and with a first
// chunk shorter than its headers.
func TestRXSuperPacketAcrossBatches(t *testing.T) {
	for _, tc := range []struct {
		name              string
		mtu, payload, mss int
	}{
		{"1500-byte underlay", 1464, 30000, 1412},
		{"tiny chunks", 100, 8000, 48},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, v := tcpSuper("10.244.1.5", "10.244.2.9", 64, tc.payload, tc.mss, 2)
			dgrams, _, _ := txDatagramsMTU(t, tc.mtu, 64, rawFrame(v, p))
			want := append([]byte(nil), p...)
			decTTL(want)
			if tc.mtu == 100 && (len(dgrams) <= reasmMaxPieces || len(dgrams[0])-firstChunkHdrLen >= maxTCPv4Headers) {
				t.Fatalf("%d chunks of %d bytes: not the case under test", len(dgrams), len(dgrams[0]))
			}
			n := len(dgrams)
			for _, per := range []int{n, n - 1, n / 2, 3, 1} { // chunks per receive batch
				rx, tun := rxEngine(t)
				buf := make([]byte, maxPacket) // the one receive buffer, reused by every batch
				for i := 0; i < n; i += per {
					at := 0
					for _, d := range dgrams[i:min(i+per, n)] {
						at += copy(buf[at:], d)
					}
					m := rxMsg{buf: buf, n: at, src: addrU32(tPubA), gso: len(dgrams[i])}
					rx.datagram(rx.e.table.Load(), &m)
					rx.endBatch()
					for j := range buf {
						buf[j] = 0xAA
					}
				}
				if len(tun.raw) != 1 {
					t.Fatalf("%d chunks per batch: delivered %d super-packets, want 1 (drops %v)", per, len(tun.raw), rx.e.stats().Drops)
				}
				if !bytes.Equal(tun.raw[0][vnetHdrLen:], want) {
					t.Fatalf("%d chunks per batch: reassembled packet differs", per)
				}
			}
		})
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestReassemblyQuick sends random super-packets from two senders, loses
// random chunks, and checks against the obvious model: a super-packet is
// written iff none of its chunks was lost; every other one is counted as
// incomplete exactly once (after the timeout has passed).
func TestReassemblyQuick(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	senders := []netip.Addr{tPubA, netip.MustParseAddr("192.168.50.3")}
	for round := 0; round < 30; round++ {
		rx, tun := rxEngine(t)
		rx.e.setPeers([]Peer{{Subnet: tLocal, PublicIP: tPubA}, {Subnet: netip.MustParsePrefix("10.244.3.0/24"), PublicIP: senders[1]}})
		type sp struct {
			src    netip.Addr
			dgrams [][]byte
			lost   bool
		}
		var sps []sp
		for i := range 20 {
			q, w := tcpSuper("10.244.1.5", "10.244.2.9", 64, 100+r.IntN(65000-52), 1412, byte(i))
			ds, _, _ := txDatagrams(t, 64, rawFrame(w, q))
			for j := range ds {
				binary.BigEndian.PutUint32(ds[j][8:12], uint32(i))
			}
			x := sp{src: senders[r.IntN(2)]}
			for _, d := range ds {
				if r.IntN(40) == 0 {
					x.lost = true
					continue
				}
				x.dgrams = append(x.dgrams, d)
			}
			sps = append(sps, x)
		}
		// Interleave the two senders' streams, each in order.
		var order [][2]int
		cur, pos, idx := [2]int{}, [2]int{}, [2][]int{}
		for i, x := range sps {
			k := 0
			if x.src == senders[1] {
				k = 1
			}
			idx[k] = append(idx[k], i)
		}
		for {
			k := r.IntN(2)
			if cur[k] >= len(idx[k]) {
				k = 1 - k
				if cur[k] >= len(idx[k]) {
					break
				}
			}
			i := idx[k][cur[k]]
			if pos[k] < len(sps[i].dgrams) {
				order = append(order, [2]int{i, pos[k]})
				pos[k]++
			}
			if pos[k] >= len(sps[i].dgrams) {
				cur[k]++
				pos[k] = 0
			}
		}
		for _, o := range order {
			feed(rx, sps[o[0]].src, sps[o[0]].dgrams[o[1]])
		}
		rx.now += reasmTimeout + 1
		_, expired := rx.reasm.take(0, 0, rx.now) // give up what is left
		wantOK, wantLost := 0, 0
		for _, x := range sps {
			switch {
			case !x.lost:
				wantOK++
			case len(x.dgrams) > 0: // all chunks lost: nothing to count
				wantLost++
			}
		}
		if len(tun.raw) != wantOK {
			t.Fatalf("round %d: delivered %d, want %d", round, len(tun.raw), wantOK)
		}
		if lost := rx.e.stats().Drops[DropIncomplete] + expired; int(lost) != wantLost {
			t.Fatalf("round %d: incomplete %d, want %d", round, lost, wantLost)
		}
	}
}

// FuzzReassembly: any sequence of datagrams from two senders (a peer and a
// non-peer-like second peer), in any order: no panic, and whatever reaches
// the TUN passes the same checks as a kernel-made super-packet -- a whole
// IPv4/TCP packet for Local with a virtio_net_hdr validateTSO accepts and
// segments that fit an IPv4 packet.
func FuzzReassembly(f *testing.F) {
	p, v := tcpSuper("10.244.1.5", "10.244.2.9", 64, 8000, 1412, 0)
	dgrams, _, _ := txDatagrams(f, 64, rawFrame(v, p))
	var seed []byte
	for _, d := range dgrams {
		seed = append(seed, 0, byte(len(d)>>8), byte(len(d)))
		seed = append(seed, d...)
	}
	f.Add(seed)
	f.Add(append([]byte{1, 0, 24}, dgrams[0][:24]...))
	// One pipeline per fuzz worker (its buffers are megabytes), reset for
	// every input.
	tun := &checkTUN{}
	e := newEngine(testConfig(tRemote, tPubB), tun, &loopConn{})
	other := netip.MustParseAddr("192.168.50.3")
	e.setPeers([]Peer{{Subnet: tLocal, PublicIP: tPubA}, {Subnet: netip.MustParsePrefix("10.244.3.0/24"), PublicIP: other}})
	rx := newRxPipe(e)
	tbl := e.table.Load()
	f.Fuzz(func(t *testing.T, data []byte) {
		tun.t = t
		rx.now = 0
		for i := range rx.reasm.slots {
			rx.reasm.slots[i].state = slotFree
		}
		// Records: sender byte (bit 0: which peer; bit 1: advance the clock
		// past the timeout), 2-byte length, datagram.
		for len(data) >= 3 {
			src := tPubA
			if data[0]&1 != 0 {
				src = other
			}
			if data[0]&2 != 0 {
				rx.now += reasmTimeout + 1
			}
			n := min(int(data[1])<<8|int(data[2]), len(data)-3)
			m := rxMsg{buf: data[3 : 3+n], n: n, src: addrU32(src)}
			rx.datagram(tbl, &m)
			data = data[3+n:]
		}
		rx.endBatch()
	})
}

// WriteRaw is checkTUN's check for super-packets (packet_test.go).
func (c *checkTUN) WriteRaw(bufs [][]byte) (int, error) {
	b := bytes.Join(bufs, nil)
	var v vnetHdr
	v.decode(b)
	p := b[vnetHdrLen:]
	n, ok := checkIPv4(p)
	if !ok || n != len(p) || !tRemote.Contains(netip.AddrFrom4([4]byte(p[16:20]))) {
		c.t.Fatalf("TUN got a super-packet that should have been dropped: % x", p)
	}
	hl, _, ok := validateTSO(p, &v)
	if !ok || int(v.hdrLen) != hl || hl+int(v.gsoSize) > maxPacket {
		c.t.Fatalf("TUN got a bad virtio_net_hdr %+v for % x", v, p[:min(len(p), 60)])
	}
	return len(b), nil
}

// TestEngineOverFakesTSO: a super-packet read from A's TUN comes out of B's
// TUN whole, TTL-1, with its virtio_net_hdr, through Run on both engines
// (newPair checks for leaked goroutines).
func TestEngineOverFakesTSO(t *testing.T) {
	p := newPair(t)
	sp, v := tcpSuper("10.244.1.5", "10.244.2.9", 64, 40000, 1412, 5)
	p.tunA.inRaw <- rawFrame(v, sp)
	got := recv(t, p.tunB.raw)
	want := append([]byte(nil), sp...)
	decTTL(want)
	var gv vnetHdr
	gv.decode(got)
	if wantV := (vnetHdr{flags: 1, gsoType: 1, hdrLen: 52, gsoSize: 1412, csumStart: 20, csumOffset: 16}); gv != wantV {
		t.Errorf("virtio_net_hdr %+v, want %+v", gv, wantV)
	}
	if !bytes.Equal(got[vnetHdrLen:], want) {
		t.Error("B's TUN got a different super-packet")
	}
	segs := uint64((40000 + 1411) / 1412)
	waitFor(t, func() bool { return p.a.stats().PacketsOut == segs && p.b.stats().PacketsIn == segs },
		func() any { return []Stats{p.a.stats(), p.b.stats()} })
}

// TestGROCandidates: only TCP segments with data and no flags but ACK/PSH
// are worth wireguard-go's GRO; everything else is written one by one.
func TestGROCandidates(t *testing.T) {
	data, _ := tcpSuper("10.244.1.5", "10.244.2.9", 64, 1000, 1412, 0)
	ack, _ := tcpSuper("10.244.1.5", "10.244.2.9", 64, 0, 1412, 0)
	ack[20+13] = 0x10
	syn, _ := tcpSuper("10.244.1.5", "10.244.2.9", 64, 10, 1412, 0)
	syn[20+13] = 0x02
	fin, _ := tcpSuper("10.244.1.5", "10.244.2.9", 64, 10, 1412, 0)
	fin[20+13] = 0x11
	udp := ipPacket("10.244.1.5", "10.244.2.9", 64, 100, false)
	short := data[:30]
	at := func(pkts ...[]byte) [][]byte {
		var bufs [][]byte
		for _, p := range pkts {
			bufs = append(bufs, append(make([]byte, tunOffset), p...))
		}
		return bufs
	}
	for _, tc := range []struct {
		name string
		bufs [][]byte
		want int
	}{
		{"data", at(data, data), 2},
		{"pure acks", at(ack, ack, ack), 0},
		{"psh ack with data", at(data, ack, data), 2},
		{"syn and fin", at(syn, fin), 0},
		{"udp", at(udp, udp), 0},
		{"truncated", at(short, data), 1},
	} {
		if got := groCandidates(tc.bufs, tunOffset); got != tc.want {
			t.Errorf("%s: %d candidates, want %d", tc.name, got, tc.want)
		}
	}
}

// TestMaxSuperPacket: a super-packet of MaxSuperPacket bytes leaves in one
// UDP GSO send, one byte more in two, for small, common and jumbo MTUs.
func TestMaxSuperPacket(t *testing.T) {
	for _, mtu := range []int{576 - Overhead, 1500 - Overhead, 1450, 9000 - Overhead} {
		n := MaxSuperPacket(mtu)
		if mtu == 1464 && n != 64272 {
			t.Errorf("MTU 1464: %d, want 64272 (45 datagrams, 65000 bytes)", n)
		}
		for _, size := range []int{n, n + 1} {
			p, v := tcpSuper("10.244.1.5", "10.244.2.9", 64, size-52, min(mtu-52, 1412), 3)
			_, _, conn := txDatagramsMTU(t, mtu, maxGSOSegments, rawFrame(v, p))
			want := 1
			if size > n {
				want = 2
			}
			if size <= maxPacket && conn.msgs != want {
				t.Errorf("MTU %d: a %d-byte super-packet took %d sends, want %d", mtu, size, conn.msgs, want)
			}
		}
	}
}
