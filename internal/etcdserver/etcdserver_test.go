package etcdserver_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tulle-net/tulle/internal/etcdserver"
	"github.com/tulle-net/tulle/internal/etcdserver/etcdtest"
)

func TestStartServesClients(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	cli := etcdtest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put: %v", err)
	}
	resp, err := cli.Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("get k = %v, %v; want v", resp, err)
	}
}

// Several servers on one machine must not collide (labs run in parallel).
func TestStartTwiceOnPortZero(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	a, b := etcdtest.NewServer(t), etcdtest.NewServer(t)
	ea, eb := a.Endpoints(), b.Endpoints()
	if len(ea) != 1 || len(eb) != 1 || ea[0] == eb[0] {
		t.Fatalf("endpoints %v and %v; want one distinct URL each", ea, eb)
	}
	if strings.HasSuffix(ea[0], ":0") {
		t.Errorf("endpoint %s; want the bound port", ea[0])
	}
}

func TestStartRejectsBadOptions(t *testing.T) {
	tests := []struct {
		name string
		o    etcdserver.Options
		want string
	}{
		{"no data dir", etcdserver.Options{}, "DataDir is required"},
		{"https", etcdserver.Options{DataDir: t.TempDir(), ListenClient: "https://127.0.0.1:0"}, "want http://"},
		{"no port", etcdserver.Options{DataDir: t.TempDir(), ListenClient: "http://127.0.0.1"}, "want http://"},
		{"not a URL", etcdserver.Options{DataDir: t.TempDir(), ListenClient: "http://[::1"}, "parse etcd client URL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := etcdserver.Start(context.Background(), tc.o)
			if err == nil {
				s.Close()
				t.Fatalf("Start succeeded; want an error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Start: %v; want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestStartPortInUse(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s, err := etcdserver.Start(context.Background(), etcdserver.Options{DataDir: t.TempDir(), ListenClient: "http://" + l.Addr().String()})
	if err == nil {
		s.Close()
		t.Fatal("Start on a port in use succeeded")
	}
	if !strings.Contains(err.Error(), l.Addr().String()) {
		t.Errorf("Start: %v; want the URL in the error", err)
	}
}

func TestRunStopsOnContextAndCloseIsIdempotent(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	s, err := etcdserver.Start(context.Background(), etcdserver.Options{DataDir: t.TempDir(), ListenClient: "http://127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after cancel: %v; want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	s.Close() // a second Close must not panic
	s.Close()

	cli, err := clientv3.New(clientv3.Config{Endpoints: s.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	gctx, gcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer gcancel()
	if _, err := cli.Get(gctx, "k"); err == nil {
		t.Error("Get after Run succeeded; want the server stopped")
	}
}

func TestRunReturnsNilOnClose(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	s := etcdtest.NewServer(t)
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	s.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after Close: %v; want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after Close")
	}
}

// Data survives a restart on the same directory.
func TestRestartKeepsData(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	put := func(op func(*clientv3.Client) error) {
		t.Helper()
		s, err := etcdserver.Start(ctx, etcdserver.Options{DataDir: dir, ListenClient: "http://127.0.0.1:0"})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		cli := etcdtest.Client(t, s)
		defer cli.Close()
		if err := op(cli); err != nil {
			t.Fatal(err)
		}
	}
	put(func(cli *clientv3.Client) error { _, err := cli.Put(ctx, "k", "v"); return err })
	put(func(cli *clientv3.Client) error {
		resp, err := cli.Get(ctx, "k")
		if err == nil && (len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v") {
			err = errors.New("k lost across restart")
		}
		return err
	})
}

func TestStartRejectsHalfTLS(t *testing.T) {
	_, err := etcdserver.Start(context.Background(), etcdserver.Options{
		DataDir: t.TempDir(), ListenClient: "http://127.0.0.1:0", TLS: &etcdserver.TLS{CertFile: "c.pem"},
	})
	if err == nil || !strings.Contains(err.Error(), "certificate and a key") {
		t.Fatalf("got %v", err)
	}
}
