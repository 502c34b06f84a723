package cni

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/tulle-net/tulle/internal/ipam"
	"github.com/tulle-net/tulle/internal/ipnet"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// add carries out ADD. Whatever it creates before failing it removes again
// (the allocation and the veth pair; the port rules are one atomic batch,
// made last), so a failed ADD leaves no trace. What
// existed before it started (an earlier ADD's allocation or veth, the bridge)
// it never removes.
func (p *Plugin) add(args *skel.CmdArgs) (_ *NetConf, _ *current.Result, err error) {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return nil, nil, err
	}
	att, err := attachment(args)
	if err != nil {
		return nil, nil, err
	}
	if err := requireNetns(args); err != nil {
		return nil, nil, err
	}
	if err := checkTagLen(conf.Name, att, conf.ports); err != nil {
		return nil, nil, err
	}
	prev, err := prevResult(conf)
	if err != nil {
		return nil, nil, err
	}
	info, err := readSubnetFile(conf)
	if err != nil {
		return nil, nil, err
	}
	s, err := resolve(conf, info)
	if err != nil {
		return nil, nil, err
	}
	store, err := ipam.Open(conf.DataDir, conf.Name)
	if err != nil {
		return nil, nil, withCode(types.ErrIOFailure, err)
	}
	host, err := p.openHost()
	if err != nil {
		return nil, nil, err
	}
	defer host.close()
	cont, err := p.openContainer(args.Netns, host)
	if err != nil {
		return nil, nil, err
	}
	defer cont.close()

	// The bridge is shared by every attachment and outlives them, like the
	// bridge plugin's: a failed ADD does not remove it, since a concurrent
	// ADD may already have plugged into it.
	br, err := ensureBridge(host.h, s.bridge, netip.PrefixFrom(s.pool.Gateway, s.pool.Subnet.Bits()), s.mtu)
	if err != nil {
		return nil, nil, err
	}

	var undo undoStack
	defer func() {
		if err != nil {
			err = undo.run(err)
		}
	}()

	alloc, err := store.Allocate(s.pool, att)
	if err != nil {
		if errors.Is(err, ipam.ErrExhausted) {
			err = withCode(types.ErrTryAgainLater, err)
		}
		return nil, nil, err
	}
	if !alloc.Reused {
		undo.push(func() error { return store.ReleaseAddr(alloc.Addr.Addr(), att) })
	}

	hostName := HostVethName(att.ContainerID, att.IfName)
	pair, err := ensureVeth(host, cont, hostName, att.IfName, s.mtu)
	if err != nil {
		return nil, nil, err
	}
	if pair.created {
		undo.push(func() error { return deleteVeth(host.h, hostName) })
	}
	if err := ensureGSO(host.h, pair.host, s.gso); err != nil {
		return nil, nil, err
	}
	if err := ensureBridgePort(host.h, pair.host, br, s.mtu, s.hairpin); err != nil {
		return nil, nil, err
	}
	if s.gso > 0 {
		// The bridge takes as much as its smallest port (tso_max_size),
		// so only with a port it can be raised.
		l, err := host.h.LinkByIndex(br.Attrs().Index)
		if err != nil {
			return nil, nil, fmt.Errorf("read bridge %s: %w", s.bridge, err)
		}
		if err := ensureGSO(host.h, l, s.gso); err != nil {
			return nil, nil, err
		}
	}
	if err := ensureContainerIface(cont, pair.cont, alloc.Addr, s.pool.Gateway, s.routes, s.mtu); err != nil {
		return nil, nil, err
	}
	if err := capGSO(cont, pair.cont, s.ctrGSO); err != nil {
		return nil, nil, err
	}
	// Last, so that a taken host port (or any other failure) is undone by
	// removing the veth and the allocation; the ports batch itself is
	// atomic.
	if err := ensurePorts(host, conf.DataDir, conf.Name, s.bridge, att, alloc.Addr.Addr(), s.pool.Subnet, conf.ports); err != nil {
		return nil, nil, err
	}
	return conf, mergePrev(prev, buildResult(resultInput{
		hostName: hostName,
		hostMAC:  pair.host.Attrs().HardwareAddr,
		ifName:   att.IfName,
		contMAC:  pair.cont.Attrs().HardwareAddr,
		sandbox:  args.Netns,
		addr:     alloc.Addr,
		gateway:  s.pool.Gateway,
		routes:   s.routes,
		mtu:      s.mtu,
		dns:      conf.DNS,
	})), nil
}

// undoStack collects the undo steps of a multi-step setup.
type undoStack []func() error

func (u *undoStack) push(f func() error) { *u = append(*u, f) }

// run undoes in reverse order and returns cause with any undo failure
// joined to it.
func (u undoStack) run(cause error) error {
	errs := []error{cause}
	for i := len(u) - 1; i >= 0; i-- {
		if err := u[i](); err != nil {
			errs = append(errs, fmt.Errorf("roll back: %w", err))
		}
	}
	return errors.Join(errs...)
}

// ensureBridge returns the bridge called name, creating it with address gw
// and the MTU if it is missing. An existing bridge keeps its address (the
// agent may have set it up); it is only brought up.
func ensureBridge(h *netlink.Handle, name string, gw netip.Prefix, mtu int) (*netlink.Bridge, error) {
	l, err := linkByName(h, name)
	if err != nil {
		return nil, err
	}
	created := false
	if l == nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		attrs.MTU = mtu
		// A bridge without a MAC of its own takes its lowest port's, so the
		// gateway's MAC would change whenever that container leaves and
		// every container's ARP entry for the gateway would go stale.
		attrs.HardwareAddr = randomMAC()
		// ip link add $name address $mac mtu $mtu type bridge
		err := h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs})
		switch {
		case errors.Is(err, unix.EEXIST):
			// A concurrent ADD created it; it sets the address.
		case err != nil:
			return nil, fmt.Errorf("create bridge %s: %w", name, err)
		default:
			created = true
		}
		if l, err = linkByName(h, name); err != nil || l == nil {
			return nil, fmt.Errorf("get bridge %s after creating it: %w", name, errors.Join(err, errors.New("not found")))
		}
	}
	br, ok := l.(*netlink.Bridge)
	if !ok {
		return nil, withCode(types.ErrInvalidNetworkConfig, fmt.Errorf(
			"use bridge %s: the link exists and is a %s, not a bridge (set \"bridge\" to another name)", name, l.Type()))
	}
	if created {
		// ip addr add $gw dev $name
		err := h.AddrAdd(br, &netlink.Addr{IPNet: ipnet.From(gw)})
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("add address %s to bridge %s: %w", gw, name, err)
		}
	}
	if br.Attrs().Flags&net.FlagUp == 0 {
		// ip link set $name up
		if err := h.LinkSetUp(br); err != nil {
			return nil, fmt.Errorf("set bridge %s up: %w", name, err)
		}
	}
	return br, nil
}

// randomMAC returns a random unicast, locally administered MAC address.
func randomMAC() net.HardwareAddr {
	m := make(net.HardwareAddr, 6)
	rand.Read(m)
	m[0] = m[0]&^0x01 | 0x02
	return m
}

// vethPair is the two ends of an attachment's veth.
type vethPair struct {
	host, cont netlink.Link
	// created is false when an earlier ADD of the same attachment made the
	// pair, which a rollback must then leave in place.
	created bool
}

// ensureVeth returns the pair hostName <-> ifName, creating it when neither
// end exists. When both exist and are each other's peer (a repeated ADD of
// the same attachment) it returns them. Anything else is a conflict.
func ensureVeth(host, cont *nsLink, hostName, ifName string, mtu int) (vethPair, error) {
	c, err := linkByName(cont.h, ifName)
	if err != nil {
		return vethPair{}, fmt.Errorf("in netns %s: %w", cont.ns.Path(), err)
	}
	hl, err := linkByName(host.h, hostName)
	if err != nil {
		return vethPair{}, err
	}
	switch {
	case c != nil && hl != nil && isPeer(c, hl):
		return vethPair{host: hl, cont: c}, nil
	case c != nil:
		return vethPair{}, withCode(types.ErrInvalidEnvironmentVariables, fmt.Errorf(
			"create interface %s in netns %s: an interface of that name (%s) already exists", ifName, cont.ns.Path(), c.Type()))
	case hl != nil:
		return vethPair{}, fmt.Errorf(
			"create veth %s: it already exists on the host but its peer is not %s in netns %s (was this container ID attached elsewhere without DEL?)",
			hostName, ifName, cont.ns.Path())
	}

	attrs := netlink.NewLinkAttrs()
	attrs.Name = hostName
	attrs.MTU = mtu
	// ip link add $hostName mtu $mtu type veth peer name $ifName mtu $mtu netns $cont
	err = host.h.LinkAdd(&netlink.Veth{
		LinkAttrs:     attrs,
		PeerName:      ifName,
		PeerMTU:       uint32(mtu),
		PeerNamespace: netlink.NsFd(int(cont.ns.Fd())),
	})
	if err != nil {
		return vethPair{}, fmt.Errorf("create veth %s with peer %s in netns %s: %w", hostName, ifName, cont.ns.Path(), err)
	}
	pair := vethPair{created: true}
	// Re-read both ends for their index and MAC.
	if pair.host, err = linkByName(host.h, hostName); err == nil && pair.host == nil {
		err = errors.New("not found")
	}
	if err == nil {
		if pair.cont, err = linkByName(cont.h, ifName); err == nil && pair.cont == nil {
			err = errors.New("not found")
		}
	}
	if err != nil {
		// Nothing has recorded the pair yet: remove it here.
		return vethPair{}, errors.Join(fmt.Errorf("read back veth %s: %w", hostName, err), deleteVeth(host.h, hostName))
	}
	return pair, nil
}

// isPeer reports whether the container link c and the host link h are the
// two ends of one veth. IFLA_LINK of a veth is its peer's index (in the
// peer's namespace), so each end must name the other.
func isPeer(c, h netlink.Link) bool {
	return c.Type() == "veth" && h.Type() == "veth" &&
		c.Attrs().ParentIndex == h.Attrs().Index && h.Attrs().ParentIndex == c.Attrs().Index
}

// ensureGSO raises l's gso_max_size and gso_ipv4_max_size to n (at most
// what its driver takes): the udp backend writes packets of up to n bytes
// for the workloads (subnet.json's gsoMaxSize), and a smaller limit on the
// bridge or a host veth would make the kernel segment each of them in
// software. n == 0, or a link already at n or above, is left alone.
func ensureGSO(h *netlink.Handle, l netlink.Link, n int) error {
	a := l.Attrs()
	if a.TSOMaxSize > 0 {
		n = min(n, int(a.TSOMaxSize))
	}
	if n == 0 || int(a.GSOMaxSize) >= n && (a.GSOIPv4MaxSize == 0 || int(a.GSOIPv4MaxSize) >= n) {
		return nil
	}
	return setGSO(h, l, n, "")
}

// capGSO lowers the container interface l's gso_max_size (and
// gso_ipv4_max_size) to n: the udp backend sends a TSO super-packet of up
// to n bytes in one UDP GSO send (subnet.json's workloadGSOMaxSize), a
// larger one in two. n == 0, or a link already at n or below, is left
// alone.
func capGSO(c *nsLink, l netlink.Link, n int) error {
	a := l.Attrs()
	if n == 0 || int(a.GSOMaxSize) <= n && int(a.GSOIPv4MaxSize) <= n {
		return nil
	}
	return setGSO(c.h, l, n, " in netns "+c.ns.Path())
}

// setGSO sets l's gso_max_size and, where the kernel has it (Linux >= 6.3
// reports it), gso_ipv4_max_size to n; where names l's namespace in errors.
func setGSO(h *netlink.Handle, l netlink.Link, n int, where string) error {
	a := l.Attrs()
	// ip link set $name gso_max_size $n gso_ipv4_max_size $n
	if err := h.LinkSetGSOMaxSize(l, n); err != nil {
		return fmt.Errorf("set gso_max_size %d on %s%s: %w", n, a.Name, where, err)
	}
	if a.GSOIPv4MaxSize > 0 {
		if err := h.LinkSetGSOIPv4MaxSize(l, n); err != nil {
			return fmt.Errorf("set gso_ipv4_max_size %d on %s%s: %w", n, a.Name, where, err)
		}
	}
	return nil
}

// ensureBridgePort plugs the host end into the bridge and brings it up.
func ensureBridgePort(h *netlink.Handle, l netlink.Link, br *netlink.Bridge, mtu int, hairpin bool) error {
	name := l.Attrs().Name
	if l.Attrs().MTU != mtu {
		// ip link set $name mtu $mtu
		if err := h.LinkSetMTU(l, mtu); err != nil {
			return fmt.Errorf("set mtu %d on %s: %w", mtu, name, err)
		}
	}
	if l.Attrs().MasterIndex != br.Attrs().Index {
		// ip link set $name master $bridge
		if err := h.LinkSetMasterByIndex(l, br.Attrs().Index); err != nil {
			return fmt.Errorf("attach %s to bridge %s: %w", name, br.Attrs().Name, err)
		}
	}
	// bridge link set dev $name hairpin on|off
	if err := h.LinkSetHairpin(l, hairpin); err != nil {
		return fmt.Errorf("set hairpin %t on %s: %w", hairpin, name, err)
	}
	// ip link set $name up
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// ensureContainerIface gives the container end its address, MTU and routes,
// and brings it and lo up. Routes go in after the link is up: the kernel
// only accepts a gateway it can reach through an up link.
func ensureContainerIface(c *nsLink, l netlink.Link, addr netip.Prefix, gw netip.Addr, routes []netip.Prefix, mtu int) error {
	name, where := l.Attrs().Name, c.ns.Path()
	if l.Attrs().MTU != mtu {
		// ip link set $name mtu $mtu
		if err := c.h.LinkSetMTU(l, mtu); err != nil {
			return fmt.Errorf("set mtu %d on %s in netns %s: %w", mtu, name, where, err)
		}
	}
	has, err := hasAddr(c.h, l, addr)
	if err != nil {
		return fmt.Errorf("in netns %s: %w", where, err)
	}
	if !has {
		// ip addr add $addr dev $name
		if err := c.h.AddrAdd(l, &netlink.Addr{IPNet: ipnet.From(addr)}); err != nil {
			return fmt.Errorf("add address %s to %s in netns %s: %w", addr, name, where, err)
		}
	}
	// ip link set $name up
	if err := c.h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up in netns %s: %w", name, where, err)
	}
	lo, err := linkByName(c.h, "lo")
	if err == nil && lo != nil {
		// ip link set lo up
		err = c.h.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("set lo up in netns %s: %w", where, err)
	}
	for _, dst := range routes {
		r, err := routeVia(c.h, l, dst, gw)
		if err != nil {
			return fmt.Errorf("in netns %s: %w", where, err)
		}
		if r != nil {
			continue
		}
		// ip route add $dst via $gw dev $name mtu $mtu advmss $((mtu-40))
		err = c.h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipnet.From(dst), Gw: gw.AsSlice(),
			MTU: mtu, AdvMSS: routeAdvMSS(mtu)})
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add route %s via %s dev %s in netns %s: the namespace already has a route to %s: %w", dst, gw, name, where, dst, err)
		}
		if err != nil {
			return fmt.Errorf("add route %s via %s dev %s in netns %s: %w", dst, gw, name, where, err)
		}
	}
	return nil
}

// hasAddr reports whether l carries addr (address and prefix length).
func hasAddr(h *netlink.Handle, l netlink.Link, addr netip.Prefix) (bool, error) {
	// ip -4 addr show dev $name
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(l, netlink.FAMILY_V4) })
	if err != nil {
		return false, fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
	}
	for _, a := range addrs {
		if p, ok := ipnet.Prefix(a.IPNet); ok && p == addr {
			return true, nil
		}
	}
	return false, nil
}

// routeVia returns the main-table route to dst via gw out of l, or nil.
func routeVia(h *netlink.Handle, l netlink.Link, dst netip.Prefix, gw netip.Addr) (*netlink.Route, error) {
	// ip -4 route show dev $name
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{LinkIndex: l.Attrs().Index}, netlink.RT_FILTER_OIF)
	})
	if err != nil {
		return nil, fmt.Errorf("list routes of %s: %w", l.Attrs().Name, err)
	}
	for _, r := range routes {
		d := netip.MustParsePrefix("0.0.0.0/0")
		if r.Dst != nil {
			var ok bool
			if d, ok = ipnet.Prefix(r.Dst); !ok {
				continue
			}
		}
		g, _ := netip.AddrFromSlice(r.Gw)
		if d == dst && g.Unmap() == gw {
			return &r, nil
		}
	}
	return nil, nil
}
