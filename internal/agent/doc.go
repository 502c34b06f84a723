// Package agent wires one node together: subnet.Manager (lease, watch) ->
// plan.Compute (pure) -> dataplane.Apply (kernel), plus health, readiness and
// metrics endpoints and the node's subnet.json. It holds no decisions of its
// own; cmd/tulle's agent command is its only importer.
//
//	etcd watch ──snapshots──┐
//	resync ticker ──────────┼──> reconcile: Compute -> Apply -> subnet.json
//	netlink link/route dels ┘
package agent
