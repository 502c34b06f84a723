package subnet

import (
	"context"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tulle-net/tulle/internal/config"
)

// GetConfig reads and validates the cluster's network config.
func (m *Manager) GetConfig(ctx context.Context) (config.Network, error) {
	resp, err := m.cli.Get(ctx, m.configKey)
	if err != nil {
		return config.Network{}, fmt.Errorf("get network config %s: %w", m.configKey, err)
	}
	if len(resp.Kvs) == 0 {
		return config.Network{}, fmt.Errorf("%w at %s; set one with 'tulle network set -f net.json'", ErrNoConfig, m.configKey)
	}
	n, err := config.Parse(resp.Kvs[0].Value)
	if err != nil {
		return config.Network{}, fmt.Errorf("parse network config %s: %w", m.configKey, err)
	}
	return n, nil
}

// maxConfigConflicts bounds SetConfig's retries when leases change under it.
const maxConfigConflicts = 5

// SetConfig validates n and stores it. Nothing is written if n is invalid
// (the error wraps config.ErrInvalid) or if a current lease would fall
// outside the new subnet range or length: such a change would orphan running
// nodes, so their leases must be released first (stop the agents, or delete
// the leases). The check and the write are one transaction: a lease created
// in between makes it retry.
func (m *Manager) SetConfig(ctx context.Context, n config.Network) error {
	n = n.WithDefaults()
	if err := n.Validate(); err != nil {
		return fmt.Errorf("set network config %s: %w", m.configKey, err)
	}
	for range maxConfigConflicts {
		leases, rev, err := m.List(ctx)
		if err != nil {
			return fmt.Errorf("set network config %s: %w", m.configKey, err)
		}
		var orphans []string
		for _, l := range leases {
			if !n.Contains(l.Subnet) {
				orphans = append(orphans, fmt.Sprintf("%s (node %q)", l.Subnet, l.Node))
			}
		}
		if len(orphans) > 0 {
			return fmt.Errorf("set network config %s: %d lease(s) would fall outside network %s subnetLen %d: %s; stop those agents or delete their leases first",
				m.configKey, len(orphans), n.Network, n.SubnetLen, strings.Join(orphans, ", "))
		}
		// No lease key may have been created or rewritten since the List.
		resp, err := m.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(m.leasePrefix), "<", rev+1).WithPrefix()).
			Then(clientv3.OpPut(m.configKey, string(n.Marshal()))).
			Commit()
		if err != nil {
			return fmt.Errorf("set network config %s: %w", m.configKey, err)
		}
		if resp.Succeeded {
			m.log.Info("network config set", "network", n.Network, "subnetLen", n.SubnetLen, "backend", n.Backend.Type)
			return nil
		}
	}
	return fmt.Errorf("set network config %s: leases kept changing; %d attempts failed, try again", m.configKey, maxConfigConflicts)
}
