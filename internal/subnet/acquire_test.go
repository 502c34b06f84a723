package subnet_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tulle-net/tulle/internal/config"
	"github.com/tulle-net/tulle/internal/etcdserver/etcdtest"
	"github.com/tulle-net/tulle/internal/lease"
	"github.com/tulle-net/tulle/internal/subnet"
)

func TestNewRejectsBadOptions(t *testing.T) {
	cli := &clientv3.Client{} // never used: New does no I/O
	tests := []struct {
		name string
		o    subnet.Options
		want string
	}{
		{"no client", subnet.Options{Node: "a"}, "Client is required"},
		{"no node", subnet.Options{Client: cli}, "Node is required"},
		{"slash in cluster", subnet.Options{Client: cli, Node: "a", Cluster: "x/y"}, `cluster name "x/y"`},
		{"tiny TTL", subnet.Options{Client: cli, Node: "a", TTL: 10e6}, "TTL 10ms"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := subnet.New(tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: %v; want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestAcquireNew(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	cli := etcdtest.New(t)
	ctx := ctxT(t)
	m := newManager(t, cli, subnet.Options{Node: "a"})
	cfg := net16(t)
	a := attrs("", "192.168.1.1", "02:00:00:00:00:01") // Node filled in
	l, err := m.Acquire(ctx, cfg, a, netip.Prefix{})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if !cfg.Contains(l.Subnet) || l.Node != "a" || l.PublicIP != a.PublicIP {
		t.Fatalf("Acquire = %+v; want a /24 of %s for node a", l, cfg.Network)
	}
	if cur, ok := m.Current(); !ok || cur.Subnet != l.Subnet {
		t.Errorf("Current = %v, %v; want %s", cur, ok, l.Subnet)
	}
	resp := getKV(t, cli, leaseKey("default", l.Subnet))
	if len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
		t.Fatalf("lease key: %v; want one key bound to an etcd lease", resp.Kvs)
	}
	got, err := lease.Decode(l.Subnet, resp.Kvs[0].Value)
	if err != nil || got.Attrs != l.Attrs {
		t.Errorf("stored %+v, %v; want %+v", got, err, l.Attrs)
	}
	ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(resp.Kvs[0].Lease))
	if err != nil || ttl.GrantedTTL != int64(subnet.DefaultTTL.Seconds()) {
		t.Errorf("etcd lease TTL %v, %v; want %v", ttl, err, subnet.DefaultTTL)
	}
}

// A restarted agent (new Manager, same node name) keeps its subnet, updates
// its attrs, and peers see an update, never a delete.
func TestAcquireTakeoverKeepsSubnet(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	cli := etcdtest.New(t)
	ctx := ctxT(t)
	cfg := net16(t)
	before := newManager(t, cli, subnet.Options{Node: "a"})
	l1, err := before.Acquire(ctx, cfg, attrs("a", "192.168.1.1", "02:00:00:00:00:01"), netip.Prefix{})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	oldID := clientv3.LeaseID(getKV(t, cli, leaseKey("default", l1.Subnet)).Kvs[0].Lease)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := cli.Watch(wctx, "/tulle/default/leases/", clientv3.WithPrefix())

	// Restart with a new public IP and VTEP MAC, and a different prev
	// subnet: the node's own lease wins.
	after := newManager(t, cli, subnet.Options{Node: "a"})
	newAttrs := attrs("a", "192.168.1.99", "02:00:00:00:00:99")
	l2, err := after.Acquire(ctx, cfg, newAttrs, pfx("10.244.200.0/24"))
	if err != nil {
		t.Fatalf("Acquire after restart: %v", err)
	}
	if l2.Subnet != l1.Subnet || l2.Attrs != newAttrs {
		t.Fatalf("after restart: %s %+v; want %s with %+v", l2.Subnet, l2.Attrs, l1.Subnet, newAttrs)
	}
	// The old process's etcd lease expiring (here: revoked) must not take
	// the key with it.
	if _, err := cli.Revoke(ctx, oldID); err != nil {
		t.Fatal(err)
	}
	resp := getKV(t, cli, leaseKey("default", l1.Subnet))
	if len(resp.Kvs) != 1 || clientv3.LeaseID(resp.Kvs[0].Lease) == oldID {
		t.Fatalf("key after revoking the old etcd lease: %v; want it bound to the new lease", resp.Kvs)
	}
	wr := <-events
	if len(wr.Events) != 1 || wr.Events[0].Type != mvccpb.PUT {
		t.Fatalf("peer saw %v; want exactly one PUT", wr.Events)
	}
}

func TestAcquirePrev(t *testing.T) {
	tests := []struct {
		name  string
		prev  string
		other string // subnet held by node "other", if any
		want  string // "" = any subnet but prev
	}{
		{"free prev is reused", "10.244.7.0/24", "", "10.244.7.0/24"},
		{"taken prev is not", "10.244.7.0/24", "10.244.7.0/24", ""},
		{"prev of another network is not", "10.99.7.0/24", "", ""},
		{"prev of another length is not", "10.244.7.0/25", "", ""},
	}
	etcdtest.CheckGoroutines(t)
	cli := etcdtest.New(t)
	ctx := ctxT(t)
	cfg := net16(t)
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cluster := fmt.Sprintf("prev%d", i)
			if tc.other != "" {
				o := newManager(t, cli, subnet.Options{Node: "other", Cluster: cluster})
				if _, err := o.Acquire(ctx, cfg, attrs("other", "192.168.1.2", ""), pfx(tc.other)); err != nil {
					t.Fatal(err)
				}
			}
			m := newManager(t, cli, subnet.Options{Node: "a", Cluster: cluster})
			l, err := m.Acquire(ctx, cfg, attrs("a", "192.168.1.1", ""), pfx(tc.prev))
			if err != nil {
				t.Fatalf("Acquire: %v", err)
			}
			if tc.want != "" && l.Subnet != pfx(tc.want) {
				t.Errorf("got %s; want %s", l.Subnet, tc.want)
			}
			if tc.want == "" && (l.Subnet == pfx(tc.prev) || !cfg.Contains(l.Subnet)) {
				t.Errorf("got %s; want another subnet of %s", l.Subnet, cfg.Network)
			}
		})
	}
}

// tenSubnets holds exactly ten /28 subnets: 10.0.0.0 .. 10.0.0.144.
const tenSubnets = `{"network":"10.0.0.0/24","subnetLen":28,"subnetMax":"10.0.0.144"}`

// Ten fresh agents race for exactly ten subnets: every one must get a
// distinct subnet and none may fail (flannel fails 12-27% of these).
func TestAcquireRace(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	cli := etcdtest.New(t)
	ctx := ctxT(t)
	cfg := mustNetwork(t, tenSubnets)
	if cfg.SubnetCount() != 10 {
		t.Fatalf("config holds %d subnets; want 10", cfg.SubnetCount())
	}
	const rounds, nodes = 6, 10
	for round := range rounds {
		// Odd rounds give every node the same seed, so they all go for
		// the same subnet first: the worst case.
		var seed uint64
		if round%2 == 1 {
			seed = 1
		}
		cluster := fmt.Sprintf("race%d", round)
		ms := make([]*subnet.Manager, nodes)
		for i := range ms {
			ms[i] = newManager(t, cli, subnet.Options{Node: fmt.Sprintf("n%d", i), Cluster: cluster, Seed: seed})
		}
		got := make([]netip.Prefix, nodes)
		errs := make([]error, nodes)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i, m := range ms {
			wg.Go(func() {
				<-start
				l, err := m.Acquire(ctx, cfg, attrs(fmt.Sprintf("n%d", i), fmt.Sprintf("192.168.1.%d", i+1), ""), netip.Prefix{})
				got[i], errs[i] = l.Subnet, err
			})
		}
		close(start)
		wg.Wait()
		seen := map[netip.Prefix]int{}
		for i := range nodes {
			if errs[i] != nil {
				t.Errorf("round %d: node n%d: %v", round, i, errs[i])
				continue
			}
			if j, dup := seen[got[i]]; dup {
				t.Errorf("round %d: nodes n%d and n%d both got %s", round, j, i, got[i])
			}
			seen[got[i]] = i
		}
		leases, _, err := ms[0].List(ctx)
		if err != nil || len(leases) != nodes {
			t.Fatalf("round %d: List = %d leases, %v; want %d", round, len(leases), err, nodes)
		}
		all, err := cli.Leases(ctx)
		if err != nil || len(all.Leases) != nodes*(round+1) {
			t.Errorf("round %d: %d etcd leases, %v; want %d (a lost race must not leak its grant)", round, len(all.Leases), err, nodes*(round+1))
		}
	}
}

func TestAcquireExhausted(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	cli := etcdtest.New(t)
	ctx := ctxT(t)
	cfg := mustNetwork(t, `{"network":"10.1.0.0/29","subnetLen":30}`) // two subnets
	for _, n := range []string{"a", "b"} {
		m := newManager(t, cli, subnet.Options{Node: n})
		if _, err := m.Acquire(ctx, cfg, attrs(n, "192.168.1.1", ""), netip.Prefix{}); err != nil {
			t.Fatal(err)
		}
	}
	c := newManager(t, cli, subnet.Options{Node: "c"})
	_, err := c.Acquire(ctx, cfg, attrs("c", "192.168.1.3", ""), netip.Prefix{})
	if !errors.Is(err, lease.ErrExhausted) {
		t.Fatalf("Acquire: %v; want lease.ErrExhausted", err)
	}
	for _, want := range []string{`node "c"`, "10.1.0.0/29", "subnetLen 30", "2 of 2 subnets are taken"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if _, ok := c.Current(); ok {
		t.Error("Current reports a lease after a failed Acquire")
	}
	if all, err := cli.Leases(ctx); err != nil || len(all.Leases) != 2 {
		t.Errorf("%d etcd leases, %v; want 2 (no leaked grant)", len(all.Leases), err)
	}
}

// Bad input is rejected before anything is written.
func TestAcquireRejectsBadInput(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	cli := etcdtest.New(t)
	ctx := ctxT(t)
	m := newManager(t, cli, subnet.Options{Node: "a"})
	good := net16(t)
	tests := []struct {
		name  string
		cfg   config.Network
		attrs lease.Attrs
		want  error
		text  string
	}{
		{"other node's attrs", good, attrs("b", "192.168.1.1", ""), nil, `attrs name node "b"`},
		{"no public IP", good, lease.Attrs{Node: "a", BackendType: "vxlan"}, lease.ErrBadValue, "publicIP"},
		{"bad MAC", good, attrs("a", "192.168.1.1", "nope"), lease.ErrBadValue, "vtepMAC"},
		{"invalid config", config.Network{Network: pfx("10.0.0.0/8"), SubnetLen: 4}, attrs("a", "192.168.1.1", ""), config.ErrInvalid, "subnetLen"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := m.Acquire(ctx, tc.cfg, tc.attrs, netip.Prefix{})
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) || !strings.Contains(err.Error(), tc.text) {
				t.Errorf("Acquire: %v; want %v mentioning %q", err, tc.want, tc.text)
			}
		})
	}
	resp, err := cli.Get(ctx, "/tulle/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Errorf("%d keys written, %v; want none", resp.Count, err)
	}
	if all, err := cli.Leases(ctx); err != nil || len(all.Leases) != 0 {
		t.Errorf("%d etcd leases granted, %v; want none", len(all.Leases), err)
	}
}

// After a config change, the node's lease that no longer fits is replaced
// and deleted.
func TestAcquireDropsOwnLeaseOutsideConfig(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	cli := etcdtest.New(t)
	ctx := ctxT(t)
	m := newManager(t, cli, subnet.Options{Node: "a"})
	old, err := m.Acquire(ctx, net16(t), attrs("a", "192.168.1.1", ""), netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := mustNetwork(t, `{"network":"10.245.0.0/16","subnetLen":26}`)
	m = newManager(t, cli, subnet.Options{Node: "a"}) // restarted agent
	l, err := m.Acquire(ctx, cfg, attrs("a", "192.168.1.1", ""), old.Subnet)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Contains(l.Subnet) {
		t.Fatalf("got %s; want a subnet of %s", l.Subnet, cfg.Network)
	}
	leases, _, err := m.List(ctx)
	if err != nil || subnetsOf(leases) != l.Subnet.String()+"=a" {
		t.Errorf("leases %q, %v; want only %s", subnetsOf(leases), err, l.Subnet)
	}
}

// A key bound to no etcd lease is a reservation: its node takes it over
// without binding it to a TTL, and Release leaves it in place.
func TestAcquireReservation(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	cli := etcdtest.New(t)
	ctx := ctxT(t)
	cfg := net16(t)
	key := leaseKey("default", pfx("10.244.42.0/24"))
	if _, err := cli.Put(ctx, key, string(attrs("a", "192.168.1.1", "").Encode())); err != nil {
		t.Fatal(err)
	}
	// Another node cannot have it.
	b := newManager(t, cli, subnet.Options{Node: "b"})
	if l, err := b.Acquire(ctx, cfg, attrs("b", "192.168.1.2", ""), pfx("10.244.42.0/24")); err != nil || l.Subnet == pfx("10.244.42.0/24") {
		t.Fatalf("node b got %s, %v; want another subnet", l.Subnet, err)
	}
	m := newManager(t, cli, subnet.Options{Node: "a"})
	newAttrs := attrs("a", "192.168.1.77", "02:00:00:00:00:77")
	l, err := m.Acquire(ctx, cfg, newAttrs, netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	if l.Subnet != pfx("10.244.42.0/24") || !l.Expiry.IsZero() {
		t.Fatalf("got %s expiring %v; want the reserved 10.244.42.0/24, never expiring", l.Subnet, l.Expiry)
	}
	resp := getKV(t, cli, key)
	if got, _ := lease.Decode(l.Subnet, resp.Kvs[0].Value); resp.Kvs[0].Lease != 0 || got.Attrs != newAttrs {
		t.Fatalf("reservation now %+v bound to etcd lease %x; want the new attrs, unbound", got.Attrs, resp.Kvs[0].Lease)
	}
	if err := runKeepAlive(t, m).stop(); err != nil {
		t.Errorf("KeepAlive: %v", err)
	}
	if err := m.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if resp := getKV(t, cli, key); len(resp.Kvs) != 1 {
		t.Error("Release deleted a reservation")
	}
	if all, err := cli.Leases(ctx); err != nil || len(all.Leases) != 1 {
		t.Errorf("%d etcd leases, %v; want only b's", len(all.Leases), err)
	}
}
