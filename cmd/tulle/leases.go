package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func newLeasesCmd() *cobra.Command {
	var ef etcdFlags
	cmd := &cobra.Command{
		Use:   "leases",
		Short: "List node subnet leases: node, subnet, public IP, backend, VTEP MAC, expiry",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, closer, err := manager(cmd, &ef)
			if err != nil {
				return err
			}
			defer closer()
			leases, _, err := m.ListWithExpiry(cmd.Context())
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NODE\tSUBNET\tPUBLIC IP\tBACKEND\tVTEP MAC\tEXPIRES IN")
			for _, l := range leases {
				exp := "-"
				if !l.Expiry.IsZero() {
					exp = time.Until(l.Expiry).Round(time.Second).String()
				}
				mac := l.BackendData.VtepMAC
				if mac == "" {
					mac = "-"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", l.Node, l.Subnet, l.PublicIP, l.BackendType, mac, exp)
			}
			return w.Flush()
		},
	}
	ef.register(cmd)
	return cmd
}
