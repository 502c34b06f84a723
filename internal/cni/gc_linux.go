package cni

import (
	"errors"
	"fmt"
	"maps"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/tulle-net/tulle/internal/ipam"
)

// gc carries out GC: it frees every allocation whose attachment is not in
// cni.dev/valid-attachments (or its draft name cni.dev/attachments), unless
// it is younger than gcGrace, and deletes the host veth and the port rules
// such an attachment may have left. GC without either key is refused: reading a missing list
// as "nothing is valid" would tear down every container on the node.
func (p *Plugin) gc(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	if !conf.HasAttachments {
		return withCode(types.ErrInvalidNetworkConfig, errors.New(
			`network config: field "cni.dev/valid-attachments" is missing: GC needs the list of valid attachments`))
	}
	valid := map[ipam.Attachment]bool{}
	for _, a := range append(conf.ValidAttachments, conf.LegacyAttachments...) {
		valid[ipam.Attachment{ContainerID: a.ContainerID, IfName: a.IfName}] = true
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

	freed, err := store.GC(func(a ipam.Attachment) bool { return valid[a] }, p.now().Add(-gcGrace))
	var errs []error
	if err != nil {
		errs = append(errs, withCode(types.ErrIOFailure, err))
	}
	// Port rules of this network go unless their attachment is valid or
	// still holds an allocation (one younger than gcGrace: an ADD in
	// flight).
	keep := maps.Clone(valid)
	if recs, err := store.List(); err != nil {
		errs = append(errs, withCode(types.ErrIOFailure, err))
	} else {
		for _, r := range recs {
			keep[r.Attachment] = true
		}
		if err := removePorts(host, conf.DataDir, conf.Name, func(a ipam.Attachment) bool { return !keep[a] }); err != nil {
			errs = append(errs, fmt.Errorf("gc port rules: %w", err))
		}
	}
	for _, r := range freed {
		if r.ContainerID == "" || r.IfName == "" {
			continue // an unreadable record: no veth name to derive
		}
		if err := deleteVeth(host.h, HostVethName(r.ContainerID, r.IfName)); err != nil {
			errs = append(errs, fmt.Errorf("gc %s: %w", r.Attachment, err))
		}
	}
	return errors.Join(errs...)
}
