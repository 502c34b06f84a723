package subnet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tulle-net/tulle/internal/config"
	"github.com/tulle-net/tulle/internal/lease"
	"github.com/tulle-net/tulle/internal/logkey"
)

// maxTakeoverConflicts bounds retries when our own lease key changes between
// the Get and the takeover transaction (it expired, or another agent with our
// node name wrote it). Lost races for free subnets are bounded by the number
// of subnets instead.
const maxTakeoverConflicts = 8

// Acquire obtains a subnet of cfg for this node and stores attrs in it; see
// the package doc for the order of preference and the transactions. prev is
// the node's subnet from before a restart (zero if unknown). attrs.Node must
// be empty or this Manager's node. A lease already held by this Manager is
// replaced (its etcd lease is revoked once the new one is in place).
//
// The error wraps lease.ErrExhausted when no subnet is free and
// config.ErrInvalid when cfg is invalid; nothing is written in either case.
func (m *Manager) Acquire(ctx context.Context, cfg config.Network, attrs lease.Attrs, prev netip.Prefix) (_ lease.Lease, err error) {
	if attrs.Node == "" {
		attrs.Node = m.node
	}
	if attrs.Node != m.node {
		return lease.Lease{}, fmt.Errorf("acquire subnet for node %q: attrs name node %q", m.node, attrs.Node)
	}
	if err := cfg.Validate(); err != nil {
		return lease.Lease{}, fmt.Errorf("acquire subnet for node %q: %w", m.node, err)
	}
	// Check attrs as peers will decode them, before any write.
	if _, err := lease.Decode(netip.Prefix{}, attrs.Encode()); err != nil {
		return lease.Lease{}, fmt.Errorf("acquire subnet for node %q: %w", m.node, err)
	}

	var id clientv3.LeaseID // granted lazily, reused across retries
	defer func() {
		if err != nil && id != 0 {
			m.revoke(ctx, id)
		}
	}()
	avoid := map[netip.Prefix]bool{}
	conflicts := 0
	for {
		es, _, err := m.entries(ctx)
		if err != nil {
			return lease.Lease{}, fmt.Errorf("acquire subnet for node %q: %w", m.node, err)
		}
		p, err := lease.Choose(cfg, leasesOf(es), m.node, prev, avoid, m.seed)
		if err != nil {
			return lease.Lease{}, fmt.Errorf("acquire subnet for node %q: %w", m.node, err)
		}
		key := m.leasePrefix + lease.SubnetKey(p)
		old, own := ownEntry(es, key, m.node)
		// A key of ours bound to no etcd lease is a reservation: it
		// stays unbound (flannel binds it to a TTL, see
		// flannel-io/flannel#1329).
		reserved := own && old.id == 0
		if id == 0 && !reserved {
			g, err := m.cli.Grant(ctx, ttlSeconds(m.ttl))
			if err != nil {
				return lease.Lease{}, fmt.Errorf("acquire subnet for node %q: grant etcd lease of %s: %w", m.node, m.ttl, err)
			}
			id = g.ID
		}
		l := lease.Lease{Subnet: p, Attrs: attrs, Expiry: m.now().Add(m.ttl)}
		bind := id
		put := clientv3.OpPut(key, string(attrs.Encode()), clientv3.WithLease(id))
		if reserved {
			l.Expiry, bind = time.Time{}, 0
			put = clientv3.OpPut(key, string(attrs.Encode()))
		}
		cmp := clientv3.Compare(clientv3.Version(key), "=", 0)
		if own {
			cmp = clientv3.Compare(clientv3.ModRevision(key), "=", old.modRev)
		}
		resp, err := m.cli.Txn(ctx).If(cmp).Then(put).Commit()
		if err != nil {
			return lease.Lease{}, fmt.Errorf("acquire subnet %s for node %q: %w", p, m.node, err)
		}
		if !resp.Succeeded {
			if own {
				// Our key changed under us; if it expired, come
				// back to the same subnet as prev.
				conflicts++
				if conflicts > maxTakeoverConflicts {
					return lease.Lease{}, fmt.Errorf("acquire subnet %s for node %q: the lease changed %d times during takeover; is another agent running with this node name?", p, m.node, conflicts)
				}
				prev = p
			} else {
				avoid[p] = true
			}
			m.log.Debug("lost race for subnet", logkey.Subnet, p, "takeover", own)
			continue
		}

		h := &holding{lease: l, id: bind, modRev: resp.Header.Revision}
		m.mu.Lock()
		was := m.held
		m.held = h
		m.mu.Unlock()
		how := "new"
		switch {
		case reserved:
			how = "reservation"
		case own:
			how = "takeover"
		case p == prev:
			how = "previous"
		}
		m.log.Info("lease acquired", logkey.Subnet, p, logkey.PublicIP, attrs.PublicIP, "how", how, logkey.TTL, m.ttl)
		if was != nil && was.id != 0 && was.id != bind {
			m.revoke(ctx, was.id)
		}
		if id != 0 && bind == 0 { // granted in an earlier attempt, unused
			m.revoke(ctx, id)
		}
		m.dropStale(ctx, es, key)
		return l, nil
	}
}

// ownEntry returns the entry at key if it is this node's.
func ownEntry(es []entry, key, node string) (entry, bool) {
	for _, e := range es {
		if e.key == key {
			return e, e.lease.Node == node
		}
	}
	return entry{}, false
}

// dropStale deletes this node's other leases: ones that no longer fit the
// config, or duplicates. Each delete is guarded by the ModRevision we read,
// so a key someone else rewrote since is left alone. Failures are logged
// only: a stale lease expires with its TTL anyway.
func (m *Manager) dropStale(ctx context.Context, es []entry, keep string) {
	for _, e := range es {
		if e.lease.Node != m.node || e.key == keep {
			continue
		}
		resp, err := m.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(e.key), "=", e.modRev)).
			Then(clientv3.OpDelete(e.key)).
			Commit()
		switch {
		case err != nil:
			m.log.Warn("could not delete stale lease of this node", logkey.Subnet, e.lease.Subnet, logkey.Err, err)
		case resp.Succeeded:
			m.log.Info("deleted stale lease of this node", logkey.Subnet, e.lease.Subnet)
		}
	}
}

// Release deletes the lease key if it is still bound to our etcd lease and
// revokes that lease. It is a no-op when nothing is held, and leaves a
// reservation in place. Afterwards the Manager holds nothing, even if
// Release failed (the lease then expires with its TTL). A KeepAlive still
// running returns nil once it notices.
func (m *Manager) Release(ctx context.Context) error {
	m.mu.Lock()
	h := m.held
	m.held = nil
	m.mu.Unlock()
	if h == nil {
		return nil
	}
	if h.id == 0 {
		m.log.Info("lease is a reservation; left in place", logkey.Subnet, h.lease.Subnet)
		return nil
	}
	key := m.key(h.lease)
	_, err := m.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.LeaseValue(key), "=", h.id)).
		Then(clientv3.OpDelete(key)).
		Commit()
	if err != nil {
		return fmt.Errorf("release lease %s of node %q: %w", h.lease.Subnet, m.node, err)
	}
	if _, err := m.cli.Revoke(ctx, h.id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("release lease %s of node %q: revoke etcd lease %x: %w", h.lease.Subnet, m.node, h.id, err)
	}
	m.log.Info("lease released", logkey.Subnet, h.lease.Subnet)
	return nil
}

// revoke drops an etcd lease we granted, also after ctx ended. Failure is
// logged only: the lease then runs out with its TTL.
func (m *Manager) revoke(ctx context.Context, id clientv3.LeaseID) {
	ctx, cancel := cleanupCtx(ctx)
	defer cancel()
	if _, err := m.cli.Revoke(ctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		m.log.Warn("could not revoke etcd lease; it expires with its TTL", "lease_id", fmt.Sprintf("%x", id), logkey.Err, err)
	}
}

func ttlSeconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}
