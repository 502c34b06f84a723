package udptun

import (
	"net/netip"
	"testing"
)

// The benchmarks drive the full per-packet path (TUN read -> checks -> route
// -> TTL -> header -> GSO grouping -> socket batch, and socket batch ->
// checks -> copy -> TUN write batch) over fakes, one batch per op. They
// must report 0 allocs/op; TestPerPacketPathAllocs checks that in every
// test run, so a change that allocates per packet fails CI instead of
// only showing up when someone runs the benchmarks.

// pathOp is one batch through a pipeline over fakes: op runs it, pkts and
// bytes are what one op moves (TSO segments and their bytes).
type pathOp struct {
	name        string
	op          func()
	pkts, bytes int
	check       func(testing.TB) // after the runs: the path really ran
}

func txOps() []pathOp {
	split := &loopTUN{} // whole packets, as the kernel segments a burst without TSO: one full read batch
	for range txReadBatch {
		split.pkts = append(split.pkts, ipPacket("10.244.1.5", "10.244.2.9", 64, 1436, true))
	}
	p, v := tcpSuper("10.244.1.5", "10.244.2.9", 64, 65535-52, 1412, 0) // one 64 KiB super-packet, tunnelled whole
	tso := &loopTUN{pkts: [][]byte{rawFrame(v, p)}, raw: true}
	return []pathOp{
		txOp("split", split, txReadBatch, txReadBatch*1464),
		txOp("tso", tso, (65535-52+1411)/1412, len(p)),
	}
}

func txOp(name string, tun *loopTUN, pkts, bytes int) pathOp {
	e := newEngine(testConfig(tLocal, tPubA), tun, &loopConn{})
	e.setPeers([]Peer{{Subnet: tRemote, PublicIP: tPubB}, {Subnet: netip.MustParsePrefix("10.244.3.0/24"), PublicIP: tPubA}})
	tx := newTxPipe(e)
	return pathOp{name: name, pkts: pkts, bytes: bytes,
		op: func() {
			n, _ := tun.ReadRaw(tx.rbufs, tx.sizes)
			tx.process(n)
		},
		check: func(tb testing.TB) {
			if e.tx.pkts.Load() == 0 {
				tb.Fatalf("%s: nothing sent", name)
			}
		}}
}

func rxOps(tb testing.TB) []pathOp {
	var ops []pathOp
	{ // the chunks of one 64 KiB super-packet, as two GRO messages
		p, v := tcpSuper("10.244.1.5", "10.244.2.9", 64, 65535-52, 1412, 0)
		dgrams, _, _ := txDatagrams(tb, 64, rawFrame(v, p))
		conn := &loopConn{}
		for i := 0; i < len(dgrams); i += 44 {
			var buf []byte
			for _, d := range dgrams[i:min(i+44, len(dgrams))] {
				buf = append(buf, d...)
			}
			conn.msgs = append(conn.msgs, rxMsg{buf: buf, n: len(buf), src: addrU32(tPubA), gso: len(dgrams[0])})
		}
		ops = append(ops, rxOp("tso", conn, (65535-52+1411)/1412, len(p), true))
	}
	inner := ipPacket("10.244.1.5", "10.244.2.9", 64, 1436, false)
	seg := make([]byte, HeaderLen+len(inner))
	putHeader(seg, 7)
	copy(seg[HeaderLen:], inner)
	{ // one GRO message of 44 whole packets
		var buf []byte
		for range 44 {
			buf = append(buf, seg...)
		}
		conn := &loopConn{msgs: []rxMsg{{buf: buf, n: len(buf), src: addrU32(tPubA), gso: len(seg)}}}
		ops = append(ops, rxOp("gro", conn, 44, 44*len(inner), false))
	}
	{ // a full batch of single datagrams
		conn := &loopConn{}
		for range rxBatchMsgs {
			conn.msgs = append(conn.msgs, rxMsg{buf: seg, n: len(seg), src: addrU32(tPubA)})
		}
		ops = append(ops, rxOp("single", conn, rxBatchMsgs, rxBatchMsgs*len(inner), false))
	}
	return ops
}

// rxOp is conn's batch through an RX pipeline; with super set the batch
// must have been written as a reassembled super-packet.
func rxOp(name string, conn *loopConn, pkts, bytes int, super bool) pathOp {
	e := newEngine(testConfig(tRemote, tPubB), &loopTUN{}, conn)
	e.setPeers([]Peer{{Subnet: tLocal, PublicIP: tPubA}})
	rx := newRxPipe(e)
	return pathOp{name: name, pkts: pkts, bytes: bytes,
		op: func() {
			n, _ := conn.ReadBatch(rx.msgs)
			rx.process(n)
		},
		check: func(tb testing.TB) {
			if e.rx.pkts.Load() == 0 || super && e.rx.superPkts.Load() == 0 {
				tb.Fatalf("%s: nothing written to the TUN (or not as a super-packet)", name)
			}
		}}
}

func runBench(b *testing.B, o pathOp) {
	b.SetBytes(int64(o.bytes))
	b.ReportAllocs()
	for b.Loop() {
		o.op()
	}
	o.check(b)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*o.pkts), "ns/pkt")
}

func BenchmarkTX(b *testing.B) {
	for _, o := range txOps() {
		b.Run(o.name, func(b *testing.B) { runBench(b, o) })
	}
}

func BenchmarkRX(b *testing.B) {
	for _, o := range rxOps(b) {
		b.Run(o.name, func(b *testing.B) { runBench(b, o) })
	}
}

// TestPerPacketPathAllocs is the benchmarks' 0 allocs/op, checked in every
// test run.
func TestPerPacketPathAllocs(t *testing.T) {
	ops := append(txOps(), rxOps(t)...)
	for _, o := range ops {
		o.op() // first use may size lazily-grown state
		if a := testing.AllocsPerRun(50, o.op); a != 0 {
			t.Errorf("%s: %.1f allocations per batch, want 0", o.name, a)
		}
		o.check(t)
	}
}
