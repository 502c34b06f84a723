// Package etcdserver runs an embedded single-member etcd
// (go.etcd.io/etcd/server/v3/embed) for one host and for every lab: the
// datastore tulle uses when no external etcd cluster is configured.
//
// It owns the server's lifecycle only: Start waits until the member serves
// clients, Run blocks until ctx ends or etcd fails, and Close stops it
// (idempotent). It knows nothing about tulle's keys; package subnet does.
// Production points the agent at a real etcd cluster instead, so nothing but
// cmd/tulle, the lab and tests should import this package.
//
// Subpackage etcdtest starts a throw-away server per test.
package etcdserver
