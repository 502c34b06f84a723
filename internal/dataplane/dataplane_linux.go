package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tulle-net/tulle/internal/ipnet"
	"github.com/tulle-net/tulle/internal/logkey"
	"github.com/tulle-net/tulle/internal/netns"
	"github.com/tulle-net/tulle/internal/plan"
)

// maxErrs caps the errors Apply joins: when the kernel refuses everything
// (no permission, a missing underlay) one line per object helps nobody.
const maxErrs = 10

// Dataplane programs one network namespace. Apply calls are serialised; a
// Dataplane is safe for concurrent use. After Close, Apply returns ErrClosed.
type Dataplane struct {
	log *slog.Logger

	mu sync.Mutex // serialises Apply and Close; guards the fields below
	// ns is our own duplicate of the target namespace handle.
	ns     netns.NsHandle
	nl     *netlink.Handle
	nft    *nftables.Conn
	closed bool
	// last is the last state applied without error (nil: none): when the
	// same state needs changes again, something changed behind our back.
	last *plan.State
}

// New opens netlink and nftables connections into o.NetNS.
func New(o Options) (*Dataplane, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Dataplane{log: log.With(logkey.Component, "dataplane"), ns: netns.None()}
	var err error
	if o.NetNS > 0 {
		var fd int
		fd, err = unix.FcntlInt(uintptr(o.NetNS), unix.F_DUPFD_CLOEXEC, 0)
		d.ns = netns.NsHandle(fd)
	} else {
		d.ns, err = vnetns.Get()
	}
	if err != nil {
		return nil, fmt.Errorf("open netns %d: %w", int(o.NetNS), err)
	}
	// NewHandleAt switches the thread into the namespace and back but
	// ignores a failed switch back; inside Do such a thread is discarded.
	err = netns.Do(d.ns, func() error {
		var err error
		d.nl, err = netlink.NewHandleAt(d.ns, unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		d.ns.Close()
		return nil, fmt.Errorf("open netlink in netns %d: %w", int(o.NetNS), err)
	}
	d.nft, err = nftables.New(nftables.WithNetNSFd(int(d.ns)), nftables.AsLasting())
	if err != nil {
		d.nl.Close()
		d.ns.Close()
		return nil, fmt.Errorf("open nftables in netns %d: %w", int(o.NetNS), err)
	}
	return d, nil
}

// Close releases the connections and the namespace handle. Kernel state is
// left in place, so traffic keeps flowing (see DESIGN.md). Close is
// idempotent.
func (d *Dataplane) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	d.nl.Close()
	err := d.nft.CloseLasting()
	d.ns.Close()
	if err != nil {
		return fmt.Errorf("close nftables: %w", err)
	}
	return nil
}

// Apply makes the kernel match want for every object tulle owns and returns
// the changes it made. It reads the actual state (one dump per object kind),
// diffs it against want, and executes the difference: adds before deletes,
// continuing past failures, whose errors it joins. An object already gone
// when deleted counts as deleted. Applying the same state twice makes no
// changes the second time. A state that fails validation changes nothing.
// ctx is checked between kernel calls.
func (d *Dataplane) Apply(ctx context.Context, want plan.State) (Changes, error) {
	if err := validate(want); err != nil {
		return Changes{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return Changes{}, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return Changes{}, err
	}
	start := time.Now()
	have, index, err := d.observe(want)
	if err != nil {
		return Changes{}, fmt.Errorf("read kernel state: %w", err)
	}
	ops, conflicts := diff(have, want)
	done, execErr := d.execute(ctx, ops, index)
	err = errors.Join(conflicts, execErr)

	ch := Changes{Ops: done}
	attrs := []any{logkey.Count, ch.Len(), logkey.Duration, time.Since(start)}
	switch {
	case len(ops) == 0 && err == nil:
		d.log.Debug("kernel in sync", attrs...)
	case ch.Len() > 0 && d.last != nil && sameKernelState(d.last, &want):
		d.log.Warn("healed drift: kernel state changed behind tulle's back",
			append(attrs, logkey.Op, sample(done))...)
	case ch.Len() > 0:
		d.log.Info("reconciled", attrs...)
	}
	d.last = nil
	if err == nil {
		c := cloneKernelState(want)
		d.last = &c
	}
	return ch, err
}

// sample is the first few ops, for a log line.
func sample(ops []string) string {
	const n = 5
	if len(ops) <= n {
		return strings.Join(ops, "; ")
	}
	return fmt.Sprintf("%s; ... (%d more)", strings.Join(ops[:n], "; "), len(ops)-n)
}

// dump retries a netlink dump that the kernel interrupted because the table
// changed under it (NLM_F_DUMP_INTR); its partial result is not trusted.
func dump[T any](what string, f func() (T, error)) (T, error) {
	const attempts = 5
	var (
		v   T
		err error
	)
	for range attempts {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return v, fmt.Errorf("dump %s: %w", what, err)
	}
	return v, nil
}

// observe reads the state of every object tulle owns: one dump each of
// links, IPv4 addresses, the VXLAN device's neighbours and FDB, routes of
// our protocol, and table inet tulle. It also returns link indexes by name.
func (d *Dataplane) observe(want plan.State) (observed, map[string]int, error) {
	var o observed
	if want.Forwarding {
		on, err := d.forwarding()
		if err != nil {
			return o, nil, err
		}
		o.Forwarding = on
	}
	links, err := dump("links", d.nl.LinkList)
	if err != nil {
		return o, nil, err
	}
	addrs, err := dump("addresses", func() ([]netlink.Addr, error) { return d.nl.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return o, nil, err
	}
	addrsOf := map[int][]netip.Prefix{}
	for _, a := range addrs {
		if p, ok := ipnet.Prefix(a.IPNet); ok {
			addrsOf[a.LinkIndex] = append(addrsOf[a.LinkIndex], p)
		}
	}
	index := make(map[string]int, len(links))
	name := make(map[int]string, len(links))
	o.Kinds = make(map[string]string, len(links))
	for _, l := range links {
		a := l.Attrs()
		index[a.Name], name[a.Index], o.Kinds[a.Name] = a.Index, a.Name, l.Type()
	}
	linkState := func(l netlink.Link) obsLink {
		a := l.Attrs()
		gso := int(a.GSOMaxSize)
		if a.GSOIPv4MaxSize > 0 {
			gso = min(gso, int(a.GSOIPv4MaxSize))
		}
		return obsLink{Name: a.Name, MTU: a.MTU, Up: a.Flags&net.FlagUp != 0, MAC: a.HardwareAddr, Addrs: addrsOf[a.Index], GSO: gso, TSOMax: int(a.TSOMaxSize)}
	}
	vxIndex := 0
	for _, l := range links {
		a := l.Attrs()
		if b := want.Bridge; b != nil && a.Name == b.Name && l.Type() == "bridge" {
			s := linkState(l)
			o.Bridge = &s
			if b.GSOMaxSize > 0 {
				for _, p := range links {
					if p.Attrs().MasterIndex == a.Index {
						o.BridgePorts = append(o.BridgePorts, linkState(p))
					}
				}
			}
		}
		if t, ok := l.(*netlink.Tuntap); ok && a.Name == plan.TUNName && t.Mode == netlink.TUNTAP_MODE_TUN {
			s := linkState(l)
			o.TUN = &s
		}
		if v, ok := l.(*netlink.Vxlan); ok && strings.HasPrefix(a.Name, plan.VXLANPrefix) {
			local, _ := netip.AddrFromSlice(v.SrcAddr)
			o.VXLANs = append(o.VXLANs, obsVXLAN{
				obsLink:  linkState(l),
				VNI:      v.VxlanId,
				Port:     v.Port,
				Local:    local.Unmap(),
				Underlay: name[v.VtepDevIndex],
				Learning: v.Learning,
			})
			if want.VXLAN != nil && a.Name == want.VXLAN.Name {
				vxIndex = a.Index
			}
		}
	}

	if vxIndex != 0 {
		dev := want.VXLAN.Name
		neighs, err := dump("neighbours", func() ([]netlink.Neigh, error) { return d.nl.NeighList(vxIndex, netlink.FAMILY_V4) })
		if err != nil {
			return o, nil, err
		}
		for _, n := range neighs {
			ip, ok := netip.AddrFromSlice(n.IP)
			if !ok {
				continue
			}
			o.Neighbors = append(o.Neighbors, obsNeigh{
				Neighbor:  plan.Neighbor{Dev: dev, IP: ip.Unmap(), MAC: n.HardwareAddr},
				Permanent: n.State&netlink.NUD_PERMANENT != 0,
			})
		}
		fdb, err := dump("fdb", func() ([]netlink.Neigh, error) { return d.nl.NeighList(vxIndex, unix.AF_BRIDGE) })
		if err != nil {
			return o, nil, err
		}
		for _, f := range fdb {
			// Entries without a remote are the kernel's own, not ours.
			dst, ok := netip.AddrFromSlice(f.IP)
			if !ok || f.HardwareAddr == nil {
				continue
			}
			o.FDB = append(o.FDB, plan.FDB{Dev: dev, MAC: f.HardwareAddr, Dst: dst.Unmap()})
		}
	}

	routes, err := dump("routes", func() ([]netlink.Route, error) {
		return d.nl.RouteListFiltered(netlink.FAMILY_V4,
			&netlink.Route{Protocol: plan.RouteProtocol, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return o, nil, err
	}
	for _, r := range routes {
		dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if r.Dst != nil {
			dst, _ = ipnet.Prefix(r.Dst)
		}
		gw, _ := netip.AddrFromSlice(r.Gw)
		dev := name[r.LinkIndex]
		if dev == "" && r.LinkIndex != 0 {
			dev = fmt.Sprintf("if%d", r.LinkIndex)
		}
		o.Routes = append(o.Routes, obsRoute{
			Route: plan.Route{
				Dst:    dst,
				Gw:     gw.Unmap(),
				Dev:    dev,
				Onlink: r.Flags&int(netlink.FLAG_ONLINK) != 0,
			},
			Priority: r.Priority,
		})
	}

	if want.TUN != nil && o.TUN != nil && want.TUN.Name == o.TUN.Name {
		if o.TUNIPv6Off, err = d.ipv6Off(o.TUN.Name); err != nil {
			return o, nil, err
		}
	}

	if o.NFT, err = d.observeNFT(); err != nil {
		return o, nil, err
	}
	return o, index, nil
}

// disableIPv6Path is the sysctl that turns IPv6 off on one link.
func disableIPv6Path(dev string) string { return "/proc/sys/net/ipv6/conf/" + dev + "/disable_ipv6" }

// ipv6Off reads net.ipv6.conf.<dev>.disable_ipv6 in the namespace; a
// kernel without IPv6 has no such file, which counts as off.
func (d *Dataplane) ipv6Off(dev string) (bool, error) {
	var v []byte
	err := netns.Do(d.ns, func() error {
		var err error
		v, err = os.ReadFile(disableIPv6Path(dev))
		return err
	})
	if errors.Is(err, os.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", disableIPv6Path(dev), err)
	}
	return strings.TrimSpace(string(v)) == "1", nil
}

// observeNFT renders the agent's chains of table inet tulle as they are in
// the kernel (nil: none of them exists). Chains of the other owner (the CNI
// plugin's ports-*) are not read, so they never count as drift.
func (d *Dataplane) observeNFT() (*string, error) {
	chains, err := d.nft.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list nft chains: %w", err)
	}
	var spec nftSpec
	for _, c := range chains {
		if c.Table.Name != plan.NFTTable || !slices.Contains(agentChains(), c.Name) {
			continue
		}
		rules, err := d.nft.GetRules(c.Table, c)
		if err != nil {
			return nil, fmt.Errorf("list nft rules of chain %s: %w", c.Name, err)
		}
		spec.chains = append(spec.chains, nftChain{chain: c, rules: rules})
	}
	if len(spec.chains) == 0 {
		return nil, nil
	}
	s := renderNFT(spec)
	return &s, nil
}

const ipForward = "/proc/sys/net/ipv4/ip_forward"

// forwarding reads net.ipv4.ip_forward. /proc/sys/net is resolved by the
// network namespace of the thread that opens it, hence Do.
func (d *Dataplane) forwarding() (bool, error) {
	var v []byte
	err := netns.Do(d.ns, func() error {
		var err error
		v, err = os.ReadFile(ipForward)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("read %s: %w", ipForward, err)
	}
	return strings.TrimSpace(string(v)) == "1", nil
}

// execute runs ops in order and returns the text of those that succeeded.
// It goes on after a failure, except that ops on a link whose creation
// failed are skipped (they cannot succeed).
func (d *Dataplane) execute(ctx context.Context, ops []op, index map[string]int) ([]string, error) {
	var (
		done    []string
		errs    []error
		nerrs   int
		skipped int
		failed  = map[string]bool{}
	)
	debug := d.log.Enabled(ctx, slog.LevelDebug)
	for i, o := range ops {
		if err := ctx.Err(); err != nil {
			errs = append(errs, fmt.Errorf("stopped before change %d of %d: %w", i+1, len(ops), err))
			break
		}
		if o.dev != "" && failed[o.dev] {
			skipped++
			continue
		}
		if err := d.exec(o, index); err != nil {
			if nerrs++; nerrs <= maxErrs {
				errs = append(errs, fmt.Errorf("%s: %w", o, err))
			}
			if o.kind == opAddBridge || o.kind == opAddVXLAN {
				failed[o.dev] = true
			}
			continue
		}
		s := o.String()
		done = append(done, s)
		if debug {
			attrs := []any{logkey.Op, s}
			if o.drift != "" {
				attrs = append(attrs, "drift", o.drift)
			}
			d.log.Debug("changed", attrs...)
		}
	}
	if nerrs > maxErrs {
		errs = append(errs, fmt.Errorf("%d more changes failed", nerrs-maxErrs))
	}
	if skipped > 0 {
		errs = append(errs, fmt.Errorf("skipped %d changes on links that could not be created", skipped))
	}
	return done, errors.Join(errs...)
}

// gone reports errors that mean "already deleted".
func gone(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) ||
		errors.Is(err, unix.ENODEV) || errors.Is(err, unix.EADDRNOTAVAIL)
}

// exec performs one op. The comments give the iproute2 equivalent.
func (d *Dataplane) exec(o op, index map[string]int) error {
	// link resolves o.dev; created links are looked up after creation.
	link := func() (netlink.Link, error) {
		i, ok := index[o.dev]
		if !ok {
			return nil, fmt.Errorf("link %s not found", o.dev)
		}
		return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: o.dev, Index: i}}, nil
	}
	switch o.kind {
	case opForwarding:
		// sysctl -w net.ipv4.ip_forward=1 (in the namespace)
		return netns.Do(d.ns, func() error { return os.WriteFile(ipForward, []byte("1\n"), 0o644) })

	case opDisableIPv6:
		// sysctl -w net.ipv6.conf.NAME.disable_ipv6=1 (in the namespace)
		return netns.Do(d.ns, func() error { return os.WriteFile(disableIPv6Path(o.dev), []byte("1\n"), 0o644) })

	case opAddBridge:
		// ip link add NAME type bridge mtu MTU
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: o.bridge.Name, MTU: o.bridge.MTU}}
		return d.addLink(br, index)

	case opAddVXLAN:
		// ip link add NAME type vxlan id VNI local LOCAL dev UNDERLAY dstport PORT nolearning mtu MTU address MAC
		v := o.vxlan
		vx := &netlink.Vxlan{
			LinkAttrs: netlink.LinkAttrs{Name: v.Name, MTU: v.MTU, HardwareAddr: v.MAC},
			VxlanId:   v.VNI,
			SrcAddr:   v.Local.AsSlice(),
			Port:      v.Port,
			Learning:  false,
		}
		if v.Underlay != "" {
			i, ok := index[v.Underlay]
			if !ok {
				return fmt.Errorf("underlay link %s not found", v.Underlay)
			}
			vx.VtepDevIndex = i
		}
		return d.addLink(vx, index)

	case opDelLink:
		// ip link del NAME
		l, err := link()
		if err == nil {
			err = d.nl.LinkDel(l)
		}
		delete(index, o.dev)
		if err != nil && !gone(err) {
			return err
		}
		return nil

	case opSetMTU:
		// ip link set NAME mtu MTU
		l, err := link()
		if err != nil {
			return err
		}
		return d.nl.LinkSetMTU(l, o.mtu)

	case opSetGSO:
		// ip link set NAME gso_max_size N gso_ipv4_max_size N
		l, err := link()
		if err != nil {
			return err
		}
		if err := d.nl.LinkSetGSOMaxSize(l, o.gso); err != nil {
			return fmt.Errorf("gso_max_size: %w", err)
		}
		if err := d.nl.LinkSetGSOIPv4MaxSize(l, o.gso); err != nil {
			return fmt.Errorf("gso_ipv4_max_size: %w", err)
		}
		return nil

	case opSetMAC:
		// ip link set NAME address MAC
		l, err := link()
		if err != nil {
			return err
		}
		return d.nl.LinkSetHardwareAddr(l, o.mac)

	case opSetUp:
		// ip link set NAME up
		l, err := link()
		if err != nil {
			return err
		}
		return d.nl.LinkSetUp(l)

	case opAddAddr:
		// ip addr add ADDR dev NAME
		l, err := link()
		if err != nil {
			return err
		}
		err = d.nl.AddrAdd(l, &netlink.Addr{IPNet: ipnet.From(o.addr)})
		if errors.Is(err, unix.EEXIST) {
			return nil // added since we looked (the CNI plugin sets the same bridge address)
		}
		return err

	case opDelAddr:
		// ip addr del ADDR dev NAME
		l, err := link()
		if err == nil {
			err = d.nl.AddrDel(l, &netlink.Addr{IPNet: ipnet.From(o.addr)})
		}
		if err != nil && !gone(err) {
			return err
		}
		return nil

	case opSetNeigh, opDelNeigh:
		l, err := link()
		if err != nil {
			return err
		}
		n := &netlink.Neigh{
			LinkIndex:    l.Attrs().Index,
			Family:       netlink.FAMILY_V4,
			State:        netlink.NUD_PERMANENT,
			IP:           o.neigh.IP.AsSlice(),
			HardwareAddr: o.neigh.MAC,
		}
		if o.kind == opSetNeigh {
			// ip neigh replace IP lladdr MAC dev NAME nud permanent
			return d.nl.NeighSet(n)
		}
		// ip neigh del IP dev NAME
		if err := d.nl.NeighDel(n); err != nil && !gone(err) {
			return err
		}
		return nil

	case opSetFDB, opDelFDB:
		l, err := link()
		if err != nil {
			return err
		}
		n := &netlink.Neigh{
			LinkIndex:    l.Attrs().Index,
			Family:       unix.AF_BRIDGE,
			Flags:        netlink.NTF_SELF,
			State:        netlink.NUD_PERMANENT,
			IP:           o.fdb.Dst.AsSlice(),
			HardwareAddr: o.fdb.MAC,
		}
		if o.kind == opSetFDB {
			// bridge fdb replace MAC dev NAME dst DST self permanent
			return d.nl.NeighSet(n)
		}
		// bridge fdb del MAC dev NAME dst DST self (only that remote)
		if err := d.nl.NeighDel(n); err != nil && !gone(err) {
			return err
		}
		return nil

	case opAddRoute, opReplaceRoute:
		l, err := link()
		if err != nil {
			return err
		}
		r := &netlink.Route{
			LinkIndex: l.Attrs().Index,
			Dst:       ipnet.From(o.route.Dst),
			Gw:        o.route.Gw.AsSlice(),
			Protocol:  plan.RouteProtocol,
			Table:     unix.RT_TABLE_MAIN,
		}
		if o.route.Onlink {
			r.Flags = int(netlink.FLAG_ONLINK)
		}
		if !o.route.Gw.IsValid() {
			r.Scope = netlink.SCOPE_LINK // as 'ip route add DST dev NAME' does
		}
		if o.kind == opReplaceRoute {
			// ip route replace DST [via GW] dev NAME [onlink] proto 197
			return d.nl.RouteReplace(r)
		}
		// ip route add DST [via GW] dev NAME [onlink] proto 197
		err = d.nl.RouteAdd(r)
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("a route to %s that is not tulle's (another protocol) exists: %w", o.route.Dst, err)
		}
		return err

	case opDelRoute:
		// ip route del DST proto 197 metric PRIO table main
		// Scope nowhere matches any scope; the protocol makes sure a
		// route of another owner is never deleted.
		r := &netlink.Route{
			Dst:      ipnet.From(o.route.Dst),
			Protocol: plan.RouteProtocol,
			Priority: o.prio,
			Table:    unix.RT_TABLE_MAIN,
			Scope:    netlink.SCOPE_NOWHERE,
		}
		if err := d.nl.RouteDel(r); err != nil && !gone(err) {
			return err
		}
		return nil

	case opSetNFT:
		// nft -f - <<'EOF'
		//   add table inet tulle
		//   add chain inet tulle postrouting; delete chain inet tulle postrouting
		//   add chain inet tulle postrouting { type nat hook postrouting priority srcnat; }
		//   add rule inet tulle postrouting ...
		// EOF
		// One batch, applied atomically by the kernel, so the chain never
		// exists half-built and the plugin's chains in the same table are
		// never touched. The first "add chain" (no hook: valid on a base
		// chain too) makes the delete valid whether or not the chain
		// existed; deleting rather than flushing also heals a chain whose
		// type, hook or priority drifted, which the kernel cannot update.
		t := nftTable()
		d.nft.AddTable(t)
		for _, c := range buildNFT(o.masq).chains {
			d.nft.AddChain(&nftables.Chain{Name: c.chain.Name, Table: t})
			d.nft.DelChain(c.chain)
			d.nft.AddChain(c.chain)
			for _, r := range c.rules {
				d.nft.AddRule(r)
			}
		}
		return d.nft.Flush()

	case opDelNFT:
		// nft add chain inet tulle postrouting; nft delete chain inet tulle postrouting
		// The table stays: the plugin's chains may live in it.
		t := nftTable()
		d.nft.AddTable(t)
		for _, name := range agentChains() {
			c := &nftables.Chain{Name: name, Table: t}
			d.nft.AddChain(c)
			d.nft.DelChain(c)
		}
		return d.nft.Flush()
	}
	return fmt.Errorf("unknown op kind %d", o.kind)
}

// addLink creates l and records its index.
func (d *Dataplane) addLink(l netlink.Link, index map[string]int) error {
	name := l.Attrs().Name
	if err := d.nl.LinkAdd(l); err != nil {
		return err
	}
	got, err := d.nl.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find new link: %w", err)
	}
	index[name] = got.Attrs().Index
	return nil
}
