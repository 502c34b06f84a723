package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"

	"github.com/vishvananda/netlink"

	"github.com/tulle-net/tulle/internal/netns"
)

// The lab's view of network namespaces: by name, through package netns, so
// `ip netns exec L-n1 ...` works on them too.

func nsPath(name string) string { return netns.Path(name) }

// createNS creates the named namespace (ip netns add NAME).
func createNS(name string) error {
	h, err := netns.Create(name)
	if err != nil {
		return err
	}
	return h.Close()
}

// deleteNS removes the named namespace (ip netns del NAME); a missing one is
// success. The kernel frees it, and every link in it, once no process or
// handle holds it.
func deleteNS(name string) error { return netns.Delete(name) }

// listNS lists the names under /run/netns (ip netns list).
func listNS() ([]string, error) {
	ents, err := os.ReadDir(netns.RunDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list netns: %w", err)
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}

// doInNS runs fn on a thread inside the named namespace (ip netns exec NAME).
// Sockets fn opens stay in that namespace after fn returns; processes it
// forks start in it.
func doInNS(name string, fn func() error) error {
	h, err := netns.Open(name)
	if err != nil {
		return err
	}
	defer h.Close()
	return netns.Do(h, fn)
}

// startInNS starts cmd inside the named namespace.
func startInNS(name string, cmd *exec.Cmd) error {
	h, err := netns.Open(name)
	if err != nil {
		return err
	}
	defer h.Close()
	return netns.StartIn(h, cmd)
}

// handleAt opens a netlink handle bound to the named namespace, so no netlink
// call of the lab can reach the root namespace by accident.
func handleAt(name string) (*netlink.Handle, error) {
	h, err := netns.Open(name)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil, fmt.Errorf("open netlink handle in netns %s: %w", name, err)
	}
	return nl, nil
}

// dialInNS dials from inside the named namespace: the socket is created
// there, then used from any thread.
func dialInNS(ctx context.Context, name, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := doInNS(name, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s %s from netns %s: %w", network, addr, name, err)
	}
	return c, nil
}

// listenInNS opens a listener inside the named namespace.
func listenInNS(name, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := doInNS(name, func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s %s in netns %s: %w", network, addr, name, err)
	}
	return ln, nil
}
