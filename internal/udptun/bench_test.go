package udptun

import (
	"net/netip"
	"testing"
)

// The benchmarks drive the full per-packet path (TUN read -> checks -> route
// -> TTL -> header -> GSO grouping -> socket batch, and socket batch ->
// checks -> copy -> TUN write batch) over fakes, one batch per op. They
// must report 0 allocs/op.

func BenchmarkTX(b *testing.B) {
	tun := &loopTUN{}
	for range 44 { // one 64 KiB TSO super-packet, split
		tun.pkts = append(tun.pkts, ipPacket("10.244.1.5", "10.244.2.9", 64, 1436, true))
	}
	e := newEngine(testConfig(tLocal, tPubA), tun, &loopConn{})
	e.setPeers([]Peer{{Subnet: tRemote, PublicIP: tPubB}, {Subnet: netip.MustParsePrefix("10.244.3.0/24"), PublicIP: tPubA}})
	tx := newTxPipe(e)
	b.SetBytes(int64(44 * 1464))
	b.ReportAllocs()
	for b.Loop() {
		n, _ := tun.Read(tx.bufs, tx.sizes, tunOffset)
		tx.process(n)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*44), "ns/pkt")
}

func BenchmarkRX(b *testing.B) {
	for _, gro := range []bool{true, false} {
		name := "gro"
		if !gro {
			name = "single"
		}
		b.Run(name, func(b *testing.B) {
			inner := ipPacket("10.244.1.5", "10.244.2.9", 64, 1436, false)
			seg := make([]byte, HeaderLen+len(inner))
			putHeader(seg, 7)
			copy(seg[HeaderLen:], inner)
			conn := &loopConn{}
			pkts := 0
			if gro {
				var buf []byte
				for range 44 {
					buf = append(buf, seg...)
				}
				conn.msgs = []rxMsg{{buf: buf, n: len(buf), src: addrU32(tPubA), gso: len(seg)}}
				pkts = 44
			} else {
				for range rxBatchMsgs {
					conn.msgs = append(conn.msgs, rxMsg{buf: seg, n: len(seg), src: addrU32(tPubA)})
				}
				pkts = rxBatchMsgs
			}
			e := newEngine(testConfig(tRemote, tPubB), &loopTUN{}, conn)
			e.setPeers([]Peer{{Subnet: tLocal, PublicIP: tPubA}})
			rx := newRxPipe(e)
			b.SetBytes(int64(pkts * len(inner)))
			b.ReportAllocs()
			for b.Loop() {
				n, _ := conn.ReadBatch(rx.msgs)
				rx.process(n)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*pkts), "ns/pkt")
		})
	}
}
