package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/tulle-net/tulle/internal/lab"
)

// labFlags are the flags every lab subcommand shares.
type labFlags struct{ name, logLevel string }

// options starts a subcommand's lab.Options from the shared flags.
func (g *labFlags) options(o lab.Options) lab.Options {
	o.Name, o.Logger = g.name, newLogger(g.logLevel)
	return o
}

func newLabCmd() *cobra.Command {
	var g labFlags
	cmd := &cobra.Command{Use: "lab", Short: "Run a multi-node tulle cluster in network namespaces on this machine (needs root)"}
	pf := cmd.PersistentFlags()
	pf.StringVar(&g.name, "name", lab.DefaultName, "lab name: the prefix of its namespaces")
	pf.StringVar(&g.logLevel, "log-level", "warn", "debug, info, warn or error (to stderr)")
	cmd.AddCommand(labUpCmd(&g), labStatusCmd(&g), labExecCmd(&g), labRestartCmd(&g), labDownCmd(&g), labBenchCmd(&g), labScaleCmd(&g))
	return cmd
}

func binFlags(cmd *cobra.Command, o *lab.Options) {
	cmd.Flags().StringVar(&o.TulleBin, "tulle-bin", "", "tulle binary for etcd and the agents (default: this one)")
	cmd.Flags().StringVar(&o.CNIBin, "cni-bin", "", "tulle-cni plugin binary (default: tulle-cni next to --tulle-bin)")
}

func labUpCmd(g *labFlags) *cobra.Command {
	var o lab.Options
	cmd := &cobra.Command{
		Use: "up", Short: "Build a lab: switch + etcd, N nodes with an agent each, K containers per node", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := lab.Up(cmd.Context(), g.options(o))
			if err != nil {
				return err
			}
			if err := l.Status(cmd.Context()).Write(cmd.OutOrStdout()); err != nil {
				return err
			}
			tm := l.Timings()
			fmt.Fprintf(cmd.OutOrStdout(), "\nup in %.2fs (agents ready %.2fs, routes converged %.2fs after start)\n", tm.Total.Seconds(), tm.Ready.Seconds(), tm.Converged.Seconds())
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Nodes, "nodes", lab.DefaultNodes, "number of nodes")
	f.IntVar(&o.Containers, "containers", 0, "containers per node")
	f.StringVar(&o.Backend, "backend", "vxlan", "backend: vxlan, host-gw or udp")
	f.BoolVar(&o.Wire, "wire", false, "NIC-like underlay: TSO/GSO off on the underlay veths, GRO on")
	f.DurationVar(&o.Resync, "resync", lab.DefaultResync, "agents' resync period")
	f.BoolVar(&o.ReleaseOnExit, "release-on-exit", false, "start agents with --release-on-exit")
	binFlags(cmd, &o)
	return cmd
}

func labStatusCmd(g *labFlags) *cobra.Command {
	return &cobra.Command{
		Use: "status", Short: "Show a lab's nodes, agents and containers", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := lab.Load(g.options(lab.Options{}))
			if err != nil {
				return err
			}
			return l.Status(cmd.Context()).Write(cmd.OutOrStdout())
		},
	}
}

func labExecCmd(g *labFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use: "exec NODE[/CONTAINER] -- CMD [ARGS...]", Short: "Run a command inside a node or container namespace",
		Example: "  tulle lab exec node1/c1 -- ip addr show eth0\n  tulle lab exec node2 -- ip route",
		Args:    cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.Load(g.options(lab.Options{}))
			if err != nil {
				return err
			}
			argv := args[1:]
			if argv[0] == "--" { // with interspersed flags off, cobra keeps it
				argv = argv[1:]
			}
			return l.Exec(cmd.Context(), args[0], argv, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().SetInterspersed(false) // flags after NODE belong to CMD
	return cmd
}

func labRestartCmd(g *labFlags) *cobra.Command {
	var kill bool
	cmd := &cobra.Command{
		Use: "restart NODE", Short: "Restart a node's agent (SIGTERM, or SIGKILL with --kill) and wait until it is ready", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.Load(g.options(lab.Options{}))
			if err != nil {
				return err
			}
			d, err := l.Restart(cmd.Context(), args[0], kill)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: agent restarted and ready in %s\n", args[0], d.Round(time.Millisecond))
			return nil
		},
	}
	cmd.Flags().BoolVar(&kill, "kill", false, "kill the agent with SIGKILL (a crash) instead of SIGTERM")
	return cmd
}

func labDownCmd(g *labFlags) *cobra.Command {
	return &cobra.Command{
		Use: "down", Short: "Stop a lab's processes and delete its namespaces and state (also after a crash)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			found, err := lab.Down(cmd.Context(), g.options(lab.Options{}))
			switch {
			case err != nil:
				return err
			case found:
				fmt.Fprintf(cmd.OutOrStdout(), "lab %s removed\n", g.name)
			default:
				fmt.Fprintf(cmd.OutOrStdout(), "no lab %s: nothing to remove\n", g.name)
			}
			return nil
		},
	}
}

func labBenchCmd(g *labFlags) *cobra.Command {
	var b lab.BenchOptions
	var wire bool
	cmd := &cobra.Command{
		Use: "bench", Short: "Measure underlay vs container throughput (iperf3) and RTT per backend and underlay profile", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if wire {
				b.Profiles = []string{lab.ProfileWire}
			}
			b.Lab = g.options(b.Lab)
			if !cmd.Flags().Changed("name") {
				b.Lab.Name = "bench" // not "tl": a running default lab stays untouched
			}
			res, err := lab.Bench(cmd.Context(), b, cmd.ErrOrStderr())
			if len(res) > 0 {
				if werr := lab.WriteBench(cmd.OutOrStdout(), b, res); err == nil {
					err = werr
				}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&b.Backends, "backend", lab.DefaultBenchBackends(), "backends to measure (udp is also set against vxlan)")
	f.StringSliceVar(&b.Profiles, "profile", []string{lab.ProfileVeth, lab.ProfileWire}, "underlay profiles: veth (plain) and wire (NIC-like)")
	f.BoolVar(&wire, "wire", false, "measure only the wire profile (same as --profile wire)")
	f.DurationVar(&b.Duration, "duration", lab.DefaultBenchDuration, "length of each iperf3 run")
	f.IntVar(&b.Repeat, "repeat", lab.DefaultBenchRepeat, "underlay/container pairs of iperf3 runs per measurement (interleaved; the table shows medians)")
	f.IntVar(&b.Pings, "pings", 200, "pings per RTT measurement (at 10ms)")
	f.StringVar(&b.IPerf3, "iperf3", "iperf3", "iperf3 binary")
	binFlags(cmd, &b.Lab)
	return cmd
}

func labScaleCmd(g *labFlags) *cobra.Command {
	var o lab.ScaleOptions
	var lo lab.Options
	cmd := &cobra.Command{
		Use: "scale", Short: "Measure convergence, healing and memory at scale (a cold N-node lab, then 1000 injected peers)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Name, o.TulleBin, o.CNIBin = "sc", lo.TulleBin, lo.CNIBin
			if cmd.Flags().Changed("name") {
				o.Name = g.name
			}
			res, err := lab.Scale(cmd.Context(), o, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			return lab.WriteScale(cmd.OutOrStdout(), res)
		},
	}
	cmd.Flags().IntVar(&o.Peers, "peers", 1000, "leases injected into etcd")
	cmd.Flags().IntVar(&o.ColdNodes, "cold-nodes", 10, "nodes in the cold-start lab")
	cmd.Flags().StringVar(&o.Backend, "backend", "vxlan", "backend: vxlan or udp")
	binFlags(cmd, &lo)
	return cmd
}
