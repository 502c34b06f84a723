package runner

import (
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/tulle-net/tulle/internal/netns"
)

// createNetns makes a new network namespace, bind-mounts it on path (a
// file it creates) and brings its lo up, like `ip netns add` followed by
// `ip -n NS link set lo up` (internal/netns.CreateAt: the caller's thread
// never moves).
func createNetns(path string) error {
	h, err := netns.CreateAt(path)
	if err != nil {
		return fmt.Errorf("create netns %s: %w", path, err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		_ = netns.DeleteAt(path)
		return fmt.Errorf("netlink in netns %s: %w", path, err)
	}
	defer nl.Close()
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo) // ip link set lo up
	}
	if err != nil {
		_ = netns.DeleteAt(path)
		return fmt.Errorf("set lo up in netns %s: %w", path, err)
	}
	return nil
}

// deleteNetns unmounts and removes a namespace made by createNetns (ip
// netns delete). Gone is success.
func deleteNetns(path string) error { return netns.DeleteAt(path) }
