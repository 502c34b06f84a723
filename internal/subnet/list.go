package subnet

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tulle-net/tulle/internal/lease"
	"github.com/tulle-net/tulle/internal/logkey"
)

// entry is a decoded lease key with the etcd metadata the transactions need.
type entry struct {
	lease  lease.Lease
	key    string
	modRev int64
	id     clientv3.LeaseID // 0: not bound to an etcd lease (a reservation)
}

// List returns the current leases sorted by subnet and the etcd revision
// they were read at, in one Get. Expiry is zero (see ListWithExpiry).
// Entries that cannot be decoded are skipped and logged at Warn.
func (m *Manager) List(ctx context.Context) ([]lease.Lease, int64, error) {
	es, rev, err := m.entries(ctx)
	if err != nil {
		return nil, 0, err
	}
	return leasesOf(es), rev, nil
}

// ListWithExpiry is List with Expiry filled in from the etcd lease TTLs. It
// costs one TimeToLive call per distinct etcd lease, so it is for humans
// ('tulle leases'), not for the agent's hot path. A key not bound to an etcd
// lease, or whose lease ran out while listing, has a zero Expiry.
func (m *Manager) ListWithExpiry(ctx context.Context) ([]lease.Lease, int64, error) {
	es, rev, err := m.entries(ctx)
	if err != nil {
		return nil, 0, err
	}
	expiry := map[clientv3.LeaseID]time.Time{}
	for _, e := range es {
		if e.id == 0 {
			continue
		}
		if _, ok := expiry[e.id]; ok {
			continue
		}
		resp, err := m.cli.TimeToLive(ctx, e.id)
		if err != nil {
			return nil, 0, fmt.Errorf("get TTL of etcd lease %x of %s: %w", e.id, e.key, err)
		}
		var t time.Time
		if resp.TTL > 0 { // -1: the lease is gone
			t = m.now().Add(time.Duration(resp.TTL) * time.Second)
		}
		expiry[e.id] = t
	}
	ls := make([]lease.Lease, len(es))
	for i, e := range es {
		ls[i] = e.lease
		ls[i].Expiry = expiry[e.id]
	}
	return ls, rev, nil
}

// entries reads every lease key in one Get.
func (m *Manager) entries(ctx context.Context) ([]entry, int64, error) {
	resp, err := m.cli.Get(ctx, m.leasePrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("list leases %s: %w", m.leasePrefix, err)
	}
	es := make([]entry, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if e, ok := m.decode(kv); ok {
			es = append(es, e)
		}
	}
	slices.SortFunc(es, func(a, b entry) int { return compareSubnets(a.lease, b.lease) })
	return es, resp.Header.Revision, nil
}

// decode turns a lease key-value into an entry. A bad one is logged at Warn
// and skipped: one corrupt value must not take the whole fabric down.
func (m *Manager) decode(kv *mvccpb.KeyValue) (entry, bool) {
	key := string(kv.Key)
	p, err := lease.ParseSubnetKey(strings.TrimPrefix(key, m.leasePrefix))
	if err == nil {
		var l lease.Lease
		if l, err = lease.Decode(p, kv.Value); err == nil {
			return entry{lease: l, key: key, modRev: kv.ModRevision, id: clientv3.LeaseID(kv.Lease)}, true
		}
	}
	m.log.Warn("skipping bad lease entry", logkey.Path, key, logkey.Err, err)
	return entry{}, false
}

func leasesOf(es []entry) []lease.Lease {
	ls := make([]lease.Lease, len(es))
	for i, e := range es {
		ls[i] = e.lease
	}
	return ls
}

func compareSubnets(a, b lease.Lease) int {
	if c := a.Subnet.Addr().Compare(b.Subnet.Addr()); c != 0 {
		return c
	}
	return a.Subnet.Bits() - b.Subnet.Bits()
}
