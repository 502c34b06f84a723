// Package lease owns the lease types stored in the datastore, their key and
// value encoding, and the pure choice of a free node subnet. It does no I/O;
// the etcd side lives in package subnet.
package lease
