package udptun

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

// ErrNotTUN is wrapped when a device of the configured name exists but is
// not a single-queue TUN device.
var ErrNotTUN = errors.New("udptun: device exists and is not a tun")

// nativeTUN is wireguard-go's TUN device, used to create it and for its
// batched Write (whole packets, coalesced by its GRO), plus raw reads and
// writes of virtio_net_hdr-prefixed packets on the same file: a TSO
// super-packet is read whole (wireguard-go's Read would split it and
// checksum every segment) and written whole. The file is non-blocking and
// in Go's netpoller, so deadlines and Close wake a blocked read.
type nativeTUN struct {
	wgtun.Device
	file *os.File
	rc   syscall.RawConn

	// ReadRaw's state; it has one caller (the TX pipeline). The callback
	// is made once so that a read does not allocate.
	rbufs  [][]byte
	rsizes []int
	rn     int
	rerr   error
	readFn func(uintptr) bool

	// WriteRaw's state, shared by its callers (the RX pipeline's
	// super-packets and single packets, the TX pipeline's ICMP errors):
	// the pieces of the packet being written, for writev(2).
	wmu     sync.Mutex
	wiovs   []unix.Iovec
	wniov   int
	wn      int
	werr    error
	writeFn func(uintptr) bool
}

func (t *nativeTUN) SetDeadline(d time.Time) error { return t.file.SetDeadline(d) }

// tunReadBatch is how many packets ReadRaw takes from the device's queue
// at most: a read(2) returns one packet, so after the first (blocking)
// one it reads on while the queue holds more, and the TX pipeline sends
// them all with one sendmmsg.
const tunReadBatch = 8

// ReadRaw reads up to tunReadBatch packets, blocking until there is one.
func (t *nativeTUN) ReadRaw(bufs [][]byte, sizes []int) (int, error) {
	t.rbufs, t.rsizes, t.rn, t.rerr = bufs[:min(len(bufs), tunReadBatch)], sizes, 0, nil
	err := t.rc.Read(t.readFn)
	n := t.rn
	t.rbufs = nil
	if n > 0 {
		return n, nil // an error, if any, comes back on the next call
	}
	if err == nil {
		err = t.rerr
	}
	if errors.Is(err, unix.EBADFD) {
		err = os.ErrClosed // the device was deleted
	}
	return 0, err
}

func (t *nativeTUN) doRead(fd uintptr) bool {
	for t.rn < len(t.rbufs) {
		n, errno := rawRead(fd, t.rbufs[t.rn])
		switch errno {
		case 0:
			t.rsizes[t.rn] = n
			t.rn++
		case unix.EINTR:
		case unix.EAGAIN:
			return t.rn > 0 // wait in the netpoller only for the first
		default:
			t.rerr = fmt.Errorf("read: %w", errno)
			return true
		}
	}
	return true
}

// WriteRaw writes one packet, preceded by its virtio_net_hdr, made of
// bufs one after the other, with one writev(2): a reassembled super-packet
// goes from the receive buffers into the kernel without being copied
// together first. A TUN write does not block (the device queues or drops),
// so the netpoller wait behind EAGAIN is there only for correctness.
func (t *nativeTUN) WriteRaw(bufs [][]byte) (int, error) {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if len(bufs) > len(t.wiovs) {
		return 0, fmt.Errorf("write: %d pieces, at most %d", len(bufs), len(t.wiovs))
	}
	t.wniov, t.wn, t.werr = 0, 0, nil
	for _, b := range bufs {
		if len(b) > 0 {
			t.wiovs[t.wniov].Base = &b[0]
			t.wiovs[t.wniov].SetLen(len(b))
			t.wniov++
		}
	}
	err := t.rc.Write(t.writeFn)
	clear(t.wiovs[:t.wniov]) // drop references to the caller's buffers
	if err == nil {
		err = t.werr
	}
	if errors.Is(err, unix.EBADFD) {
		err = os.ErrClosed // the device was deleted
	}
	return t.wn, err
}

func (t *nativeTUN) doWrite(fd uintptr) bool {
	for {
		n, errno := rawWritev(fd, t.wiovs[:t.wniov])
		switch errno {
		case 0:
			t.wn = n
			return true
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			t.werr = fmt.Errorf("write: %w", errno)
			return true
		}
	}
}

// Write writes whole packets, bufs[i][offset:]. Packets that cannot be
// coalesced skip wireguard-go's GRO table and os.File and go out as raw
// writes with an empty virtio_net_hdr (what wireguard-go would write too):
// on the bulk path that is nearly every ACK, and a TUN write of an ACK runs
// the sender's TCP in our thread, long enough for sysmon to hand our P away
// if the write were an ordinary system call (rawio_linux.go). A batch with
// two or more TCP segments carrying data goes through wireguard-go's GRO.
func (t *nativeTUN) Write(bufs [][]byte, offset int) (int, error) {
	if offset < vnetHdrLen || (len(bufs) > 1 && groCandidates(bufs, offset) > 1) {
		return t.Device.Write(bufs, offset)
	}
	var errs error
	total := 0
	var one [1][]byte
	for _, buf := range bufs {
		one[0] = buf[offset-vnetHdrLen:]
		clear(one[0][:vnetHdrLen])
		n, err := t.WriteRaw(one[:])
		if errors.Is(err, os.ErrClosed) {
			return total, err
		}
		if err != nil {
			errs = errors.Join(errs, err)
			continue
		}
		total += n - vnetHdrLen
	}
	return total, errs
}

// tunOffloads are the offloads we take from the kernel: checksum and TCP
// segmentation. Not USO (UDP GSO, which wireguard-go enables where the
// kernel has it): only TCP super-packets are tunnelled whole, so UDP is
// better segmented by the kernel before it reaches us.
const tunOffloads = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6

// openTUN creates the persistent TUN device name, or attaches to it if it
// exists (ip tuntap add dev NAME mode tun vnet_hdr; the device then
// survives this process). created says which.
func openTUN(name string) (dev *nativeTUN, created bool, err error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, false, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return nil, false, fmt.Errorf("tun name %q: %w", name, err)
	}
	const flags = unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR
	// IFF_TUN_EXCL fails with EBUSY if the device exists: that tells a
	// fresh device (to be made persistent, or removed again on failure)
	// from a re-attach without a separate netlink lookup.
	ifr.SetUint16(flags | unix.IFF_TUN_EXCL)
	err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	created = err == nil
	if errors.Is(err, unix.EBUSY) {
		ifr.SetUint16(flags)
		err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
	}
	if err != nil {
		return nil, false, explainTUNSETIFF(name, err)
	}
	// Persist also on re-attach: a device someone made without it would
	// vanish with our fd.
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return nil, false, fmt.Errorf("set tun %s persistent: %w", name, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, false, fmt.Errorf("set tun %s non-blocking: %w", name, err)
	}
	// Unmonitored: no netlink listener goroutines; the dataplane owns the
	// device's MTU and state.
	d, _, err := wgtun.CreateUnmonitoredTUNFromFD(fd)
	if err != nil {
		if created {
			_ = unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 0)
		}
		return nil, false, fmt.Errorf("set up tun %s offloads: %w", name, err)
	}
	ok = true
	nt, isNative := d.(*wgtun.NativeTun)
	if !isNative || d.BatchSize() <= 1 {
		d.Close()
		return nil, false, fmt.Errorf("set up tun %s: unexpected device type %T or no virtio_net_hdr", name, d)
	}
	dev = &nativeTUN{Device: d, file: nt.File(), wiovs: make([]unix.Iovec, maxWriteIovs)}
	dev.readFn, dev.writeFn = dev.doRead, dev.doWrite
	dev.rc, err = dev.file.SyscallConn()
	if err == nil {
		err = dev.setOffloads()
	}
	if err != nil {
		if created {
			dev.unpersist()
		}
		d.Close()
		return nil, false, fmt.Errorf("set up tun %s offloads: %w", name, err)
	}
	return dev, created, nil
}

// setOffloads sets tunOffloads (ethtool -K NAME tx-checksumming on tso on
// tx-udp-segmentation off, from the device's side).
func (t *nativeTUN) setOffloads() error {
	sc, err := t.file.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := sc.Control(func(fd uintptr) { serr = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, tunOffloads) }); err != nil {
		return err
	}
	return serr
}

// unpersist makes a device this process created non-persistent again, so
// it disappears when its fd closes (rollback of a failed Open).
func (t *nativeTUN) unpersist() {
	sc, err := t.file.SyscallConn()
	if err == nil {
		_ = sc.Control(func(fd uintptr) { _ = unix.IoctlSetInt(int(fd), unix.TUNSETPERSIST, 0) })
	}
}

// explainTUNSETIFF turns the kernel's terse EINVAL/EPERM into a message
// that says what is wrong with the existing device.
func explainTUNSETIFF(name string, err error) error {
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("create tun %s: %w (needs CAP_NET_ADMIN)", name, err)
	}
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("create tun %s: %w", name, err)
	}
	link, lerr := netlink.LinkByName(name)
	if lerr != nil {
		return fmt.Errorf("create tun %s: %w", name, err)
	}
	tt, isTuntap := link.(*netlink.Tuntap)
	switch {
	case !isTuntap:
		return fmt.Errorf("%w: %s is a %s device (delete it or choose another TUNName): %w", ErrNotTUN, name, link.Type(), err)
	case tt.Mode != netlink.TUNTAP_MODE_TUN:
		return fmt.Errorf("%w: %s is a tap device: %w", ErrNotTUN, name, err)
	case tt.Flags&netlink.TUNTAP_MULTI_QUEUE != 0:
		return fmt.Errorf("%w: %s is a multi-queue tun: %w", ErrNotTUN, name, err)
	}
	return fmt.Errorf("attach tun %s: %w (is it owned by another user or group?)", name, err)
}

// setAcceptLocal sets net.ipv4.conf.<name>.accept_local=1 in the calling
// thread's namespace (sysctl -w ...): the engine's ICMP errors come from
// the device's own address.
func setAcceptLocal(name string) error {
	p := "/proc/sys/net/ipv4/conf/" + name + "/accept_local"
	if err := os.WriteFile(p, []byte("1"), 0); err != nil {
		return fmt.Errorf("set %s: %w", p, err)
	}
	return nil
}
