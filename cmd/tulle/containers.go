package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/tulle-net/tulle/internal/runner"
)

func newPsCmd() *cobra.Command {
	var g runnerFlags
	var asJSON bool
	cmd := &cobra.Command{
		Use: "ps", Short: "List containers (running and exited)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := g.runner()
			if err != nil {
				return err
			}
			states, err := r.List(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if states == nil {
					states = []*runner.State{}
				}
				return enc.Encode(states)
			}
			return runner.WritePS(cmd.OutOrStdout(), states)
		},
	}
	g.add(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print each container's full state as JSON")
	return cmd
}

func newExecCmd() *cobra.Command {
	var g runnerFlags
	cmd := &cobra.Command{
		Use: "exec NAME -- CMD [ARGS...]", Short: "Run a command in a running container", Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.runner()
			if err != nil {
				return err
			}
			return r.Exec(cmd.Context(), args[0], cmdArgs(args[1:]), runner.Stdio{In: os.Stdin, Out: cmd.OutOrStdout(), Err: cmd.ErrOrStderr()})
		},
	}
	cmd.Flags().SetInterspersed(false)
	g.add(cmd)
	return cmd
}

func newLogsCmd() *cobra.Command {
	var g runnerFlags
	cmd := &cobra.Command{
		Use: "logs NAME", Short: "Print a container's output (stdout and stderr)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.runner()
			if err != nil {
				return err
			}
			return r.Logs(cmd.Context(), args[0], cmd.OutOrStdout())
		},
	}
	g.add(cmd)
	return cmd
}

func newStopCmd() *cobra.Command {
	var g runnerFlags
	var seconds int
	cmd := &cobra.Command{
		Use: "stop NAME...", Short: "Stop containers: SIGTERM, then SIGKILL after --time", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.runner()
			if err != nil {
				return err
			}
			for _, name := range args {
				st, err := r.Stop(cmd.Context(), name, time.Duration(seconds)*time.Second)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", name, st.StatusText())
			}
			return nil
		},
	}
	g.add(cmd)
	cmd.Flags().IntVarP(&seconds, "time", "t", 10, "seconds to wait after SIGTERM before SIGKILL")
	return cmd
}

func newRmCmd() *cobra.Command {
	var g runnerFlags
	var force bool
	cmd := &cobra.Command{
		Use: "rm [-f] NAME...", Short: "Remove containers: runc state, cgroups, netns, address, veth, port rules, state", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.runner()
			if err != nil {
				return err
			}
			for _, name := range args {
				if err := r.Remove(cmd.Context(), name, force); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), name)
			}
			return nil
		},
	}
	g.add(cmd)
	cmd.Flags().BoolVarP(&force, "force", "f", false, "kill a running container first")
	return cmd
}

func newRootfsCmd() *cobra.Command {
	var busybox string
	cmd := &cobra.Command{Use: "rootfs", Short: "Make container root filesystems"}
	bb := &cobra.Command{
		Use: "busybox DIR", Short: "Make a rootfs in DIR from the installed busybox-static", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := runner.BusyboxRootfs(args[0], busybox); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "rootfs %s made from %s\n", args[0], busybox)
			return nil
		},
	}
	bb.Flags().StringVar(&busybox, "busybox", runner.DefaultBusybox, "static busybox binary")
	cmd.AddCommand(bb)
	return cmd
}
