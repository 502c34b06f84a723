package udptun

import (
	"bytes"
	"os"
	"sync"
	"time"
)

// chanTUN is an in-memory TUN device: packets sent on in (whole packets)
// or inRaw (virtio_net_hdr first) are read by the engine (one per Read);
// whole packets the engine writes arrive on out, raw writes (virtio_net_hdr
// first) on raw.
type chanTUN struct {
	in        chan []byte
	inRaw     chan []byte
	out       chan []byte
	raw       chan []byte
	mu        sync.Mutex
	deadline  chan struct{} // closed when a past deadline is set
	closeOnce sync.Once
	closed    chan struct{}
}

func newChanTUN() *chanTUN {
	return &chanTUN{in: make(chan []byte, 64), inRaw: make(chan []byte, 64), out: make(chan []byte, 64), raw: make(chan []byte, 64),
		deadline: make(chan struct{}), closed: make(chan struct{})}
}

func (t *chanTUN) ReadRaw(bufs [][]byte, sizes []int) (int, error) {
	t.mu.Lock()
	dl := t.deadline
	t.mu.Unlock()
	select {
	case p := <-t.in:
		clear(bufs[0][:vnetHdrLen])
		sizes[0] = vnetHdrLen + copy(bufs[0][vnetHdrLen:], p)
		return 1, nil
	case p := <-t.inRaw:
		sizes[0] = copy(bufs[0], p)
		return 1, nil
	case <-dl:
		return 0, os.ErrDeadlineExceeded
	case <-t.closed:
		return 0, os.ErrClosed
	}
}

func (t *chanTUN) Write(bufs [][]byte, offset int) (int, error) {
	n := 0
	for _, b := range bufs {
		t.out <- append([]byte(nil), b[offset:]...)
		n += len(b) - offset
	}
	return n, nil
}

func (t *chanTUN) WriteRaw(bufs [][]byte) (int, error) {
	b := bytes.Join(bufs, nil)
	t.raw <- b
	return len(b), nil
}

func (t *chanTUN) SetDeadline(d time.Time) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !d.IsZero() && d.Before(time.Now()) {
		select {
		case <-t.deadline:
		default:
			close(t.deadline)
		}
	} else {
		t.deadline = make(chan struct{})
	}
	return nil
}

func (t *chanTUN) Close() error { t.closeOnce.Do(func() { close(t.closed) }); return nil }

// chanConn is an in-memory UDP socket at address self; WriteBatch delivers
// to the chanConn registered for the destination in net (GSO messages are
// delivered as one GRO message, as the kernel does over veth).
type chanConn struct {
	self      uint32
	net       map[uint32]*chanConn
	in        chan rxMsg
	maxSegs   int
	mu        sync.Mutex
	deadline  chan struct{}
	closeOnce sync.Once
	closed    chan struct{}
}

func newChanConn(self uint32, net map[uint32]*chanConn) *chanConn {
	c := &chanConn{self: self, net: net, in: make(chan rxMsg, 64), maxSegs: 64, deadline: make(chan struct{}), closed: make(chan struct{})}
	net[self] = c
	return c
}

func (c *chanConn) MaxSegments() int { return c.maxSegs }

func (c *chanConn) ReadBatch(msgs []rxMsg) (int, error) {
	c.mu.Lock()
	dl := c.deadline
	c.mu.Unlock()
	select {
	case m := <-c.in:
		msgs[0].n = copy(msgs[0].buf, m.buf)
		msgs[0].src, msgs[0].gso, msgs[0].trunc = m.src, m.gso, false
		return 1, nil
	case <-dl:
		return 0, os.ErrDeadlineExceeded
	case <-c.closed:
		return 0, os.ErrClosed
	}
}

func (c *chanConn) WriteBatch(msgs []txMsg) error {
	for i := range msgs {
		m := &msgs[i]
		var b []byte
		for _, s := range m.segs {
			b = append(b, s...)
		}
		gso := 0
		if m.dgrams > 1 {
			gso = m.gso
		}
		if peer := c.net[m.dst]; peer != nil {
			peer.in <- rxMsg{buf: b, src: c.self, gso: gso}
		} else {
			m.failed = true
		}
	}
	return nil
}

func (c *chanConn) SetDeadline(d time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !d.IsZero() && d.Before(time.Now()) {
		select {
		case <-c.deadline:
		default:
			close(c.deadline)
		}
	} else {
		c.deadline = make(chan struct{})
	}
	return nil
}

func (c *chanConn) Close() error { c.closeOnce.Do(func() { close(c.closed) }); return nil }

// loopTUN serves the same prebuilt batch on every Read and discards
// writes: for benchmarks of the per-packet path. pkts are whole packets
// (read with a zero virtio_net_hdr), or with raw set, virtio_net_hdr first.
type loopTUN struct {
	pkts    [][]byte
	raw     bool
	written int
}

func (t *loopTUN) ReadRaw(bufs [][]byte, sizes []int) (int, error) {
	for i, p := range t.pkts {
		if t.raw {
			sizes[i] = copy(bufs[i], p)
			continue
		}
		clear(bufs[i][:vnetHdrLen])
		sizes[i] = vnetHdrLen + copy(bufs[i][vnetHdrLen:], p)
	}
	return len(t.pkts), nil
}
func (t *loopTUN) WriteRaw(bufs [][]byte) (int, error) {
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	t.written += n - vnetHdrLen
	return n, nil
}
func (t *loopTUN) Write(bufs [][]byte, offset int) (int, error) {
	for _, b := range bufs {
		t.written += len(b) - offset
	}
	return t.written, nil
}
func (t *loopTUN) SetDeadline(time.Time) error { return nil }
func (t *loopTUN) Close() error                { return nil }

// loopConn serves the same prebuilt datagrams on every ReadBatch and
// discards writes.
type loopConn struct {
	msgs []rxMsg
	sent int
}

func (c *loopConn) MaxSegments() int { return 64 }
func (c *loopConn) ReadBatch(msgs []rxMsg) (int, error) {
	for i, m := range c.msgs {
		msgs[i].n = copy(msgs[i].buf, m.buf[:m.n])
		msgs[i].src, msgs[i].gso, msgs[i].trunc = m.src, m.gso, false
	}
	return len(c.msgs), nil
}
func (c *loopConn) WriteBatch(msgs []txMsg) error {
	for i := range msgs {
		c.sent += msgs[i].dgrams
	}
	return nil
}
func (c *loopConn) SetDeadline(time.Time) error { return nil }
func (c *loopConn) Close() error                { return nil }
