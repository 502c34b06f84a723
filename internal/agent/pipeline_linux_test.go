package agent

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tulle-net/tulle/internal/config"
	"github.com/tulle-net/tulle/internal/dataplane"
	"github.com/tulle-net/tulle/internal/etcdserver/etcdtest"
	"github.com/tulle-net/tulle/internal/lease"
	"github.com/tulle-net/tulle/internal/netns/nstest"
	"github.com/tulle-net/tulle/internal/plan"
	"github.com/tulle-net/tulle/internal/subnet"
)

// pipeline is the agent's reconcile path without the process around it:
// leases from real etcd -> plan.Compute -> dataplane.Apply into a namespace.
type pipeline struct {
	mgr  *subnet.Manager
	in   plan.Input
	dp   *dataplane.Dataplane
	self lease.Lease
}

const benchPeers = 1000

// newPipeline starts etcd, stores a /16 network of /26 subnets and injects
// benchPeers leases (addresses in 10.251.0.0/16; nothing is ever sent).
func newPipeline(tb testing.TB) *pipeline {
	cli := etcdtest.New(tb)
	ctx := context.Background()
	mgr, err := subnet.New(subnet.Options{Client: cli, Cluster: "bench", Node: "self"})
	if err != nil {
		tb.Fatal(err)
	}
	cfg, err := config.Parse([]byte(`{"network":"10.244.0.0/16","subnetLen":26,"backend":{"type":"vxlan"}}`))
	if err != nil {
		tb.Fatal(err)
	}
	if err := mgr.SetConfig(ctx, cfg); err != nil {
		tb.Fatal(err)
	}
	var ops []clientv3.Op
	i := 0
	cfg.Subnets(func(p netip.Prefix) bool {
		node := fmt.Sprintf("peer%d", i)
		a := lease.Attrs{Node: node, PublicIP: netip.AddrFrom4([4]byte{10, 251, byte(i / 250), byte(i%250 + 1)}),
			BackendType: "vxlan", BackendData: lease.BackendData{VtepMAC: plan.VTEPMAC("bench", node).String()}}
		ops = append(ops, clientv3.OpPut(mgr.LeasePrefix()+lease.SubnetKey(p), string(a.Encode())))
		i++
		if len(ops) == 100 {
			if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
				tb.Fatal(err)
			}
			ops = ops[:0]
		}
		return i < benchPeers
	})
	self, err := mgr.Acquire(ctx, cfg, lease.Attrs{Node: "self", PublicIP: netip.MustParseAddr("192.168.0.1"), BackendType: "vxlan",
		BackendData: lease.BackendData{VtepMAC: plan.VTEPMAC("bench", "self").String()}}, netip.Prefix{})
	if err != nil {
		tb.Fatal(err)
	}
	return &pipeline{mgr: mgr, self: self, in: plan.Input{Config: cfg, Self: self, Local: plan.Local{
		Underlay: "ul0", UnderlayMTU: 1500, UnderlayPrefixes: []netip.Prefix{netip.MustParsePrefix("192.168.0.0/24")},
		VTEPMAC: plan.VTEPMAC("bench", "self"), IPMasq: true,
	}}}
}

// emptyNode is a fresh namespace holding only the underlay.
func emptyNode(tb testing.TB) *dataplane.Dataplane {
	_, h := nstest.New(tb, "tag")
	nstest.Veth(tb, nstest.End{NS: h, Name: "ul0", Addr: netip.MustParsePrefix("192.168.0.1/24")}, nstest.End{NS: h, Name: "ul0p"})
	dp, err := dataplane.New(dataplane.Options{NetNS: h})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { dp.Close() })
	return dp
}

func (p *pipeline) reconcile(ctx context.Context, dp *dataplane.Dataplane) (dataplane.Changes, error) {
	leases, _, err := p.mgr.List(ctx)
	if err != nil {
		return dataplane.Changes{}, err
	}
	in := p.in
	in.Peers = leases
	st, err := plan.Compute(in)
	if err != nil {
		return dataplane.Changes{}, err
	}
	return dp.Apply(ctx, st)
}

// TestPipeline1000Peers: 1000 injected leases reach the kernel in one
// reconcile, and the second reconcile makes no change.
func TestPipeline1000Peers(t *testing.T) {
	nstest.RequireRoot(t)
	if testing.Short() {
		t.Skip("starts etcd and programs 3000 kernel objects")
	}
	p := newPipeline(t)
	dp := emptyNode(t)
	ctx := context.Background()
	start := time.Now()
	ch, err := p.reconcile(ctx, dp)
	first := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	// 3 per peer (neighbour, FDB, route) plus the node's own devices.
	if ch.Len() < 3*benchPeers {
		t.Fatalf("first reconcile made %d changes, want >= %d", ch.Len(), 3*benchPeers)
	}
	start = time.Now()
	ch, err = p.reconcile(ctx, dp)
	if err != nil || ch.Len() != 0 {
		t.Fatalf("second reconcile: %d changes (%v), want 0: %s", ch.Len(), err, ch)
	}
	t.Logf("1000 peers from etcd into an empty namespace: first %v, second %v (0 changes)", first, time.Since(start))
}

// BenchmarkPipeline1000Peers: "empty" reconciles 1000 peers listed from
// etcd into a fresh namespace; "again" repeats on the converged one. The
// ratio empty/again is printed as a metric of the "again" run.
func BenchmarkPipeline1000Peers(b *testing.B) {
	nstest.RequireRoot(b)
	p := newPipeline(b)
	ctx := context.Background()
	var empty time.Duration
	b.Run("empty", func(b *testing.B) {
		changes := 0
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			dp := emptyNode(b)
			b.StartTimer()
			start := time.Now()
			ch, err := p.reconcile(ctx, dp)
			empty = time.Since(start)
			if err != nil {
				b.Fatal(err)
			}
			changes = ch.Len()
		}
		b.ReportMetric(float64(changes), "changes/op")
	})
	b.Run("again", func(b *testing.B) {
		dp := emptyNode(b)
		if _, err := p.reconcile(ctx, dp); err != nil {
			b.Fatal(err)
		}
		changes := 0
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			ch, err := p.reconcile(ctx, dp)
			if err != nil {
				b.Fatal(err)
			}
			changes += ch.Len()
		}
		perOp := b.Elapsed() / time.Duration(b.N)
		b.ReportMetric(float64(changes)/float64(b.N), "changes/op")
		if empty > 0 && perOp > 0 {
			b.ReportMetric(float64(empty)/float64(perOp), "empty/again")
		}
	})
}
