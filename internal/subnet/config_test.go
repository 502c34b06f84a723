package subnet_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/tulle-net/tulle/internal/config"
	"github.com/tulle-net/tulle/internal/etcdserver/etcdtest"
	"github.com/tulle-net/tulle/internal/subnet"
)

func TestConfigGetSet(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	cli := etcdtest.New(t)
	ctx := ctxT(t)
	m := newManager(t, cli, subnet.Options{Node: "a", Cluster: "blue"})

	_, err := m.GetConfig(ctx)
	want := "no network config at /tulle/blue/config; set one with 'tulle network set -f net.json'"
	if !errors.Is(err, subnet.ErrNoConfig) || !strings.Contains(err.Error(), want) {
		t.Errorf("GetConfig on an empty store: %v; want %q", err, want)
	}

	// A bad config is rejected before any write.
	bad := config.Network{Network: netip.MustParsePrefix("10.244.0.0/16"), SubnetLen: 8}
	if err := m.SetConfig(ctx, bad); !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "subnetLen 8") {
		t.Errorf("SetConfig(bad): %v; want config.ErrInvalid naming subnetLen 8", err)
	}
	if resp := getKV(t, cli, m.ConfigKey()); len(resp.Kvs) != 0 {
		t.Fatalf("a rejected config was written: %s", resp.Kvs[0].Value)
	}

	n := config.Network{Network: netip.MustParsePrefix("10.244.0.0/16")} // defaults filled in
	if err := m.SetConfig(ctx, n); err != nil {
		t.Fatalf("SetConfig: %v", err)
	}
	got, err := m.GetConfig(ctx)
	if err != nil || got != n.WithDefaults() {
		t.Fatalf("GetConfig = %+v, %v; want %+v", got, err, n.WithDefaults())
	}

	// With a lease in place, a change that would orphan it is refused;
	// one that keeps it (another backend) is fine.
	l, err := m.Acquire(ctx, got, attrs("a", "192.168.1.1", ""), netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	moved := config.Network{Network: netip.MustParsePrefix("10.245.0.0/16")}
	err = m.SetConfig(ctx, moved)
	if err == nil || !strings.Contains(err.Error(), l.Subnet.String()) || !strings.Contains(err.Error(), `node "a"`) {
		t.Errorf("SetConfig(orphaning): %v; want a refusal naming %s of node a", err, l.Subnet)
	}
	hostGW := config.Network{Network: netip.MustParsePrefix("10.244.0.0/16"), Backend: config.Backend{Type: config.BackendHostGW}}
	if err := m.SetConfig(ctx, hostGW); err != nil {
		t.Errorf("SetConfig(host-gw): %v", err)
	}
	if got, err := m.GetConfig(ctx); err != nil || got.Backend.Type != config.BackendHostGW {
		t.Errorf("GetConfig = %+v, %v; want the host-gw config", got, err)
	}

	// A corrupt stored config is an error that names the key.
	if _, err := cli.Put(ctx, m.ConfigKey(), `{"network":"nope"}`); err != nil {
		t.Fatal(err)
	}
	if _, err := m.GetConfig(ctx); !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "/tulle/blue/config") {
		t.Errorf("GetConfig(corrupt): %v; want config.ErrInvalid naming the key", err)
	}
	// Clusters do not see each other's config.
	other := newManager(t, cli, subnet.Options{Node: "a", Cluster: "green"})
	if _, err := other.GetConfig(ctx); !errors.Is(err, subnet.ErrNoConfig) {
		t.Errorf("GetConfig(green): %v; want ErrNoConfig", err)
	}
}
