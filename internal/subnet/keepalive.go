package subnet

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tulle-net/tulle/internal/lease"
	"github.com/tulle-net/tulle/internal/logkey"
)

// Backoff between attempts to re-acquire a lost lease while etcd fails.
const (
	reacquireBackoffMin = 500 * time.Millisecond
	reacquireBackoffMax = 30 * time.Second
)

// KeepAlive renews the held lease until ctx ends, then returns nil (a
// reservation needs no renewal; it is only watched). It also watches the
// lease key, so a lease revoked or a key deleted behind its back
// is noticed at once rather than at the next renewal (every TTL/3).
//
// When the lease is lost (expired, revoked, key deleted), KeepAlive
// re-acquires the same subnet if it is still free, retrying with backoff
// while etcd is unreachable: the node's workloads hold addresses from it. If
// the subnet is now someone else's, it returns an error wrapping ErrLost;
// the agent must restart to pick a new subnet. After Release it returns nil.
// It wraps ErrNotHeld when called before Acquire.
//
//	  Acquire
//	     |
//	     v
//	+-> held --(ctx done / Release)--> return nil
//	|    |
//	|  lost (lease expired or revoked, key deleted or rewritten)
//	|    |
//	|    v
//	+- re-acquire same subnet --(subnet taken)--> return ErrLost
//	     (retry while etcd fails)
func (m *Manager) KeepAlive(ctx context.Context) error {
	h := m.heldNow()
	if h == nil {
		return fmt.Errorf("keep lease of node %q alive: %w; call Acquire first", m.node, ErrNotHeld)
	}
	for {
		reason, err := m.hold(ctx, h)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		switch cur := m.heldNow(); {
		case cur == nil:
			return nil // released
		case cur != h:
			h = cur // replaced by Acquire
			continue
		}
		m.log.Info("lease lost", logkey.Subnet, h.lease.Subnet, logkey.Reason, reason)
		if h, err = m.reacquire(ctx, h); h == nil || err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

// hold renews h and watches its key until ctx ends (returns "", nil) or the
// lease is lost (returns why).
func (m *Manager) hold(ctx context.Context, h *holding) (string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the keepalive and the watch
	key := m.key(h.lease)
	var ka <-chan *clientv3.LeaseKeepAliveResponse // nil for a reservation: nothing to renew
	if h.id != 0 {
		var err error
		if ka, err = m.cli.KeepAlive(ctx, h.id); err != nil {
			return "", fmt.Errorf("keep lease %s of node %q alive: %w", h.lease.Subnet, m.node, err)
		}
	}
	wch := m.cli.Watch(ctx, key, clientv3.WithRev(h.modRev+1))
	for {
		select {
		case <-ctx.Done():
			return "", nil
		case r, ok := <-ka:
			if !ok {
				return "etcd lease expired or revoked", nil
			}
			m.mu.Lock()
			h.lease.Expiry = m.now().Add(time.Duration(r.TTL) * time.Second)
			m.mu.Unlock()
			m.log.Info("lease renewed", logkey.Subnet, h.lease.Subnet, logkey.TTL, time.Duration(r.TTL)*time.Second)
		case wr, ok := <-wch:
			if !ok || wr.Canceled || wr.CompactRevision != 0 || wr.Err() != nil {
				if ctx.Err() != nil {
					return "", nil
				}
				// The watch broke (compaction, cancellation): look at
				// the key itself and watch again from there.
				reason, rev, err := m.checkKey(ctx, h, key)
				if reason != "" || err != nil {
					return reason, err
				}
				wch = m.cli.Watch(ctx, key, clientv3.WithRev(rev+1))
				continue
			}
			for _, ev := range wr.Events {
				if reason := lostBy(ev, h); reason != "" {
					return reason, nil
				}
			}
		}
	}
}

// lostBy says why ev ends our hold on the key, or "" if it does not.
func lostBy(ev *clientv3.Event, h *holding) string {
	switch {
	case ev.Type == mvccpb.DELETE:
		return "lease key deleted"
	case clientv3.LeaseID(ev.Kv.Lease) != h.id:
		return "lease key rewritten by another writer"
	}
	return ""
}

// checkKey reads the key: it is still ours ("", its revision) or not (why).
func (m *Manager) checkKey(ctx context.Context, h *holding, key string) (string, int64, error) {
	resp, err := m.cli.Get(ctx, key)
	if err != nil {
		return "", 0, fmt.Errorf("keep lease %s of node %q alive: read %s: %w", h.lease.Subnet, m.node, key, err)
	}
	if len(resp.Kvs) == 0 {
		return "lease key deleted", 0, nil
	}
	if clientv3.LeaseID(resp.Kvs[0].Lease) != h.id {
		return "lease key rewritten by another writer", 0, nil
	}
	return "", resp.Header.Revision, nil
}

// reacquire takes h's subnet back, retrying while etcd fails. It returns
// nil, nil if the Manager was released meanwhile.
func (m *Manager) reacquire(ctx context.Context, h *holding) (*holding, error) {
	backoff := reacquireBackoffMin
	for {
		nh, err := m.reacquireOnce(ctx, h)
		if err == nil {
			m.mu.Lock()
			still := m.held == h
			if still {
				m.held = nh
			}
			m.mu.Unlock()
			if !still { // released (or replaced) while we worked
				if nh.id != 0 && nh.id != h.id {
					m.revoke(ctx, nh.id)
				}
				return m.heldNow(), nil
			}
			m.log.Info("lease re-acquired", logkey.Subnet, nh.lease.Subnet)
			return nh, nil
		}
		if errors.Is(err, ErrLost) || ctx.Err() != nil {
			return nil, err
		}
		if m.cli.Ctx().Err() != nil {
			return nil, fmt.Errorf("re-acquire subnet %s for node %q: etcd client closed: %w", h.lease.Subnet, m.node, err)
		}
		m.log.Warn("could not re-acquire lease; retrying", logkey.Subnet, h.lease.Subnet, logkey.Err, err, "in", backoff)
		if !sleep(ctx, backoff) {
			return nil, ctx.Err()
		}
		backoff = min(2*backoff, reacquireBackoffMax)
	}
}

// reacquireOnce creates h's key again with a new etcd lease if it is free.
func (m *Manager) reacquireOnce(ctx context.Context, h *holding) (*holding, error) {
	p := h.lease.Subnet
	key := m.key(h.lease)
	g, err := m.cli.Grant(ctx, ttlSeconds(m.ttl))
	if err != nil {
		return nil, fmt.Errorf("re-acquire subnet %s for node %q: grant etcd lease: %w", p, m.node, err)
	}
	resp, err := m.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Version(key), "=", 0)).
		Then(clientv3.OpPut(key, string(h.lease.Attrs.Encode()), clientv3.WithLease(g.ID))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		m.revoke(ctx, g.ID)
		return nil, fmt.Errorf("re-acquire subnet %s for node %q: %w", p, m.node, err)
	}
	if !resp.Succeeded {
		m.revoke(ctx, g.ID)
		kvs := resp.Responses[0].GetResponseRange().GetKvs()
		if len(kvs) > 0 && clientv3.LeaseID(kvs[0].Lease) == h.id {
			// The client gave up on the lease (no renewal within
			// the TTL) but etcd had not expired it yet: still ours.
			return &holding{lease: h.lease, id: h.id, modRev: kvs[0].ModRevision}, nil
		}
		holder := "an undecodable value"
		if len(kvs) > 0 {
			if l, err := lease.Decode(p, kvs[0].Value); err == nil {
				holder = fmt.Sprintf("node %q", l.Node)
				if l.Node == m.node {
					holder += " (another agent with this node name?)"
				}
			}
		}
		return nil, fmt.Errorf("re-acquire subnet %s for node %q: %w: it is now held by %s; restart the agent to acquire a new subnet", p, m.node, ErrLost, holder)
	}
	l := h.lease
	l.Expiry = m.now().Add(m.ttl)
	return &holding{lease: l, id: g.ID, modRev: resp.Header.Revision}, nil
}
