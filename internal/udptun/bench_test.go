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
	b.Run("split", func(b *testing.B) { // 44 whole packets: one TSO burst as the kernel segments it without TSO
		tun := &loopTUN{}
		for range 44 {
			tun.pkts = append(tun.pkts, ipPacket("10.244.1.5", "10.244.2.9", 64, 1436, true))
		}
		benchTX(b, tun, 44, 44*1464)
	})
	b.Run("tso", func(b *testing.B) { // one 64 KiB super-packet, tunnelled whole
		p, v := tcpSuper("10.244.1.5", "10.244.2.9", 64, 65535-52, 1412, 0)
		benchTX(b, &loopTUN{pkts: [][]byte{rawFrame(v, p)}, raw: true}, (65535-52+1411)/1412, len(p))
	})
}

func benchTX(b *testing.B, tun *loopTUN, pkts, bytes int) {
	e := newEngine(testConfig(tLocal, tPubA), tun, &loopConn{})
	e.setPeers([]Peer{{Subnet: tRemote, PublicIP: tPubB}, {Subnet: netip.MustParsePrefix("10.244.3.0/24"), PublicIP: tPubA}})
	tx := newTxPipe(e)
	b.SetBytes(int64(bytes))
	b.ReportAllocs()
	for b.Loop() {
		n, _ := tun.ReadRaw(tx.rbufs, tx.sizes)
		tx.process(n)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*pkts), "ns/pkt")
}

func BenchmarkRX(b *testing.B) {
	b.Run("tso", func(b *testing.B) { // the chunks of one 64 KiB super-packet, as two GRO messages
		p, v := tcpSuper("10.244.1.5", "10.244.2.9", 64, 65535-52, 1412, 0)
		dgrams, _, _ := txDatagrams(b, 64, rawFrame(v, p))
		conn := &loopConn{}
		for i := 0; i < len(dgrams); i += 44 {
			var buf []byte
			for _, d := range dgrams[i:min(i+44, len(dgrams))] {
				buf = append(buf, d...)
			}
			conn.msgs = append(conn.msgs, rxMsg{buf: buf, n: len(buf), src: addrU32(tPubA), gso: len(dgrams[0])})
		}
		e := newEngine(testConfig(tRemote, tPubB), &loopTUN{}, conn)
		e.setPeers([]Peer{{Subnet: tLocal, PublicIP: tPubA}})
		rx := newRxPipe(e)
		pkts := (65535 - 52 + 1411) / 1412
		b.SetBytes(int64(len(p)))
		b.ReportAllocs()
		for b.Loop() {
			n, _ := conn.ReadBatch(rx.msgs)
			rx.process(n)
		}
		if e.rx.superPkts.Load() == 0 {
			b.Fatal("no super-packet written")
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*pkts), "ns/pkt")
	})
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
