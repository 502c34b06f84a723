package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/tulle-net/tulle/internal/config"
	"github.com/tulle-net/tulle/internal/subnet"
)

func newNetworkCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "network", Short: "Show or set the cluster network config"}
	var ef, sf etcdFlags
	var file string
	set := &cobra.Command{
		Use:   "set -f net.json",
		Short: "Validate and store the network config (- reads stdin)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := readInput(cmd, file)
			if err != nil {
				return err
			}
			cfg, err := config.Parse(b)
			if err != nil {
				src := file
				if src == "-" {
					src = "stdin"
				}
				return fmt.Errorf("%s: %w", src, err)
			}
			m, closer, err := manager(cmd, &sf)
			if err != nil {
				return err
			}
			defer closer()
			if err := m.SetConfig(cmd.Context(), cfg); err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(append(cfg.Marshal(), '\n'))
			return err
		},
	}
	set.Flags().StringVarP(&file, "file", "f", "", "network config JSON file (required)")
	sf.register(set)
	show := &cobra.Command{
		Use:   "show",
		Short: "Print the stored network config",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, closer, err := manager(cmd, &ef)
			if err != nil {
				return err
			}
			defer closer()
			cfg, err := m.GetConfig(cmd.Context())
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(append(cfg.Marshal(), '\n'))
			return err
		},
	}
	ef.register(show)
	cmd.AddCommand(set, show)
	return cmd
}

func readInput(cmd *cobra.Command, file string) ([]byte, error) {
	switch file {
	case "":
		return nil, fmt.Errorf("-f FILE is required (- for stdin)")
	case "-":
		return io.ReadAll(cmd.InOrStdin())
	}
	return os.ReadFile(file)
}

// manager dials etcd and returns a read/write manager (its node name is
// only used for acquiring, which these commands never do).
func manager(cmd *cobra.Command, ef *etcdFlags) (*subnet.Manager, func(), error) {
	cli, err := ef.dial(cmd.Context())
	if err != nil {
		return nil, nil, err
	}
	m, err := subnet.New(subnet.Options{Client: cli, Cluster: ef.cluster, Node: "tulle-cli"})
	if err != nil {
		cli.Close()
		return nil, nil, err
	}
	return m, func() { cli.Close() }, nil
}
