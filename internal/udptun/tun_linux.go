package udptun

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

// ErrNotTUN is wrapped when a device of the configured name exists but is
// not a single-queue TUN device.
var ErrNotTUN = errors.New("udptun: device exists and is not a tun")

// nativeTUN is wireguard-go's TUN device (virtio_net_hdr offloads: TSO in,
// GRO out) plus deadlines on its file.
type nativeTUN struct {
	wgtun.Device
	file *os.File
}

func (t *nativeTUN) SetDeadline(d time.Time) error { return t.file.SetDeadline(d) }

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
	if !isNative {
		d.Close()
		return nil, false, fmt.Errorf("set up tun %s: unexpected device type %T", name, d)
	}
	return &nativeTUN{Device: d, file: nt.File()}, created, nil
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
