package udptun

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned by Run after Close.
var ErrClosed = errors.New("udptun: engine closed")

// Buffer layout. Every packet buffer keeps tunOffset bytes of headroom in
// front of the inner IPv4 packet: the TUN device reads its 10-byte
// virtio_net_hdr into the last vnetHdrLen bytes of it; on the way out the
// tulle header is then written over the last HeaderLen bytes, so
// encapsulation is done in place; on the way in the virtio_net_hdr for the
// TUN write goes there.
const (
	tunOffset   = 16
	maxPacket   = 65535
	bufSize     = tunOffset + maxPacket
	rxBatchMsgs = 32 // datagrams per recvmmsg (each up to 64 KiB with UDP GRO)
	txOutBatch  = 128
	// rxOutBatch is how many decapsulated packets the RX pipeline collects
	// for one coalescing TUN write; each buffer can grow to a 64 KiB GRO
	// super-packet. TCP bursts bypass it (written whole), so this is the
	// path of other traffic, and 64 keeps the engine's buffers (live heap,
	// which with GOGC=50 also sets how much garbage may pile up) small.
	rxOutBatch = 64
	// txReadBatch is how many packets one TUN read may return: the native
	// device reads at most tunReadBatch per wake-up.
	txReadBatch = 16
	// txIovs is how many iovecs one sendmmsg batch may use: a chunk takes
	// two (its header, its part of the super-packet).
	txIovs = 1024
	// txChunkHdrs is how many chunk headers one batch may hold.
	txChunkHdrs = txIovs / 2
	// maxGSOBytes caps one UDP GSO send (the UDP length field is 16 bits).
	maxGSOBytes = 65000
	// maxGSOSegments is what one UDP GSO send may carry (UDP_MAX_SEGMENTS
	// is 64 on older kernels, 128 on newer ones).
	maxGSOSegments = 64
)

// MaxSuperPacket is the largest TSO super-packet (IPv4 bytes) that leaves
// in one UDP GSO send through an engine with TUN MTU mtu: its chunks are
// datagrams of mtu + HeaderLen bytes (the last one shorter), each with a
// chunk header, and one send takes at most maxGSOSegments datagrams and
// maxGSOBytes bytes. A larger one takes a second send for its last chunk:
// a second skb on every hop of the underlay path and a second GRO message
// at the receiver, for a few hundred bytes. The agent has workloads' TCP
// build super-packets no larger (gso_max_size on their eth0, through
// subnet.json).
func MaxSuperPacket(mtu int) int {
	d := mtu + HeaderLen
	best := 0
	for m := 1; m <= maxGSOSegments; m++ { // m datagrams
		byBytes := maxGSOBytes - firstChunkHdrLen - (m-1)*chunkHdrLen
		byDgrams := d - firstChunkHdrLen + (m-1)*(d-chunkHdrLen)
		best = max(best, min(byBytes, byDgrams))
	}
	return min(best, maxPacket)
}

// ICMP error rate limit (per engine): a token bucket of icmpBurst errors
// refilled at icmpPerSec, like net.ipv4.icmp_msgs_per_sec.
const (
	icmpPerSec = 200
	icmpBurst  = 50
)

// tunDevice is the TUN side of the engine, a device opened with
// IFF_VNET_HDR and TCP segmentation offload (TUN_F_CSUM|TUN_F_TSO4|6).
//
// ReadRaw fills bufs[i] with one packet each, preceded by its 10-byte
// virtio_net_hdr, sets sizes[i] (header included) and returns how many; it
// blocks until at least one is there. A TSO super-packet arrives whole.
// WriteRaw writes one packet preceded by its virtio_net_hdr, made of the
// pieces bufs one after the other (at most reasmMaxPieces+1), as is (for
// super-packets: the kernel segments it or passes it on whole).
// Write sends bufs[i][offset:] as one whole packet each; it may use the
// offset bytes before each packet (>= 10) for a virtio_net_hdr and the
// capacity after it to coalesce packets (GRO), and it may change the slice
// headers in bufs.
// ReadRaw may be called concurrently with the writes; Write and WriteRaw
// must be safe for concurrent use (the TX pipeline writes ICMP errors).
type tunDevice interface {
	ReadRaw(bufs [][]byte, sizes []int) (int, error)
	WriteRaw(bufs [][]byte) (int, error)
	Write(bufs [][]byte, offset int) (int, error)
	SetDeadline(t time.Time) error
	Close() error
}

// packetConn is the underlay side: a UDP socket with batched I/O. One
// goroutine calls ReadBatch and one (possibly another) calls WriteBatch.
type packetConn interface {
	// ReadBatch receives up to len(msgs) datagrams into msgs[i].buf and
	// returns how many it filled. It blocks until at least one arrives.
	ReadBatch(msgs []rxMsg) (int, error)
	// WriteBatch sends every message; a message the kernel refused is
	// marked failed. The error is for the socket as a whole (closed,
	// deadline).
	WriteBatch(msgs []txMsg) error
	// MaxSegments is how many equal-size datagrams one message may carry
	// (UDP GSO); 1 without GSO. It may drop to 1 at run time.
	MaxSegments() int
	SetDeadline(t time.Time) error
	Close() error
}

// rxMsg is one received datagram, or with UDP GRO several datagrams of
// gso bytes each (the last may be shorter) from the same sender.
type rxMsg struct {
	buf   []byte // receive buffer; the data is buf[:n]
	n     int
	src   uint32 // sender IPv4, host order
	gso   int    // segment size, 0 if buf holds a single datagram
	trunc bool   // the datagram did not fit in buf
}

// txMsg is one send: with a single datagram, one datagram; with more, a
// UDP GSO send that the kernel (or NIC) cuts into dgrams datagrams of gso
// bytes each (the last may be shorter). segs are the pieces, sent without
// copying them together (one iovec each): one per datagram for whole
// packets, two (header, data) for super-packet chunks.
type txMsg struct {
	segs   [][]byte
	dst    uint32 // host order
	port   uint16
	gso    int
	dgrams int
	failed bool

	start  int  // index of segs[0] in the pipeline's segment array
	closed bool // a short datagram ended the message
	bytes  int  // UDP payload bytes
	pkts   int  // inner packets (TSO segments for super-packets), for Stats
	inner  int  // inner packet bytes, for Stats
	super  int  // super-packets whose last chunk is in this message
}

// counters are one pipeline's share of the Stats. Each pipeline owns its
// own (padded to keep them on separate cache lines) and adds a batch's
// worth at a time, so the packet loop touches no shared cache line.
type counters struct {
	_           [64]byte
	pkts, bytes atomic.Uint64
	drops       [NumDropReasons]atomic.Uint64
	icmpSent    atomic.Uint64
	icmpLimited atomic.Uint64
	superPkts   atomic.Uint64 // TSO super-packets tunnelled whole
	merged      atomic.Uint64 // RX: super-packets merged into the one before them
	mergeFailed atomic.Uint64 // RX: merged packets the TUN device refused (written part by part)
	_           [64]byte
}

// batchCounters accumulate one batch before they are flushed into counters.
type batchCounters struct {
	pkts, bytes uint64
	drops       [NumDropReasons]uint64
	icmpSent    uint64
	icmpLimited uint64
	superPkts   uint64
	merged      uint64
	mergeFailed uint64
}

func (c *counters) add(b *batchCounters) {
	if b.pkts != 0 {
		c.pkts.Add(b.pkts)
		c.bytes.Add(b.bytes)
	}
	for i, d := range b.drops {
		if d != 0 {
			c.drops[i].Add(d)
		}
	}
	if b.icmpSent != 0 {
		c.icmpSent.Add(b.icmpSent)
	}
	if b.icmpLimited != 0 {
		c.icmpLimited.Add(b.icmpLimited)
	}
	if b.superPkts != 0 {
		c.superPkts.Add(b.superPkts)
	}
	if b.merged != 0 {
		c.merged.Add(b.merged)
	}
	if b.mergeFailed != 0 {
		c.mergeFailed.Add(b.mergeFailed)
	}
	*b = batchCounters{}
}

// engine is the data path proper, independent of how the TUN device and the
// socket were made (Open on Linux, fakes in tests).
type engine struct {
	log       *slog.Logger
	tun       tunDevice
	conn      packetConn
	netID     uint32
	localIP   uint32 // Local's .0, host order: source of ICMP errors
	localMask uint32
	mtu       int
	maxRX     int    // largest packet the RX pipeline writes (coalescing)
	port      uint16 // default peer port
	local     netip.Prefix

	table atomic.Pointer[routeTable]
	tx    counters
	rx    counters

	epoch time.Time // for the ICMP rate limiter's monotonic clock

	runMu     sync.Mutex // held while Run runs
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

func newEngine(cfg Config, tun tunDevice, conn packetConn) *engine {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	local := cfg.Local.Masked()
	e := &engine{
		log:       log.With("component", "udptun", "ifname", cfg.TUNName),
		tun:       tun,
		conn:      conn,
		netID:     cfg.NetworkID,
		localIP:   addrU32(local.Addr()),
		localMask: prefixMask(uint8(local.Bits())),
		mtu:       cfg.MTU,
		maxRX:     cfg.MaxRXPacket,
		port:      cfg.Listen.Port(),
		local:     local,
		epoch:     time.Now(),
	}
	if e.maxRX == 0 {
		e.maxRX = maxPacket
	}
	e.table.Store(&routeTable{})
	return e
}

// validate rejects a Config before Open touches the kernel.
func validate(cfg Config) error {
	switch {
	case cfg.TUNName == "" || len(cfg.TUNName) > 15:
		return fmt.Errorf("udptun: TUN name %q: want 1-15 bytes (IFNAMSIZ-1)", cfg.TUNName)
	case cfg.TUNName == "." || cfg.TUNName == ".." || containsAny(cfg.TUNName, "/: \t\n%"):
		return fmt.Errorf("udptun: TUN name %q: not a valid interface name", cfg.TUNName)
	case cfg.MTU < 68 || cfg.MTU > maxPacket-Overhead:
		return fmt.Errorf("udptun: MTU %d: want 68-%d (underlay MTU - %d)", cfg.MTU, maxPacket-Overhead, Overhead)
	case !cfg.Listen.IsValid() || !cfg.Listen.Addr().Is4() || cfg.Listen.Addr().IsUnspecified() || cfg.Listen.Port() == 0:
		return fmt.Errorf("udptun: Listen %v: want the node's public IPv4 address and a port", cfg.Listen)
	case !cfg.Local.IsValid() || !cfg.Local.Addr().Is4():
		return fmt.Errorf("udptun: Local %v: want an IPv4 prefix", cfg.Local)
	case !cfg.Cluster.IsValid() || !cfg.Cluster.Addr().Is4() || cfg.Cluster.Bits() > cfg.Local.Bits() || !cfg.Cluster.Contains(cfg.Local.Addr()):
		return fmt.Errorf("udptun: Cluster %v: want an IPv4 prefix holding Local %v", cfg.Cluster, cfg.Local)
	case cfg.MaxRXPacket != 0 && (cfg.MaxRXPacket < maxPacket || cfg.MaxRXPacket > MaxRXPacketLimit):
		return fmt.Errorf("udptun: MaxRXPacket %d: want 0 (65535) or %d-%d", cfg.MaxRXPacket, maxPacket, MaxRXPacketLimit)
	}
	return nil
}

func containsAny(s, chars string) bool {
	for i := 0; i < len(s); i++ {
		for j := 0; j < len(chars); j++ {
			if s[i] == chars[j] {
				return true
			}
		}
	}
	return false
}

func (e *engine) setPeers(peers []Peer) {
	t, skipped := newRouteTable(peers, e.local, e.port)
	e.table.Store(t)
	if len(skipped) > 0 {
		e.log.Warn("peers skipped: not IPv4, overlapping the local subnet, or a repeated subnet", "count", len(skipped), "first", fmt.Sprint(skipped[0]))
	}
	e.log.Debug("peers set", "count", len(t.peers))
}

func (e *engine) stats() Stats {
	var s Stats
	s.PacketsOut, s.BytesOut = e.tx.pkts.Load(), e.tx.bytes.Load()
	s.PacketsIn, s.BytesIn = e.rx.pkts.Load(), e.rx.bytes.Load()
	for i := range s.Drops {
		s.Drops[i] = e.tx.drops[i].Load() + e.rx.drops[i].Load()
	}
	s.ICMPSent = e.tx.icmpSent.Load()
	s.ICMPRateLimited = e.tx.icmpLimited.Load()
	s.SuperPacketsOut, s.SuperPacketsIn = e.tx.superPkts.Load(), e.rx.superPkts.Load()
	s.Coalesced, s.CoalesceFailed = e.rx.merged.Load(), e.rx.mergeFailed.Load()
	return s
}

func (e *engine) close() error {
	e.closeOnce.Do(func() {
		e.closed.Store(true)
		e.closeErr = errors.Join(e.conn.Close(), e.tun.Close())
	})
	return e.closeErr
}

// run starts one TX (TUN -> UDP) and one RX (UDP -> TUN) pipeline and waits
// until ctx ends, Close is called, or a pipeline fails. On two cores one
// pipeline per direction is one per core; each runs batches end to end
// (read, process, write) with no hand-off between goroutines.
func (e *engine) run(ctx context.Context) error {
	if !e.runMu.TryLock() {
		return errors.New("udptun: Run is already running")
	}
	defer e.runMu.Unlock()
	if e.closed.Load() {
		return ErrClosed
	}
	var stopping atomic.Bool
	tx, rx := newTxPipe(e), newRxPipe(e)
	errc := make(chan error, 2)
	go func() { errc <- tx.loop(&stopping) }()
	go func() { errc <- rx.loop(&stopping) }()

	var err error
	pending := 2
	select {
	case <-ctx.Done():
	case err = <-errc:
		pending--
	}
	stopping.Store(true)
	// Deadlines in the past wake both pipelines from their blocking reads.
	past := time.Unix(1, 0)
	_ = e.tun.SetDeadline(past)
	_ = e.conn.SetDeadline(past)
	for ; pending > 0; pending-- {
		err = errors.Join(err, <-errc)
	}
	if e.closed.Load() {
		return nil
	}
	_ = e.tun.SetDeadline(time.Time{})
	_ = e.conn.SetDeadline(time.Time{})
	return err
}

// isStop reports whether err means "the fd was closed or its deadline
// passed": the way Run and Close stop the pipelines.
func isStop(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed)
}

// txPipe moves packets TUN -> UDP. All its state is owned by its goroutine.
type txPipe struct {
	e     *engine
	bufs  [][]byte // full buffers; packet i's IPv4 header is at bufs[i][tunOffset]
	rbufs [][]byte // the same from the virtio_net_hdr on: what ReadRaw fills
	sizes []int

	// the send batch under construction: messages, their pieces, and the
	// chunk headers the pieces point into. All fixed capacity; a full
	// batch is sent before more is added.
	msgs    []txMsg
	segs    [][]byte
	hdrs    []byte
	hdrUsed int
	maxSegs int
	spID    uint32 // id of the last super-packet sent

	icmpBuf   []byte
	icmpBatch [][]byte
	lim       rateLimiter

	// one-entry route cache: a batch is mostly segments of one flow.
	cacheTbl *routeTable
	cacheDst uint32
	cacheIdx int32

	c batchCounters
}

func newTxPipe(e *engine) *txPipe {
	n := txReadBatch
	p := &txPipe{
		e:         e,
		bufs:      make([][]byte, n),
		rbufs:     make([][]byte, n),
		sizes:     make([]int, n),
		msgs:      make([]txMsg, 0, txOutBatch),
		segs:      make([][]byte, 0, txIovs),
		hdrs:      make([]byte, txChunkHdrs*firstChunkHdrLen),
		icmpBuf:   make([]byte, tunOffset+icmpMaxLen),
		icmpBatch: make([][]byte, 1),
		lim:       rateLimiter{interval: int64(time.Second) / icmpPerSec, burst: icmpBurst * int64(time.Second) / icmpPerSec},
	}
	slab := make([]byte, n*bufSize)
	for i := range p.bufs {
		p.bufs[i] = slab[i*bufSize : (i+1)*bufSize : (i+1)*bufSize]
		p.rbufs[i] = p.bufs[i][tunOffset-vnetHdrLen:]
	}
	return p
}

func (p *txPipe) loop(stopping *atomic.Bool) error {
	for {
		n, err := p.e.tun.ReadRaw(p.rbufs, p.sizes)
		if n > 0 {
			p.process(n)
		}
		if err != nil {
			if stopping.Load() || p.e.closed.Load() {
				return nil
			}
			return fmt.Errorf("read %s: %w", "tun", err)
		}
	}
}

// process encapsulates and sends the n packets in p.bufs.
func (p *txPipe) process(n int) {
	tbl := p.e.table.Load()
	if tbl != p.cacheTbl {
		p.cacheTbl, p.cacheIdx = tbl, -2
	}
	p.maxSegs = p.e.conn.MaxSegments()
	for i := 0; i < n; i++ {
		p.packet(tbl, p.bufs[i], p.sizes[i])
	}
	p.send()
	p.e.tx.add(&p.c)
}

// packet checks, routes and queues one packet read from the TUN device:
// buf[tunOffset-vnetHdrLen:] holds size bytes, virtio_net_hdr first.
func (p *txPipe) packet(tbl *routeTable, buf []byte, size int) {
	e := p.e
	if size < vnetHdrLen+ipv4MinHeader {
		p.c.drops[DropMalformed]++
		return
	}
	var v vnetHdr
	v.decode(buf[tunOffset-vnetHdrLen:])
	pkt := buf[tunOffset : tunOffset-vnetHdrLen+size]
	tl, ok := checkIPv4(pkt)
	if !ok {
		p.c.drops[DropMalformed]++
		return
	}
	pkt = pkt[:tl]
	// A super-packet counts as the segments it stands for.
	segs, hdrLen, segLen := 1, 0, tl
	if v.gsoType != vnetGSONone {
		if v.gsoType == vnetGSOTCPv4 && v.flags&vnetFlagNeedsCsum == 0 && pkt[9] == ipProtoTCP {
			// A GSO packet with a complete (or validated) checksum:
			// make it partial, as the kernel would, so that the
			// receiving kernel computes every segment's checksum.
			ihl := int(pkt[0]&0x0f) * 4
			if len(pkt) >= ihl+20 {
				tcpPseudoSum(pkt, ihl)
				v.flags, v.csumStart, v.csumOffset = vnetFlagNeedsCsum, uint16(ihl), tcpCsumOffset
			}
		}
		if hdrLen, segs, ok = validateTSO(pkt, &v); !ok {
			p.c.drops[DropMalformed]++
			return
		}
		segLen = hdrLen + int(v.gsoSize)
	} else if v.flags&vnetFlagNeedsCsum != 0 && !finishChecksum(pkt, v.csumStart, v.csumOffset) {
		p.c.drops[DropMalformed]++
		return
	}
	dst := ipv4Dst(pkt)
	idx := p.cacheIdx
	if dst != p.cacheDst || idx == -2 {
		idx = tbl.lookup(dst)
		p.cacheDst, p.cacheIdx = dst, idx
	}
	if idx < 0 {
		p.icmp(pkt, icmpDestUnreach, codeNetUnreach, 0)
		p.c.drops[DropNoRoute] += uint64(segs)
		return
	}
	if pkt[8] <= 1 {
		p.icmp(pkt, icmpTimeExceeded, codeTTLInTransit, 0)
		p.c.drops[DropTTLExceeded] += uint64(segs)
		return
	}
	if segLen > e.mtu && pkt[6]&0x40 != 0 { // DF
		p.icmp(pkt, icmpDestUnreach, codeFragNeeded, uint16(e.mtu))
		p.c.drops[DropTooBig] += uint64(segs)
		return
	}
	// For a super-packet this is the template header the receiving
	// kernel copies into every segment (fixing length, id and checksum).
	decTTL(pkt)
	peer := &tbl.peers[idx]
	if v.gsoType == vnetGSONone {
		seg := buf[tunOffset-HeaderLen : tunOffset+tl]
		putHeader(seg, e.netID)
		if !p.room(1, 0) {
			p.send()
		}
		p.datagram(peer, len(seg), seg, nil, 1, tl)
		return
	}
	p.chunks(pkt, &v, peer, segs, tl+(segs-1)*hdrLen)
}

// chunks queues the super-packet pkt as chunk datagrams of exactly
// mtu+HeaderLen bytes (the last one shorter), which the GSO grouping in
// datagram turns into one or two UDP GSO sends. pkts and inner are the
// segments and bytes it stands for (Stats), credited with the last chunk.
func (p *txPipe) chunks(pkt []byte, v *vnetHdr, peer *peerEntry, pkts, inner int) {
	size := p.e.mtu + HeaderLen
	total := len(pkt)
	p.spID++
	for off := 0; off < total; {
		hl := chunkHdrLen
		if off == 0 {
			hl = firstChunkHdrLen
		}
		n := min(size-hl, total-off)
		if !p.room(2, hl) {
			p.send()
		}
		h := p.hdrs[p.hdrUsed : p.hdrUsed+hl : p.hdrUsed+hl]
		p.hdrUsed += hl
		putChunkHeader(h, p.e.netID, p.spID, off, total, v)
		off += n
		if off < total {
			p.datagram(peer, hl+n, h, pkt[off-n:off], 0, 0)
		} else {
			p.datagram(peer, hl+n, h, pkt[off-n:off], pkts, inner)
			p.msgs[len(p.msgs)-1].super++
		}
	}
}

// room reports whether the batch can take a datagram of iovs pieces and
// hdr bytes of chunk header (and, possibly, a new message).
func (p *txPipe) room(iovs, hdr int) bool {
	return len(p.msgs) < cap(p.msgs) && len(p.segs)+iovs <= cap(p.segs) && p.hdrUsed+hdr <= len(p.hdrs)
}

// datagram adds a datagram of size bytes, made of a and (if not nil) b, to
// the batch: to the last message if it goes to the same peer and fits its
// GSO run (at most gso bytes, and a short datagram ends a run), else to a
// new message. The caller checked room.
func (p *txPipe) datagram(peer *peerEntry, size int, a, b []byte, pkts, inner int) {
	if cur := len(p.msgs) - 1; cur >= 0 {
		m := &p.msgs[cur]
		if m.dst == peer.ip && m.port == peer.port && !m.closed && m.dgrams < p.maxSegs &&
			size <= m.gso && m.bytes+size <= maxGSOBytes {
			p.segs = append(p.segs, a)
			if b != nil {
				p.segs = append(p.segs, b)
			}
			m.segs = p.segs[m.start:]
			m.dgrams++
			m.bytes += size
			m.pkts += pkts
			m.inner += inner
			m.closed = size < m.gso
			return
		}
	}
	start := len(p.segs)
	p.segs = append(p.segs, a)
	if b != nil {
		p.segs = append(p.segs, b)
	}
	p.msgs = append(p.msgs, txMsg{segs: p.segs[start:], dst: peer.ip, port: peer.port, gso: size, dgrams: 1,
		start: start, bytes: size, pkts: pkts, inner: inner})
}

// send writes the batch and counts the result.
func (p *txPipe) send() {
	if len(p.msgs) == 0 {
		return
	}
	err := p.e.conn.WriteBatch(p.msgs)
	for i := range p.msgs {
		m := &p.msgs[i]
		if m.failed || err != nil {
			p.c.drops[DropSendError] += uint64(max(m.pkts, 1))
			continue
		}
		p.c.pkts += uint64(m.pkts)
		p.c.bytes += uint64(m.inner)
		p.c.superPkts += uint64(m.super)
	}
	clear(p.msgs) // drop references to packet buffers
	clear(p.segs)
	p.msgs, p.segs, p.hdrUsed = p.msgs[:0], p.segs[:0], 0
}

// icmp writes an ICMP error about pkt back into the TUN device, from
// Local's .0, unless RFC 1812 forbids it or the rate limit is reached.
func (p *txPipe) icmp(pkt []byte, typ, code uint8, mtu uint16) {
	if !mayAnswerWithICMP(pkt) {
		return
	}
	if !p.lim.allow(int64(time.Since(p.e.epoch))) {
		p.c.icmpLimited++
		return
	}
	n := buildICMPError(p.icmpBuf[tunOffset:], pkt, p.e.localIP, typ, code, mtu)
	p.icmpBatch[0] = p.icmpBuf[:tunOffset+n]
	if _, err := p.e.tun.Write(p.icmpBatch, tunOffset); err != nil {
		p.c.drops[DropSendError]++
		return
	}
	p.c.icmpSent++
}

// rxPipe moves datagrams UDP -> TUN. All its state is owned by its goroutine.
type rxPipe struct {
	e     *engine
	msgs  []rxMsg
	out   [][]byte // full-capacity output buffers
	batch [][]byte // this flush's packets: out[i][:tunOffset+len]
	reasm *reassembler
	iov   [][]byte // a super-packet's pieces for WriteRaw
	ch    chunk
	now   int64 // ns since e.epoch, once per batch (reassembly timeout)
	c     batchCounters
	errs  int // consecutive socket errors

	co      *coalescer
	writeFn writer // e.tun.WriteRaw, made once
}

func newRxPipe(e *engine) *rxPipe {
	p := &rxPipe{e: e, msgs: make([]rxMsg, rxBatchMsgs), out: make([][]byte, rxOutBatch), batch: make([][]byte, 0, rxOutBatch),
		reasm: newReassembler(), iov: make([][]byte, 0, reasmMaxPieces+1), co: newCoalescer(e.maxRX)}
	p.writeFn = func(iov [][]byte) error {
		_, err := e.tun.WriteRaw(iov)
		return err
	}
	slab := make([]byte, rxBatchMsgs*maxPacket)
	for i := range p.msgs {
		p.msgs[i].buf = slab[i*maxPacket : (i+1)*maxPacket : (i+1)*maxPacket]
	}
	// Each output buffer can grow to a 64 KiB GRO super-packet in place.
	out := make([]byte, rxOutBatch*bufSize)
	for i := range p.out {
		p.out[i] = out[i*bufSize : (i+1)*bufSize : (i+1)*bufSize]
	}
	return p
}

func (p *rxPipe) loop(stopping *atomic.Bool) error {
	for {
		n, err := p.e.conn.ReadBatch(p.msgs)
		if n > 0 {
			p.errs = 0
			p.process(n)
		}
		if err != nil {
			if stopping.Load() || p.e.closed.Load() {
				return nil
			}
			if isStop(err) {
				return fmt.Errorf("read udp: %w", err)
			}
			// A transient socket error (ENOBUFS, ENOMEM, a queued ICMP
			// error): count it and go on; back off if it persists.
			p.c.drops[DropSendError]++
			p.e.rx.add(&p.c)
			if p.errs++; p.errs > 100 {
				time.Sleep(time.Millisecond)
			}
		}
	}
}

func (p *rxPipe) process(n int) {
	tbl := p.e.table.Load()
	p.now = int64(time.Since(p.e.epoch))
	for i := 0; i < n; i++ {
		p.datagram(tbl, &p.msgs[i])
	}
	p.endBatch()
}

// endBatch writes what the batch left queued, copies the chunks of
// incomplete super-packets out of the receive buffers (which the next
// batch reuses) and counts the batch.
func (p *rxPipe) endBatch() {
	p.flush()
	p.reasm.settle()
	p.e.rx.add(&p.c)
}

// datagram checks and decapsulates one received message (one or, with GRO,
// several datagrams from one sender) into p.batch, or, for super-packet
// chunks, into the reassembler.
func (p *rxPipe) datagram(tbl *routeTable, m *rxMsg) {
	e := p.e
	data := m.buf[:m.n]
	seg := m.gso
	if seg <= 0 || seg > len(data) {
		seg = len(data)
	}
	if m.trunc || seg == 0 {
		p.c.drops[DropBadHeader]++
		return
	}
	if !tbl.isSender(m.src) {
		p.c.drops[DropUnknownSender] += uint64((len(data) + seg - 1) / seg)
		return
	}
	for off := 0; off < len(data); off += seg {
		d := data[off:min(off+seg, len(data))]
		if isChunk(d) {
			p.chunk(m.src, d)
			continue
		}
		if r := checkHeader(d, e.netID); r != dropNone {
			p.c.drops[r]++
			continue
		}
		inner := d[HeaderLen:]
		tl, ok := checkIPv4(inner)
		if !ok {
			p.c.drops[DropMalformed]++
			continue
		}
		inner = inner[:tl]
		if ipv4Dst(inner)&e.localMask != e.localIP {
			p.c.drops[DropNotLocal]++
			continue
		}
		if p.co.n > 0 {
			p.co.flush(p.writeFn, &p.c) // keep a flow's order
		}
		if len(p.batch) == cap(p.batch) {
			p.flushWhole()
		}
		b := p.out[len(p.batch)]
		copy(b[tunOffset:], inner)
		p.batch = append(p.batch, b[:tunOffset+tl])
		p.c.pkts++
		p.c.bytes += uint64(tl)
	}
}

// chunk files one super-packet chunk from src and writes the super-packet
// out when it is complete.
func (p *rxPipe) chunk(src uint32, d []byte) {
	if r := parseChunk(d, p.e.netID, &p.ch); r != dropNone {
		p.c.drops[r]++
		return
	}
	s, lost := p.reasm.add(src, &p.ch, p.now)
	p.c.drops[DropIncomplete] += lost
	if s != nil {
		p.superPacket(s)
		p.reasm.release(s)
	}
}

// superPacket checks a reassembled super-packet like any other inner packet
// (IPv4, for Local), validates the virtio_net_hdr fields its sender gave
// (validateTSO; a segment must fit an IPv4 packet), and writes it into the
// TUN device as one GSO packet with a partial checksum.
//
// Segments larger than our MTU are not dropped here: a peer with a larger
// underlay MTU may send them, and the kernel's forwarding path answers a
// too-big DF segment with ICMP fragmentation needed (ip_exceeds_mtu), so
// the sender learns the path MTU instead of seeing a black hole.
func (p *rxPipe) superPacket(s *reasmSlot) {
	e := p.e
	if len(s.head()) < min(maxTCPv4Headers, s.total) {
		s.settle() // tiny chunks: make the headers contiguous
	}
	head := s.head()
	if tl, ok := checkIPv4Len(head, s.total); !ok || tl != s.total {
		p.c.drops[DropMalformed]++
		return
	}
	hdrLen, segs, ok := validateTSOLen(head, s.total, &s.v)
	if !ok || hdrLen+int(s.v.gsoSize) > maxPacket {
		p.c.drops[DropMalformed]++
		return
	}
	if ipv4Dst(head)&e.localMask != e.localIP {
		p.c.drops[DropNotLocal] += uint64(segs)
		return
	}
	// Whole packets that arrived before it go first: TCP takes
	// reordering as a hint of loss.
	p.flushWhole()
	v := vnetHdr{flags: vnetFlagNeedsCsum, gsoType: vnetGSOTCPv4, hdrLen: uint16(hdrLen),
		gsoSize: s.v.gsoSize, csumStart: s.v.csumStart, csumOffset: s.v.csumOffset}
	if s.copied == 0 {
		// All of it is in this batch's receive buffers: coalesce.
		p.co.add(head, hdrLen, s.total, segs, &v, s.pieces, p.writeFn, &p.c)
		return
	}
	// Part of it is in the slot's buffer, which the next super-packet
	// may overwrite before the batch ends: write it now, after what its
	// flow has pending.
	p.co.flushFlow(head, p.writeFn, &p.c)
	v.encode(s.buf[tunOffset-vnetHdrLen:])
	p.iov = s.iovecs(p.iov[:0])
	_, err := e.tun.WriteRaw(p.iov)
	clear(p.iov) // drop references to receive buffers
	if err != nil {
		p.c.drops[DropSendError] += uint64(segs)
		return
	}
	p.c.pkts += uint64(segs)
	p.c.bytes += uint64(s.total + (segs-1)*hdrLen)
	p.c.superPkts++
}

// flush writes what the batch has pending: coalesced super-packets and
// whole packets (only one of the two is pending at any time).
func (p *rxPipe) flush() {
	p.co.flush(p.writeFn, &p.c)
	p.flushWhole()
}

func (p *rxPipe) flushWhole() {
	if len(p.batch) == 0 {
		return
	}
	if _, err := p.e.tun.Write(p.batch, tunOffset); err != nil {
		// The TUN writer reports one joined error for the whole batch and
		// not which packets failed: count one send_error per failed batch.
		p.c.drops[DropSendError]++
	}
	p.batch = p.batch[:0]
}

// rateLimiter is a GCRA token bucket: at most burst/interval events at once,
// then one per interval. It is owned by one goroutine.
type rateLimiter struct {
	interval, burst int64 // nanoseconds
	tat             int64 // theoretical arrival time
}

func (r *rateLimiter) allow(now int64) bool {
	tat := max(r.tat, now)
	if tat-now >= r.burst {
		return false
	}
	r.tat = tat + r.interval
	return true
}
