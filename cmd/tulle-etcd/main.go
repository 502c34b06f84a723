// Command tulle-etcd runs an embedded single-member etcd. It is its own
// binary (reached as 'tulle etcd') because linking etcd's server packages
// into tulle costs every agent about 6 MB of resident memory in package
// initialisation alone, even though agents never run a server.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/tulle-net/tulle/internal/etcdserver"
)

func main() {
	fs := flag.NewFlagSet("tulle etcd", flag.ContinueOnError)
	dataDir := fs.String("data-dir", "", "etcd data directory (required)")
	listen := fs.String("listen", "http://127.0.0.1:2379", "client URL to listen on")
	name := fs.String("name", "tulle", "member name")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	certFile := fs.String("cert-file", "", "server certificate for client TLS (with --listen https://...)")
	keyFile := fs.String("key-file", "", "server key for client TLS")
	caFile := fs.String("trusted-ca-file", "", "CA that signs client certificates")
	clientAuth := fs.Bool("client-cert-auth", false, "refuse clients without a certificate signed by --trusted-ca-file")
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "etcd" { // exec'd by 'tulle etcd' with its argv
		args = args[1:]
	}
	if err := fs.Parse(args); err != nil {
		os.Exit(2)
	}
	if *dataDir == "" || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: tulle etcd --data-dir DIR [--listen URL] [--name NAME] [--cert-file F --key-file F [--trusted-ca-file F --client-cert-auth]]")
		os.Exit(2)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(strings.ToUpper(*logLevel))); err != nil {
		lvl = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	o := etcdserver.Options{Name: *name, DataDir: *dataDir, ListenClient: *listen, Logger: log}
	if *certFile != "" || *keyFile != "" {
		o.TLS = &etcdserver.TLS{CertFile: *certFile, KeyFile: *keyFile, TrustedCAFile: *caFile, ClientCertAuth: *clientAuth}
	}
	s, err := etcdserver.Start(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tulle etcd:", err)
		os.Exit(1)
	}
	fmt.Println("etcd ready on", strings.Join(s.Endpoints(), ","))
	if err := s.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "tulle etcd:", err)
		os.Exit(1)
	}
}
