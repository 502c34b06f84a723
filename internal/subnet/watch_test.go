package subnet_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tulle-net/tulle/internal/etcdserver/etcdtest"
	"github.com/tulle-net/tulle/internal/subnet"
)

func TestWatchSeesAddAndRelease(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	cli := etcdtest.New(t)
	ctx := ctxT(t)
	cfg := net16(t)
	w := startWatch(t, newManager(t, cli, subnet.Options{Node: "watcher"}))
	w.waitFor(t, "") // the initial, empty set

	a := newManager(t, cli, subnet.Options{Node: "a"})
	if _, err := a.Acquire(ctx, cfg, attrs("a", "192.168.1.1", ""), pfx("10.244.1.0/24")); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, "10.244.1.0/24=a")
	b := newManager(t, cli, subnet.Options{Node: "b"})
	if _, err := b.Acquire(ctx, cfg, attrs("b", "192.168.1.2", ""), pfx("10.244.0.0/24")); err != nil {
		t.Fatal(err)
	}
	s := w.waitFor(t, "10.244.0.0/24=b 10.244.1.0/24=a") // sorted by subnet
	if s.Leases[0].PublicIP != netip.MustParseAddr("192.168.1.2") {
		t.Errorf("snapshot lease %+v; want b's public IP", s.Leases[0])
	}
	if err := a.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	w.waitFor(t, "10.244.0.0/24=b")
	if resp := getKV(t, cli, leaseKey("default", pfx("10.244.1.0/24"))); len(resp.Kvs) != 0 {
		t.Errorf("key still there after Release: %v", resp.Kvs)
	}
	if _, ok := a.Current(); ok {
		t.Error("Current reports a lease after Release")
	}
	if err := a.Release(ctx); err != nil {
		t.Errorf("second Release: %v; want nil", err)
	}
}

// A watcher cut off from etcd resumes from its last revision and catches
// up with what changed meanwhile, without listing again.
func TestWatchResumesAfterDisconnect(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	srv := etcdtest.NewServer(t)
	cli := etcdtest.Client(t, srv)
	ctx := ctxT(t)
	cfg := net16(t)
	proxy := etcdtest.NewProxy(t, srv.Endpoints()[0])
	pcli := dialT(t, proxy.Endpoint())
	var logs logBuf
	w := startWatch(t, newManager(t, pcli, subnet.Options{Node: "watcher", Logger: testLogger(t, &logs)}))

	a := newManager(t, cli, subnet.Options{Node: "a"})
	if _, err := a.Acquire(ctx, cfg, attrs("a", "192.168.1.1", ""), pfx("10.244.1.0/24")); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, "10.244.1.0/24=a")

	proxy.Pause()
	b := newManager(t, cli, subnet.Options{Node: "b"})
	if _, err := b.Acquire(ctx, cfg, attrs("b", "192.168.1.2", ""), pfx("10.244.2.0/24")); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	proxy.Resume()
	w.waitFor(t, "10.244.2.0/24=b")
	if strings.Contains(logs.String(), "listing again") {
		t.Errorf("watch listed again; want a resume from the last revision")
	}
}

// A watcher away while its revision is compacted lists again and ends up
// with the right set.
func TestWatchRelistsAfterCompaction(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	srv := etcdtest.NewServer(t)
	cli := etcdtest.Client(t, srv)
	ctx := ctxT(t)
	cfg := net16(t)
	proxy := etcdtest.NewProxy(t, srv.Endpoints()[0])
	pcli := dialT(t, proxy.Endpoint())
	var logs logBuf
	w := startWatch(t, newManager(t, pcli, subnet.Options{Node: "watcher", Logger: testLogger(t, &logs)}))

	a := newManager(t, cli, subnet.Options{Node: "a"})
	if _, err := a.Acquire(ctx, cfg, attrs("a", "192.168.1.1", ""), pfx("10.244.1.0/24")); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, "10.244.1.0/24=a")

	proxy.Pause()
	b := newManager(t, cli, subnet.Options{Node: "b"})
	if _, err := b.Acquire(ctx, cfg, attrs("b", "192.168.1.2", ""), pfx("10.244.2.0/24")); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Put(ctx, "/unrelated", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	proxy.Resume()
	s := w.waitFor(t, "10.244.2.0/24=b")
	if s.Revision < resp.Header.Revision {
		t.Errorf("snapshot revision %d; want at least %d", s.Revision, resp.Header.Revision)
	}
	if !strings.Contains(logs.String(), "listing again") {
		t.Errorf("watch did not list again after the compaction; logs:\n%s", logs.String())
	}
}

// A consumer that does not read gets the latest set when it does, not a
// backlog of every intermediate one.
func TestWatchSlowConsumerGetsLatest(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	cli := etcdtest.New(t)
	ctx := ctxT(t)
	cfg := net16(t)
	m := newManager(t, cli, subnet.Options{Node: "watcher"})
	w := startWatch(t, m)
	w.waitFor(t, "")
	const n = 20
	for i := range n {
		node := fmt.Sprintf("n%02d", i)
		o := newManager(t, cli, subnet.Options{Node: node})
		if _, err := o.Acquire(ctx, cfg, attrs(node, "192.168.1.1", ""), netip.Prefix{}); err != nil {
			t.Fatal(err)
		}
	}
	_, rev, err := m.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Watch kept consuming events while nobody read. A backlog would hand
	// out all n intermediate sets; latest-wins hands out the newest one
	// Watch has seen, which is the final set unless Watch still lags by
	// a few events (allow for that: this is not a timing test).
	deadline := time.Now().Add(10 * time.Second)
	for stale := 0; ; stale++ {
		s := <-w.ch
		if len(s.Leases) == n && s.Revision >= rev {
			if stale > 3 {
				t.Errorf("got %d stale snapshots before the latest; want a latest-wins handoff", stale)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no snapshot with %d leases; last had %d", n, len(s.Leases))
		}
	}
}

// dialT connects to endpoint for the test's lifetime.
func dialT(t testing.TB, endpoint string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Watch returns nil when ctx ends, even while a snapshot is pending.
func TestWatchStopsOnContext(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	cli := etcdtest.New(t)
	m := newManager(t, cli, subnet.Options{Node: "a"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Watch(ctx, make(chan subnet.Snapshot)) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Watch: %v; want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not return after cancel")
	}
}
