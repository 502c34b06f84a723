// Package etcdtest gives tests a throw-away embedded etcd: in t.TempDir(),
// on 127.0.0.1 with kernel-chosen ports, stopped in t.Cleanup (New,
// NewServer, Client). Proxy cuts a client off from etcd and lets it back,
// for outage tests, and CheckGoroutines fails a test that leaks goroutines.
// Only tests may import it.
package etcdtest
