package main

import (
	"fmt"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/tulle-net/tulle/internal/runner"
)

func newNetnsCmd() *cobra.Command {
	var g runnerFlags
	cmd := &cobra.Command{Use: "netns", Short: "Containers' network namespaces"}
	g.add(cmd)
	ls := &cobra.Command{
		Use: "ls", Short: "List every container network namespace with its containers", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := g.runner()
			if err != nil {
				return err
			}
			ents, err := r.Netns(cmd.Context())
			if err != nil {
				return err
			}
			return runner.WriteNetns(cmd.OutOrStdout(), ents)
		},
	}
	ex := &cobra.Command{
		Use: "exec NAME -- CMD [ARGS...]", Short: "Run a host program inside a container's network namespace", Args: cobra.MinimumNArgs(2),
		Example: "  tulle netns exec web -- ss -tlnp\n  tulle netns exec web -- ping -c1 10.244.2.3",
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.runner()
			if err != nil {
				return err
			}
			return r.NetnsExec(cmd.Context(), args[0], cmdArgs(args[1:]), runner.Stdio{In: os.Stdin, Out: cmd.OutOrStdout(), Err: cmd.ErrOrStderr()})
		},
	}
	ex.Flags().SetInterspersed(false)
	cmd.AddCommand(ls, ex)
	return cmd
}

func newLinksCmd() *cobra.Command {
	var g runnerFlags
	cmd := &cobra.Command{
		Use:   "links [IFINDEX]",
		Short: "Interfaces of this namespace and every container's, with veth peers across namespaces",
		Long: "Without IFINDEX: every interface. With IFINDEX: which namespace holds an interface with that index\n" +
			"(e.g. the host end of a container's eth0: `tulle exec C -- cat /sys/class/net/eth0/iflink`).",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			idx := 0
			if len(args) == 1 {
				n, err := strconv.Atoi(args[0])
				if err != nil || n <= 0 {
					return fmt.Errorf("IFINDEX %q: want a positive interface index", args[0])
				}
				idx = n
			}
			r, err := g.runner()
			if err != nil {
				return err
			}
			links, err := r.Links(cmd.Context(), idx)
			if err != nil {
				return err
			}
			return runner.WriteLinks(cmd.OutOrStdout(), links)
		},
	}
	g.add(cmd)
	return cmd
}
