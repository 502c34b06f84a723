package subnet

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// DefaultDialTimeout bounds Dial when DialOptions.DialTimeout is zero.
const DefaultDialTimeout = 5 * time.Second

// DialOptions says how to reach etcd.
type DialOptions struct {
	// Endpoints are etcd client URLs, e.g. https://10.0.0.1:2379 (required).
	Endpoints []string
	// CAFile, CertFile and KeyFile configure TLS (optional). CAFile alone
	// verifies the server; CertFile and KeyFile add a client certificate.
	CAFile, CertFile, KeyFile string
	// DialTimeout bounds connecting and the first request (optional,
	// default DefaultDialTimeout).
	DialTimeout time.Duration
}

// Dial connects to etcd and checks that at least one endpoint answers, so a
// wrong address fails here with the endpoints named rather than later with a
// timeout. The caller closes the client.
func Dial(ctx context.Context, o DialOptions) (*clientv3.Client, error) {
	if len(o.Endpoints) == 0 {
		return nil, errors.New("dial etcd: no endpoints; set one such as http://127.0.0.1:2379")
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	var tlsConfig *tls.Config
	if o.CAFile != "" || o.CertFile != "" || o.KeyFile != "" {
		if (o.CertFile == "") != (o.KeyFile == "") {
			return nil, fmt.Errorf("dial etcd %v: certificate %q and key %q must be set together", o.Endpoints, o.CertFile, o.KeyFile)
		}
		info := transport.TLSInfo{CertFile: o.CertFile, KeyFile: o.KeyFile, TrustedCAFile: o.CAFile}
		c, err := info.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("dial etcd %v: load TLS files: %w", o.Endpoints, err)
		}
		tlsConfig = c
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   o.Endpoints,
		DialTimeout: o.DialTimeout,
		TLS:         tlsConfig,
		// Errors reach the caller; the client's own zap logger only
		// repeats them as retry noise.
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("dial etcd %v: %w", o.Endpoints, err)
	}
	// The gRPC dial is lazy: probe the endpoints (all at once, so one dead
	// endpoint does not eat the others' time) so that a wrong address or
	// certificate fails now.
	if err := probe(ctx, cli, o.Endpoints, o.DialTimeout); err != nil {
		cli.Close()
		return nil, fmt.Errorf("dial etcd %v: no endpoint answered within %s (is etcd running there, with this TLS setup?): %w", o.Endpoints, o.DialTimeout, err)
	}
	return cli, nil
}

// probe returns nil as soon as one endpoint answers a Status call, else the
// errors of all of them.
func probe(ctx context.Context, cli *clientv3.Client, endpoints []string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	errc := make(chan error, len(endpoints))
	for _, ep := range endpoints {
		go func() {
			_, err := cli.Status(ctx, ep)
			if err != nil {
				err = fmt.Errorf("%s: %w", ep, err)
			}
			errc <- err
		}()
	}
	var errs []error
	for range endpoints {
		if err := <-errc; err != nil {
			errs = append(errs, err)
			continue
		}
		cancel()
		break
	}
	// Wait for the rest: they end quickly once ctx is cancelled.
	for range len(endpoints) - len(errs) - 1 {
		<-errc
	}
	if len(errs) == len(endpoints) {
		return errors.Join(errs...)
	}
	return nil
}
