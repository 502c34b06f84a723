package subnet

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tulle-net/tulle/internal/lease"
	"github.com/tulle-net/tulle/internal/logkey"
)

// Backoff between attempts to list or watch again after etcd failed.
const (
	watchBackoffMin = 100 * time.Millisecond
	watchBackoffMax = 10 * time.Second
)

// Snapshot is the full set of leases at one revision.
type Snapshot struct {
	// Leases are sorted by subnet. Expiry is zero. The slice is the
	// receiver's: Watch never touches it again.
	Leases []lease.Lease
	// Revision is the etcd revision the set reflects.
	Revision int64
}

// Watch sends the full set of leases on out: first the current set, then a
// new set after each batch of changes. It returns nil when ctx ends, or an
// error if the etcd client was closed.
//
// Sends are latest-wins: while out is not ready, Watch keeps consuming etcd
// events and replaces the pending snapshot, so a slow consumer never stalls
// the watch and always gets the newest state, never a stale backlog. Use an
// unbuffered channel; a buffer would hold older snapshots ahead of the
// latest.
//
// Watch resumes from the last revision it saw when the watch breaks, and
// lists again when that revision was compacted. Undecodable entries are
// skipped and logged at Warn.
func (m *Manager) Watch(ctx context.Context, out chan<- Snapshot) error {
	var (
		cur     map[string]lease.Lease // by key; nil: list again
		rev     int64                  // every change up to rev is in cur
		pending *Snapshot              // latest snapshot not yet sent
		wch     clientv3.WatchChan     // nil: watch again from rev+1
		stop    = func() {}            // cancels wch
		backoff = watchBackoffMin
	)
	defer func() { stop() }()
	for {
		if cur == nil || wch == nil {
			if err := m.cli.Ctx().Err(); err != nil {
				return fmt.Errorf("watch leases %s: etcd client closed: %w", m.leasePrefix, err)
			}
		}
		if cur == nil {
			es, r, err := m.entries(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				m.log.Error("could not list leases; retrying", logkey.Err, err, "in", backoff)
				if !sleep(ctx, backoff) {
					return nil
				}
				backoff = min(2*backoff, watchBackoffMax)
				continue
			}
			cur = make(map[string]lease.Lease, len(es))
			for _, e := range es {
				cur[e.key] = e.lease
			}
			rev = r
			pending = snapshot(cur, rev)
		}
		if wch == nil {
			wch, stop = m.watchFrom(ctx, rev+1)
		}

		var send chan<- Snapshot // nil (never ready) unless a snapshot is pending
		var next Snapshot
		if pending != nil {
			send, next = out, *pending
		}
		select {
		case <-ctx.Done():
			return nil
		case send <- next:
			pending = nil
		case wr, ok := <-wch:
			broken := !ok || wr.Canceled || wr.Err() != nil || wr.CompactRevision != 0
			if !broken {
				if len(wr.Events) == 0 {
					continue // progress notification
				}
				backoff = watchBackoffMin
				for _, ev := range wr.Events {
					m.apply(cur, ev)
				}
				rev = wr.Events[len(wr.Events)-1].Kv.ModRevision
				pending = snapshot(cur, max(rev, wr.Header.Revision))
				continue
			}
			if ctx.Err() != nil {
				return nil
			}
			stop()
			wch = nil
			if wr.CompactRevision != 0 || errors.Is(wr.Err(), rpctypes.ErrCompacted) {
				m.log.Info("lease watch fell behind a compaction; listing again", logkey.Revision, rev, "compacted", wr.CompactRevision)
				cur = nil
				continue
			}
			m.log.Warn("lease watch broke; resuming", logkey.Revision, rev, logkey.Err, wr.Err(), "in", backoff)
			if !sleep(ctx, backoff) {
				return nil
			}
			backoff = min(2*backoff, watchBackoffMax)
		}
	}
}

// watchFrom watches the leases from rev until the returned func is called.
func (m *Manager) watchFrom(ctx context.Context, rev int64) (clientv3.WatchChan, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	return m.cli.Watch(ctx, m.leasePrefix, clientv3.WithPrefix(), clientv3.WithRev(rev)), cancel
}

// apply folds one event into cur. A value that no longer decodes removes
// the lease: the key does not describe a usable node any more.
func (m *Manager) apply(cur map[string]lease.Lease, ev *clientv3.Event) {
	key := string(ev.Kv.Key)
	if ev.Type == mvccpb.DELETE {
		delete(cur, key)
		return
	}
	e, ok := m.decode(ev.Kv)
	if !ok {
		delete(cur, key)
		return
	}
	cur[key] = e.lease
}

func snapshot(cur map[string]lease.Lease, rev int64) *Snapshot {
	ls := slices.Collect(maps.Values(cur))
	slices.SortFunc(ls, compareSubnets)
	return &Snapshot{Leases: ls, Revision: rev}
}

// sleep waits d or until ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
