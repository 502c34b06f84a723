package subnet_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tulle-net/tulle/internal/etcdserver/etcdtest"
	"github.com/tulle-net/tulle/internal/lease"
	"github.com/tulle-net/tulle/internal/subnet"
)

// kaRun is a KeepAlive running in the background.
type kaRun struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when KeepAlive returned
	err    error         // KeepAlive's result, once done is closed
}

// runKeepAlive runs m.KeepAlive until the test ends or stop is called.
func runKeepAlive(t testing.TB, m *subnet.Manager) *kaRun {
	ctx, cancel := context.WithCancel(context.Background())
	r := &kaRun{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = m.KeepAlive(ctx)
	}()
	t.Cleanup(func() { r.stop() })
	return r
}

// stop cancels KeepAlive and returns its result.
func (r *kaRun) stop() error {
	r.cancel()
	<-r.done
	return r.err
}

// wait returns KeepAlive's result once it returns by itself.
func (r *kaRun) wait(t testing.TB) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(10 * time.Second):
		t.Fatal("KeepAlive did not return")
		return nil
	}
}

func keyLease(t testing.TB, cli *clientv3.Client, key string) clientv3.LeaseID {
	t.Helper()
	resp := getKV(t, cli, key)
	if len(resp.Kvs) == 0 {
		return 0
	}
	return clientv3.LeaseID(resp.Kvs[0].Lease)
}

func TestKeepAliveNeedsALease(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	m := newManager(t, etcdtest.New(t), subnet.Options{Node: "a"})
	if err := m.KeepAlive(t.Context()); !errors.Is(err, subnet.ErrNotHeld) {
		t.Errorf("KeepAlive before Acquire: %v; want ErrNotHeld", err)
	}
}

// The lease outlives its TTL while KeepAlive runs, and Expiry moves on.
func TestKeepAliveRenews(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	cli := etcdtest.New(t)
	ctx := ctxT(t)
	m := newManager(t, cli, subnet.Options{Node: "a", TTL: 2 * time.Second})
	l, err := m.Acquire(ctx, net16(t), attrs("a", "192.168.1.1", ""), netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	key := leaseKey("default", l.Subnet)
	id := keyLease(t, cli, key)
	ka := runKeepAlive(t, m)
	// Poll until well past the TTL; the key must never go.
	end := time.Now().Add(3 * time.Second)
	for time.Now().Before(end) {
		if got := keyLease(t, cli, key); got != id {
			t.Fatalf("key bound to etcd lease %x; want %x for the whole time", got, id)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if cur, _ := m.Current(); !cur.Expiry.After(l.Expiry) {
		t.Errorf("Expiry %v not renewed past %v", cur.Expiry, l.Expiry)
	}
	if err := ka.stop(); err != nil {
		t.Errorf("KeepAlive: %v; want nil after cancel", err)
	}
}

// Revoking the etcd lease behind the agent's back deletes the key; KeepAlive
// takes the same subnet back under a new etcd lease and keeps it alive.
func TestKeepAliveReacquiresAfterRevoke(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	cli := etcdtest.New(t)
	ctx := ctxT(t)
	var logs logBuf
	m := newManager(t, cli, subnet.Options{Node: "a", Logger: testLogger(t, &logs)})
	l, err := m.Acquire(ctx, net16(t), attrs("a", "192.168.1.1", ""), netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	key := leaseKey("default", l.Subnet)
	ka := runKeepAlive(t, m)
	for round := range 2 { // twice: the re-acquired lease is watched too
		id := keyLease(t, cli, key)
		if _, err := cli.Revoke(ctx, id); err != nil {
			t.Fatal(err)
		}
		var now clientv3.LeaseID
		eventually(t, "the key to come back", func() bool {
			now = keyLease(t, cli, key)
			return now != 0 && now != id
		})
		ttl, err := cli.TimeToLive(ctx, now)
		if err != nil || ttl.TTL <= 0 {
			t.Fatalf("round %d: new etcd lease %x: %v, %v; want a live lease", round, now, ttl, err)
		}
		if cur, ok := m.Current(); !ok || cur.Subnet != l.Subnet {
			t.Fatalf("round %d: Current = %v, %v; want %s", round, cur.Subnet, ok, l.Subnet)
		}
	}
	if err := ka.stop(); err != nil {
		t.Errorf("KeepAlive: %v; want nil after cancel", err)
	}
	for _, want := range []string{`msg="lease lost"`, `msg="lease re-acquired"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %s", want)
		}
	}
}

// If the subnet was taken by another node meanwhile, KeepAlive gives up with
// ErrLost naming the holder.
func TestKeepAliveLostToAnotherNode(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	cli := etcdtest.New(t)
	ctx := ctxT(t)
	m := newManager(t, cli, subnet.Options{Node: "a"})
	l, err := m.Acquire(ctx, net16(t), attrs("a", "192.168.1.1", ""), netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	ka := runKeepAlive(t, m)
	// Overwrite (not delete) the key, so there is no window in which the
	// subnet is free.
	if _, err := cli.Put(ctx, leaseKey("default", l.Subnet), string(attrs("b", "192.168.1.2", "").Encode())); err != nil {
		t.Fatal(err)
	}
	if err := ka.wait(t); !errors.Is(err, subnet.ErrLost) || !strings.Contains(err.Error(), `held by node "b"`) {
		t.Errorf("KeepAlive: %v; want ErrLost naming node b", err)
	}
	// The key stays b's.
	resp := getKV(t, cli, leaseKey("default", l.Subnet))
	if got, err := lease.Decode(l.Subnet, resp.Kvs[0].Value); err != nil || got.Node != "b" {
		t.Errorf("key now %+v, %v; want node b's", got, err)
	}
}

// Release while KeepAlive runs: the key is deleted, the etcd lease revoked,
// and KeepAlive returns nil instead of re-acquiring.
func TestKeepAliveStopsAfterRelease(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	cli := etcdtest.New(t)
	ctx := ctxT(t)
	m := newManager(t, cli, subnet.Options{Node: "a"})
	l, err := m.Acquire(ctx, net16(t), attrs("a", "192.168.1.1", ""), netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	key := leaseKey("default", l.Subnet)
	id := keyLease(t, cli, key)
	ka := runKeepAlive(t, m)
	eventually(t, "the first renewal", func() bool {
		cur, _ := m.Current()
		return !cur.Expiry.Equal(l.Expiry)
	})
	if err := m.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ka.wait(t); err != nil {
		t.Errorf("KeepAlive after Release: %v; want nil", err)
	}
	if got := keyLease(t, cli, key); got != 0 {
		t.Errorf("key still there (etcd lease %x) after Release", got)
	}
	if ttl, err := cli.TimeToLive(ctx, id); err != nil || ttl.TTL != -1 {
		t.Errorf("etcd lease after Release: %v, %v; want revoked", ttl, err)
	}
}

// Release deletes the key only if it is still bound to our etcd lease.
func TestReleaseLeavesSomeoneElsesKey(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	cli := etcdtest.New(t)
	ctx := ctxT(t)
	cfg := net16(t)
	old := newManager(t, cli, subnet.Options{Node: "a"})
	l, err := old.Acquire(ctx, cfg, attrs("a", "192.168.1.1", ""), netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	// A new agent with the same name took the lease over.
	if _, err := newManager(t, cli, subnet.Options{Node: "a"}).Acquire(ctx, cfg, attrs("a", "192.168.1.1", ""), netip.Prefix{}); err != nil {
		t.Fatal(err)
	}
	if err := old.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if got := keyLease(t, cli, leaseKey("default", l.Subnet)); got == 0 {
		t.Error("the old agent's Release deleted the new agent's key")
	}
}

// Lease expiry during an etcd outage: KeepAlive takes the subnet back once
// etcd is reachable again.
func TestKeepAliveSurvivesOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for a 2 s etcd lease to expire")
	}
	etcdtest.CheckGoroutines(t)
	srv := etcdtest.NewServer(t)
	cli := etcdtest.Client(t, srv)
	ctx := ctxT(t)
	proxy := etcdtest.NewProxy(t, srv.Endpoints()[0])
	m := newManager(t, dialT(t, proxy.Endpoint()), subnet.Options{Node: "a", TTL: 2 * time.Second})
	l, err := m.Acquire(ctx, net16(t), attrs("a", "192.168.1.1", ""), netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	key := leaseKey("default", l.Subnet)
	id := keyLease(t, cli, key)
	ka := runKeepAlive(t, m)
	proxy.Pause()
	eventually(t, "the lease to expire", func() bool { return keyLease(t, cli, key) == 0 })
	proxy.Resume()
	eventually(t, "the key to come back", func() bool {
		now := keyLease(t, cli, key)
		return now != 0 && now != id
	})
	if err := ka.stop(); err != nil {
		t.Errorf("KeepAlive: %v; want nil", err)
	}
}
