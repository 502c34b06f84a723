package lab

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Names and addresses of lab objects. All of them are pure functions of the
// lab name and the node and container numbers (1-based), so that Down can
// recompute them after a crash.

// underlay is the switch's network; the switch holds .1, node i holds .(10+i).
var underlay = netip.MustParsePrefix("10.250.0.0/24")

func switchNS(lab string) string { return lab + "-sw" }

func nodeNS(lab string, i int) string { return fmt.Sprintf("%s-n%d", lab, i) }

func containerNS(lab string, i, j int) string { return fmt.Sprintf("%s-n%dc%d", lab, i, j) }

func nodeName(i int) string { return fmt.Sprintf("node%d", i) }

func containerName(j int) string { return fmt.Sprintf("c%d", j) }

// switchPort is the switch-side end of node i's underlay veth.
func switchPort(i int) string { return fmt.Sprintf("%s%d", switchPortPrefix, i) }

func switchIP() netip.Addr {
	a := underlay.Addr().As4()
	a[3] = 1
	return netip.AddrFrom4(a)
}

func nodeIP(i int) netip.Addr {
	a := underlay.Addr().As4()
	a[3] = byte(10 + i)
	return netip.AddrFrom4(a)
}

func etcdEndpoint() string {
	return "http://" + netip.AddrPortFrom(switchIP(), etcdClientPort).String()
}

func agentHealthAddr() string {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), agentHealthPort).String()
}

// isLabNS reports whether a namespace name is one a lab of this name creates:
// L-sw, L-n<i> or L-n<i>c<j>. Down uses it to find namespaces a crashed Up
// made but did not record; the exact pattern never matches another lab's
// (the lab name may not contain "-").
func isLabNS(lab, ns string) bool {
	rest, ok := strings.CutPrefix(ns, lab+"-")
	if !ok {
		return false
	}
	if rest == "sw" {
		return true
	}
	rest, ok = strings.CutPrefix(rest, "n")
	if !ok {
		return false
	}
	node, ctr, hasCtr := strings.Cut(rest, "c")
	if !isNumber(node) {
		return false
	}
	return !hasCtr || isNumber(ctr)
}

func isNumber(s string) bool {
	n, err := strconv.Atoi(s)
	return err == nil && n > 0 && strconv.Itoa(n) == s
}

// Target names a namespace in a lab: a node, or a container on a node.
type Target struct {
	// Node is the node number, 1-based.
	Node int
	// Container is the container number on that node, 1-based; 0 means
	// the node itself.
	Container int
}

// ParseTarget parses "node2" or "node2/c1".
func ParseTarget(s string) (Target, error) {
	nodePart, ctrPart, hasCtr := strings.Cut(s, "/")
	n, ok := strings.CutPrefix(nodePart, "node")
	if !ok || !isNumber(n) {
		return Target{}, fmt.Errorf("parse target %q: want nodeN or nodeN/cK, e.g. node1 or node2/c1", s)
	}
	t := Target{}
	t.Node, _ = strconv.Atoi(n)
	if hasCtr {
		c, ok := strings.CutPrefix(ctrPart, "c")
		if !ok || !isNumber(c) {
			return Target{}, fmt.Errorf("parse target %q: container must be cK, e.g. node2/c1", s)
		}
		t.Container, _ = strconv.Atoi(c)
	}
	return t, nil
}

func (t Target) String() string {
	if t.Container == 0 {
		return nodeName(t.Node)
	}
	return nodeName(t.Node) + "/" + containerName(t.Container)
}
