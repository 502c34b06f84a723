package main

import (
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tulle-net/tulle/internal/lease"
)

func newLeasesCmd() *cobra.Command {
	var ef etcdFlags
	cmd := &cobra.Command{
		Use:   "leases",
		Short: "List node subnet leases: node, subnet, public IP, backend and its data (vxlan VTEP MAC, udp port), expiry",
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
			fmt.Fprintln(w, "NODE\tSUBNET\tPUBLIC IP\tBACKEND\tBACKEND DATA\tEXPIRES IN")
			for _, l := range leases {
				exp := "-"
				if !l.Expiry.IsZero() {
					exp = time.Until(l.Expiry).Round(time.Second).String()
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", l.Node, l.Subnet, l.PublicIP, l.BackendType, backendData(l.BackendData), exp)
			}
			return w.Flush()
		},
	}
	ef.register(cmd)
	return cmd
}

// backendData renders what a lease carries for its backend: the VTEP MAC
// (vxlan), the port (udp), or "-".
func backendData(d lease.BackendData) string {
	var parts []string
	if d.VtepMAC != "" {
		parts = append(parts, "vtepMAC="+d.VtepMAC)
	}
	if d.Port != 0 {
		parts = append(parts, "port="+strconv.Itoa(d.Port))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}
