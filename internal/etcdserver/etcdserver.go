package etcdserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"sync"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/tulle-net/tulle/internal/logkey"
)

// Defaults applied by Start.
const (
	DefaultName         = "tulle"
	DefaultListenClient = "http://127.0.0.1:2379"
	// startTimeout bounds the wait for the member to serve clients when
	// ctx has no earlier deadline. Measured: ready 0.4-0.9 s after
	// StartEtcd on an idle host; a slow disk or a big WAL takes longer.
	startTimeout = 30 * time.Second
)

// Options configures Start.
type Options struct {
	// Name is the member name (optional, default "tulle").
	Name string
	// DataDir holds the WAL and snapshots (required). Reusing it across
	// restarts keeps the data.
	DataDir string
	// ListenClient is the client URL to serve, e.g. http://127.0.0.1:2379
	// (optional, default DefaultListenClient). Port 0 picks a free port;
	// Endpoints reports the one bound. https needs TLS.
	ListenClient string
	// TLS serves clients over TLS (optional; required for https URLs).
	TLS *TLS
	// Logger receives tulle's messages about the server (optional). etcd's
	// own zap logger is set to "fatal": its shutdown chatter is noise here.
	Logger *slog.Logger
}

// TLS is the server side of client TLS.
type TLS struct {
	CertFile, KeyFile string // the server certificate and key (required)
	// TrustedCAFile verifies client certificates; with ClientCertAuth a
	// client without a certificate signed by it is refused.
	TrustedCAFile  string
	ClientCertAuth bool
}

// Server is a running embedded etcd member.
type Server struct {
	e         *embed.Etcd
	log       *slog.Logger
	endpoints []string
	closed    chan struct{} // closed when Close begins
	closeOnce sync.Once     // embed.Etcd.Close panics when run twice
}

// Start starts an embedded single-member etcd and waits until it serves
// clients, ctx ends, or 30 s pass. On error nothing is left running.
func Start(ctx context.Context, o Options) (*Server, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With(logkey.Component, "etcd")
	cfg, err := embedConfig(o)
	if err != nil {
		return nil, err
	}
	began := time.Now()
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start etcd in %s on %s: %w", cfg.Dir, o.ListenClient, err)
	}
	s := &Server{e: e, log: log, closed: make(chan struct{})}
	scheme := "http://"
	if o.TLS != nil {
		scheme = "https://"
	}
	for _, l := range e.Clients {
		s.endpoints = append(s.endpoints, scheme+l.Addr().String())
	}
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		s.Close()
		return nil, fmt.Errorf("start etcd in %s on %s: %w", cfg.Dir, o.ListenClient, err)
	case <-e.Server.StopNotify():
		s.Close()
		return nil, fmt.Errorf("start etcd in %s on %s: stopped before it was ready", cfg.Dir, o.ListenClient)
	case <-ctx.Done():
		s.Close()
		return nil, fmt.Errorf("start etcd in %s on %s: not ready: %w", cfg.Dir, o.ListenClient, context.Cause(ctx))
	}
	log.Info("etcd ready", "endpoints", s.endpoints, logkey.Path, cfg.Dir, logkey.Duration, time.Since(began).Round(time.Millisecond))
	return s, nil
}

// embedConfig checks o and turns it into an embed.Config.
func embedConfig(o Options) (*embed.Config, error) {
	if o.DataDir == "" {
		return nil, errors.New("start etcd: Options.DataDir is required")
	}
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.ListenClient == "" {
		o.ListenClient = DefaultListenClient
	}
	client, err := url.Parse(o.ListenClient)
	if err != nil {
		return nil, fmt.Errorf("parse etcd client URL %q: %w", o.ListenClient, err)
	}
	wantScheme := "http"
	if o.TLS != nil {
		wantScheme = "https"
		if o.TLS.CertFile == "" || o.TLS.KeyFile == "" {
			return nil, errors.New("start etcd: TLS needs both a certificate and a key file")
		}
		if o.TLS.ClientCertAuth && o.TLS.TrustedCAFile == "" {
			return nil, errors.New("start etcd: client certificate auth needs a trusted CA file")
		}
	}
	if client.Scheme != wantScheme || client.Port() == "" || client.Path != "" {
		return nil, fmt.Errorf("parse etcd client URL %q: want %s://<ip>:<port> (port 0 picks a free one; https goes with a certificate and key)", o.ListenClient, wantScheme)
	}
	// The peer URL is never dialled (one member), but etcd must listen on
	// it. Port 0 keeps several servers on one machine (labs, tests) from
	// colliding. Use the client's IP so it works inside a network
	// namespace whose only address is that IP; fall back to loopback for
	// an unspecified or named host.
	peerHost := "127.0.0.1"
	advertiseClient := *client
	if ip, err := netip.ParseAddr(client.Hostname()); err == nil && !ip.IsUnspecified() {
		peerHost = client.Hostname()
	} else if err == nil {
		// Listening on 0.0.0.0 is fine, advertising it is not.
		advertiseClient.Host = net.JoinHostPort("127.0.0.1", client.Port())
	}
	peer := url.URL{Scheme: "http", Host: net.JoinHostPort(peerHost, "0")}

	cfg := embed.NewConfig()
	cfg.Name = o.Name
	cfg.Dir = o.DataDir
	cfg.ListenClientUrls = []url.URL{*client}
	cfg.AdvertiseClientUrls = []url.URL{advertiseClient}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	if o.TLS != nil {
		cfg.ClientTLSInfo = transport.TLSInfo{
			CertFile: o.TLS.CertFile, KeyFile: o.TLS.KeyFile,
			TrustedCAFile: o.TLS.TrustedCAFile, ClientCertAuth: o.TLS.ClientCertAuth,
		}
	}
	cfg.LogLevel = "fatal"
	// Keep one hour of history so a watcher that was briefly away can
	// resume; package subnet relists after a compaction anyway.
	cfg.AutoCompactionMode = embed.CompactorModePeriodic
	cfg.AutoCompactionRetention = "1h"
	return cfg, nil
}

// Endpoints returns the client URLs the server actually listens on, e.g.
// http://127.0.0.1:41879 when the port was 0.
func (s *Server) Endpoints() []string {
	return append([]string(nil), s.endpoints...)
}

// Run blocks until ctx ends or Close is called (returns nil) or etcd fails
// (returns the error), then closes the server.
func (s *Server) Run(ctx context.Context) error {
	defer s.Close()
	var err error
	select {
	case <-ctx.Done():
	case <-s.closed:
	case e, ok := <-s.e.Err():
		err = errors.New("stopped")
		if ok {
			err = e
		}
	case <-s.e.Server.StopNotify():
		err = errors.New("server stopped")
	}
	select {
	case <-s.closed:
		return nil // a failure caused by Close is not one
	default:
	}
	if err != nil {
		return fmt.Errorf("run etcd %v: %w", s.endpoints, err)
	}
	return nil
}

// Close stops the server and waits for it. It is safe to call more than
// once and concurrently.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		close(s.closed)
		s.e.Close()
		s.log.Info("etcd stopped", "endpoints", s.endpoints)
	})
}
