// Package dataplane reconciles a plan.State into the kernel of one network
// namespace through netlink and nftables.
//
// Apply is a three-step pipeline:
//
//	observe (netlink dumps, nft list)  ->  diff (pure)  ->  execute (netlink, one nft batch)
//	   only objects tulle owns              []op sorted       adds before deletes
//
// tulle owns, and Apply only ever reads, changes or deletes:
//
//   - the bridge named by State.Bridge (created if missing, never deleted:
//     workloads may be attached to it);
//   - links of type vxlan named plan.VXLANPrefix+"*" (a stale one is deleted);
//   - the udp backend's TUN device plan.TUNName (mode tun only): its MTU,
//     address, up state and net.ipv6.conf.<name>.disable_ipv6. The udp engine creates it, never Apply, which
//     reports ErrTUNMissing and holds back routes through it while it is
//     absent; Apply deletes it when the plan has no TUN (a stale one);
//   - permanent neighbour and FDB entries on tulle's VXLAN device;
//   - routes with protocol plan.RouteProtocol in the main table;
//   - its chains of the nftables table "inet tulle" (today "postrouting",
//     the masquerade). It creates the table when missing but never deletes
//     it: the table has a second owner, the CNI plugin, whose "ports-*"
//     chains (published ports) are never read, flushed or deleted here;
//   - net.ipv4.ip_forward, which it only ever turns on.
//
// Routes of other protocols, other links, other nftables tables and the
// plugin's chains are never touched. A second Apply of the same state makes
// no change, and anything changed behind tulle's back is restored by the next Apply (the agent's
// periodic resync).
//
// dataplane imports plan, netns and logkey; plan must not import it.
package dataplane
