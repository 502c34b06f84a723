package udptun

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
)

// Tests of the receive-side coalescing of super-packets (coalesce.go).

// superSeq is tcpSuper with sequence number seq.
func superSeq(seq uint32, payload int, seed byte) ([]byte, vnetHdr) {
	p, v := tcpSuper("10.244.1.5", "10.244.2.9", 64, payload, 1412, seed)
	binary.BigEndian.PutUint32(p[24:28], seq)
	return p, v
}

// ordTUN records raw and whole writes in one sequence, and fails raw
// writes larger than failOver bytes (0: none fail).
type ordTUN struct {
	recTUN
	seq      []string
	failOver int
}

func (r *ordTUN) WriteRaw(bufs [][]byte) (int, error) {
	b := bytes.Join(bufs, nil)
	if r.failOver > 0 && len(b) > r.failOver {
		return 0, errors.New("ENOBUFS")
	}
	r.seq = append(r.seq, fmt.Sprintf("raw %d", len(b)-vnetHdrLen))
	return r.recTUN.WriteRaw(bufs)
}

func (r *ordTUN) Write(bufs [][]byte, offset int) (int, error) {
	for _, b := range bufs {
		r.seq = append(r.seq, fmt.Sprintf("whole %d", len(b)-offset))
	}
	return r.recTUN.Write(bufs, offset)
}

func rxEngineMax(t testing.TB, maxRX int) (*rxPipe, *ordTUN) {
	tun := &ordTUN{}
	cfg := testConfig(tRemote, tPubB)
	cfg.MaxRXPacket = maxRX
	if err := validate(cfg); err != nil {
		t.Fatal(err)
	}
	e := newEngine(cfg, tun, &loopConn{})
	e.setPeers([]Peer{{Subnet: tLocal, PublicIP: tPubA}})
	return newRxPipe(e), tun
}

// checkMerged checks that got (virtio header, then packet) is parts merged:
// the first part's headers with TTL-1, the total length (0 over 64 KiB),
// a valid header checksum, the pseudo-header sum of the merged TCP length
// in the checksum field, PSH if any part had it, and the payloads in order.
func checkMerged(t *testing.T, got []byte, parts ...[]byte) {
	t.Helper()
	var v vnetHdr
	v.decode(got)
	if wantV := (vnetHdr{flags: 1, gsoType: 1, hdrLen: 52, gsoSize: 1412, csumStart: 20, csumOffset: 16}); v != wantV {
		t.Errorf("virtio_net_hdr %+v, want %+v", v, wantV)
	}
	p := got[vnetHdrLen:]
	first := append([]byte(nil), parts[0][:52]...)
	decTTL(first)
	total, payload := 52, []byte(nil)
	for _, q := range parts {
		total += len(q) - 52
		payload = append(payload, q[52:]...)
	}
	if len(p) != total {
		t.Fatalf("merged packet is %d bytes, want %d", len(p), total)
	}
	wantLen := total
	if total > 65535 {
		wantLen = 0
	}
	if tl := int(binary.BigEndian.Uint16(p[2:4])); tl != wantLen {
		t.Errorf("IPv4 total length %d, want %d", tl, wantLen)
	}
	if checksum(p[:20], 0) != 0 {
		t.Error("IPv4 header checksum does not verify")
	}
	tcpLen := uint32(total - 20)
	ps := uint32(binary.BigEndian.Uint16(p[12:14])) + uint32(binary.BigEndian.Uint16(p[14:16])) +
		uint32(binary.BigEndian.Uint16(p[16:18])) + uint32(binary.BigEndian.Uint16(p[18:20])) + ipProtoTCP + tcpLen>>16 + tcpLen&0xffff
	for ps>>16 != 0 {
		ps = ps&0xffff + ps>>16
	}
	if c := binary.BigEndian.Uint16(p[36:38]); c != uint16(ps) {
		t.Errorf("TCP checksum field %#04x, want the pseudo-header sum %#04x", c, ps)
	}
	// Everything else in the headers is the first part's.
	for _, r := range [][2]int{{0, 2}, {4, 10}, {12, 33}, {34, 36}, {38, 52}} {
		if !bytes.Equal(p[r[0]:r[1]], first[r[0]:r[1]]) {
			t.Errorf("header bytes %d-%d: % x, want % x", r[0], r[1], p[r[0]:r[1]], first[r[0]:r[1]])
		}
	}
	if p[33]&^(tcpFlagPSH|tcpFlagFIN) != first[33]&^(tcpFlagPSH|tcpFlagFIN) {
		t.Errorf("TCP flags %#x, want %#x", p[33], first[33])
	}
	if !bytes.Equal(p[52:], payload) {
		t.Error("payload is not the parts' payloads in order")
	}
}

func TestCoalesceMerges(t *testing.T) {
	const pay = 30000
	a, va := superSeq(1000, pay, 1)
	b, vb := superSeq(1000+pay, pay, 2)
	c, vc := superSeq(1000+2*pay, pay, 3)
	dgrams, _, _ := txDatagrams(t, 64, rawFrame(va, a), rawFrame(vb, b), rawFrame(vc, c))
	segs := uint64((pay + 1411) / 1412)

	t.Run("BIG TCP", func(t *testing.T) {
		rx, tun := rxEngineMax(t, BigRXPacket)
		feed(rx, tPubA, dgrams...)
		if len(tun.raw) != 1 {
			t.Fatalf("%d TUN writes (%v), want 1", len(tun.raw), tun.seq)
		}
		checkMerged(t, tun.raw[0], a, b, c)
		s := rx.e.stats()
		if s.Coalesced != 2 || s.SuperPacketsIn != 3 || s.PacketsIn != 3*segs || s.BytesIn != 3*uint64(pay+52*segs) {
			t.Errorf("stats %+v", s)
		}
	})
	t.Run("64 KiB", func(t *testing.T) {
		rx, tun := rxEngineMax(t, 0)
		feed(rx, tPubA, dgrams...)
		if len(tun.raw) != 2 {
			t.Fatalf("%d TUN writes (%v), want 2", len(tun.raw), tun.seq)
		}
		checkMerged(t, tun.raw[0], a, b)
		checkMerged(t, tun.raw[1], c)
		if s := rx.e.stats(); s.Coalesced != 1 {
			t.Errorf("Coalesced %d, want 1", s.Coalesced)
		}
	})
	t.Run("merged write refused", func(t *testing.T) {
		rx, tun := rxEngineMax(t, BigRXPacket)
		tun.failOver = 65535
		feed(rx, tPubA, dgrams...)
		if len(tun.raw) != 3 {
			t.Fatalf("%d TUN writes (%v), want the 3 parts", len(tun.raw), tun.seq)
		}
		for i, q := range [][]byte{a, b, c} {
			checkMerged(t, tun.raw[i], q)
		}
		s := rx.e.stats()
		if s.CoalesceFailed != 1 || s.Coalesced != 0 || s.PacketsIn != 3*segs || s.Drops[DropSendError] != 0 {
			t.Errorf("stats %+v", s)
		}
	})
	t.Run("across batches", func(t *testing.T) {
		// Each batch ends with its packets written: nothing is held
		// across the receive buffers' reuse.
		rx, tun := rxEngineMax(t, BigRXPacket)
		n := len(dgrams) / 3
		feed(rx, tPubA, dgrams[:n]...)
		if len(tun.raw) != 1 {
			t.Fatalf("after the first batch: %d writes", len(tun.raw))
		}
		feed(rx, tPubA, dgrams[n:]...)
		if len(tun.raw) != 2 {
			t.Fatalf("%d TUN writes, want 2", len(tun.raw))
		}
		checkMerged(t, tun.raw[0], a)
		checkMerged(t, tun.raw[1], b, c)
	})
}

// TestCoalesceRules: a super-packet that does not continue the pending one
// is written on its own, unchanged; another flow is kept apart.
func TestCoalesceRules(t *testing.T) {
	const pay = 20000
	cases := []struct {
		name   string
		first  func(p []byte)
		second func(p []byte)
		merge  bool
	}{
		{"continues", nil, nil, true},
		{"PSH on the first", func(p []byte) { p[33] |= tcpFlagPSH }, nil, true},
		{"FIN on the second", nil, func(p []byte) { p[33] |= tcpFlagFIN }, true},
		{"FIN on the first", func(p []byte) { p[33] |= tcpFlagFIN }, nil, false},
		{"gap", nil, func(p []byte) { binary.BigEndian.PutUint32(p[24:28], 1000+pay+1) }, false},
		{"same sequence", nil, func(p []byte) { binary.BigEndian.PutUint32(p[24:28], 1000) }, false},
		{"other ACK", nil, func(p []byte) { p[28]++ }, false},
		{"other window", nil, func(p []byte) { p[34]++ }, false},
		{"other timestamp", nil, func(p []byte) { p[44]++ }, false},
		{"other TOS", nil, func(p []byte) { p[1] = 0x10; fixIPCsum(p) }, false},
		{"other TTL", nil, func(p []byte) { p[8]--; fixIPCsum(p) }, false},
		{"no DF", nil, func(p []byte) { p[6] &^= 0x40; fixIPCsum(p) }, false},
		{"CWR", nil, func(p []byte) { p[33] |= tcpFlagCWR }, false},
		{"URG", nil, func(p []byte) { p[33] |= tcpFlagURG }, false},
		{"RST", nil, func(p []byte) { p[33] |= tcpFlagRST }, false},
		{"no ACK", func(p []byte) { p[33] &^= tcpFlagACK }, func(p []byte) { p[33] &^= tcpFlagACK }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, va := superSeq(1000, pay, 1)
			b, vb := superSeq(1000+pay, pay, 2)
			if tc.first != nil {
				tc.first(a)
			}
			if tc.second != nil {
				tc.second(b)
			}
			dgrams, _, _ := txDatagrams(t, 64, rawFrame(va, a), rawFrame(vb, b))
			rx, tun := rxEngineMax(t, BigRXPacket)
			feed(rx, tPubA, dgrams...)
			if tc.merge {
				if len(tun.raw) != 1 {
					t.Fatalf("%d writes, want 1 merged", len(tun.raw))
				}
				checkMerged(t, tun.raw[0], a, b)
				if p := tun.raw[0][vnetHdrLen:]; p[33]&(tcpFlagPSH|tcpFlagFIN) != (a[33]|b[33])&(tcpFlagPSH|tcpFlagFIN) {
					t.Errorf("merged flags %#x, want PSH/FIN of both parts", p[33])
				}
				return
			}
			if len(tun.raw) != 2 {
				t.Fatalf("%d writes, want 2", len(tun.raw))
			}
			checkMerged(t, tun.raw[0], a)
			checkMerged(t, tun.raw[1], b)
		})
	}

	t.Run("other gso_size", func(t *testing.T) {
		a, va := superSeq(1000, pay, 1)
		b, vb := superSeq(1000+pay, pay, 2)
		vb.gsoSize = 1400
		dgrams, _, _ := txDatagrams(t, 64, rawFrame(va, a), rawFrame(vb, b))
		rx, tun := rxEngineMax(t, BigRXPacket)
		feed(rx, tPubA, dgrams...)
		if len(tun.raw) != 2 {
			t.Fatalf("%d writes, want 2", len(tun.raw))
		}
	})
	t.Run("two flows interleaved", func(t *testing.T) {
		a1, va1 := superSeq(1000, pay, 1)
		b1, vb1 := superSeq(5000, pay, 2)
		a2, va2 := superSeq(1000+pay, pay, 3)
		b2, vb2 := superSeq(5000+pay, pay, 4)
		for _, p := range [][]byte{b1, b2} {
			binary.BigEndian.PutUint16(p[20:22], 40001) // another source port
		}
		dgrams, _, _ := txDatagrams(t, 64, rawFrame(va1, a1), rawFrame(vb1, b1), rawFrame(va2, a2), rawFrame(vb2, b2))
		rx, tun := rxEngineMax(t, BigRXPacket)
		feed(rx, tPubA, dgrams...)
		if len(tun.raw) != 2 {
			t.Fatalf("%d writes, want one per flow", len(tun.raw))
		}
		checkMerged(t, tun.raw[0], a1, a2)
		checkMerged(t, tun.raw[1], b1, b2)
	})
	t.Run("more flows than slots", func(t *testing.T) {
		var frames [][]byte
		var pkts [][]byte
		for i := 0; i < coFlows+2; i++ {
			p, v := superSeq(1000, 2000, byte(i))
			binary.BigEndian.PutUint16(p[20:22], uint16(41000+i))
			frames, pkts = append(frames, rawFrame(v, p)), append(pkts, p)
		}
		dgrams, _, _ := txDatagrams(t, 64, frames...)
		rx, tun := rxEngineMax(t, BigRXPacket)
		feed(rx, tPubA, dgrams...)
		if len(tun.raw) != len(pkts) {
			t.Fatalf("%d writes, want %d", len(tun.raw), len(pkts))
		}
		seen := map[uint16]bool{}
		for _, w := range tun.raw {
			seen[binary.BigEndian.Uint16(w[vnetHdrLen+20:])] = true
		}
		if len(seen) != len(pkts) {
			t.Errorf("flows written: %v", seen)
		}
	})
}

// TestCoalesceOrder: a whole packet between two super-packets of a flow
// goes out between them.
func TestCoalesceOrder(t *testing.T) {
	a, va := superSeq(1000, 20000, 1)
	b, vb := superSeq(21000, 20000, 2)
	w := ipPacket("10.244.1.5", "10.244.2.9", 64, 300, true)
	dgrams, _, _ := txDatagrams(t, 64, rawFrame(va, a), rawFrame(vnetHdr{}, w), rawFrame(vb, b))
	rx, tun := rxEngineMax(t, BigRXPacket)
	feed(rx, tPubA, dgrams...)
	want := []string{fmt.Sprintf("raw %d", len(a)), fmt.Sprintf("whole %d", len(w)), fmt.Sprintf("raw %d", len(b))}
	if fmt.Sprint(tun.seq) != fmt.Sprint(want) {
		t.Errorf("writes %v, want %v", tun.seq, want)
	}
}

func fixIPCsum(p []byte) {
	p[10], p[11] = 0, 0
	binary.BigEndian.PutUint16(p[10:12], checksum(p[:20], 0))
}

func TestCoalesceLimits(t *testing.T) {
	for _, n := range []int{1, 65534, MaxRXPacketLimit + 1} {
		cfg := testConfig(tRemote, tPubB)
		cfg.MaxRXPacket = n
		if validate(cfg) == nil {
			t.Errorf("MaxRXPacket %d accepted", n)
		}
	}
}
