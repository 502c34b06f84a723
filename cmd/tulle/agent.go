package main

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/spf13/cobra"

	"github.com/tulle-net/tulle/internal/agent"
)

func newAgentCmd() *cobra.Command {
	var (
		ef                  etcdFlags
		node, iface, pubIP  string
		stateDir, health    string
		logLevel            string
		resync, ttl         time.Duration
		releaseOnExit, masq bool
		maxProcs            int
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node agent: hold a subnet lease and program this node's dataplane",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o := agent.Options{
				NodeName: node, Iface: iface, Cluster: ef.cluster, StateDir: stateDir,
				HealthAddr: health, Resync: resync, ReleaseOnExit: releaseOnExit,
				IPMasq: masq, LeaseTTL: ttl, Logger: newLogger(logLevel),
			}
			if pubIP != "" {
				a, err := netip.ParseAddr(pubIP)
				if err != nil || !a.Is4() {
					return fmt.Errorf("--public-ip %q: want an IPv4 address", pubIP)
				}
				o.PublicIP = a
			}
			// The agent dials etcd itself: with the udp backend it first
			// resumes forwarding from the peers of its last run.
			o.DialEtcd = ef.dial
			if maxProcs < 0 {
				return fmt.Errorf("--max-procs %d: want 0 (one per CPU) or more", maxProcs)
			}
			if maxProcs > 0 {
				runtime.GOMAXPROCS(maxProcs)
			}
			if os.Getenv("GOGC") == "" {
				// The agent's heap is mostly short-lived netlink dumps: a
				// tighter GC keeps it under 30 MB RSS at 1000 peers
				// (docs/benchmarks.md) for a few ms of CPU per reconcile.
				debug.SetGCPercent(50)
			}
			a, err := agent.New(o)
			if err != nil {
				return err
			}
			return a.Run(cmd.Context())
		},
	}
	host, _ := os.Hostname()
	f := cmd.Flags()
	ef.register(cmd)
	f.StringVar(&node, "node-name", host, "this node's stable name (its identity in the datastore)")
	f.StringVar(&iface, "iface", "", "underlay interface (default: the one holding --public-ip)")
	f.StringVar(&pubIP, "public-ip", "", "underlay IPv4 address (default: the first address of --iface)")
	f.StringVar(&stateDir, "state-dir", agent.DefaultStateDir, "directory for subnet.json (and udp-peers.json with the udp backend)")
	f.StringVar(&health, "health-addr", "127.0.0.1:9876", "address for /healthz, /readyz and /metrics (empty: off)")
	f.DurationVar(&resync, "resync", agent.DefaultResync, "period of the full reconcile that heals drift")
	f.DurationVar(&ttl, "lease-ttl", 0, "etcd lease TTL (default: 1h, renewed continuously)")
	f.BoolVar(&releaseOnExit, "release-on-exit", false, "delete this node's lease on SIGTERM (default: keep it for a restart)")
	f.BoolVar(&masq, "ip-masq", true, "masquerade traffic leaving the cluster network")
	f.IntVar(&maxProcs, "max-procs", 0, "CPUs the agent runs Go code on at once (GOMAXPROCS; 0: all). Only the udp backend's data path is busy; cap it where nodes share CPUs")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}
