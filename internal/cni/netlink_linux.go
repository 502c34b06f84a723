package cni

import (
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// nsLink is an open network namespace and a netlink handle inside it. Every
// kernel call of a verb goes through one, so no thread ever changes
// namespace here.
type nsLink struct {
	ns ns.NetNS
	h  *netlink.Handle
}

// openNS opens the namespace at path and a netlink handle in it.
func openNS(path string) (*nsLink, error) {
	n, err := ns.GetNS(path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	return handleIn(n)
}

// openHost opens the host namespace: p.hostNS, or the calling thread's.
func (p *Plugin) openHost() (*nsLink, error) {
	if p.hostNS != "" {
		return openNS(p.hostNS)
	}
	n, err := ns.GetCurrentNS()
	if err != nil {
		return nil, fmt.Errorf("open current netns: %w", err)
	}
	return handleIn(n)
}

func handleIn(n ns.NetNS) (*nsLink, error) {
	// Only rtnetlink: every call the verbs make is a link, address or
	// route request. Without the family list NewHandleAt also opens xfrm
	// and netfilter sockets, each costing two setns(2) per handle, on
	// every ADD and DEL (as internal/dataplane does).
	h, err := netlink.NewHandleAt(netns.NsHandle(int(n.Fd())), unix.NETLINK_ROUTE)
	if err != nil {
		n.Close()
		return nil, fmt.Errorf("open netlink in netns %s: %w", n.Path(), err)
	}
	return &nsLink{ns: n, h: h}, nil
}

func (l *nsLink) close() {
	l.h.Close()
	l.ns.Close()
}

// sameNS reports whether a and b are the same namespace (same inode).
func sameNS(a, b *nsLink) (bool, error) {
	var sa, sb unix.Stat_t
	if err := unix.Fstat(int(a.ns.Fd()), &sa); err != nil {
		return false, fmt.Errorf("stat netns %s: %w", a.ns.Path(), err)
	}
	if err := unix.Fstat(int(b.ns.Fd()), &sb); err != nil {
		return false, fmt.Errorf("stat netns %s: %w", b.ns.Path(), err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino, nil
}

// openContainer opens the container namespace for ADD and CHECK, and refuses
// the host namespace itself.
func (p *Plugin) openContainer(path string, host *nsLink) (*nsLink, error) {
	c, err := openNS(path)
	if err != nil {
		return nil, withCode(types.ErrInvalidNetNS, err)
	}
	same, err := sameNS(c, host)
	if err == nil && same {
		err = withCode(types.ErrInvalidNetNS, fmt.Errorf("open netns %s: it is the host's namespace", path))
	}
	if err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// isNSGone reports whether openNS failed because the namespace no longer
// exists: the path is gone, or it is no longer a namespace mount.
func isNSGone(err error) bool {
	var notExist ns.NSPathNotExistErr
	var notNS ns.NSPathNotNSErr
	return errors.As(err, &notExist) || errors.As(err, &notNS)
}

// maxDumpAttempts bounds the retries of a netlink dump the kernel
// interrupted because the table changed under it.
const maxDumpAttempts = 5

// retryDump runs a netlink dump until it is not interrupted, as
// plugins/pkg/netlinksafe does.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var out []T
	var err error
	for range maxDumpAttempts {
		out, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return out, err
}

// linkByName returns the link, or nil and no error when it does not exist.
func linkByName(h *netlink.Handle, name string) (netlink.Link, error) {
	// ip link show $name
	l, err := h.LinkByName(name)
	if _, ok := errors.AsType[netlink.LinkNotFoundError](err); ok {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get link %s: %w", name, err)
	}
	return l, nil
}

// deleteVeth deletes the veth called name if it exists; its peer goes with
// it. A link of that name that is not a veth is not ours and is left alone.
func deleteVeth(h *netlink.Handle, name string) error {
	l, err := linkByName(h, name)
	if err != nil || l == nil {
		return err
	}
	if l.Type() != "veth" {
		return nil
	}
	// ip link del $name
	err = h.LinkDel(l)
	if err != nil && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete veth %s: %w", name, err)
	}
	return nil
}
