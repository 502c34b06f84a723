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
	"syscall"
	"time"
)

// ErrClosed is returned by Run after Close.
var ErrClosed = errors.New("udptun: engine closed")

// Buffer layout. Every packet buffer keeps tunOffset bytes of headroom in
// front of the inner IPv4 packet: on the way out the tulle header is written
// into the last HeaderLen bytes of it, so encapsulation is done in place; on
// the way in the TUN writer puts its 10-byte virtio_net_hdr there.
const (
	tunOffset   = 16
	maxPacket   = 65535
	bufSize     = tunOffset + maxPacket
	rxBatchMsgs = 32 // datagrams per recvmmsg (each up to 64 KiB with UDP GRO)
	txOutBatch  = 128
	// maxGSOBytes caps one UDP GSO send (the UDP length field is 16 bits).
	maxGSOBytes = 65000
)

// ICMP error rate limit (per engine): a token bucket of icmpBurst errors
// refilled at icmpPerSec, like net.ipv4.icmp_msgs_per_sec.
const (
	icmpPerSec = 200
	icmpBurst  = 50
)

// tunDevice is the TUN side of the engine: wireguard-go's tun.Device
// contract plus deadlines. Read fills bufs[i][offset:] with one packet each
// (a TSO super-packet arrives already split) and sets sizes[i]. Write sends
// bufs[i][offset:] as one packet each; it may use the offset bytes before
// each packet (>= 10) for a virtio_net_hdr and the capacity after it to
// coalesce packets (GRO), and it may change the slice headers in bufs.
// Read and Write may be called concurrently with each other; Write must be
// safe for concurrent use (the TX pipeline writes ICMP errors).
type tunDevice interface {
	Read(bufs [][]byte, sizes []int, offset int) (int, error)
	Write(bufs [][]byte, offset int) (int, error)
	BatchSize() int
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

// txMsg is one send: with a single segment, one datagram; with more, a UDP
// GSO send that the kernel (or NIC) cuts into len(segs) datagrams of gso
// bytes each (the last may be shorter). segs are sent without copying them
// together (one iovec each).
type txMsg struct {
	segs   [][]byte
	dst    uint32 // host order
	port   uint16
	gso    int
	failed bool

	start  int  // index of segs[0] in the pipeline's segment array
	closed bool // a short segment ended the message
	bytes  int  // UDP payload bytes
	inner  int  // inner packet bytes (for Stats)
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
	_           [64]byte
}

// batchCounters accumulate one batch before they are flushed into counters.
type batchCounters struct {
	pkts, bytes uint64
	drops       [NumDropReasons]uint64
	icmpSent    uint64
	icmpLimited uint64
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
		port:      cfg.Listen.Port(),
		local:     local,
		epoch:     time.Now(),
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
	bufs  [][]byte
	sizes []int
	msgs  []txMsg
	segs  [][]byte

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
	n := max(e.tun.BatchSize(), 1)
	p := &txPipe{
		e:         e,
		bufs:      make([][]byte, n),
		sizes:     make([]int, n),
		msgs:      make([]txMsg, 0, n),
		segs:      make([][]byte, 0, n),
		icmpBuf:   make([]byte, tunOffset+icmpMaxLen),
		icmpBatch: make([][]byte, 1),
		lim:       rateLimiter{interval: int64(time.Second) / icmpPerSec, burst: icmpBurst * int64(time.Second) / icmpPerSec},
	}
	slab := make([]byte, n*bufSize)
	for i := range p.bufs {
		p.bufs[i] = slab[i*bufSize : (i+1)*bufSize : (i+1)*bufSize]
	}
	return p
}

func (p *txPipe) loop(stopping *atomic.Bool) error {
	for {
		n, err := p.e.tun.Read(p.bufs, p.sizes, tunOffset)
		if n > 0 {
			p.process(n)
		}
		if err != nil {
			if stopping.Load() || p.e.closed.Load() {
				return nil
			}
			var errno syscall.Errno
			if isStop(err) || errors.As(err, &errno) {
				return fmt.Errorf("read %s: %w", "tun", err)
			}
			// A super-packet the splitter could not handle (bad virtio
			// header, too many segments): drop it and go on.
			p.c.drops[DropMalformed]++
			p.e.tx.add(&p.c)
		}
	}
}

// process encapsulates and sends the n packets in p.bufs.
func (p *txPipe) process(n int) {
	e := p.e
	tbl := e.table.Load()
	if tbl != p.cacheTbl {
		p.cacheTbl, p.cacheIdx = tbl, -2
	}
	maxSegs := e.conn.MaxSegments()
	msgs, segs := p.msgs[:0], p.segs[:0]
	cur := -1
	for i := 0; i < n; i++ {
		pkt := p.bufs[i][tunOffset : tunOffset+p.sizes[i]]
		tl, ok := checkIPv4(pkt)
		if !ok {
			p.c.drops[DropMalformed]++
			continue
		}
		pkt = pkt[:tl]
		dst := ipv4Dst(pkt)
		idx := p.cacheIdx
		if dst != p.cacheDst || idx == -2 {
			idx = tbl.lookup(dst)
			p.cacheDst, p.cacheIdx = dst, idx
		}
		if idx < 0 {
			p.icmp(pkt, icmpDestUnreach, codeNetUnreach, 0)
			p.c.drops[DropNoRoute]++
			continue
		}
		if pkt[8] <= 1 {
			p.icmp(pkt, icmpTimeExceeded, codeTTLInTransit, 0)
			p.c.drops[DropTTLExceeded]++
			continue
		}
		if tl > e.mtu && pkt[6]&0x40 != 0 { // DF
			p.icmp(pkt, icmpDestUnreach, codeFragNeeded, uint16(e.mtu))
			p.c.drops[DropTooBig]++
			continue
		}
		decTTL(pkt)
		seg := p.bufs[i][tunOffset-HeaderLen : tunOffset+tl]
		putHeader(seg, e.netID)
		peer := &tbl.peers[idx]

		if cur >= 0 {
			m := &msgs[cur]
			if m.dst == peer.ip && m.port == peer.port && !m.closed && len(m.segs) < maxSegs &&
				len(seg) <= m.gso && m.bytes+len(seg) <= maxGSOBytes {
				segs = append(segs, seg)
				m.segs = segs[m.start:]
				m.bytes += len(seg)
				m.inner += tl
				m.closed = len(seg) < m.gso
				continue
			}
		}
		segs = append(segs, seg)
		msgs = append(msgs, txMsg{segs: segs[len(segs)-1:], dst: peer.ip, port: peer.port, gso: len(seg),
			start: len(segs) - 1, bytes: len(seg), inner: tl})
		cur = len(msgs) - 1
	}
	if len(msgs) > 0 {
		err := e.conn.WriteBatch(msgs)
		for i := range msgs {
			m := &msgs[i]
			if m.failed || err != nil {
				p.c.drops[DropSendError] += uint64(len(m.segs))
				continue
			}
			p.c.pkts += uint64(len(m.segs))
			p.c.bytes += uint64(m.inner)
		}
		clear(msgs) // drop references to packet buffers
	}
	p.e.tx.add(&p.c)
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
	c     batchCounters
	errs  int // consecutive socket errors
}

func newRxPipe(e *engine) *rxPipe {
	p := &rxPipe{e: e, msgs: make([]rxMsg, rxBatchMsgs), out: make([][]byte, txOutBatch), batch: make([][]byte, 0, txOutBatch)}
	slab := make([]byte, rxBatchMsgs*maxPacket)
	for i := range p.msgs {
		p.msgs[i].buf = slab[i*maxPacket : (i+1)*maxPacket : (i+1)*maxPacket]
	}
	// Each output buffer can grow to a 64 KiB GRO super-packet in place.
	out := make([]byte, txOutBatch*bufSize)
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
	for i := 0; i < n; i++ {
		p.datagram(tbl, &p.msgs[i])
	}
	p.flush()
	p.e.rx.add(&p.c)
}

// datagram checks and decapsulates one received message (one or, with GRO,
// several datagrams from one sender) into p.batch.
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
		if len(p.batch) == cap(p.batch) {
			p.flush()
		}
		b := p.out[len(p.batch)]
		copy(b[tunOffset:], inner)
		p.batch = append(p.batch, b[:tunOffset+tl])
		p.c.pkts++
		p.c.bytes += uint64(tl)
	}
}

func (p *rxPipe) flush() {
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
