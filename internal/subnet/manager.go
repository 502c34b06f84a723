package subnet

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tulle-net/tulle/internal/lease"
	"github.com/tulle-net/tulle/internal/logkey"
)

// Defaults applied by New.
const (
	DefaultCluster = "default"
	// DefaultTTL is the etcd lease TTL; see the package doc for why.
	DefaultTTL = time.Hour
)

// Sentinel errors callers branch on.
var (
	// ErrNoConfig is wrapped when the cluster has no network config.
	ErrNoConfig = errors.New("subnet: no network config")
	// ErrNotHeld is wrapped by KeepAlive when no lease was acquired.
	ErrNotHeld = errors.New("subnet: no lease held")
	// ErrLost is wrapped by KeepAlive when the lease was lost and its
	// subnet is now held by someone else, so it cannot be re-acquired.
	ErrLost = errors.New("subnet: lease lost")
)

// Options configures a Manager.
type Options struct {
	// Client talks to etcd (required). The caller closes it after the
	// Manager is done.
	Client *clientv3.Client
	// Cluster names the key space /tulle/<cluster>/ (optional, default
	// "default"), so several clusters can share one etcd.
	Cluster string
	// Node is this node's stable name (required). Leases are matched to
	// nodes by this name, never by IP.
	Node string
	// TTL of the etcd lease (optional, default DefaultTTL). etcd rounds
	// anything under its minimum (about 2 s) up.
	TTL time.Duration
	// Logger (optional).
	Logger *slog.Logger
	// Seed spreads racing nodes over the free subnets (optional, default:
	// a hash of Node). See lease.Choose.
	Seed uint64
	// Now is the clock used to turn TTLs into expiry times (optional,
	// default time.Now).
	Now func() time.Time
}

// Manager manages one node's subnet lease in etcd and watches everyone's.
type Manager struct {
	cli  *clientv3.Client
	node string
	ttl  time.Duration
	log  *slog.Logger
	seed uint64
	now  func() time.Time

	configKey   string
	leasePrefix string

	mu   sync.Mutex
	held *holding // guarded by mu; nil when no lease is held
}

// holding is the lease this Manager holds. It is replaced, never mutated,
// except for Expiry which KeepAlive refreshes under Manager.mu.
type holding struct {
	lease  lease.Lease
	id     clientv3.LeaseID // the etcd lease the key is bound to
	modRev int64            // the key's ModRevision after our last write
}

// New returns a Manager. It does no I/O.
func New(o Options) (*Manager, error) {
	if o.Client == nil {
		return nil, errors.New("new subnet manager: Options.Client is required")
	}
	if o.Node == "" {
		return nil, errors.New("new subnet manager: Options.Node is required")
	}
	if o.Cluster == "" {
		o.Cluster = DefaultCluster
	}
	if strings.ContainsAny(o.Cluster, "/ ") {
		return nil, fmt.Errorf("new subnet manager: cluster name %q: must not contain '/' or spaces", o.Cluster)
	}
	if o.TTL == 0 {
		o.TTL = DefaultTTL
	}
	if o.TTL < time.Second {
		return nil, fmt.Errorf("new subnet manager: TTL %s: must be at least 1s", o.TTL)
	}
	if o.Seed == 0 {
		h := fnv.New64a()
		h.Write([]byte(o.Node))
		o.Seed = h.Sum64()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	prefix := "/tulle/" + o.Cluster + "/"
	return &Manager{
		cli:         o.Client,
		node:        o.Node,
		ttl:         o.TTL,
		log:         log.With(logkey.Component, "subnet", logkey.Node, o.Node),
		seed:        o.Seed,
		now:         o.Now,
		configKey:   prefix + "config",
		leasePrefix: prefix + "leases/",
	}, nil
}

// ConfigKey is the etcd key of the network config.
func (m *Manager) ConfigKey() string { return m.configKey }

// LeasePrefix is the etcd key prefix of the leases.
func (m *Manager) LeasePrefix() string { return m.leasePrefix }

// Current returns the lease this Manager holds, if any. Expiry is refreshed
// by KeepAlive.
func (m *Manager) Current() (lease.Lease, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.held == nil {
		return lease.Lease{}, false
	}
	return m.held.lease, true
}

func (m *Manager) heldNow() *holding {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.held
}

func (m *Manager) key(l lease.Lease) string {
	return m.leasePrefix + lease.SubnetKey(l.Subnet)
}

// cleanupCtx is for undoing a side effect after ctx may have ended.
func cleanupCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
}
