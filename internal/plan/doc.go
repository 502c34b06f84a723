// Package plan is the pure planner: Compute turns (config, own lease, peer
// leases, local facts) into the desired kernel state. It has no context,
// clock, I/O or logger, and the same input gives identical, sorted output.
// Package dataplane consumes State; plan must not import dataplane.
package plan
