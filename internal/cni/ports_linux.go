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
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
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
//	    (same match; without HOSTIP also ip daddr != 127.0.0.0/8)  dnat ...  comment TAG
//	  chain ports-postrouting  nat postrouting srcnat  hairpin: a container of this node
//	    meta nfproto ipv4 ct status dnat ip saddr SUBNET ip daddr CIP
//	      meta l4proto P th dport CPORT masquerade                     comment TAG
//
// The hairpin masquerade is needed because without it a container reaching
// a published port through the node address (its own or a neighbour's on
// the same bridge) gets the reply straight from the target's address over
// the bridge, which matches no connection it made.
//
// Loopback destinations are left out of the output chain: a packet to
// 127.0.0.1 DNATed to a container would need route_localnet.
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

// portChains are the plugin's base chains in table inet tulle.
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

func isPortChain(name string) bool { return strings.HasPrefix(name, "ports-") }

// portRules are the three rules of one mapping, keyed by chain name.
func portRules(tag portTag, cont netip.Addr, subnet netip.Prefix) map[string][]expr.Any {
	m := tag.m
	l4 := byte(unix.IPPROTO_TCP)
	if m.proto == "udp" {
		l4 = unix.IPPROTO_UDP
	}
	dnat := func(output bool) []expr.Any {
		e := ipv4Only()
		if m.hostIP.IsValid() {
			e = append(e, nftmatch.IPv4(16, netip.PrefixFrom(m.hostIP, 32), expr.CmpOpEq)...) // ip daddr HOSTIP
		} else if output {
			e = append(e, nftmatch.IPv4(16, netip.MustParsePrefix("127.0.0.0/8"), expr.CmpOpNeq)...) // ip daddr != 127.0.0.0/8
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
	masq := ipv4Only()
	masq = append(masq,
		// ct status dnat
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	)
	masq = append(masq, nftmatch.IPv4(12, subnet, expr.CmpOpEq)...)                     // ip saddr SUBNET
	masq = append(masq, nftmatch.IPv4(16, netip.PrefixFrom(cont, 32), expr.CmpOpEq)...) // ip daddr CIP
	masq = append(masq, matchPort(l4, m.contPort)...)
	masq = append(masq, &expr.Masq{})
	return map[string][]expr.Any{
		chainPortsPrerouting:  dnat(false),
		chainPortsOutput:      dnat(true),
		chainPortsPostrouting: masq,
	}
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
	c, err := nftables.New(nftables.WithNetNSFd(int(host.ns.Fd())))
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open nftables in netns %s: %w", host.ns.Path(), err)
	}
	return &portsConn{nft: c, lock: f}, nil
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

// ensurePorts publishes ms for att (container address cont in subnet):
// it replaces whatever rules att had and refuses a host port another
// attachment publishes. All in one batch: on error nothing changed.
func ensurePorts(host *nsLink, dataDir, network string, att ipam.Attachment, cont netip.Addr, subnet netip.Prefix, ms []portMap) error {
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
	// nft -f - <<'EOF'
	//   add table inet tulle
	//   add chain inet tulle ports-prerouting { type nat hook prerouting priority dstnat; } (and the others)
	//   delete rule inet tulle CHAIN handle H   (att's rules of an earlier ADD)
	//   add rule inet tulle CHAIN ... comment TAG
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
		for _, c := range portChains() {
			pc.nft.AddRule(&nftables.Rule{
				Table:    c.Table,
				Chain:    chains[c.Name],
				Exprs:    portRules(tag, cont, subnet)[c.Name],
				UserData: userdata.AppendString(nil, userdata.TypeComment, tag.String()),
			})
		}
	}
	if err := pc.nft.Flush(); err != nil {
		return fmt.Errorf("publish ports %v for %s in table inet %s: %w", ms, att, nftTableName, err)
	}
	return nil
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
	n := 0
	for _, r := range have {
		if r.tag.network != network || !gone(r.tag.att) {
			continue
		}
		// nft delete rule inet tulle CHAIN handle H
		if err := pc.nft.DelRule(r.rule); err != nil {
			return fmt.Errorf("delete port rule %q: %w", r.tag, err)
		}
		n++
	}
	if n == 0 {
		return nil
	}
	if err := pc.nft.Flush(); err != nil {
		return fmt.Errorf("delete %d port rules of network %s in table inet %s: %w", n, network, nftTableName, err)
	}
	return nil
}

// checkPorts verifies that att publishes exactly ms: each mapping's three
// rules are present with the expected expressions, and no other rule is
// tagged with att.
func checkPorts(host *nsLink, dataDir, network string, att ipam.Attachment, cont netip.Addr, subnet netip.Prefix, ms []portMap) error {
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
	found := map[key]string{}
	for _, r := range have {
		if !r.tag.ownedBy(network, att) {
			continue
		}
		k := key{r.rule.Chain.Name, r.tag.String()}
		if !slices.ContainsFunc(ms, func(m portMap) bool { return m == r.tag.m }) {
			return fmt.Errorf("check ports of %s: chain %s has a rule for %s, which runtimeConfig does not map", att, k.chain, r.tag.m)
		}
		found[k] = renderExprs(r.rule.Exprs)
	}
	for _, m := range ms {
		tag := portTag{network: network, att: att, m: m}
		want := portRules(tag, cont, subnet)
		for _, c := range portChains() {
			got, ok := found[key{c.Name, tag.String()}]
			switch {
			case !ok:
				return fmt.Errorf("check ports of %s: rule for %s not found in chain inet %s %s", att, m, nftTableName, c.Name)
			case got != renderExprs(want[c.Name]):
				return fmt.Errorf("check ports of %s: rule for %s in chain inet %s %s differs from what ADD made", att, m, nftTableName, c.Name)
			}
		}
	}
	return nil
}
