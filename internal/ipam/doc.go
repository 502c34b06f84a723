// Package ipam owns node-local address allocation for the CNI plugin: which
// address of the node subnet each (container ID, ifname) attachment holds.
//
// The pure half (Pool, Next, record parsing) decides; Store persists the
// decisions on disk, one file per address, in the layout host-local uses:
//
//	<dataDir>/<network>/
//	    lock              flock(2) held for every read-modify-write
//	    last_reserved     the address handed out most recently
//	    10.244.3.7        "<containerID>\n<ifname>\n"
//
// It is imported by internal/cni only. It must not import anything of ours
// that touches the kernel: it is plain files and arithmetic, tested without
// root.
package ipam
