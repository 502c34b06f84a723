package etcdtest

import (
	"context"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tulle-net/tulle/internal/etcdserver"
)

// NewServer starts an embedded etcd for t and closes it in t.Cleanup.
func NewServer(t testing.TB) *etcdserver.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := etcdserver.Start(ctx, etcdserver.Options{
		Name:         "test",
		DataDir:      t.TempDir(),
		ListenClient: "http://127.0.0.1:0",
		Logger:       slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// New starts an embedded etcd for t and returns a client of it. Both are
// closed in t.Cleanup.
func New(t testing.TB) *clientv3.Client {
	t.Helper()
	return Client(t, NewServer(t))
}

// Client returns a new client of s, closed in t.Cleanup.
func Client(t testing.TB, s *etcdserver.Server) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   s.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcdtest: dial %v: %v", s.Endpoints(), err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// CheckGoroutines records the running goroutines and, in t.Cleanup, fails
// t if goroutines started since are still running 10 s later. Call it
// first in the test, so its cleanup runs after every other one (servers,
// clients). It cannot tell goroutines apart across tests, so do not use it
// in tests that run in parallel with others.
func CheckGoroutines(t testing.TB) {
	t.Helper()
	before := goroutineIDs()
	t.Cleanup(func() {
		var leaked []string
		deadline := time.Now().Add(10 * time.Second)
		for {
			leaked = leaked[:0]
			for id, stack := range goroutines() {
				if !before[id] && !ignored(stack) {
					leaked = append(leaked, stack)
				}
			}
			if len(leaked) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if len(leaked) > 0 {
			slices.Sort(leaked)
			t.Errorf("%d goroutine(s) leaked:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
	})
}

// ignored reports goroutines that outlive any one test by design: the
// testing framework's own.
func ignored(stack string) bool {
	for _, s := range []string{"testing.(*T).Run(", "testing.(*T).Parallel(", "testing.tRunner.func1("} {
		if strings.Contains(stack, s) {
			return true
		}
	}
	return false
}

func goroutineIDs() map[string]bool {
	ids := map[string]bool{}
	for id := range goroutines() {
		ids[id] = true
	}
	return ids
}

// goroutines returns the stacks of all goroutines but the caller's, by id.
func goroutines() map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := map[string]string{}
	for i, g := range strings.Split(string(buf), "\n\n") {
		if i == 0 {
			continue // the caller
		}
		// "goroutine 42 [running]:"
		rest, ok := strings.CutPrefix(g, "goroutine ")
		id, _, ok2 := strings.Cut(rest, " ")
		if ok && ok2 {
			out[id] = g
		}
	}
	return out
}
