package cni

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/tulle-net/tulle/internal/ipam"
	"github.com/tulle-net/tulle/internal/nftmatch"
)

// Published ports, in the node (host) namespace:
//
//	table inet tulle                                 (shared with the agent)
//	  chain ports-prerouting   nat prerouting dstnat   traffic arriving at the node
//	    meta nfproto ipv4 [ip daddr HOSTIP] fib daddr type local
//	      meta l4proto P th dport HOSTPORT dnat ip to CIP:CPORT        comment TAG
//	  chain ports-output       nat output dstnat       connections made by the node itself
//	    (same match)                                      dnat ...     comment TAG
//	  chain ports-postrouting  nat postrouting srcnat  hairpin: a container of this node
//	    meta nfproto ipv4 ct status dnat ip saddr SUBNET ip daddr CIP
//	      meta l4proto P th dport CPORT masquerade                     comment TAG
//	    (HOSTIP * or 127.x only) the same with ip saddr 127.0.0.0/8    comment TAG
//	  chain ports-input        filter input filter     the localnet guard, one per bridge
//	    meta nfproto ipv4 iifname BRIDGE ip daddr 127.0.0.0/8
//	      ct state & (established|related) == 0 drop     comment "tulle-cni localnet-guard BRIDGE"
//
// The hairpin masquerade is needed because without it a container reaching
// a published port through the node address (its own or a neighbour's on
// the same bridge) gets the reply straight from the target's address over
// the bridge, which matches no connection it made.
//
// Loopback: a mapping on every address (HOSTIP *) or on a 127.x address is
// reachable from the node as 127.0.0.1:HOSTPORT, as with Docker and the
// reference portmap. The output chain DNATs the connection to the
// container; its source, 127.0.0.1, may only leave through the bridge with
// route_localnet=1 on the bridge, and the container must see another
// source, so a masquerade rule for 127.0.0.0/8 sources goes with it.
// route_localnet would also let the containers on the bridge send to the
// node's 127.0.0.1; the localnet guard drops every such packet that is not
// the reply of a connection the node made (the fix kube-proxy adopted for
// CVE-2020-8558).
//
// Every rule carries the tag of its mapping (portTag) as its comment; DEL,
// GC and CHECK select rules by tag only, and ADD finds the host ports in use
// from the tags. Each verb sends its changes in one nftables batch, under
// an flock(2) on <dataDir>/ports.lock, so two ADDs cannot both take a port.

// ipsDstNAT is IPS_DST_NAT of enum ip_conntrack_status
// (include/uapi/linux/netfilter/nf_conntrack_common.h): the connection's
// destination was NATed. "ct status dnat" tests it.
const ipsDstNAT = 1 << 5

// nftTableName is the table shared with the agent; it must equal
// plan.NFTTable (a test checks), which this package does not import.
const nftTableName = "tulle"

func portsTable() *nftables.Table {
	return &nftables.Table{Name: nftTableName, Family: nftables.TableFamilyINet}
}

// portChains are the plugin's NAT base chains in table inet tulle, which
// hold the mappings' rules.
func portChains() []*nftables.Chain {
	t := portsTable()
	accept := nftables.ChainPolicyAccept
	return []*nftables.Chain{
		{Name: chainPortsPrerouting, Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &accept},
		{Name: chainPortsOutput, Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest, Policy: &accept},
		{Name: chainPortsPostrouting, Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept},
	}
}

// guardChain holds the localnet guards.
func guardChain() *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{Name: chainPortsInput, Table: portsTable(), Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept}
}

// guardComment tags the localnet guard of bridge.
func guardComment(bridge string) string { return "tulle-cni localnet-guard " + bridge }

// guardRule drops what arrives on bridge for 127.0.0.0/8 unless it answers
// a connection the node made.
func guardRule(bridge string) []expr.Any {
	ifname := make([]byte, unix.IFNAMSIZ)
	copy(ifname, bridge)
	e := ipv4Only()
	e = append(e,
		// iifname BRIDGE
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname},
	)
	e = append(e, nftmatch.IPv4(16, loopbackNet, expr.CmpOpEq)...) // ip daddr 127.0.0.0/8
	return append(e,
		// ct state & (established|related) == 0
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: make([]byte, 4)},
		&expr.Verdict{Kind: expr.VerdictDrop},
	)
}

var loopbackNet = netip.MustParsePrefix("127.0.0.0/8")

func isPortChain(name string) bool { return strings.HasPrefix(name, "ports-") }

// portRules are the rules of one mapping, by chain name: a DNAT in
// prerouting and in output, the hairpin masquerade in postrouting, and for
// a mapping reachable on loopback the loopback masquerade after it.
func portRules(tag portTag, cont netip.Addr, subnet netip.Prefix) map[string][][]expr.Any {
	m := tag.m
	l4 := byte(unix.IPPROTO_TCP)
	if m.proto == "udp" {
		l4 = unix.IPPROTO_UDP
	}
	dnat := func() []expr.Any {
		e := ipv4Only()
		if m.hostIP.IsValid() {
			e = append(e, nftmatch.IPv4(16, netip.PrefixFrom(m.hostIP, 32), expr.CmpOpEq)...) // ip daddr HOSTIP
		}
		e = append(e,
			// fib daddr type local
			&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
		)
		e = append(e, matchPort(l4, m.hostPort)...)
		a := cont.As4()
		return append(e,
			// dnat ip to CIP:CPORT
			&expr.Immediate{Register: 1, Data: a[:]},
			&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(m.contPort)},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4,
				RegAddrMin: 1, RegAddrMax: 1, RegProtoMin: 2, RegProtoMax: 2, Specified: true},
		)
	}
	masq := func(from netip.Prefix) []expr.Any {
		e := ipv4Only()
		e = append(e,
			// ct status dnat
			&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
		)
		e = append(e, nftmatch.IPv4(12, from, expr.CmpOpEq)...)                       // ip saddr FROM
		e = append(e, nftmatch.IPv4(16, netip.PrefixFrom(cont, 32), expr.CmpOpEq)...) // ip daddr CIP
		e = append(e, matchPort(l4, m.contPort)...)
		return append(e, &expr.Masq{})
	}
	out := map[string][][]expr.Any{
		chainPortsPrerouting:  {dnat()},
		chainPortsOutput:      {dnat()},
		chainPortsPostrouting: {masq(subnet)},
	}
	if m.onLoopback() {
		out[chainPortsPostrouting] = append(out[chainPortsPostrouting], masq(loopbackNet))
	}
	return out
}

// ipv4Only is "meta nfproto ipv4", which nft adds before an ip match in an
// inet table.
func ipv4Only() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
}

// matchPort is "meta l4proto P th dport PORT".
func matchPort(l4 byte, port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{l4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

// renderExprs is a canonical text of a rule's expressions, to compare a rule
// read back from the kernel with the one built.
func renderExprs(es []expr.Any) string {
	var b strings.Builder
	for _, e := range es {
		fmt.Fprintf(&b, " %T%+v", e, e)
	}
	return b.String()
}

// taggedRule is a rule of a ports-* chain and its parsed tag.
type taggedRule struct {
	rule *nftables.Rule
	tag  portTag
}

// portsConn is an nftables connection to the node namespace, held while
// the ports lock is.
type portsConn struct {
	nft  *nftables.Conn
	lock *os.File
}

// openPorts takes the ports lock and opens nftables in the host namespace.
// Close releases both.
func openPorts(host *nsLink, dataDir string) (*portsConn, error) {
	path := filepath.Join(dataDir, "ports.lock")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, withCode(types.ErrIOFailure, fmt.Errorf("create data dir %s: %w", dataDir, err))
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, withCode(types.ErrIOFailure, fmt.Errorf("open lock %s: %w", path, err))
	}
	// flock -x $dataDir/ports.lock
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, withCode(types.ErrIOFailure, fmt.Errorf("lock %s: %w", path, err))
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(host.ns.Fd())), nftables.WithSockOptions(bigSocketBuffers))
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open nftables in netns %s: %w", host.ns.Path(), err)
	}
	return &portsConn{nft: c, lock: f}, nil
}

// nftSocketBuffer is the netlink send and receive buffer of the plugin's
// nftables connections. A transaction goes out in one sendmsg, which must
// fit the send buffer (else EMSGSIZE), and the kernel acknowledges every
// message of it before we read any, each ack taking about 1 KiB of receive
// buffer (else ENOBUFS: the transaction is applied but its result lost).
// The defaults (net.core.[rw]mem_default, 208 KiB) overflow at a few
// hundred rules: a port range of a hundred ports, or a GC after many
// containers died. 8 MiB holds an ADD of 1000 mappings.
const nftSocketBuffer = 8 << 20

// nftDelBatch is how many rules one GC or DEL transaction deletes at most,
// so that deleting any number of rules stays within nftSocketBuffer.
const nftDelBatch = 1024

// bigSocketBuffers sets nftSocketBuffer on c, past net.core.[rw]mem_max
// where we have CAP_NET_ADMIN (SO_*BUFFORCE), else as far as those allow.
func bigSocketBuffers(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], nftSocketBuffer) != nil {
				serr = errors.Join(serr, unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], nftSocketBuffer))
			}
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("set netlink socket buffers to %d bytes: %w", nftSocketBuffer, err)
	}
	return nil
}

// close releases the lock (closing the file drops the flock).
func (pc *portsConn) close() { pc.lock.Close() }

// list returns every tagged rule of the plugin's chains. A missing table or
// chain means no rules.
func (pc *portsConn) list() ([]taggedRule, error) {
	// nft list chains inet
	chains, err := pc.nft.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list nft chains: %w", err)
	}
	var out []taggedRule
	for _, c := range chains {
		if c.Table.Name != nftTableName || !isPortChain(c.Name) {
			continue
		}
		// nft -a list chain inet tulle $chain
		rules, err := pc.nft.GetRules(c.Table, c)
		if errors.Is(err, unix.ENOENT) {
			continue // deleted since the listing
		}
		if err != nil {
			return nil, fmt.Errorf("list nft rules of chain inet %s %s: %w", nftTableName, c.Name, err)
		}
		for _, r := range rules {
			s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			if t, ok := parseTag(s); ok {
				out = append(out, taggedRule{rule: r, tag: t})
			}
		}
	}
	return out, nil
}

// ensurePorts publishes ms for att (container address cont in subnet,
// attached to bridge): it replaces whatever rules att had and refuses a
// host port another attachment publishes. All in one batch: on error
// nothing changed. A mapping reachable on loopback also turns on
// route_localnet on the bridge and makes sure its localnet guard exists.
func ensurePorts(host *nsLink, dataDir, network, bridge string, att ipam.Attachment, cont netip.Addr, subnet netip.Prefix, ms []portMap) error {
	pc, err := openPorts(host, dataDir)
	if err != nil {
		return err
	}
	defer pc.close()
	have, err := pc.list()
	if err != nil {
		return err
	}
	published := make([]portTag, 0, len(have))
	var old []*nftables.Rule
	for _, r := range have {
		published = append(published, r.tag)
		if r.tag.ownedBy(network, att) {
			old = append(old, r.rule)
		}
	}
	if len(ms) == 0 && len(old) == 0 {
		return nil // no ports: the table is not even created
	}
	if err := portConflict(ms, network, att, published); err != nil {
		return err
	}
	loopback := slices.ContainsFunc(ms, portMap.onLoopback)
	guarded := false
	if loopback {
		if guarded, err = pc.hasGuard(bridge); err != nil {
			return err
		}
	}
	// nft -f - <<'EOF'
	//   add table inet tulle
	//   add chain inet tulle ports-prerouting { type nat hook prerouting priority dstnat; } (and the others)
	//   delete rule inet tulle CHAIN handle H   (att's rules of an earlier ADD)
	//   add rule inet tulle CHAIN ... comment TAG
	//   add rule inet tulle ports-input ... drop comment "tulle-cni localnet-guard BRIDGE" (once)
	// EOF
	pc.nft.AddTable(portsTable())
	chains := map[string]*nftables.Chain{}
	for _, c := range portChains() {
		pc.nft.AddChain(c)
		chains[c.Name] = c
	}
	for _, r := range old {
		if err := pc.nft.DelRule(r); err != nil {
			return fmt.Errorf("delete port rule %q: %w", r.UserData, err)
		}
	}
	for _, m := range ms {
		tag := portTag{network: network, att: att, m: m}
		rules := portRules(tag, cont, subnet)
		for _, c := range portChains() {
			for _, exprs := range rules[c.Name] {
				pc.nft.AddRule(&nftables.Rule{
					Table:    c.Table,
					Chain:    chains[c.Name],
					Exprs:    exprs,
					UserData: userdata.AppendString(nil, userdata.TypeComment, tag.String()),
				})
			}
		}
	}
	if loopback && !guarded {
		g := pc.nft.AddChain(guardChain())
		pc.nft.AddRule(&nftables.Rule{Table: g.Table, Chain: g, Exprs: guardRule(bridge),
			UserData: userdata.AppendString(nil, userdata.TypeComment, guardComment(bridge))})
	}
	if err := pc.nft.Flush(); err != nil {
		return fmt.Errorf("publish ports %v for %s in table inet %s: %w", ms, att, nftTableName, err)
	}
	if loopback {
		// After the guard is in place: sysctl -w net.ipv4.conf.$bridge.route_localnet=1
		if err := setRouteLocalnet(host, bridge); err != nil {
			return err
		}
	}
	return nil
}

// hasGuard reports whether the localnet guard of bridge exists.
func (pc *portsConn) hasGuard(bridge string) (bool, error) {
	rules, err := pc.nft.GetRules(portsTable(), guardChain())
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("list nft rules of chain inet %s %s: %w", nftTableName, chainPortsInput, err)
	}
	for _, r := range rules {
		if s, _ := userdata.GetString(r.UserData, userdata.TypeComment); s == guardComment(bridge) {
			return true, nil
		}
	}
	return false, nil
}

func routeLocalnetPath(bridge string) string {
	return "/proc/sys/net/ipv4/conf/" + bridge + "/route_localnet"
}

// setRouteLocalnet lets packets with loopback addresses be routed through
// bridge, in the host namespace (/proc/sys/net is the opening thread's).
func setRouteLocalnet(host *nsLink, bridge string) error {
	err := host.ns.Do(func(ns.NetNS) error {
		return os.WriteFile(routeLocalnetPath(bridge), []byte("1"), 0o644)
	})
	if err != nil {
		return fmt.Errorf("enable route_localnet on bridge %s for ports published on 127.0.0.1: %w", bridge, err)
	}
	return nil
}

func routeLocalnet(host *nsLink, bridge string) (bool, error) {
	var b []byte
	err := host.ns.Do(func(ns.NetNS) (err error) {
		b, err = os.ReadFile(routeLocalnetPath(bridge))
		return err
	})
	return strings.TrimSpace(string(b)) == "1", err
}

// removePorts deletes the port rules of every attachment of network for
// which gone is true. Rules already gone count as removed.
func removePorts(host *nsLink, dataDir, network string, gone func(ipam.Attachment) bool) error {
	pc, err := openPorts(host, dataDir)
	if err != nil {
		return err
	}
	defer pc.close()
	have, err := pc.list()
	if err != nil {
		return err
	}
	n, done := 0, 0
	flush := func() error {
		if n == done {
			return nil
		}
		if err := pc.nft.Flush(); err != nil {
			return fmt.Errorf("delete port rules %d-%d of network %s in table inet %s (the first %d are gone; run GC or DEL again): %w",
				done+1, n, network, nftTableName, done, err)
		}
		done = n
		return nil
	}
	for _, r := range have {
		if r.tag.network != network || !gone(r.tag.att) {
			continue
		}
		// nft delete rule inet tulle CHAIN handle H
		if err := pc.nft.DelRule(r.rule); err != nil {
			return fmt.Errorf("delete port rule %q: %w", r.tag, err)
		}
		if n++; n-done == nftDelBatch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// checkPorts verifies that att publishes exactly ms: each mapping's rules
// are present with the expected expressions, no other rule is tagged with
// att, and a mapping reachable on loopback has route_localnet and the
// localnet guard on its bridge.
func checkPorts(host *nsLink, dataDir, network, bridge string, att ipam.Attachment, cont netip.Addr, subnet netip.Prefix, ms []portMap) error {
	pc, err := openPorts(host, dataDir)
	if err != nil {
		return err
	}
	defer pc.close()
	have, err := pc.list()
	if err != nil {
		return err
	}
	type key struct{ chain, tag string }
	found := map[key][]string{}
	for _, r := range have {
		if !r.tag.ownedBy(network, att) {
			continue
		}
		k := key{r.rule.Chain.Name, r.tag.String()}
		if !slices.ContainsFunc(ms, func(m portMap) bool { return m == r.tag.m }) {
			return fmt.Errorf("check ports of %s: chain %s has a rule for %s, which runtimeConfig does not map", att, k.chain, r.tag.m)
		}
		found[k] = append(found[k], renderExprs(r.rule.Exprs))
	}
	for _, m := range ms {
		tag := portTag{network: network, att: att, m: m}
		want := portRules(tag, cont, subnet)
		for _, c := range portChains() {
			got := found[key{c.Name, tag.String()}]
			var w []string
			for _, e := range want[c.Name] {
				w = append(w, renderExprs(e))
			}
			slices.Sort(got)
			slices.Sort(w)
			switch {
			case len(got) == 0:
				return fmt.Errorf("check ports of %s: rule for %s not found in chain inet %s %s", att, m, nftTableName, c.Name)
			case !slices.Equal(got, w):
				return fmt.Errorf("check ports of %s: rules for %s in chain inet %s %s differ from what ADD made", att, m, nftTableName, c.Name)
			}
		}
	}
	if !slices.ContainsFunc(ms, portMap.onLoopback) {
		return nil
	}
	if ok, err := pc.hasGuard(bridge); err != nil {
		return fmt.Errorf("check ports of %s: %w", att, err)
	} else if !ok {
		return fmt.Errorf("check ports of %s: the localnet guard of bridge %s is missing from chain inet %s %s", att, bridge, nftTableName, chainPortsInput)
	}
	if ok, err := routeLocalnet(host, bridge); err != nil {
		return fmt.Errorf("check ports of %s: %w", att, err)
	} else if !ok {
		return fmt.Errorf("check ports of %s: route_localnet is off on bridge %s, so 127.0.0.1 cannot reach the published ports", att, bridge)
	}
	return nil
}
