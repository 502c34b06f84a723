package lab

import (
	"context"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/tulle-net/tulle/internal/config"
	"github.com/tulle-net/tulle/internal/plan"
)

// Status checks the recorded processes and asks every agent whether it is
// ready. It reads only; a dead agent is reported, not restarted.
func (l *Lab) Status(ctx context.Context) Status {
	st := l.State()
	s := Status{Name: st.Name, Backend: st.Backend, Wire: st.Wire, Created: st.Created, Dir: st.Dir}
	if l.procs.alive(st.Etcd) {
		s.EtcdPID = st.Etcd.PID
	}
	for _, n := range st.Nodes {
		ns := NodeStatus{Name: n.Name, NS: n.NS, IP: n.IP, Subnet: n.Subnet, Containers: n.Containers}
		if l.procs.alive(n.Agent) {
			ns.AgentPID = n.Agent.PID
			c := nsHTTPClient(n.NS)
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			ns.Ready, _ = httpOK(rctx, c, "http://"+agentHealthAddr()+"/readyz")
			cancel()
			c.CloseIdleConnections()
		}
		if h, err := handleAt(n.NS); err == nil {
			routes, _ := h.RouteListFiltered(netlink.FAMILY_V4,
				&netlink.Route{Protocol: plan.RouteProtocol, Table: syscall.RT_TABLE_MAIN},
				netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
			ns.Routes = len(routes)
			if st.Backend == config.BackendUDP {
				// One cluster route; the peers are in the engine.
				ns.Routes = 0
				if ok, _ := hasUDPRoute(h); ok {
					ns.Routes = udpPeerCount(n)
				}
			}
			h.Close()
		}
		s.Nodes = append(s.Nodes, ns)
	}
	return s
}
