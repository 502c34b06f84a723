package subnet_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tulle-net/tulle/internal/etcdserver/etcdtest"
	"github.com/tulle-net/tulle/internal/subnet"
)

// Bad datastore entries are skipped and logged with their key, by List and
// by Watch, and never stop either.
func TestBadEntriesAreSkipped(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	cli := etcdtest.New(t)
	ctx := ctxT(t)
	var logs logBuf
	m := newManager(t, cli, subnet.Options{Node: "a", Logger: testLogger(t, &logs)})
	if _, err := m.Acquire(ctx, net16(t), attrs("a", "192.168.1.1", ""), pfx("10.244.1.0/24")); err != nil {
		t.Fatal(err)
	}
	bad := map[string]string{
		"/tulle/default/leases/10.244.2.0-24":     `{not json`,
		"/tulle/default/leases/10.244.3.0-24":     `{"publicIP":"192.168.1.3"}`,
		"/tulle/default/leases/10.244.4.0-24":     `{"node":"d","publicIP":"192.168.1.4","backendData":{"vtepMAC":"zz"}}`,
		"/tulle/default/leases/not-a-subnet":      `{"node":"e","publicIP":"192.168.1.5"}`,
		"/tulle/default/leases/10.244.6.1-24":     `{"node":"f","publicIP":"192.168.1.6"}`,
		"/tulle/default/leases/2001:db8::-64":     `{"node":"g","publicIP":"192.168.1.7"}`,
		"/tulle/default/leases/nested/10.0.0.0-8": `{"node":"h","publicIP":"192.168.1.8"}`,
	}
	for k, v := range bad {
		if _, err := cli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	leases, _, err := m.List(ctx)
	if err != nil || subnetsOf(leases) != "10.244.1.0/24=a" {
		t.Fatalf("List = %q, %v; want only a's lease", subnetsOf(leases), err)
	}
	for k := range bad {
		if !strings.Contains(logs.String(), "path="+k+" ") {
			t.Errorf("no warning names %s", k)
		}
	}

	w := startWatch(t, m)
	w.waitFor(t, "10.244.1.0/24=a")
	// A lease that turns bad disappears from the set; one fixed appears.
	if _, err := cli.Put(ctx, "/tulle/default/leases/10.244.1.0-24", `{"node":""}`); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, "")
	if _, err := cli.Put(ctx, "/tulle/default/leases/10.244.3.0-24", string(attrs("c", "192.168.1.3", "").Encode())); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, "10.244.3.0/24=c")
}

func TestListWithExpiry(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	cli := etcdtest.New(t)
	ctx := ctxT(t)
	start := time.Now()
	m := newManager(t, cli, subnet.Options{Node: "a"})
	if _, err := m.Acquire(ctx, net16(t), attrs("a", "192.168.1.1", ""), pfx("10.244.1.0/24")); err != nil {
		t.Fatal(err)
	}
	// A reservation: a key bound to no etcd lease never expires.
	if _, err := cli.Put(ctx, leaseKey("default", pfx("10.244.9.0/24")), string(attrs("r", "192.168.1.9", "").Encode())); err != nil {
		t.Fatal(err)
	}
	plain, rev1, err := m.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leases, rev2, err := m.ListWithExpiry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if subnetsOf(leases) != "10.244.1.0/24=a 10.244.9.0/24=r" || rev1 != rev2 {
		t.Fatalf("ListWithExpiry = %q at %d; want a's and r's at %d", subnetsOf(leases), rev2, rev1)
	}
	if !plain[0].Expiry.IsZero() {
		t.Errorf("List filled Expiry %v; want zero", plain[0].Expiry)
	}
	lo, hi := start.Add(subnet.DefaultTTL-time.Minute), time.Now().Add(subnet.DefaultTTL+time.Second)
	if e := leases[0].Expiry; e.Before(lo) || e.After(hi) {
		t.Errorf("a expires %v; want about an hour from now", e)
	}
	if e := leases[1].Expiry; !e.IsZero() {
		t.Errorf("reservation expires %v; want zero (never)", e)
	}
}

// List is one Get, whatever the number of leases; this is a smoke test that
// it copes with many of them and sorts them.
func TestListMany(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	cli := etcdtest.New(t)
	ctx := ctxT(t)
	cfg := mustNetwork(t, `{"network":"10.0.0.0/14"}`) // 1024 subnets
	var ops []clientv3.Op
	n := 0
	cfg.Subnets(func(p netip.Prefix) bool {
		ops = append(ops, clientv3.OpPut(leaseKey("default", p), string(attrs("n", "192.168.1.1", "").Encode())))
		n++
		if len(ops) == 100 || n == 1000 {
			if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
			ops = ops[:0]
		}
		return n < 1000
	})
	m := newManager(t, cli, subnet.Options{Node: "a"})
	leases, _, err := m.List(ctx)
	if err != nil || len(leases) != 1000 {
		t.Fatalf("List = %d leases, %v; want 1000", len(leases), err)
	}
	for i := 1; i < len(leases); i++ {
		if !leases[i-1].Subnet.Addr().Less(leases[i].Subnet.Addr()) {
			t.Fatalf("not sorted at %d: %s then %s", i, leases[i-1].Subnet, leases[i].Subnet)
		}
	}
}
