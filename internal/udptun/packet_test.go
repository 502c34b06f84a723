package udptun

import (
	"bytes"
	"context"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"testing"
	"testing/quick"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

var (
	tCluster = netip.MustParsePrefix("10.244.0.0/16")
	tLocal   = netip.MustParsePrefix("10.244.1.0/24")
	tRemote  = netip.MustParsePrefix("10.244.2.0/24")
	tPubA    = netip.MustParseAddr("192.168.50.1")
	tPubB    = netip.MustParseAddr("192.168.50.2")
)

func testConfig(local netip.Prefix, pub netip.Addr) Config {
	return Config{TUNName: "uq0t", MTU: 1464, Listen: netip.AddrPortFrom(pub, DefaultPort), NetworkID: 7, Local: local, Cluster: tCluster}
}

// ipPacket builds an IPv4/UDP packet with a valid header checksum.
func ipPacket(src, dst string, ttl uint8, payload int, df bool) []byte {
	p := make([]byte, 28+payload)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:6], 0x1234)
	if df {
		p[6] = 0x40
	}
	p[8], p[9] = ttl, 17
	copy(p[12:16], netip.MustParseAddr(src).AsSlice())
	copy(p[16:20], netip.MustParseAddr(dst).AsSlice())
	binary.BigEndian.PutUint16(p[10:12], checksum(p[:20], 0))
	binary.BigEndian.PutUint16(p[20:22], 4000)
	binary.BigEndian.PutUint16(p[22:24], 5000)
	binary.BigEndian.PutUint16(p[24:26], uint16(8+payload))
	return p
}

func TestHeader(t *testing.T) {
	b := make([]byte, HeaderLen)
	putHeader(b, 0xdeadbeef)
	if !bytes.Equal(b, []byte{0x74, 0x75, 1, 0, 0xde, 0xad, 0xbe, 0xef}) {
		t.Fatalf("header % x", b)
	}
	cases := []struct {
		name string
		b    []byte
		want DropReason
	}{
		{"ok", []byte{0x74, 0x75, 1, 0, 0xde, 0xad, 0xbe, 0xef, 0x45}, dropNone},
		{"ok, no payload", []byte{0x74, 0x75, 1, 0, 0xde, 0xad, 0xbe, 0xef}, dropNone},
		{"short", []byte{0x74, 0x75, 1, 0, 0xde, 0xad, 0xbe}, DropBadHeader},
		{"empty", nil, DropBadHeader},
		{"magic", []byte{0x74, 0x76, 1, 0, 0xde, 0xad, 0xbe, 0xef}, DropBadHeader},
		{"version", []byte{0x74, 0x75, 2, 0, 0xde, 0xad, 0xbe, 0xef}, DropBadHeader},
		{"flags", []byte{0x74, 0x75, 1, 1, 0xde, 0xad, 0xbe, 0xef}, DropBadHeader},
		{"network", []byte{0x74, 0x75, 1, 0, 0xde, 0xad, 0xbe, 0xee}, DropWrongNetwork},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := checkHeader(tc.b, 0xdeadbeef); got != tc.want {
				t.Errorf("checkHeader = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestCheckIPv4(t *testing.T) {
	good := ipPacket("10.0.0.1", "10.0.0.2", 64, 10, false)
	cases := []struct {
		name   string
		p      []byte
		wantOK bool
		wantN  int
	}{
		{"ok", good, true, len(good)},
		{"trailing bytes", append(append([]byte(nil), good...), 0, 0, 0), true, len(good)},
		{"truncated", good[:len(good)-1], false, 0},
		{"short", good[:19], false, 0},
		{"ipv6", append([]byte{0x60}, good[1:]...), false, 0},
		{"ihl 4", append([]byte{0x44}, good[1:]...), false, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n, ok := checkIPv4(tc.p)
			if ok != tc.wantOK || n != tc.wantN {
				t.Errorf("checkIPv4 = %d, %v; want %d, %v", n, ok, tc.wantN, tc.wantOK)
			}
		})
	}
}

// TestDecTTLQuick checks the incremental checksum against a full one.
func TestDecTTLQuick(t *testing.T) {
	f := func(h [20]byte) bool {
		h[0] = 0x45
		if h[8] < 2 {
			h[8] = 2
		}
		binary.BigEndian.PutUint16(h[10:12], 0)
		binary.BigEndian.PutUint16(h[10:12], checksum(h[:], 0))
		ttl := h[8]
		decTTL(h[:])
		return h[8] == ttl-1 && checksum(h[:], 0) == 0
	}
	if err := quick.Check(f, &quick.Config{MaxCount: 20000}); err != nil {
		t.Error(err)
	}
	// RFC 1624's corner case: a checksum of 0xffff must not become 0x0000
	// from a sum that is really zero; the full checksum must still verify.
	p := ipPacket("0.0.0.0", "0.0.0.0", 2, 0, false)
	decTTL(p)
	if checksum(p[:20], 0) != 0 {
		t.Errorf("checksum after decTTL does not verify: % x", p[:20])
	}
}

func TestBuildICMPError(t *testing.T) {
	orig := ipPacket("10.244.1.5", "10.244.9.9", 64, 1200, true)
	dst := make([]byte, icmpMaxLen)
	src := addrU32(netip.MustParseAddr("10.244.1.0"))
	n := buildICMPError(dst, orig, src, icmpDestUnreach, codeFragNeeded, 1464)
	p := dst[:n]
	if n != icmpMaxLen {
		t.Errorf("length %d, want %d (quote truncated to 576)", n, icmpMaxLen)
	}
	if checksum(p[:20], 0) != 0 {
		t.Error("IP header checksum does not verify")
	}
	if got := netip.AddrFrom4([4]byte(p[12:16])); got.String() != "10.244.1.0" {
		t.Errorf("source %v", got)
	}
	if got := netip.AddrFrom4([4]byte(p[16:20])); got.String() != "10.244.1.5" {
		t.Errorf("destination %v", got)
	}
	m, err := icmp.ParseMessage(1, p[20:])
	if err != nil {
		t.Fatal(err)
	}
	if m.Type != ipv4.ICMPTypeDestinationUnreachable || m.Code != 4 {
		t.Errorf("type %v code %d", m.Type, m.Code)
	}
	if checksum(p[20:], 0) != 0 {
		t.Error("ICMP checksum does not verify")
	}
	if mtu := binary.BigEndian.Uint16(p[26:28]); mtu != 1464 {
		t.Errorf("next-hop MTU %d", mtu)
	}
	if !bytes.Equal(p[28:48], orig[:20]) {
		t.Error("quoted header differs from the original")
	}
}

func TestMayAnswerWithICMP(t *testing.T) {
	udp := ipPacket("10.244.1.5", "10.244.9.9", 64, 8, false)
	mod := func(f func(p []byte)) []byte { p := append([]byte(nil), udp...); f(p); return p }
	icmpOf := func(typ byte) []byte {
		return mod(func(p []byte) { p[9] = ipProtoICMP; p[20] = typ })
	}
	cases := []struct {
		name string
		p    []byte
		want bool
	}{
		{"udp", udp, true},
		{"echo request", icmpOf(8), true},
		{"dest unreachable", icmpOf(3), false},
		{"time exceeded", icmpOf(11), false},
		{"later fragment", mod(func(p []byte) { p[7] = 1 }), false},
		{"first fragment", mod(func(p []byte) { p[6] = 0x20 }), true},
		{"from 0.0.0.0", mod(func(p []byte) { copy(p[12:16], []byte{0, 0, 0, 0}) }), false},
		{"from multicast", mod(func(p []byte) { p[12] = 224 }), false},
		{"from broadcast", mod(func(p []byte) { copy(p[12:16], []byte{255, 255, 255, 255}) }), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := mayAnswerWithICMP(tc.p); got != tc.want {
				t.Errorf("mayAnswerWithICMP = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestRouteTable(t *testing.T) {
	peers := []Peer{
		{Subnet: netip.MustParsePrefix("10.244.2.0/24"), PublicIP: tPubB},
		{Subnet: netip.MustParsePrefix("10.244.3.0/24"), PublicIP: netip.MustParseAddr("192.168.50.3"), Port: 9000},
		{Subnet: netip.MustParsePrefix("10.244.4.0/23"), PublicIP: netip.MustParseAddr("192.168.50.4")},
		{Subnet: netip.MustParsePrefix("10.244.4.128/25"), PublicIP: netip.MustParseAddr("192.168.50.5")},
		{Subnet: netip.MustParsePrefix("10.244.2.0/24"), PublicIP: netip.MustParseAddr("192.168.50.9")}, // repeat: skipped
		{Subnet: netip.MustParsePrefix("10.244.1.0/25"), PublicIP: netip.MustParseAddr("192.168.50.8")}, // overlaps local
		{Subnet: netip.MustParsePrefix("fd00::/64"), PublicIP: netip.MustParseAddr("192.168.50.7")},     // not IPv4
	}
	tbl, skipped := newRouteTable(peers, tLocal, DefaultPort)
	if len(skipped) != 3 {
		t.Errorf("skipped %v, want the last three", skipped)
	}
	cases := []struct {
		dst  string
		want string // public IP:port or ""
	}{
		{"10.244.2.1", "192.168.50.2:8285"},
		{"10.244.2.255", "192.168.50.2:8285"},
		{"10.244.3.7", "192.168.50.3:9000"},
		{"10.244.4.1", "192.168.50.4:8285"},
		{"10.244.5.1", "192.168.50.4:8285"},
		{"10.244.4.200", "192.168.50.5:8285"},
		{"10.244.1.5", ""},
		{"10.244.6.1", ""},
		{"8.8.8.8", ""},
	}
	for _, tc := range cases {
		i := tbl.lookup(addrU32(netip.MustParseAddr(tc.dst)))
		got := ""
		if i >= 0 {
			p := tbl.peers[i]
			got = netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(p.ip >> 24), byte(p.ip >> 16), byte(p.ip >> 8), byte(p.ip)}), p.port).String()
		}
		if got != tc.want {
			t.Errorf("lookup(%s) = %q, want %q", tc.dst, got, tc.want)
		}
	}
	if !tbl.isSender(addrU32(tPubB)) || tbl.isSender(addrU32(netip.MustParseAddr("192.168.50.9"))) {
		t.Error("sender set wrong: skipped peers must not be senders")
	}
}

// TestRouteTableQuick compares lookup with a linear longest-prefix scan.
func TestRouteTableQuick(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 200; round++ {
		var peers []Peer
		for range r.IntN(40) {
			bits := 8 + r.IntN(25)
			a := netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(256)), byte(r.IntN(256))})
			peers = append(peers, Peer{Subnet: netip.PrefixFrom(a, bits).Masked(), PublicIP: netip.AddrFrom4([4]byte{192, 168, 0, byte(r.IntN(256))})})
		}
		tbl, _ := newRouteTable(peers, netip.Prefix{}, 1)
		for range 200 {
			dst := netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(256)), byte(r.IntN(256))})
			best := -1
			for i, p := range tbl.peers {
				if p.subnet.Contains(dst) && (best < 0 || p.subnet.Bits() > tbl.peers[best].subnet.Bits()) {
					best = i
				}
			}
			if got := tbl.lookup(addrU32(dst)); int(got) != best {
				t.Fatalf("lookup(%v) = %d, linear scan %d (peers %v)", dst, got, best, tbl.peers)
			}
		}
	}
}

func TestRateLimiter(t *testing.T) {
	l := rateLimiter{interval: int64(time.Second) / icmpPerSec, burst: icmpBurst * int64(time.Second) / icmpPerSec}
	now := int64(time.Hour)
	n := 0
	for range 1000 {
		if l.allow(now) {
			n++
		}
	}
	if n != icmpBurst {
		t.Errorf("burst allowed %d, want %d", n, icmpBurst)
	}
	n = 0
	for range 1000 { // 1 s in 1 ms steps, trying 5 times per step
		now += int64(time.Millisecond)
		for range 5 {
			if l.allow(now) {
				n++
			}
		}
	}
	if n != icmpPerSec {
		t.Errorf("over 1 s allowed %d, want %d", n, icmpPerSec)
	}
}

func TestValidate(t *testing.T) {
	ok := testConfig(tLocal, tPubA)
	if err := validate(ok); err != nil {
		t.Fatal(err)
	}
	bad := map[string]func(*Config){
		"long name":         func(c *Config) { c.TUNName = "0123456789abcdef" },
		"empty name":        func(c *Config) { c.TUNName = "" },
		"slash":             func(c *Config) { c.TUNName = "a/b" },
		"mtu":               func(c *Config) { c.MTU = 20 },
		"listen v6":         func(c *Config) { c.Listen = netip.MustParseAddrPort("[::1]:8285") },
		"listen port 0":     func(c *Config) { c.Listen = netip.AddrPortFrom(tPubA, 0) },
		"listen 0.0.0.0":    func(c *Config) { c.Listen = netip.MustParseAddrPort("0.0.0.0:8285") },
		"local outside":     func(c *Config) { c.Local = netip.MustParsePrefix("10.9.1.0/24") },
		"no local":          func(c *Config) { c.Local = netip.Prefix{} },
		"cluster too small": func(c *Config) { c.Cluster = netip.MustParsePrefix("10.244.1.0/25") },
	}
	for name, f := range bad {
		c := ok
		f(&c)
		if err := validate(c); err == nil {
			t.Errorf("%s: validate accepted %+v", name, c)
		}
	}
}

// pair is two engines over in-memory TUNs and sockets.
type pair struct {
	a, b       *engine
	tunA, tunB *chanTUN
}

func newPair(t *testing.T) *pair {
	t.Helper()
	net := map[uint32]*chanConn{}
	p := &pair{tunA: newChanTUN(), tunB: newChanTUN()}
	p.a = newEngine(testConfig(tLocal, tPubA), p.tunA, newChanConn(addrU32(tPubA), net))
	p.b = newEngine(testConfig(tRemote, tPubB), p.tunB, newChanConn(addrU32(tPubB), net))
	p.a.setPeers([]Peer{{Subnet: tRemote, PublicIP: tPubB}})
	p.b.setPeers([]Peer{{Subnet: tLocal, PublicIP: tPubA}})
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- p.a.run(ctx) }()
	go func() { done <- p.b.run(ctx) }()
	t.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
		}
		// goroutine leak check: the pipelines are gone.
		deadline := time.Now().Add(2 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			t.Errorf("%d goroutines after run returned, %d before", n, before)
		}
	})
	return p
}

func recv(t *testing.T, c chan []byte) []byte {
	t.Helper()
	select {
	case p := <-c:
		return p
	case <-time.After(5 * time.Second):
		t.Fatal("no packet")
		return nil
	}
}

func TestEngineOverFakes(t *testing.T) {
	p := newPair(t)
	pkt := ipPacket("10.244.1.5", "10.244.2.9", 64, 100, true)
	p.tunA.in <- pkt
	got := recv(t, p.tunB.out)
	want := append([]byte(nil), pkt...)
	decTTL(want)
	if !bytes.Equal(got, want) {
		t.Errorf("B's TUN got\n% x\nwant (TTL-1)\n% x", got, want)
	}
	// And back.
	p.tunB.in <- ipPacket("10.244.2.9", "10.244.1.5", 64, 100, false)
	if got := recv(t, p.tunA.out); got[8] != 63 {
		t.Errorf("A got TTL %d, want 63", got[8])
	}

	// Unknown subnet: ICMP net unreachable back into A's TUN.
	p.tunA.in <- ipPacket("10.244.1.5", "10.244.99.1", 64, 10, false)
	ic := recv(t, p.tunA.out)
	if ic[9] != ipProtoICMP || ic[20] != icmpDestUnreach || ic[21] != codeNetUnreach {
		t.Errorf("want ICMP net unreachable, got % x", ic[:24])
	}
	// Too big with DF.
	p.tunA.in <- ipPacket("10.244.1.5", "10.244.2.9", 64, 1500, true)
	ic = recv(t, p.tunA.out)
	if ic[20] != icmpDestUnreach || ic[21] != codeFragNeeded || binary.BigEndian.Uint16(ic[26:28]) != 1464 {
		t.Errorf("want ICMP fragmentation needed mtu 1464, got % x", ic[:28])
	}
	// Too big without DF: sent (the underlay fragments the datagram).
	p.tunA.in <- ipPacket("10.244.1.5", "10.244.2.9", 64, 1500, false)
	if got := recv(t, p.tunB.out); len(got) != 1528 {
		t.Errorf("non-DF big packet: got %d bytes, want 1528", len(got))
	}
	// TTL 1: time exceeded.
	p.tunA.in <- ipPacket("10.244.1.5", "10.244.2.9", 1, 10, false)
	ic = recv(t, p.tunA.out)
	if ic[20] != icmpTimeExceeded {
		t.Errorf("want ICMP time exceeded, got % x", ic[:24])
	}
	waitFor(t, func() bool {
		s := p.a.stats()
		return s.Drops[DropNoRoute] == 1 && s.Drops[DropTooBig] == 1 && s.Drops[DropTTLExceeded] == 1 && s.ICMPSent == 3 && s.PacketsOut == 2
	}, func() any { return p.a.stats() })
}

func waitFor(t *testing.T, cond func() bool, state func() any) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met: %+v", state())
		}
		time.Sleep(time.Millisecond)
	}
}

// TestRXChecks feeds crafted datagrams through the RX path.
func TestRXChecks(t *testing.T) {
	hdr := func(id uint32) []byte { b := make([]byte, HeaderLen); putHeader(b, id); return b }
	inner := ipPacket("10.244.1.5", "10.244.2.9", 64, 10, false)
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	cases := []struct {
		name   string
		src    netip.Addr
		data   []byte
		gso    int
		wantIn uint64
		drop   DropReason
		nDrop  uint64
	}{
		{"valid", tPubA, cat(hdr(7), inner), 0, 1, dropNone, 0},
		{"non-peer", netip.MustParseAddr("192.168.50.66"), cat(hdr(7), inner), 0, 0, DropUnknownSender, 1},
		{"non-peer gro", netip.MustParseAddr("192.168.50.66"), cat(hdr(7), inner, hdr(7), inner), len(inner) + 8, 0, DropUnknownSender, 2},
		{"wrong network", tPubA, cat(hdr(8), inner), 0, 0, DropWrongNetwork, 1},
		{"short", tPubA, hdr(7)[:5], 0, 0, DropBadHeader, 1},
		{"no inner", tPubA, hdr(7), 0, 0, DropMalformed, 1},
		{"truncated inner", tPubA, cat(hdr(7), inner[:30]), 0, 0, DropMalformed, 1},
		{"not local", tPubA, cat(hdr(7), ipPacket("10.244.1.5", "10.244.3.9", 64, 10, false)), 0, 0, DropNotLocal, 1},
		{"gro three", tPubA, cat(hdr(7), inner, hdr(7), inner, hdr(7), ipPacket("10.244.1.5", "10.244.2.9", 64, 2, false)), len(inner) + 8, 3, dropNone, 0},
		{"gro one bad", tPubA, cat(hdr(7), inner, hdr(9), inner), len(inner) + 8, 1, DropWrongNetwork, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			eng := newEngine(testConfig(tRemote, tPubB), &loopTUN{}, &loopConn{})
			eng.setPeers([]Peer{{Subnet: tLocal, PublicIP: tPubA}})
			rx := newRxPipe(eng)
			m := rxMsg{buf: tc.data, n: len(tc.data), src: addrU32(tc.src), gso: tc.gso}
			rx.datagram(eng.table.Load(), &m)
			rx.endBatch()
			s := eng.stats()
			if s.PacketsIn != tc.wantIn {
				t.Errorf("PacketsIn = %d, want %d", s.PacketsIn, tc.wantIn)
			}
			for r := range NumDropReasons {
				want := uint64(0)
				if r == tc.drop {
					want = tc.nDrop
				}
				if s.Drops[r] != want {
					t.Errorf("drops[%v] = %d, want %d", r, s.Drops[r], want)
				}
			}
		})
	}
}

// TestTXGSOCoalescing: equal-size segments to one peer become one GSO
// message; a short one closes it; another peer starts a new one.
func TestTXGSOCoalescing(t *testing.T) {
	tun := &loopTUN{}
	conn := &recordConn{}
	e := newEngine(testConfig(tLocal, tPubA), tun, conn)
	e.setPeers([]Peer{{Subnet: tRemote, PublicIP: tPubB}, {Subnet: netip.MustParsePrefix("10.244.3.0/24"), PublicIP: netip.MustParseAddr("192.168.50.3")}})
	big := func(dst string) []byte { return ipPacket("10.244.1.5", dst, 64, 1400, true) }
	tun.pkts = [][]byte{big("10.244.2.9"), big("10.244.2.9"), big("10.244.2.9"), ipPacket("10.244.1.5", "10.244.2.9", 64, 100, true), big("10.244.2.9"), big("10.244.3.1")}
	tx := newTxPipe(e)
	n, _ := tun.ReadRaw(tx.rbufs, tx.sizes)
	tx.process(n)
	want := []int{4, 1, 1}
	if len(conn.segs) != len(want) {
		t.Fatalf("messages %v, want segment counts %v", conn.segs, want)
	}
	for i := range want {
		if conn.segs[i] != want[i] {
			t.Errorf("message %d: %d segments, want %d", i, conn.segs[i], want[i])
		}
	}
	if conn.gso[0] != 1436 {
		t.Errorf("gso size %d, want 1436", conn.gso[0])
	}
}

type recordConn struct {
	loopConn
	segs, gso []int
}

func (c *recordConn) WriteBatch(msgs []txMsg) error {
	for _, m := range msgs {
		c.segs = append(c.segs, len(m.segs))
		c.gso = append(c.gso, m.gso)
		for _, s := range m.segs {
			if checkHeader(s, 7) != dropNone {
				panic("segment without a valid header")
			}
		}
	}
	return nil
}

// FuzzRX: any datagram, from a peer or not, with any GRO size: no panic,
// and whatever reaches the TUN is a whole IPv4 packet for Local; a
// super-packet (all its chunks in one GRO message) also passes the checks
// of a kernel-made one (checkTUN.WriteRaw).
func FuzzRX(f *testing.F) {
	hdr := make([]byte, HeaderLen)
	putHeader(hdr, 7)
	f.Add(append(hdr, ipPacket("10.244.1.5", "10.244.2.9", 64, 10, false)...), 0, true)
	f.Add([]byte{0x74, 0x75, 1, 0}, 3, true)
	sp, v := tcpSuper("10.244.1.5", "10.244.2.9", 64, 3000, 1412, 0)
	dgrams, _, _ := txDatagrams(f, 64, rawFrame(v, sp))
	f.Add(bytes.Join(dgrams, nil), len(dgrams[0]), true)
	f.Fuzz(func(t *testing.T, data []byte, gso int, fromPeer bool) {
		tun := &checkTUN{t: t}
		e := newEngine(testConfig(tRemote, tPubB), tun, &loopConn{})
		e.setPeers([]Peer{{Subnet: tLocal, PublicIP: tPubA}})
		rx := newRxPipe(e)
		src := tPubA
		if !fromPeer {
			src = tPubB
		}
		m := rxMsg{buf: data, n: len(data), src: addrU32(src), gso: gso}
		rx.datagram(e.table.Load(), &m)
		rx.endBatch()
	})
}

type checkTUN struct {
	loopTUN
	t *testing.T
}

func (c *checkTUN) Write(bufs [][]byte, offset int) (int, error) {
	for _, b := range bufs {
		p := b[offset:]
		n, ok := checkIPv4(p)
		if !ok || n != len(p) || !tRemote.Contains(netip.AddrFrom4([4]byte(p[16:20]))) {
			c.t.Fatalf("TUN got a packet that should have been dropped: % x", p)
		}
	}
	return 0, nil
}

// FuzzTX: any packet from the TUN: no panic; what is sent carries a valid
// header and a whole IPv4 packet with its TTL decremented and a header
// checksum that still verifies if it did before.
func FuzzTX(f *testing.F) {
	f.Add(ipPacket("10.244.1.5", "10.244.2.9", 64, 10, false))
	f.Add(ipPacket("10.244.1.5", "10.244.99.9", 1, 10, true))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		if len(pkt) > 60000 {
			return
		}
		tun := &loopTUN{pkts: [][]byte{pkt}}
		conn := &fuzzConn{t: t, orig: pkt}
		e := newEngine(testConfig(tLocal, tPubA), tun, conn)
		e.setPeers([]Peer{{Subnet: tRemote, PublicIP: tPubB}})
		tx := newTxPipe(e)
		n, _ := tun.ReadRaw(tx.rbufs, tx.sizes)
		tx.process(n)
	})
}

type fuzzConn struct {
	loopConn
	t    *testing.T
	orig []byte
}

func (c *fuzzConn) WriteBatch(msgs []txMsg) error {
	for _, m := range msgs {
		for _, s := range m.segs {
			if checkHeader(s, 7) != dropNone {
				c.t.Fatal("no valid header")
			}
			p := s[HeaderLen:]
			n, ok := checkIPv4(p)
			if !ok || n != len(p) || p[8] != c.orig[8]-1 {
				c.t.Fatalf("sent % x for % x", p, c.orig)
			}
			ihl := int(p[0]&0xf) * 4
			if checksum(c.orig[:ihl], 0) == 0 && checksum(p[:ihl], 0) != 0 {
				c.t.Fatal("header checksum broken by the TTL update")
			}
		}
	}
	return nil
}
