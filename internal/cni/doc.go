// Package cni implements the verbs of the "tulle" CNI plugin: ADD, DEL,
// CHECK, STATUS and GC. cmd/tulle-cni only hands them to skel.
//
// What ADD builds, per attachment (container ID + ifname):
//
//	 node (host) netns                        container netns
//	+-----------------------------+          +--------------------------+
//	| bridge (subnet file, or      |          |                          |
//	|   "tulle0") gw/len, up       |          | CNI_IFNAME  ip/len, up   |
//	|   +-- tl<12 hex>  (veth) ----+----------+-- (veth peer)            |
//	+-----------------------------+          | default via gw           |
//	                                          | (or cluster net via gw)  |
//	                                          | lo up                    |
//	                                          +--------------------------+
//
// Addresses come from internal/ipam, drawn from the node subnet the agent
// publishes in the subnet file (internal/subnetfile). The agent owns
// forwarding, masquerading and routes between nodes; the plugin owns only the
// bridge port, the veth pair and the container's interface.
//
// All kernel work goes through netlink handles opened in the host and the
// container namespace; no verb switches the calling thread's namespace, so
// verbs can run concurrently in one process (the tests do).
//
// Errors: every verb returns a *types.Error with a CNI code (invalid config 7,
// unsupported field 2, missing subnet file 11 "try again later", STATUS 50
// "plugin not available"); the message names the field or object and value.
// Nothing is written to stdout except ADD's result.
//
// Only cmd/tulle-cni and tests import this package.
package cni
