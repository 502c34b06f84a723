package runner

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// createNetns makes a new network namespace, bind-mounts it on path (a
// file it creates) and brings its lo up, like `ip netns add` followed by
// `ip -n NS link set lo up`. The caller's thread never moves: the
// namespace is made on a locked thread that is moved back before it is
// released (internal/netns does the same for /run/netns).
func createNetns(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create netns file %s: %w", path, err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() { errc <- mountNewNetns(path) }()
	if err := <-errc; err != nil {
		_ = deleteNetns(path)
		return err
	}
	h, err := vnetns.GetFromPath(path)
	if err != nil {
		_ = deleteNetns(path)
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		_ = deleteNetns(path)
		return fmt.Errorf("netlink in netns %s: %w", path, err)
	}
	defer nl.Close()
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo) // ip link set lo up
	}
	if err != nil {
		_ = deleteNetns(path)
		return fmt.Errorf("set lo up in netns %s: %w", path, err)
	}
	return nil
}

func mountNewNetns(path string) error {
	runtime.LockOSThread()
	orig, err := vnetns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open thread netns: %w", err)
	}
	defer orig.Close()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("unshare net namespace: %w", err)
	}
	src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
	merr := unix.Mount(src, path, "none", unix.MS_BIND, "")
	if merr != nil {
		merr = fmt.Errorf("bind mount %s on %s: %w", src, path, merr)
	}
	if err := vnetns.Set(orig); err != nil {
		// Stay locked: the runtime discards the thread.
		return errors.Join(merr, fmt.Errorf("restore thread netns: %w", err))
	}
	runtime.UnlockOSThread()
	return merr
}

// deleteNetns unmounts and removes a namespace made by createNetns (ip
// netns delete). Gone is success.
func deleteNetns(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", path, err)
	}
	return nil
}
