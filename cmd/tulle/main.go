// Command tulle is the tulle node agent, datastore helper, lab and runner.
// Each subcommand lives in its own file and only parses flags, calls one
// internal constructor under a signal context and maps errors to exit codes.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "tulle:", err)
		var ec exitCoder
		if errors.As(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		os.Exit(1)
	}
}

// exitCoder lets a command choose its exit code (e.g. demo: 2 when a pair
// fails to connect).
type exitCoder interface{ ExitCode() int }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "tulle",
		Short:         "tulle: a container network fabric",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newAgentCmd(),
		newEtcdCmd(),
		newNetworkCmd(),
		newLeasesCmd(),
		newLabCmd(),
		newDemoCmd(),
		newRunCmd(), newPsCmd(), newExecCmd(), newLogsCmd(), newStopCmd(), newRmCmd(),
		newRootfsCmd(), newNetnsCmd(), newLinksCmd(), newMonitorCmd(),
	)
	return root
}
