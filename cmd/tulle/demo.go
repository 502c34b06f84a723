package main

import (
	"github.com/spf13/cobra"

	"github.com/tulle-net/tulle/internal/lab"
)

func newDemoCmd() *cobra.Command {
	var (
		o        lab.DemoOptions
		logLevel string
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Build a 3-node lab, show that every container reaches every other one, tear it down",
		Long: `demo builds a lab of network namespaces on this machine: an underlay switch
with etcd, 3 nodes each running a real 'tulle agent' process, and 2 containers
per node attached by the real tulle CNI plugin. It prints the nodes, subnets
and container addresses, checks every container against every other one with
ping and a TCP exchange, prints the matrix and tears everything down.
Nothing is added to the host's own network namespace. Needs root.

Exit status: 0 all pairs reachable, 2 some pair failed, 1 the lab could not
be built.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Lab.Logger = newLogger(logLevel)
			_, err := lab.Demo(cmd.Context(), o, cmd.OutOrStdout())
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Lab.Backend, "backend", "vxlan", "backend: vxlan, host-gw or udp")
	f.BoolVar(&o.Keep, "keep", false, "keep the lab afterwards (remove it with 'tulle lab down --name demo')")
	f.StringVar(&o.Lab.Name, "name", lab.DefaultDemoName, "lab name: the prefix of its namespaces")
	f.IntVar(&o.Lab.Nodes, "nodes", lab.DefaultNodes, "number of nodes")
	f.IntVar(&o.Lab.Containers, "containers", 2, "containers per node")
	f.StringVar(&o.Lab.TulleBin, "tulle-bin", "", "tulle binary for etcd and the agents (default: this one)")
	f.StringVar(&o.Lab.CNIBin, "cni-bin", "", "tulle-cni plugin binary (default: tulle-cni next to --tulle-bin)")
	f.StringVar(&logLevel, "log-level", "warn", "debug, info, warn or error (to stderr)")
	return cmd
}
