package lab

import (
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"text/tabwriter"
	"time"
)

// Status is a lab's recorded state checked against what is running.
type Status struct {
	Name    string
	Backend string
	Wire    bool
	Created time.Time
	Dir     string
	// EtcdPID is 0 when etcd is not running.
	EtcdPID int
	Nodes   []NodeStatus
}

// NodeStatus is one node's part of Status.
type NodeStatus struct {
	Name   string
	NS     string
	IP     netip.Addr
	Subnet netip.Prefix
	// AgentPID is 0 when the agent is not running.
	AgentPID int
	// Ready is the agent's /readyz answer.
	Ready bool
	// Routes counts tulle routes (protocol 197) in the node: one per peer
	// once converged. With udp (one cluster route into the TUN device) it
	// counts the peers in the engine's table while that route exists.
	Routes     int
	Containers []ContainerState
}

// Write renders s for a terminal.
func (s Status) Write(w io.Writer) error {
	wire := ""
	if s.Wire {
		wire = ", wire underlay"
	}
	etcd := "not running"
	if s.EtcdPID != 0 {
		etcd = fmt.Sprintf("%s (pid %d)", etcdEndpoint(), s.EtcdPID)
	}
	fmt.Fprintf(w, "lab %s: %d nodes, backend %s%s, created %s\n", s.Name, len(s.Nodes), s.Backend, wire, s.Created.Local().Format(time.DateTime))
	fmt.Fprintf(w, "switch %s, etcd %s, state %s\n\n", switchNS(s.Name), etcd, s.Dir)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tNETNS\tPUBLIC IP\tSUBNET\tAGENT\tREADY\tROUTES")
	for _, n := range s.Nodes {
		agent := "down"
		if n.AgentPID != 0 {
			agent = "pid " + strconv.Itoa(n.AgentPID)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\n", n.Name, n.NS, n.IP, orDash(n.Subnet), agent, yesNo(n.Ready), n.Routes, len(s.Nodes)-1)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var ctrs [][2]string
	for _, n := range s.Nodes {
		for _, c := range n.Containers {
			ctrs = append(ctrs, [2]string{n.Name + "/" + c.Name, c.NS + "\t" + orDash(c.IP)})
		}
	}
	if len(ctrs) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	fmt.Fprintln(tw, "CONTAINER\tNETNS\tIP (eth0)")
	for _, c := range ctrs {
		fmt.Fprintf(tw, "%s\t%s\n", c[0], c[1])
	}
	return tw.Flush()
}

func orDash[T interface{ IsValid() bool }](v T) string {
	if !v.IsValid() {
		return "-"
	}
	return fmt.Sprint(v)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
