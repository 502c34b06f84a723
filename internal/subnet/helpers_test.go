package subnet_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tulle-net/tulle/internal/config"
	"github.com/tulle-net/tulle/internal/lease"
	"github.com/tulle-net/tulle/internal/subnet"
)

// logBuf collects log output so a test can assert on it.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testLogger logs to the test output and, if b is not nil, to b.
func testLogger(t testing.TB, b *logBuf) *slog.Logger {
	var w io.Writer = t.Output()
	if b != nil {
		w = io.MultiWriter(w, b)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func newManager(t testing.TB, cli *clientv3.Client, o subnet.Options) *subnet.Manager {
	t.Helper()
	o.Client = cli
	if o.Logger == nil {
		o.Logger = testLogger(t, nil)
	}
	m, err := subnet.New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return m
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustNetwork(t testing.TB, js string) config.Network {
	t.Helper()
	n, err := config.Parse([]byte(js))
	if err != nil {
		t.Fatalf("config.Parse(%s): %v", js, err)
	}
	return n
}

// net16 is a roomy network: 256 /24 subnets.
func net16(t testing.TB) config.Network {
	return mustNetwork(t, `{"network":"10.244.0.0/16"}`)
}

func attrs(node, ip, mac string) lease.Attrs {
	return lease.Attrs{
		Node:        node,
		PublicIP:    netip.MustParseAddr(ip),
		BackendType: config.BackendVXLAN,
		BackendData: lease.BackendData{VtepMAC: mac},
	}
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// eventually polls cond until it holds or 10 s pass.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// getKV reads one key; nil if missing.
func getKV(t testing.TB, cli *clientv3.Client, key string) *clientv3.GetResponse {
	t.Helper()
	resp, err := cli.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	return resp
}

func leaseKey(cluster string, p netip.Prefix) string {
	return "/tulle/" + cluster + "/leases/" + lease.SubnetKey(p)
}

func subnetsOf(ls []lease.Lease) string {
	var s []string
	for _, l := range ls {
		s = append(s, l.Subnet.String()+"="+l.Node)
	}
	return strings.Join(s, " ")
}

// watcher runs m.Watch and collects the snapshots.
type watcher struct {
	ch   chan subnet.Snapshot
	done chan error
}

func startWatch(t testing.TB, m *subnet.Manager) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{ch: make(chan subnet.Snapshot), done: make(chan error, 1)}
	go func() { w.done <- m.Watch(ctx, w.ch) }()
	t.Cleanup(func() {
		cancel()
		if err := <-w.done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	return w
}

// waitFor receives snapshots until one renders as want ("subnet=node ...").
func (w *watcher) waitFor(t testing.TB, want string) subnet.Snapshot {
	t.Helper()
	timeout := time.After(10 * time.Second)
	var last string
	for {
		select {
		case s := <-w.ch:
			if last = subnetsOf(s.Leases); last == want {
				return s
			}
		case err := <-w.done:
			t.Fatalf("Watch returned %v while waiting for %q", err, want)
		case <-timeout:
			t.Fatalf("watch: timed out waiting for %q; last snapshot %q", want, last)
		}
	}
}
