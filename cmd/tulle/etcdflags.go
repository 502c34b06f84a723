package main

import (
	"context"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tulle-net/tulle/internal/subnet"
)

// etcdFlags are shared by every command that talks to the datastore.
type etcdFlags struct {
	endpoints                 []string
	caFile, certFile, keyFile string
	cluster                   string
}

func (f *etcdFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringSliceVar(&f.endpoints, "etcd-endpoints", []string{"http://127.0.0.1:2379"}, "etcd client URLs (comma-separated)")
	fl.StringVar(&f.caFile, "etcd-cafile", "", "CA bundle to verify etcd's certificate")
	fl.StringVar(&f.certFile, "etcd-certfile", "", "client certificate for etcd")
	fl.StringVar(&f.keyFile, "etcd-keyfile", "", "client key for etcd")
	fl.StringVar(&f.cluster, "cluster", "default", "cluster name: keys live under /tulle/<cluster>/")
}

func (f *etcdFlags) dial(ctx context.Context) (*clientv3.Client, error) {
	return subnet.Dial(ctx, subnet.DialOptions{
		Endpoints: f.endpoints, CAFile: f.caFile, CertFile: f.certFile, KeyFile: f.keyFile,
	})
}

// newLogger writes text logs to stderr at the given level.
func newLogger(level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToUpper(level))); err != nil {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}
