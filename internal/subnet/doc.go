// Package subnet is tulle's etcd lease manager: it stores the network config,
// acquires, renews and releases this node's subnet lease, and watches every
// node's leases. It owns the datastore layout; packages config and lease own
// the values. Nothing below the agent (plan, dataplane, cni) may import it.
//
// # Layout
//
//	/tulle/<cluster>/config                   config.Network JSON
//	/tulle/<cluster>/leases/<lease.SubnetKey>  lease.Attrs JSON, bound to an etcd lease
//
// A lease key is bound to an etcd lease of Options.TTL (default 1 hour),
// renewed by KeepAlive every TTL/3. A dead node's subnet is freed one TTL
// after its last renewal; a gracefully stopped node frees it at once with
// Release. One hour (flannel uses 24) bounds how long a crashed node blocks
// its subnet, while a restarting agent keeps its subnet whatever the TTL,
// because nodes are identified by name and Acquire takes a node's own lease
// over.
//
// A lease key bound to no etcd lease is a reservation: an operator wrote it
// to pin a subnet to a node name. Nobody else gets that subnet; the named
// node takes it over, and it stays unbound, never expires, and is not
// deleted by Release. (flannel turns reservations into 24 h leases on etcd
// v3, flannel-io/flannel#1329.)
//
// # API
//
//	Dial(ctx, DialOptions) (*clientv3.Client, error)
//	New(Options) (*Manager, error)
//	(*Manager).GetConfig(ctx) (config.Network, error)
//	(*Manager).SetConfig(ctx, config.Network) error
//	(*Manager).List(ctx) ([]lease.Lease, int64, error)          one Get
//	(*Manager).ListWithExpiry(ctx) ([]lease.Lease, int64, error) plus one TimeToLive per etcd lease
//	(*Manager).Acquire(ctx, cfg, attrs, prev) (lease.Lease, error)
//	(*Manager).KeepAlive(ctx) error                             long-running
//	(*Manager).Watch(ctx, chan<- Snapshot) error                long-running
//	(*Manager).Release(ctx) error
//	(*Manager).Current() (lease.Lease, bool)
//
// # Acquire
//
// Every write that can race is an etcd transaction; nothing is
// read-then-write:
//
//  1. One Get lists the leases. lease.Choose (pure) picks a subnet: the one
//     this node already holds (by node name) if it fits the config, else
//     prev (the subnet from before a restart) if free, else a free one.
//  2. Our own lease is taken over: Put the new attrs bound to a new etcd
//     lease (a reservation stays unbound), if the key's ModRevision is
//     unchanged. Peers see an update, never a delete, so traffic to the
//     node is not disturbed.
//  3. A free subnet is created: Put if the key's Version is 0. A lost race
//     adds the subnet to the avoid set and goes back to 1 with another
//     subnet; it is never an error while a subnet is free. Exhaustion wraps
//     lease.ErrExhausted with the counts.
//  4. Leases of this node that no longer fit the config (or duplicates) are
//     deleted, each guarded by its ModRevision.
//
// One etcd lease is granted per Acquire and reused across retries; it is
// revoked if Acquire fails.
//
// # Concurrency
//
// A Manager holds at most one lease. Acquire, KeepAlive and Release change
// it and must be called from one goroutine at a time, in that order (the
// agent's lifecycle); Watch, List, GetConfig, SetConfig and Current are safe
// to call concurrently with anything. Two agents running with the same node
// name take the lease from each other; KeepAlive notices and fails with
// ErrLost rather than fight.
package subnet
