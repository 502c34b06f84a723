package cni

import (
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/tulle-net/tulle/internal/ipam"
)

// del carries out DEL. It needs neither the subnet file nor the container
// namespace, so teardown works while the agent is down and after the
// runtime has removed the namespace. Port rules and links go first and the
// address last:
// releasing the address of an interface we failed to delete would let the
// next container take an address still in use. Everything already gone
// counts as done.
func (p *Plugin) del(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	att, err := attachment(args)
	if err != nil {
		return err
	}
	store, err := ipam.Open(conf.DataDir, conf.Name)
	if err != nil {
		return withCode(types.ErrIOFailure, err)
	}
	host, err := p.openHost()
	if err != nil {
		return err
	}
	defer host.close()

	// Published ports go first: they point at the address released last.
	if err := removePorts(host, conf.DataDir, conf.Name, func(a ipam.Attachment) bool { return a == att }); err != nil {
		return err
	}
	if args.Netns != "" {
		cont, err := openNS(args.Netns)
		switch {
		case isNSGone(err):
			// The namespace and the container end went away together.
		case err != nil:
			return err
		default:
			same, serr := sameNS(cont, host)
			if serr == nil && !same {
				serr = deleteVeth(cont.h, att.IfName)
			}
			cont.close()
			if serr != nil {
				return fmt.Errorf("delete %s in netns %s: %w", att.IfName, args.Netns, serr)
			}
		}
	}
	// Deleting the container end took the host end with it, unless the
	// container end was gone already (namespace deleted, or a failed ADD).
	if err := deleteVeth(host.h, HostVethName(att.ContainerID, att.IfName)); err != nil {
		return err
	}
	if _, err := store.Release(att); err != nil {
		return withCode(types.ErrIOFailure, err)
	}
	return nil
}
