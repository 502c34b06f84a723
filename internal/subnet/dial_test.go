package subnet_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tulle-net/tulle/internal/etcdserver/etcdtest"
	"github.com/tulle-net/tulle/internal/subnet"
)

func TestDial(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	srv := etcdtest.NewServer(t)
	ctx := ctxT(t)
	cli, err := subnet.Dial(ctx, subnet.DialOptions{Endpoints: srv.Endpoints()})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer cli.Close()
	if _, err := cli.Get(ctx, "k"); err != nil {
		t.Errorf("Get: %v", err)
	}
}

func TestDialFailsClearly(t *testing.T) {
	etcdtest.CheckGoroutines(t)
	// A port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String()
	l.Close()
	tests := []struct {
		name string
		o    subnet.DialOptions
		want string
	}{
		{"no endpoints", subnet.DialOptions{}, "no endpoints"},
		{"nobody listening", subnet.DialOptions{Endpoints: []string{dead}, DialTimeout: 300 * time.Millisecond}, dead},
		{"cert without key", subnet.DialOptions{Endpoints: []string{dead}, CertFile: "c.pem"}, "must be set together"},
		{"missing CA", subnet.DialOptions{Endpoints: []string{dead}, CAFile: "/nonexistent/ca.pem"}, "/nonexistent/ca.pem"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cli, err := subnet.Dial(context.Background(), tc.o)
			if err == nil {
				cli.Close()
				t.Fatalf("Dial succeeded; want an error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Dial: %v; want it to contain %q", err, tc.want)
			}
		})
	}
}
