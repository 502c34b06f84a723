package lab

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/tulle-net/tulle/internal/config"
	"github.com/tulle-net/tulle/internal/subnet"
)

// startEtcd runs `tulle etcd` in the switch namespace, listening on the
// switch address only, and stores the lab's network config in it.
func (l *Lab) startEtcd(ctx context.Context, netcfg config.Network) error {
	sw := switchNS(l.st.Name)
	args := []string{l.st.TulleBin, "etcd",
		"--data-dir", filepath.Join(l.st.Dir, "etcd"),
		"--listen", etcdEndpoint(),
		"--name", l.st.Name,
	}
	p, err := l.startProc(sw, args, filepath.Join(l.st.Dir, "etcd.log"), func(st *State) **Proc { return &st.Etcd })
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, l.opts.Timeout)
	defer cancel()
	if err := l.waitTCP(wctx, sw, netAddr(switchIP(), etcdClientPort), p); err != nil {
		return fmt.Errorf("wait for etcd: %w", err)
	}
	if err := l.setNetwork(wctx, netcfg); err != nil {
		return err
	}
	l.log.Debug("etcd ready", keyEndpoint, etcdEndpoint())
	return nil
}

// etcdClient connects to the lab's etcd from inside the switch namespace:
// the lab process itself stays in the root namespace, which has no route to
// the lab's underlay, so every connection is opened in the switch.
func (l *Lab) etcdClient(ctx context.Context) (*clientv3.Client, error) {
	sw := switchNS(l.st.Name)
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{etcdEndpoint()},
		DialTimeout: 5 * time.Second,
		Context:     ctx,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dialInNS(ctx, sw, "tcp", addr)
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("connect to lab etcd %s: %w", etcdEndpoint(), err)
	}
	return cli, nil
}

// setNetwork stores the network config (as `tulle network set` does),
// retrying while etcd finishes starting.
func (l *Lab) setNetwork(ctx context.Context, netcfg config.Network) error {
	cli, err := l.etcdClient(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	m, err := subnet.New(subnet.Options{Client: cli, Cluster: l.st.Name, Node: "tulle-lab"})
	if err != nil {
		return fmt.Errorf("set network config: %w", err)
	}
	for {
		err = m.SetConfig(ctx, netcfg)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("set network config in lab etcd: %w", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
