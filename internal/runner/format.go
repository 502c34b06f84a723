package runner

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// WritePS writes containers as `tulle ps` shows them.
func WritePS(w io.Writer, states []*State) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tID\tSTATUS\tPID\tNETWORK\tIP\tPORTS\tCOMMAND")
	for _, s := range states {
		pid, ip, ports := "-", "-", "-"
		if s.Status == StatusRunning {
			pid = fmt.Sprint(s.Pid)
		}
		if s.IP != "" && s.Status != StatusExited {
			ip = s.IP
		}
		if len(s.Ports) > 0 && s.Status != StatusExited {
			var ps []string
			for _, p := range s.Ports {
				ps = append(ps, p.String())
			}
			ports = strings.Join(ps, ",")
		}
		fmt.Fprintf(tw, "%s\t%.12s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.ID, s.StatusText(), pid, s.Network, ip, ports, shortCmd(s.Args))
	}
	return tw.Flush()
}

func shortCmd(args []string) string {
	s := strings.Join(args, " ")
	if len(s) > 40 {
		s = s[:37] + "..."
	}
	return fmt.Sprintf("%q", s)
}

// WriteNetns writes `tulle netns ls`.
func WriteNetns(w io.Writer, ents []NetnsEntry) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NETNS\tCONTAINERS\tSTATUS\tIP\tPATH")
	for _, e := range ents {
		path, status, ip := e.Path, e.Status, e.IP
		if path == "" {
			path = hostNetns
		}
		if status == "" {
			status = "-"
		}
		if ip == "" {
			ip = "-"
		}
		fmt.Fprintf(tw, "net:[%d]\t%s\t%s\t%s\t%s\n", e.Inode, strings.Join(e.Containers, ","), status, ip, path)
	}
	return tw.Flush()
}

// WriteLinks writes `tulle links`.
func WriteLinks(w io.Writer, links []Link) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NETNS\tIFINDEX\tIFNAME\tTYPE\tMASTER\tADDRESS\tPEER")
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	for _, l := range links {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", l.Netns, l.Index, l.Name, l.Type, dash(l.Master), dash(l.Address), dash(l.Peer))
	}
	return tw.Flush()
}
