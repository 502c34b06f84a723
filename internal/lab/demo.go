package lab

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// DemoOptions configure Demo.
type DemoOptions struct {
	// Lab is the lab to build (optional: Name defaults to "demo", Nodes to
	// 3 and Containers to 2).
	Lab Options
	// Keep leaves the lab running instead of tearing it down.
	Keep bool
}

func (o DemoOptions) withDefaults() DemoOptions {
	if o.Lab.Name == "" {
		o.Lab.Name = DefaultDemoName
	}
	if o.Lab.Nodes == 0 {
		o.Lab.Nodes = DefaultNodes
	}
	if o.Lab.Containers == 0 {
		o.Lab.Containers = 2
	}
	return o
}

// Report is what Demo found.
type Report struct {
	Lab     string
	Backend string
	// Nodes and containers as the lab recorded them.
	Nodes   []NodeState
	Timings Timings
	// Pairs has one entry per ordered pair of distinct containers.
	Pairs []PairResult
	// Teardown is how long Down took (0 with Keep).
	Teardown time.Duration
}

// PairResult is the reachability of one container from another.
type PairResult struct {
	From, To string // "node1/c1"
	// Ping: an ICMP echo reply came back; RTT is the first one's.
	Ping bool
	RTT  time.Duration
	// TCP: a TCP connection was accepted and echoed a line back.
	TCP bool
	// Err says what failed, empty when both worked.
	Err string
}

// OK reports whether ping and TCP both worked.
func (p PairResult) OK() bool { return p.Ping && p.TCP }

// Failed counts the pairs that did not fully work.
func (r Report) Failed() int {
	n := 0
	for _, p := range r.Pairs {
		if !p.OK() {
			n++
		}
	}
	return n
}

// UnreachableError is returned by Demo when some pair failed; its exit code
// is 2 (1 is for "the demo could not run at all").
type UnreachableError struct {
	Failed, Total int
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("demo: %d of %d container pairs cannot reach each other", e.Failed, e.Total)
}

// ExitCode implements the exit code contract of cmd/tulle.
func (e *UnreachableError) ExitCode() int { return 2 }

// writeDemoHeader prints what is about to be built.
func writeDemoHeader(w io.Writer, o Options) {
	fmt.Fprintf(w, "tulle demo: %d nodes, backend %s, %d containers per node (lab %q)\n", o.Nodes, o.Backend, o.Containers, o.Name)
	fmt.Fprintf(w, "Every node is a network namespace running a real `tulle agent` process; every\n")
	fmt.Fprintf(w, "container is a namespace attached by the real tulle CNI plugin.\n\n")
}

// writeBuildSteps prints how long each step of Up took.
func writeBuildSteps(w io.Writer, st State, tm Timings) {
	nc := 0
	for _, n := range st.Nodes {
		nc += len(n.Containers)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  underlay\tswitch %s: bridge %s with %s/%d, %d node veths (MTU %d)\t%s\n",
		switchNS(st.Name), switchBridgeName, switchIP(), underlay.Bits(), len(st.Nodes), underlayMTU, secs(tm.Underlay))
	fmt.Fprintf(tw, "  etcd\t%s in %s, network %s, a /%d per node\t%s\n", etcdEndpoint(), switchNS(st.Name), DefaultNetwork, DefaultSubnetLen, secs(tm.Etcd))
	fmt.Fprintf(tw, "  agents\t%d started, every /readyz answered\t%s\n", len(st.Nodes), secs(tm.Ready))
	fmt.Fprintf(tw, "  routes\tevery node has a route to every other node's subnet\t%s\n", secs(tm.Converged))
	fmt.Fprintf(tw, "  containers\t%d attached through the plugin\t%s\n", nc, secs(tm.Containers))
	_ = tw.Flush()
	fmt.Fprintln(w)
}

// writeInventory prints the nodes and containers.
func writeInventory(w io.Writer, nodes []NodeState) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tNETNS\tPUBLIC IP\tSUBNET")
	for _, n := range nodes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n.Name, n.NS, n.IP, orDash(n.Subnet))
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(tw, "CONTAINER\tNETNS\tIP (eth0)")
	for _, n := range nodes {
		for _, c := range n.Containers {
			fmt.Fprintf(tw, "%s/%s\t%s\t%s\n", n.Name, c.Name, c.NS, orDash(c.IP))
		}
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
}

// writeMatrix prints the reachability matrix: a row per source, a column
// per destination.
func writeMatrix(w io.Writer, names []string, pairs []PairResult) {
	cell := map[[2]string]PairResult{}
	for _, p := range pairs {
		cell[[2]string{p.From, p.To}] = p
	}
	fmt.Fprintln(w, "Reachability, from row to column (ok = ping and TCP echo both work):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "FROM \\ TO")
	for _, n := range names {
		fmt.Fprint(tw, "\t"+n)
	}
	fmt.Fprintln(tw)
	for _, from := range names {
		fmt.Fprint(tw, from)
		for _, to := range names {
			fmt.Fprint(tw, "\t"+matrixCell(from, to, cell))
		}
		fmt.Fprintln(tw)
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
}

func matrixCell(from, to string, cell map[[2]string]PairResult) string {
	if from == to {
		return "-"
	}
	p, ok := cell[[2]string{from, to}]
	switch {
	case !ok:
		return "?"
	case p.OK():
		return "ok"
	case !p.Ping && !p.TCP:
		return "FAIL"
	case !p.Ping:
		return "no-ping"
	default:
		return "no-tcp"
	}
}

// writeVerdict prints the summary line and the failures.
func writeVerdict(w io.Writer, r Report) {
	failed := r.Failed()
	if failed == 0 {
		var worst time.Duration
		for _, p := range r.Pairs {
			worst = max(worst, p.RTT)
		}
		fmt.Fprintf(w, "All %d pairs reachable (ping and TCP); slowest first ping reply %s.\n", len(r.Pairs), worst.Round(time.Microsecond))
		return
	}
	fmt.Fprintf(w, "%d of %d pairs FAILED:\n", failed, len(r.Pairs))
	for _, p := range r.Pairs {
		if !p.OK() {
			fmt.Fprintf(w, "  %s -> %s: %s\n", p.From, p.To, strings.TrimSpace(p.Err))
		}
	}
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }
