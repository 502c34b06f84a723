// Package agent wires one node together: subnet.Manager (lease, watch) ->
// plan.Compute (pure) -> dataplane.Apply (kernel), plus health, readiness and
// metrics endpoints and the node's subnet.json. It holds no decisions of its
// own; cmd/tulle's agent command is its only importer.
//
//	etcd watch ──snapshots──┐
//	resync ticker ──────────┼──> reconcile: Compute -> [udp engine] -> Apply -> subnet.json
//	netlink link/route dels ┘
//
// With the udp backend the agent also runs the data path (udp.go): the
// engine of internal/udptun, opened before the first Apply (it creates the
// TUN device Apply configures), given the peers of every plan, persisted in
// udp-peers.json and resumed from it at start-up before etcd is dialed, and
// exported as tulle_udp_* metrics.
package agent
