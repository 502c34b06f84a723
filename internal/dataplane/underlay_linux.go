package dataplane

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tulle-net/tulle/internal/ipnet"
	"github.com/tulle-net/tulle/internal/netns"
)

// Underlay finds the underlay link in namespace h (netns.None() or 0: the
// caller's own) and returns the facts the planner needs:
//
//   - iface set: the link of that name. Addr is publicIP if given (it may be
//     a NAT address not on the link), else the link's first global IPv4
//     address.
//   - only publicIP set: the link holding publicIP.
//   - neither: the link of the default route with the lowest metric, and
//     its preferred source or first global IPv4 address.
//
// Errors wrap ErrUnderlayNotFound and name the interface or IP.
func Underlay(h netns.NsHandle, iface string, publicIP netip.Addr) (UnderlayInfo, error) {
	if publicIP.IsValid() && !publicIP.Is4() {
		return UnderlayInfo{}, fmt.Errorf("find underlay for public IP %s: only IPv4 is supported", publicIP)
	}
	var nl *netlink.Handle
	var err error
	if h > 0 {
		err = netns.Do(h, func() error {
			var err error
			nl, err = netlink.NewHandleAt(h, unix.NETLINK_ROUTE)
			return err
		})
	} else {
		nl, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return UnderlayInfo{}, fmt.Errorf("open netlink: %w", err)
	}
	defer nl.Close()

	addrs, err := dump("addresses", func() ([]netlink.Addr, error) { return nl.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return UnderlayInfo{}, err
	}
	var (
		link netlink.Link
		addr = publicIP
	)
	switch {
	case iface != "":
		if link, err = nl.LinkByName(iface); err != nil {
			return UnderlayInfo{}, fmt.Errorf("%w: find link %q: %v", ErrUnderlayNotFound, iface, err)
		}
	case publicIP.IsValid():
		for _, a := range addrs {
			if ip, ok := ipnet.Prefix(a.IPNet); ok && ip.Addr() == publicIP {
				if link, err = nl.LinkByIndex(a.LinkIndex); err != nil {
					return UnderlayInfo{}, fmt.Errorf("find link %d holding %s: %w", a.LinkIndex, publicIP, err)
				}
				break
			}
		}
		if link == nil {
			return UnderlayInfo{}, fmt.Errorf("%w: no link holds the public IP %s (set the underlay interface, or the address on it)", ErrUnderlayNotFound, publicIP)
		}
	default:
		routes, err := dump("routes", func() ([]netlink.Route, error) {
			return nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return UnderlayInfo{}, err
		}
		var def *netlink.Route
		for i, r := range routes {
			if (r.Dst == nil || r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask)) && r.LinkIndex != 0 &&
				(def == nil || r.Priority < def.Priority) {
				def = &routes[i]
			}
		}
		if def == nil {
			return UnderlayInfo{}, fmt.Errorf("%w: no interface or public IP given, and no default route", ErrUnderlayNotFound)
		}
		if link, err = nl.LinkByIndex(def.LinkIndex); err != nil {
			return UnderlayInfo{}, fmt.Errorf("find default route link %d: %w", def.LinkIndex, err)
		}
		if src, ok := netip.AddrFromSlice(def.Src); ok {
			addr = src.Unmap()
		}
	}

	a := link.Attrs()
	u := UnderlayInfo{Name: a.Name, Index: a.Index, MTU: a.MTU, Addr: addr, BigTCP: a.GSOIPv4MaxSize > 0}
	for _, ad := range addrs {
		p, ok := ipnet.Prefix(ad.IPNet)
		if ad.LinkIndex != a.Index || !ok {
			continue
		}
		if !u.Addr.IsValid() && ad.Scope == unix.RT_SCOPE_UNIVERSE {
			u.Addr = p.Addr()
		}
		u.Prefixes = append(u.Prefixes, p.Masked())
	}
	if !u.Addr.IsValid() {
		return UnderlayInfo{}, fmt.Errorf("%w: link %q has no global IPv4 address (give the public IP)", ErrUnderlayNotFound, a.Name)
	}
	slices.SortFunc(u.Prefixes, comparePrefix)
	u.Prefixes = slices.Compact(u.Prefixes)
	return u, nil
}

func isZeroMask(m []byte) bool {
	for _, b := range m {
		if b != 0 {
			return false
		}
	}
	return true
}
