package dataplane

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"

	"github.com/tulle-net/tulle/internal/netns"
	"github.com/tulle-net/tulle/internal/plan"
)

// Sentinel errors callers may branch on.
var (
	// ErrClosed is returned by Apply after Close.
	ErrClosed = errors.New("dataplane: closed")
	// ErrBadState is wrapped when Apply is given a state it refuses to
	// program; nothing was changed.
	ErrBadState = errors.New("dataplane: bad desired state")
	// ErrUnderlayNotFound is wrapped by Underlay when no link matches.
	ErrUnderlayNotFound = errors.New("dataplane: underlay not found")
)

// Options configure New.
type Options struct {
	// NetNS is the namespace to program (optional). Zero or netns.None()
	// means the namespace of the thread calling New, which for a program
	// that never switches namespaces is its own. New duplicates the
	// handle; the caller may close its copy.
	NetNS netns.NsHandle
	// Logger receives reconcile summaries and per-object detail (optional:
	// default discards).
	Logger *slog.Logger
}

// Changes is what an Apply did, one line per kernel change in the order it
// was made, rendered like the iproute2/nft command that would do the same.
type Changes struct {
	Ops []string
}

// Len is the number of changes.
func (c Changes) Len() int { return len(c.Ops) }

// Empty reports whether nothing was changed.
func (c Changes) Empty() bool { return len(c.Ops) == 0 }

// String renders the changes one per line.
func (c Changes) String() string { return strings.Join(c.Ops, "\n") }

// UnderlayInfo are the facts about the underlay link the planner needs
// (plan.Local.Underlay, UnderlayMTU and UnderlayPrefixes) plus the node's
// public IP.
type UnderlayInfo struct {
	// Name and Index identify the link.
	Name  string
	Index int
	MTU   int
	// Addr is the public IP: the one asked for, else the link's first
	// global IPv4 address.
	Addr netip.Addr
	// Prefixes are the link's on-link IPv4 prefixes (its addresses'
	// networks), sorted and without duplicates.
	Prefixes []netip.Prefix
	// BigTCP: the kernel reports the link's gso_ipv4_max_size, so it has
	// BIG TCP for IPv4 (Linux >= 6.3): IPv4 packets over 64 KiB with a
	// total length of 0.
	BigTCP bool
}

// validate rejects a state Apply must not program, before any side effect.
func validate(s plan.State) error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrBadState}, args...)...))
	}
	if b := s.Bridge; b != nil {
		if !validIfname(b.Name) {
			bad("bridge name %q is not a valid interface name", b.Name)
		}
		if !b.Addr.IsValid() || !b.Addr.Addr().Is4() {
			bad("bridge %s address %s is not an IPv4 prefix", b.Name, b.Addr)
		}
		if b.MTU < 0 {
			bad("bridge %s MTU %d is negative", b.Name, b.MTU)
		}
	}
	vxName := ""
	if v := s.VXLAN; v != nil {
		vxName = v.Name
		if !validIfname(v.Name) || !strings.HasPrefix(v.Name, plan.VXLANPrefix) {
			bad("vxlan name %q must be a valid interface name starting with %q", v.Name, plan.VXLANPrefix)
		}
		if v.VNI <= 0 || v.VNI >= 1<<24 {
			bad("vxlan %s VNI %d is outside 1-16777215", v.Name, v.VNI)
		}
		if v.Port <= 0 || v.Port > 65535 {
			bad("vxlan %s port %d is outside 1-65535", v.Name, v.Port)
		}
		if !v.Local.Is4() {
			bad("vxlan %s local address %s is not IPv4", v.Name, v.Local)
		}
		if len(v.MAC) != 6 {
			bad("vxlan %s MAC %q is not 6 bytes", v.Name, v.MAC)
		}
		if !v.Addr.IsValid() || !v.Addr.Addr().Is4() {
			bad("vxlan %s address %s is not an IPv4 prefix", v.Name, v.Addr)
		}
		if s.Bridge != nil && s.Bridge.Name == v.Name {
			bad("bridge and vxlan share the name %q", v.Name)
		}
	}
	if t := s.TUN; t != nil {
		if t.Name != plan.TUNName {
			bad("tun name %q: tulle owns only the tun device %q", t.Name, plan.TUNName)
		}
		if t.MTU < 68 || t.MTU > 65535 {
			bad("tun %s MTU %d is outside 68-65535", t.Name, t.MTU)
		}
		if !t.Addr.IsValid() || !t.Addr.Addr().Is4() {
			bad("tun %s address %s is not an IPv4 prefix", t.Name, t.Addr)
		}
		if (s.Bridge != nil && s.Bridge.Name == t.Name) || vxName == t.Name {
			bad("tun %s shares its name with the bridge or the vxlan device", t.Name)
		}
	}
	// Neighbour and FDB entries are only owned (and so only ever pruned) on
	// tulle's VXLAN device; entries elsewhere would be added but never
	// cleaned up.
	for _, n := range s.Neighbors {
		if n.Dev != vxName || vxName == "" {
			bad("neighbour %s is on %q, not on the vxlan device %q", n.IP, n.Dev, vxName)
		}
		if !n.IP.Is4() || len(n.MAC) != 6 {
			bad("neighbour %s lladdr %q: want an IPv4 address and a 6-byte MAC", n.IP, n.MAC)
		}
	}
	for _, f := range s.FDB {
		if f.Dev != vxName || vxName == "" {
			bad("fdb %s is on %q, not on the vxlan device %q", f.MAC, f.Dev, vxName)
		}
		if !f.Dst.Is4() || len(f.MAC) != 6 {
			bad("fdb %q dst %s: want a 6-byte MAC and an IPv4 address", f.MAC, f.Dst)
		}
	}
	seen := make(map[netip.Prefix]bool, len(s.Routes))
	for _, r := range s.Routes {
		switch {
		case !r.Dst.IsValid() || !r.Dst.Addr().Is4() || r.Dst != r.Dst.Masked():
			bad("route destination %s is not a masked IPv4 prefix", r.Dst)
		case r.Gw.IsValid() && !r.Gw.Is4():
			bad("route %s gateway %s is not IPv4", r.Dst, r.Gw)
		case !r.Gw.IsValid() && r.Onlink:
			bad("route %s is onlink without a gateway", r.Dst)
		case r.Dev == "":
			bad("route %s has no device", r.Dst)
		case seen[r.Dst]:
			bad("route %s appears twice", r.Dst)
		}
		seen[r.Dst] = true
	}
	if m := s.Masquerade; m != nil {
		if !m.Network.IsValid() || !m.Network.Addr().Is4() || !m.Source.IsValid() || !m.Source.Addr().Is4() {
			bad("masquerade %s -> !%s: want IPv4 prefixes", m.Source, m.Network)
		}
	}
	return errors.Join(errs...)
}

func validIfname(s string) bool {
	return s != "" && len(s) <= 15 && !strings.ContainsAny(s, "/ \t\n:") && s != "." && s != ".."
}

// sameKernelState reports whether a and b ask for the same kernel state
// (WorkloadMTU, Warnings and the udp engine's UDP are not programmed, so
// they do not count).
func sameKernelState(a, b *plan.State) bool {
	eqMAC := func(x, y net.HardwareAddr) bool { return bytes.Equal(x, y) }
	return a.Forwarding == b.Forwarding &&
		eqPtr(a.Bridge, b.Bridge, func(x, y plan.Bridge) bool { return x == y }) &&
		eqPtr(a.VXLAN, b.VXLAN, func(x, y plan.VXLAN) bool {
			mx, my := x.MAC, y.MAC
			x.MAC, y.MAC = nil, nil
			return reflect.DeepEqual(x, y) && eqMAC(mx, my)
		}) &&
		slices.EqualFunc(a.Neighbors, b.Neighbors, func(x, y plan.Neighbor) bool {
			return x.Dev == y.Dev && x.IP == y.IP && eqMAC(x.MAC, y.MAC)
		}) &&
		slices.EqualFunc(a.FDB, b.FDB, func(x, y plan.FDB) bool {
			return x.Dev == y.Dev && x.Dst == y.Dst && eqMAC(x.MAC, y.MAC)
		}) &&
		slices.Equal(a.Routes, b.Routes) &&
		eqPtr(a.TUN, b.TUN, func(x, y plan.TUN) bool { return x == y }) &&
		eqPtr(a.Masquerade, b.Masquerade, func(x, y plan.Masquerade) bool { return x == y })
}

func eqPtr[T any](a, b *T, eq func(x, y T) bool) bool {
	if a == nil || b == nil {
		return a == b
	}
	return eq(*a, *b)
}

// cloneKernelState deep-copies the parts of s that sameKernelState compares,
// so a caller reusing its State's memory cannot change what Apply remembers.
func cloneKernelState(s plan.State) plan.State {
	c := plan.State{Forwarding: s.Forwarding}
	if s.Bridge != nil {
		b := *s.Bridge
		c.Bridge = &b
	}
	if s.VXLAN != nil {
		v := *s.VXLAN
		v.MAC = slices.Clone(v.MAC)
		c.VXLAN = &v
	}
	if s.Masquerade != nil {
		m := *s.Masquerade
		c.Masquerade = &m
	}
	if s.TUN != nil {
		t := *s.TUN
		c.TUN = &t
	}
	c.Neighbors = slices.Clone(s.Neighbors)
	for i := range c.Neighbors {
		c.Neighbors[i].MAC = slices.Clone(c.Neighbors[i].MAC)
	}
	c.FDB = slices.Clone(s.FDB)
	for i := range c.FDB {
		c.FDB[i].MAC = slices.Clone(c.FDB[i].MAC)
	}
	c.Routes = slices.Clone(s.Routes)
	return c
}
