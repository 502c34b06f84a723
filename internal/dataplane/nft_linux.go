package dataplane

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/tulle-net/tulle/internal/nftmatch"
	"github.com/tulle-net/tulle/internal/plan"
)

// nftSpec is the agent's part of table inet tulle, desired or observed.
type nftSpec struct {
	chains []nftChain
}

type nftChain struct {
	chain *nftables.Chain
	rules []*nftables.Rule
}

// nftTable is the table tulle owns.
//
// Two programs share it, each owning whole chains (docs/cni.md, "Two
// owners of table inet tulle"):
//
//	table inet tulle
//	  chain postrouting        the agent (this package): masquerade
//	  chain ports-prerouting   \
//	  chain ports-output        > the CNI plugin: published ports
//	  chain ports-postrouting  /
//
// The agent reconciles only the chains named by agentChains: it creates the
// table when it is missing, but never deletes the table, nor flushes or
// deletes a chain it does not own, since that would cut every published
// port on the node until the next ADD.
func nftTable() *nftables.Table {
	return &nftables.Table{Name: plan.NFTTable, Family: nftables.TableFamilyINet}
}

// masqChain is the agent's masquerade chain.
const masqChain = "postrouting"

// agentChains are the chains of table inet tulle the agent owns.
func agentChains() []string { return []string{masqChain} }

// buildNFT returns the agent's desired chains for m:
//
//	table inet tulle {
//	  chain postrouting {
//	    type nat hook postrouting priority srcnat; policy accept;
//	    ip saddr <Source> ip daddr != <Network> masquerade comment "tulle: masquerade"
//	  }
//	}
//
// There is deliberately no forward chain: an accept verdict in one table does
// not override a drop in another table's chain on the same hook (every base
// chain sees the packet; a drop anywhere is final), so an "accept cluster
// traffic" chain here could not rescue a host whose firewall drops
// forwarding. That host's firewall must allow the cluster network.
func buildNFT(m *plan.Masquerade) nftSpec {
	t := nftTable()
	accept := nftables.ChainPolicyAccept
	post := &nftables.Chain{
		Name:     masqChain,
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
		Policy:   &accept,
	}
	var exprs []expr.Any
	// In an inet table 'ip saddr' implies 'meta nfproto ipv4', as nft adds.
	exprs = append(exprs,
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	)
	exprs = append(exprs, nftmatch.IPv4(12, m.Source, expr.CmpOpEq)...)   // ip saddr
	exprs = append(exprs, nftmatch.IPv4(16, m.Network, expr.CmpOpNeq)...) // ip daddr !=
	exprs = append(exprs, &expr.Masq{})
	rule := &nftables.Rule{
		Table:    t,
		Chain:    post,
		Exprs:    exprs,
		UserData: userdata.AppendString(nil, userdata.TypeComment, "tulle: masquerade"),
	}
	return nftSpec{chains: []nftChain{{chain: post, rules: []*nftables.Rule{rule}}}}
}

// renderNFT is the canonical text of a table's chains and rules, used to
// compare the observed table with the desired one: equal text, equal
// table. Comments (rule user data) and handles are left out.
func renderNFT(s nftSpec) string {
	chains := slices.Clone(s.chains)
	slices.SortFunc(chains, func(a, b nftChain) int { return cmp.Compare(a.chain.Name, b.chain.Name) })
	var b strings.Builder
	for _, c := range chains {
		ch := c.chain
		fmt.Fprintf(&b, "chain %s type %q", ch.Name, ch.Type)
		if ch.Hooknum != nil {
			fmt.Fprintf(&b, " hook %d", *ch.Hooknum)
		}
		if ch.Priority != nil {
			fmt.Fprintf(&b, " priority %d", *ch.Priority)
		}
		if ch.Policy != nil {
			fmt.Fprintf(&b, " policy %d", *ch.Policy)
		}
		b.WriteByte('\n')
		for _, r := range c.rules {
			b.WriteString("\trule")
			for _, e := range r.Exprs {
				fmt.Fprintf(&b, " %T%+v", e, e)
			}
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// nftText is the canonical text of the agent's chains desired for m.
func nftText(m *plan.Masquerade) string { return renderNFT(buildNFT(m)) }
