package agent

import (
	"context"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tulle-net/tulle/internal/logkey"
	"github.com/tulle-net/tulle/internal/plan"
)

// watchKernel triggers an immediate reconcile when one of our links or
// routes is deleted behind our back, so drift heals in milliseconds rather
// than at the next resync (which remains the safety net). Our own deletes
// trigger one extra, change-free reconcile; triggers coalesce.
func (a *Agent) watchKernel(ctx context.Context) error {
	links := make(chan netlink.LinkUpdate, 64)
	routes := make(chan netlink.RouteUpdate, 256)
	done := make(chan struct{})
	defer close(done)
	lerr := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{})
	rerr := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{})
	if lerr != nil || rerr != nil {
		// Not fatal: the periodic resync still heals drift.
		a.log.Warn("kernel change notifications unavailable; relying on periodic resync", logkey.Err, firstErr(lerr, rerr))
		<-ctx.Done()
		return ctx.Err()
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case u, ok := <-links:
			if !ok {
				links = nil
				continue
			}
			if u.Header.Type == unix.RTM_DELLINK && isOurs(u.Attrs().Name) {
				a.kick()
			}
		case u, ok := <-routes:
			if !ok {
				routes = nil
				continue
			}
			if u.Type == unix.RTM_DELROUTE && u.Protocol == plan.RouteProtocol {
				a.kick()
			}
		}
	}
}

func isOurs(name string) bool {
	return name == plan.BridgeName || name == plan.TUNName || strings.HasPrefix(name, plan.VXLANPrefix)
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
