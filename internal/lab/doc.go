// Package lab builds a tulle cluster on one machine out of network
// namespaces: an underlay switch, N nodes each running a real `tulle agent`
// process, and K containers per node attached by executing the real CNI
// plugin, as a container runtime would. It is what `tulle lab`, `tulle demo`
// and `tulle lab bench` run, and the backbone of the end-to-end tests in
// test/e2e.
//
// Topology of a lab named L (default "tl"; `tulle demo` uses "demo"):
//
//	                      netns L-sw (the underlay switch)
//	+-------------------------------------------------------------+
//	| br0 10.250.0.1/24          tulle etcd http://10.250.0.1:2379 |
//	+----n1------------n2---------- ... ----nN--------------------+
//	     | veth         |                   |
//	+---ul0----+   +---ul0----+        +---ul0----+  underlay, MTU 1500,
//	| L-n1     |   | L-n2     |  ...   | L-nN     |  10.250.0.(10+i)/24
//	| agent    |   | agent    |        | agent    |  a `tulle agent` process
//	| tulle0   |   | tulle0   |        | tulle0   |  bridge (made by the agent)
//	+--+----+--+   +--+----+--+        +--+----+--+
//	   |    |         |    |              |    |
//	L-n1c1 L-n1c2  L-n2c1 ...          L-nNc1 ...     containers: eth0 from
//	                                                  the tulle CNI plugin
//
// What the lab owns, and the safety rules it keeps:
//   - every kernel object it creates lives in a namespace it created and
//     whose name starts with "L-"; the root namespace never gets a link,
//     address, route or rule (veths are created by a netlink handle bound to
//     the switch namespace, with the peer placed straight into the node
//     namespace);
//   - it signals only processes it started, identified by pid, start time
//     and command line as recorded in /run/tulle/labs/L/state.json, which is
//     written before each step so that Down cleans up after a crash too;
//   - every failed step of Up tears down what was made.
//
// Only cmd/tulle and test/e2e import lab; no other package may.
package lab
