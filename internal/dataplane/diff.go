package dataplane

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/tulle-net/tulle/internal/plan"
)

// observed is the kernel state Apply read: only objects tulle owns, in plain
// netip types, with links referred to by name. It is the "actual" half of
// diff and is built by observe (Linux) or by hand in tests.
type observed struct {
	// Forwarding is net.ipv4.ip_forward (only read when wanted).
	Forwarding bool
	// Kinds maps every link name in the namespace to its kind ("bridge",
	// "vxlan", "veth", ...), so diff can tell a name clash from a missing
	// link.
	Kinds map[string]string
	// Bridge is the link named like the desired bridge, if any.
	Bridge *obsLink
	// BridgePorts are the links enslaved to it (only read when the plan
	// sets the bridge's GSOMaxSize).
	BridgePorts []obsLink
	// VXLANs are all links of kind vxlan named plan.VXLANPrefix+"*".
	VXLANs []obsVXLAN
	// TUN is the TUN device named plan.TUNName, if any (whether or not the
	// plan wants one: a stale one is removed).
	TUN *obsLink
	// TUNIPv6Off is net.ipv6.conf.<TUN>.disable_ipv6 (true also where the
	// kernel has no IPv6); only read when a TUN device is wanted.
	TUNIPv6Off bool
	// Neighbors and FDB are the entries on the desired VXLAN device.
	Neighbors []obsNeigh
	FDB       []plan.FDB
	// Routes are the routes with plan.RouteProtocol in the main table.
	Routes []obsRoute
	// NFT is the canonical rendering of the agent's chains in table inet
	// tulle (nil: none exists). Other chains of the table are the CNI
	// plugin's and are not observed.
	NFT *string
}

type obsLink struct {
	Name string
	MTU  int
	Up   bool
	MAC  net.HardwareAddr
	// Addrs are the link's IPv4 addresses.
	Addrs []netip.Prefix
	// GSO is the smaller of gso_max_size and gso_ipv4_max_size (the
	// latter where the kernel has it); TSOMax the driver's limit for both
	// (0: unknown).
	GSO, TSOMax int
}

type obsVXLAN struct {
	obsLink
	VNI      int
	Port     int
	Local    netip.Addr
	Underlay string // vtep dev name; "" when none
	Learning bool
}

type obsNeigh struct {
	plan.Neighbor
	Permanent bool
}

type obsRoute struct {
	plan.Route
	Priority int
}

// opKind says which kernel call executes an op.
type opKind uint8

const (
	opForwarding opKind = iota + 1
	opAddBridge
	opAddVXLAN
	opDelLink
	opSetMTU
	opSetMAC
	opSetUp
	opAddAddr
	opDelAddr
	opSetNeigh
	opDelNeigh
	opSetFDB
	opDelFDB
	opAddRoute
	opReplaceRoute
	opDelRoute
	opSetNFT
	opDelNFT
	opDisableIPv6
	opSetGSO
)

// op is one kernel change. Only the fields its kind needs are set.
type op struct {
	kind opKind
	// dev is the link the op acts on or through; ops on a link whose
	// creation failed are skipped.
	dev    string
	bridge *plan.Bridge
	vxlan  *plan.VXLAN
	mtu    int
	gso    int
	mac    net.HardwareAddr
	addr   netip.Prefix
	neigh  plan.Neighbor
	fdb    plan.FDB
	route  plan.Route
	prio   int // of a route being deleted
	masq   *plan.Masquerade
	// existed marks an nft chain replace (vs add), for the op text.
	existed bool
	// drift explains why an existing object changes, for logs.
	drift string
}

// gsoWanted is the GSO limit to give l for a wanted n: n, or the most its
// driver takes (a port that is no veth may take less; the kernel then
// segments what is larger, as it would anyway).
func gsoWanted(l obsLink, n int) int {
	if l.TSOMax > 0 {
		return min(n, l.TSOMax)
	}
	return n
}

// String renders the op like the iproute2 or nft command with the same
// effect.
func (o op) String() string {
	switch o.kind {
	case opForwarding:
		return "sysctl net.ipv4.ip_forward=1"
	case opAddBridge:
		return fmt.Sprintf("add link %s type bridge mtu %d", o.dev, o.bridge.MTU)
	case opAddVXLAN:
		v := o.vxlan
		dev := ""
		if v.Underlay != "" {
			dev = " dev " + v.Underlay
		}
		return fmt.Sprintf("add link %s type vxlan id %d local %s%s dstport %d nolearning mtu %d address %s",
			v.Name, v.VNI, v.Local, dev, v.Port, v.MTU, v.MAC)
	case opDelLink:
		return "del link " + o.dev
	case opSetMTU:
		return fmt.Sprintf("set link %s mtu %d", o.dev, o.mtu)
	case opSetGSO:
		return fmt.Sprintf("set link %s gso_max_size %d gso_ipv4_max_size %d", o.dev, o.gso, o.gso)
	case opSetMAC:
		return fmt.Sprintf("set link %s address %s", o.dev, o.mac)
	case opSetUp:
		return fmt.Sprintf("set link %s up", o.dev)
	case opAddAddr:
		return fmt.Sprintf("add addr %s dev %s", o.addr, o.dev)
	case opDelAddr:
		return fmt.Sprintf("del addr %s dev %s", o.addr, o.dev)
	case opSetNeigh:
		return fmt.Sprintf("replace neigh %s lladdr %s dev %s nud permanent", o.neigh.IP, o.neigh.MAC, o.dev)
	case opDelNeigh:
		return fmt.Sprintf("del neigh %s dev %s", o.neigh.IP, o.dev)
	case opSetFDB:
		return fmt.Sprintf("replace fdb %s dev %s dst %s self permanent", o.fdb.MAC, o.dev, o.fdb.Dst)
	case opDelFDB:
		return fmt.Sprintf("del fdb %s dev %s dst %s self", o.fdb.MAC, o.dev, o.fdb.Dst)
	case opAddRoute:
		return "add " + routeText(o.route)
	case opReplaceRoute:
		return "replace " + routeText(o.route)
	case opDelRoute:
		s := "del " + routeText(o.route)
		if o.prio != 0 {
			s += fmt.Sprintf(" metric %d", o.prio)
		}
		return s
	case opSetNFT:
		verb := "add"
		if o.existed {
			verb = "replace"
		}
		return fmt.Sprintf("%s chain inet %s postrouting: %s", verb, plan.NFTTable, masqText(o.masq))
	case opDelNFT:
		return fmt.Sprintf("del chain inet %s postrouting", plan.NFTTable)
	case opDisableIPv6:
		return fmt.Sprintf("sysctl net.ipv6.conf.%s.disable_ipv6=1", o.dev)
	}
	return fmt.Sprintf("op(%d)", o.kind)
}

// routeText is 'ip route' syntax without the protocol, which is always ours.
func routeText(r plan.Route) string {
	s := fmt.Sprintf("route %s dev %s", r.Dst, r.Dev)
	if r.Gw.IsValid() {
		s = fmt.Sprintf("route %s via %s dev %s", r.Dst, r.Gw, r.Dev)
	}
	if r.Onlink {
		s += " onlink"
	}
	return s
}

func masqText(m *plan.Masquerade) string {
	return fmt.Sprintf("ip saddr %s ip daddr != %s masquerade", m.Source, m.Network)
}

// errConflict is wrapped when a name tulle wants is held by a link it does
// not own (of another kind); diff never deletes such a link.
var errConflict = errors.New("dataplane: name conflict")

// ErrTUNMissing is wrapped by Apply when the plan wants the udp backend's
// TUN device and it does not exist. The dataplane never creates it: the
// udp engine does (udptun.Open), so the caller should (re)open the engine
// and apply again. The rest of the state is still applied.
var ErrTUNMissing = errors.New("dataplane: tun device missing")

// diff returns the ops that turn have into want, in execution order:
//
//	forwarding; bridge (create, mtu, addrs, up); vxlan (recreate if
//	incompatible, mac, mtu, addrs, up); tun (mtu, addrs, up); neighbour,
//	FDB, route adds; nft table; route, FDB, neighbour deletes; stale vxlan
//	and tun links; nft delete
//
// so a peer's neighbour and FDB entry exist before its route (the kernel never
// ARPs for the gateway) and its route goes before them. The error reports
// conflicts diff could not plan around; the ops are still worth executing.
// diff is pure: the same input gives the same ops.
func diff(have observed, want plan.State) ([]op, error) {
	var (
		ops  []op
		dels []op // appended after every add
		errs []error
	)
	have = have.sorted()
	if want.Forwarding && !have.Forwarding {
		ops = append(ops, op{kind: opForwarding})
	}

	if b := want.Bridge; b != nil {
		switch k, exists := have.Kinds[b.Name]; {
		case exists && k != "bridge":
			errs = append(errs, fmt.Errorf("%w: link %s is a %s, not a bridge: remove it or free the name", errConflict, b.Name, k))
		case have.Bridge == nil:
			ops = append(ops,
				op{kind: opAddBridge, dev: b.Name, bridge: b},
				op{kind: opAddAddr, dev: b.Name, addr: b.Addr},
				op{kind: opSetUp, dev: b.Name})
			// No GSOMaxSize yet: a bridge without ports takes no more
			// than 64 KiB (its tso_max_size is its smallest port's).
		default:
			ops, dels = diffLink(ops, dels, *have.Bridge, b.Name, b.MTU, nil, b.Addr)
			// Only raised, never lowered: a larger limit is harmless,
			// and another user of the bridge may want it. The CNI
			// plugin sets it on ports it adds; this is for older ones
			// (and the bridge, which the plugin may not have raised
			// before its first port).
			if b.GSOMaxSize > 0 {
				for _, l := range append([]obsLink{*have.Bridge}, have.BridgePorts...) {
					if n := gsoWanted(l, b.GSOMaxSize); n > l.GSO {
						ops = append(ops, op{kind: opSetGSO, dev: l.Name, gso: n, drift: fmt.Sprintf("gso %d", l.GSO)})
					}
				}
			}
		}
	}

	// fresh: the VXLAN device is (re)created, so none of its neighbour and
	// FDB entries exist any more, whatever was observed.
	fresh := false
	if v := want.VXLAN; v != nil {
		var cur *obsVXLAN
		for i := range have.VXLANs {
			if have.VXLANs[i].Name == v.Name {
				cur = &have.VXLANs[i]
			}
		}
		k, exists := have.Kinds[v.Name]
		switch {
		case exists && cur == nil:
			errs = append(errs, fmt.Errorf("%w: link %s is a %s, not a vxlan: remove it or free the name", errConflict, v.Name, k))
		case cur == nil:
			fresh = true
			ops = appendNewVXLAN(ops, v)
		default:
			if why := incompatible(*cur, v); why != "" {
				fresh = true
				ops = append(ops, op{kind: opDelLink, dev: v.Name, drift: why})
				ops = appendNewVXLAN(ops, v)
			} else {
				ops, dels = diffLink(ops, dels, cur.obsLink, v.Name, v.MTU, v.MAC, v.Addr)
			}
		}
	}

	// The TUN device is the udp engine's to create; diff only tunes it.
	// Without it, routes through it cannot be added: they wait for the
	// next Apply after the engine has (re)created the device.
	noTUN := false
	if t := want.TUN; t != nil {
		k, exists := have.Kinds[t.Name]
		switch {
		case exists && have.TUN == nil:
			noTUN = true
			errs = append(errs, fmt.Errorf("%w: link %s is a %s, not a tun device: remove it or free the name", errConflict, t.Name, k))
		case have.TUN == nil:
			noTUN = true
			errs = append(errs, fmt.Errorf("%w: %s (the udp engine creates it; its routes wait until it exists)", ErrTUNMissing, t.Name))
		default:
			// IPv6 off before the device goes up: no router
			// solicitation is ever sent into it.
			if t.DisableIPv6 && !have.TUNIPv6Off {
				ops = append(ops, op{kind: opDisableIPv6, dev: t.Name})
			}
			ops, dels = diffLink(ops, dels, *have.TUN, t.Name, t.MTU, nil, t.Addr)
		}
	}

	// Neighbours, keyed by IP (their identity on the device).
	haveNeigh := make(map[netip.Addr]int, len(have.Neighbors))
	if !fresh {
		for i, n := range have.Neighbors {
			haveNeigh[n.IP] = i
		}
	}
	for _, n := range want.Neighbors {
		i, ok := haveNeigh[n.IP]
		if !ok || !have.Neighbors[i].Permanent || !bytes.Equal(have.Neighbors[i].MAC, n.MAC) {
			o := op{kind: opSetNeigh, dev: n.Dev, neigh: n}
			if ok {
				o.drift = fmt.Sprintf("was lladdr %s permanent=%t", have.Neighbors[i].MAC, have.Neighbors[i].Permanent)
			}
			ops = append(ops, o)
		}
	}
	// FDB entries, keyed by (MAC, dst): one MAC may have several remotes.
	haveFDB := make(map[fdbKey]bool, len(have.FDB))
	if !fresh {
		for _, f := range have.FDB {
			haveFDB[keyOf(f)] = true
		}
	}
	wantFDB := make(map[fdbKey]bool, len(want.FDB))
	for _, f := range want.FDB {
		k := keyOf(f)
		wantFDB[k] = true
		if !haveFDB[k] {
			ops = append(ops, op{kind: opSetFDB, dev: f.Dev, fdb: f})
		}
	}

	// Routes, keyed by destination. A route of ours at metric 0 is replaced
	// in place; anything else is added exclusively, so an existing route of
	// another protocol to the same prefix is reported, never overwritten
	// (ip route replace would silently take it over).
	gone := func(r obsRoute) bool {
		return fresh && r.Dev == want.VXLAN.Name // the kernel removes a link's routes with the link
	}
	at0 := make(map[netip.Prefix]int, len(have.Routes))
	for i, r := range have.Routes {
		if r.Priority == 0 && !gone(r) {
			at0[r.Dst] = i
		}
	}
	keep := make([]bool, len(have.Routes))
	for _, r := range want.Routes {
		i, ok := at0[r.Dst]
		if noTUN && r.Dev == want.TUN.Name {
			if ok {
				keep[i] = true // on a foreign link of that name: not ours to move
			}
			continue
		}
		switch {
		case !ok:
			ops = append(ops, op{kind: opAddRoute, dev: r.Dev, route: r})
		case have.Routes[i].Route != r:
			keep[i] = true
			ops = append(ops, op{kind: opReplaceRoute, dev: r.Dev, route: r, drift: "was " + routeText(have.Routes[i].Route)})
		default:
			keep[i] = true
		}
	}

	if m := want.Masquerade; m != nil {
		if w := nftText(m); have.NFT == nil || *have.NFT != w {
			ops = append(ops, op{kind: opSetNFT, masq: m, existed: have.NFT != nil})
		}
	}

	// Deletes: routes, then FDB, then neighbours.
	for i, r := range have.Routes {
		if !keep[i] && !gone(r) {
			dels = append(dels, op{kind: opDelRoute, dev: r.Dev, route: r.Route, prio: r.Priority})
		}
	}
	if !fresh && want.VXLAN != nil {
		for _, f := range have.FDB {
			if !wantFDB[keyOf(f)] {
				dels = append(dels, op{kind: opDelFDB, dev: f.Dev, fdb: f})
			}
		}
		wantNeigh := make(map[netip.Addr]bool, len(want.Neighbors))
		for _, n := range want.Neighbors {
			wantNeigh[n.IP] = true
		}
		for _, n := range have.Neighbors {
			if n.Permanent && !wantNeigh[n.IP] {
				dels = append(dels, op{kind: opDelNeigh, dev: n.Dev, neigh: n.Neighbor})
			}
		}
	}
	// Stale VXLAN devices last: their own entries and routes go with them.
	for _, v := range have.VXLANs {
		if want.VXLAN == nil || v.Name != want.VXLAN.Name {
			dels = append(dels, op{kind: opDelLink, dev: v.Name, drift: "stale"})
		}
	}
	if want.TUN == nil && have.TUN != nil {
		dels = append(dels, op{kind: opDelLink, dev: have.TUN.Name, drift: "stale"})
	}
	if want.Masquerade == nil && have.NFT != nil {
		dels = append(dels, op{kind: opDelNFT})
	}
	return append(ops, dels...), errors.Join(errs...)
}

// sorted returns a copy of o with its slices in a canonical order, so that
// diff's output does not depend on kernel dump order.
func (o observed) sorted() observed {
	o.VXLANs = slices.SortedFunc(slices.Values(o.VXLANs), func(a, b obsVXLAN) int { return cmp.Compare(a.Name, b.Name) })
	o.Neighbors = slices.SortedFunc(slices.Values(o.Neighbors), func(a, b obsNeigh) int {
		return cmp.Or(cmp.Compare(a.Dev, b.Dev), a.IP.Compare(b.IP))
	})
	o.FDB = slices.SortedFunc(slices.Values(o.FDB), func(a, b plan.FDB) int {
		return cmp.Or(cmp.Compare(a.Dev, b.Dev), bytes.Compare(a.MAC, b.MAC), a.Dst.Compare(b.Dst))
	})
	o.Routes = slices.SortedFunc(slices.Values(o.Routes), func(a, b obsRoute) int {
		return cmp.Or(comparePrefix(a.Dst, b.Dst), cmp.Compare(a.Priority, b.Priority))
	})
	return o
}

// fdbKey identifies an FDB entry: a MAC (up to 8 bytes, as net.HardwareAddr
// for EUI-64) and a remote.
type fdbKey struct {
	mac [8]byte
	n   int
	dst netip.Addr
}

func keyOf(f plan.FDB) fdbKey {
	k := fdbKey{dst: f.Dst}
	k.n = copy(k.mac[:], f.MAC)
	return k
}

func appendNewVXLAN(ops []op, v *plan.VXLAN) []op {
	return append(ops,
		op{kind: opAddVXLAN, dev: v.Name, vxlan: v},
		op{kind: opAddAddr, dev: v.Name, addr: v.Addr},
		op{kind: opSetUp, dev: v.Name})
}

// incompatible says why an existing VXLAN device cannot be changed in place
// into v ("" if it can): the kernel fixes these attributes at creation.
func incompatible(h obsVXLAN, v *plan.VXLAN) string {
	switch {
	case h.VNI != v.VNI:
		return fmt.Sprintf("vni %d, want %d", h.VNI, v.VNI)
	case h.Port != v.Port:
		return fmt.Sprintf("dstport %d, want %d", h.Port, v.Port)
	case h.Local != v.Local:
		return fmt.Sprintf("local %s, want %s", h.Local, v.Local)
	case h.Underlay != v.Underlay:
		return fmt.Sprintf("dev %q, want %q", h.Underlay, v.Underlay)
	case h.Learning:
		return "learning, want nolearning"
	}
	return ""
}

// diffLink brings an existing link's MTU, MAC (if mac != nil), IPv4 address
// (exactly addr) and up state in line. Stale addresses go to dels.
func diffLink(ops, dels []op, h obsLink, name string, mtu int, mac net.HardwareAddr, addr netip.Prefix) ([]op, []op) {
	if mac != nil && !bytes.Equal(h.MAC, mac) {
		ops = append(ops, op{kind: opSetMAC, dev: name, mac: mac, drift: fmt.Sprintf("was %s", h.MAC)})
	}
	if mtu > 0 && h.MTU != mtu {
		ops = append(ops, op{kind: opSetMTU, dev: name, mtu: mtu, drift: fmt.Sprintf("was %d", h.MTU)})
	}
	if !slices.Contains(h.Addrs, addr) {
		ops = append(ops, op{kind: opAddAddr, dev: name, addr: addr})
	}
	if !h.Up {
		ops = append(ops, op{kind: opSetUp, dev: name, drift: "was down"})
	}
	stale := slices.Clone(h.Addrs)
	slices.SortFunc(stale, comparePrefix)
	for _, a := range stale {
		if a != addr {
			dels = append(dels, op{kind: opDelAddr, dev: name, addr: a})
		}
	}
	return ops, dels
}

func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}
