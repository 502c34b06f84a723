package udptun

import (
	"os"
	"sync"
	"time"
)

// chanTUN is an in-memory TUN device: packets sent on in are read by the
// engine (one per Read); packets the engine writes arrive on out.
type chanTUN struct {
	in        chan []byte
	out       chan []byte
	batch     int
	mu        sync.Mutex
	deadline  chan struct{} // closed when a past deadline is set
	closeOnce sync.Once
	closed    chan struct{}
}

func newChanTUN() *chanTUN {
	return &chanTUN{in: make(chan []byte, 64), out: make(chan []byte, 64), batch: 8, deadline: make(chan struct{}), closed: make(chan struct{})}
}

func (t *chanTUN) BatchSize() int { return t.batch }

func (t *chanTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	t.mu.Lock()
	dl := t.deadline
	t.mu.Unlock()
	select {
	case p := <-t.in:
		sizes[0] = copy(bufs[0][offset:], p)
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
		if len(m.segs) > 1 {
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
// writes: for benchmarks of the per-packet path.
type loopTUN struct {
	pkts    [][]byte
	written int
}

func (t *loopTUN) BatchSize() int { return 128 }
func (t *loopTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	for i, p := range t.pkts {
		sizes[i] = copy(bufs[i][offset:], p)
	}
	return len(t.pkts), nil
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
		c.sent += len(msgs[i].segs)
	}
	return nil
}
func (c *loopConn) SetDeadline(time.Time) error { return nil }
func (c *loopConn) Close() error                { return nil }
