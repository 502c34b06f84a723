package udptun

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// socketBuffer is SO_RCVBUF/SO_SNDBUF (forced past net.core.rmem_max as
// root). Flannel's receiver overflows at the default 208 KiB: a 10 Gbit/s
// burst fills that in 170 us.
const socketBuffer = 16 << 20

// udpConn is the underlay socket with recvmmsg/sendmmsg, UDP GSO on send
// and UDP GRO on receive when the kernel has them. The mmsghdr, iovec,
// address and control arrays are allocated once; a batch only fills them
// in. The syscalls run inside RawConn.Read/Write callbacks, so the socket
// stays in Go's netpoller (deadlines and Close wake a blocked call).
type udpConn struct {
	c  *net.UDPConn
	rc syscall.RawConn

	gso atomic.Bool // UDP_SEGMENT usable (cleared on EIO)
	gro bool

	// receive side: used by the one ReadBatch caller.
	rmsgs  []unix.Mmsghdr
	riovs  []unix.Iovec
	rnames []unix.RawSockaddrInet4
	rctl   []byte
	rn     int
	rerr   error
	readFn func(uintptr) bool

	// send side: used by the one WriteBatch caller.
	wmsgs   []unix.Mmsghdr
	wiovs   []unix.Iovec
	wnames  []unix.RawSockaddrInet4
	wctl    []byte
	wtx     []txMsg
	wn      int
	woff    int
	writeFn func(uintptr) bool
}

const rctlSize = 64

var gsoCmsgSpace = unix.CmsgSpace(2)

// listenUDP binds addr in the calling thread's network namespace with
// large buffers and, where the kernel has them, UDP GSO and GRO.
func listenUDP(addr netip.AddrPort, batch, iovs int) (*udpConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
				if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], socketBuffer) != nil {
					// Not root: as much as net.core.[rw]mem_max allows.
					if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], socketBuffer); err != nil {
						serr = fmt.Errorf("set socket buffer: %w", err)
					}
				}
			}
		})
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", addr.String())
	if err != nil {
		switch {
		case errors.Is(err, unix.EADDRINUSE):
			return nil, fmt.Errorf("bind udp %s: port in use (another agent, or another network on this port?): %w", addr, err)
		case errors.Is(err, unix.EADDRNOTAVAIL):
			return nil, fmt.Errorf("bind udp %s: the address is not on any interface in this network namespace: %w", addr, err)
		}
		return nil, fmt.Errorf("bind udp %s: %w", addr, err)
	}
	c := pc.(*net.UDPConn)
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("bind udp %s: %w", addr, err)
	}
	u := &udpConn{
		c: c, rc: rc,
		rmsgs: make([]unix.Mmsghdr, rxBatchMsgs), riovs: make([]unix.Iovec, rxBatchMsgs),
		rnames: make([]unix.RawSockaddrInet4, rxBatchMsgs), rctl: make([]byte, rxBatchMsgs*rctlSize),
		wmsgs: make([]unix.Mmsghdr, batch), wiovs: make([]unix.Iovec, iovs),
		wnames: make([]unix.RawSockaddrInet4, batch), wctl: make([]byte, batch*gsoCmsgSpace),
	}
	u.readFn, u.writeFn = u.doRead, u.doWrite
	_ = rc.Control(func(fd uintptr) {
		// UDP GSO: kernel 4.18. UDP GRO on the socket: 5.0. Probe, as
		// wireguard-go's conn.supportsUDPOffload does.
		_, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT)
		u.gso.Store(err == nil)
		u.gro = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil
	})
	return u, nil
}

func (u *udpConn) MaxSegments() int {
	if u.gso.Load() {
		return maxGSOSegments
	}
	return 1
}

func (u *udpConn) SetDeadline(t time.Time) error { return u.c.SetDeadline(t) }
func (u *udpConn) Close() error                  { return u.c.Close() }

func (u *udpConn) ReadBatch(msgs []rxMsg) (int, error) {
	n := min(len(msgs), len(u.rmsgs))
	for i := 0; i < n; i++ {
		buf := msgs[i].buf
		u.riovs[i].Base = &buf[0]
		u.riovs[i].SetLen(len(buf))
		h := &u.rmsgs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&u.rnames[i]))
		h.Namelen = unix.SizeofSockaddrInet4
		h.Iov = &u.riovs[i]
		h.SetIovlen(1)
		h.Control = &u.rctl[i*rctlSize]
		h.SetControllen(rctlSize)
		h.Flags = 0
	}
	u.rn = n
	if err := u.rc.Read(u.readFn); err != nil {
		return 0, err
	}
	if u.rerr != nil {
		return 0, u.rerr
	}
	for i := 0; i < u.rn; i++ {
		m, h := &msgs[i], &u.rmsgs[i]
		m.n = int(h.Len)
		a := &u.rnames[i].Addr
		m.src = uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
		m.trunc = h.Hdr.Flags&unix.MSG_TRUNC != 0
		m.gso = 0
		if u.gro && h.Hdr.Controllen > 0 {
			m.gso = groSize(u.rctl[i*rctlSize : i*rctlSize+int(h.Hdr.Controllen)])
		}
	}
	return u.rn, nil
}

func (u *udpConn) doRead(fd uintptr) bool {
	for {
		r, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&u.rmsgs[0])), uintptr(u.rn), unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case 0:
			u.rn, u.rerr = int(r), nil
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			u.rn, u.rerr = 0, fmt.Errorf("recvmmsg: %w", errno)
			return true
		}
	}
}

// groSize returns the UDP_GRO segment size in the control messages, or 0.
func groSize(ctl []byte) int {
	for len(ctl) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(ctl) {
			return 0
		}
		if h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_GRO && l >= unix.CmsgLen(2) {
			d := ctl[unix.CmsgLen(0):]
			return int(*(*uint16)(unsafe.Pointer(&d[0])))
		}
		ctl = ctl[min(unix.CmsgSpace(l-unix.SizeofCmsghdr), len(ctl)):]
	}
	return 0
}

func (u *udpConn) WriteBatch(msgs []txMsg) error {
	if len(msgs) > len(u.wmsgs) {
		return fmt.Errorf("udptun: batch of %d messages over %d", len(msgs), len(u.wmsgs))
	}
	iov := 0
	for i := range msgs {
		m := &msgs[i]
		if iov+len(m.segs) > len(u.wiovs) {
			return fmt.Errorf("udptun: batch of over %d segments", len(u.wiovs))
		}
		first := iov
		for _, s := range m.segs {
			u.wiovs[iov].Base = &s[0]
			u.wiovs[iov].SetLen(len(s))
			iov++
		}
		sa := &u.wnames[i]
		sa.Family = unix.AF_INET
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		p[0], p[1] = byte(m.port>>8), byte(m.port)
		sa.Addr = [4]byte{byte(m.dst >> 24), byte(m.dst >> 16), byte(m.dst >> 8), byte(m.dst)}
		h := &u.wmsgs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(sa))
		h.Namelen = unix.SizeofSockaddrInet4
		h.Iov = &u.wiovs[first]
		h.SetIovlen(len(m.segs))
		h.Control, h.Controllen = nil, 0
		if m.dgrams > 1 {
			ctl := u.wctl[i*gsoCmsgSpace : (i+1)*gsoCmsgSpace]
			ch := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
			ch.Level, ch.Type = unix.IPPROTO_UDP, unix.UDP_SEGMENT
			ch.SetLen(unix.CmsgLen(2))
			*(*uint16)(unsafe.Pointer(&ctl[unix.CmsgLen(0)])) = uint16(m.gso)
			h.Control = &ctl[0]
			h.SetControllen(gsoCmsgSpace)
		}
		h.Flags = 0
	}
	u.wtx, u.wn, u.woff = msgs, len(msgs), 0
	err := u.rc.Write(u.writeFn)
	u.wtx = nil
	return err
}

func (u *udpConn) doWrite(fd uintptr) bool {
	for u.woff < u.wn {
		r, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&u.wmsgs[u.woff])), uintptr(u.wn-u.woff), unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case 0:
			u.woff += int(r)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			// sendmmsg reports an error only for the first message of
			// the call: mark it and go on with the rest.
			m := &u.wtx[u.woff]
			m.failed = true
			if errno == unix.EIO && m.dgrams > 1 {
				// The egress device cannot checksum-offload GSO
				// (wireguard-go's errShouldDisableUDPGSO): stop using it.
				u.gso.Store(false)
			}
			u.woff++
		}
	}
	return true
}
