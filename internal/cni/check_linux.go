package cni

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/tulle-net/tulle/internal/ipam"
	"github.com/tulle-net/tulle/internal/ipnet"
)

// check carries out CHECK: the allocation, the container interface (veth,
// up, MTU, address, routes), and the host end (veth peer of it, up, on the
// bridge, hairpin as configured) and the published ports must all be as ADD
// left them, and agree with prevResult. It changes nothing.
func (p *Plugin) check(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	att, err := attachment(args)
	if err != nil {
		return err
	}
	if err := requireNetns(args); err != nil {
		return err
	}
	prev, err := prevAddr(conf, att.IfName, args.Netns)
	if err != nil {
		return err
	}
	info, err := readSubnetFile(conf)
	if err != nil {
		return err
	}
	s, err := resolve(conf, info)
	if err != nil {
		return err
	}
	store, err := ipam.Open(conf.DataDir, conf.Name)
	if err != nil {
		return withCode(types.ErrIOFailure, err)
	}
	held, err := store.Lookup(att)
	if err != nil {
		return withCode(types.ErrIOFailure, err)
	}
	if !slices.Contains(held, prev.Addr()) {
		return fmt.Errorf("check %s: address %s from prevResult is not allocated to it (it holds %v)", att, prev.Addr(), held)
	}
	addr := s.pool.Prefix(prev.Addr())
	if addr != prev {
		return fmt.Errorf("check %s: prevResult address %s does not match the node subnet %s", att, prev, s.pool.Subnet)
	}

	host, err := p.openHost()
	if err != nil {
		return err
	}
	defer host.close()
	cont, err := p.openContainer(args.Netns, host)
	if err != nil {
		return err
	}
	defer cont.close()

	where := fmt.Sprintf("%s in netns %s", att.IfName, args.Netns)
	c, err := linkByName(cont.h, att.IfName)
	switch {
	case err != nil:
		return fmt.Errorf("check %s: %w", where, err)
	case c == nil:
		return fmt.Errorf("check %s: interface not found", where)
	case c.Type() != "veth":
		return fmt.Errorf("check %s: interface is a %s, want veth", where, c.Type())
	case c.Attrs().Flags&net.FlagUp == 0:
		return fmt.Errorf("check %s: interface is down", where)
	case c.Attrs().MTU != s.mtu:
		return fmt.Errorf("check %s: mtu is %d, want %d", where, c.Attrs().MTU, s.mtu)
	}
	if ok, err := hasAddr(cont.h, c, addr); err != nil {
		return fmt.Errorf("check %s: %w", where, err)
	} else if !ok {
		return fmt.Errorf("check %s: address %s not found", where, addr)
	}
	for _, dst := range s.routes {
		if ok, err := hasRoute(cont.h, c, dst, s.pool.Gateway); err != nil {
			return fmt.Errorf("check %s: %w", where, err)
		} else if !ok {
			return fmt.Errorf("check %s: route %s via %s not found", where, dst, s.pool.Gateway)
		}
	}

	hostName := HostVethName(att.ContainerID, att.IfName)
	hl, err := linkByName(host.h, hostName)
	switch {
	case err != nil:
		return fmt.Errorf("check host veth %s: %w", hostName, err)
	case hl == nil:
		return fmt.Errorf("check host veth %s: not found", hostName)
	case !isPeer(c, hl):
		return fmt.Errorf("check host veth %s: it is not the peer of %s", hostName, where)
	case hl.Attrs().Flags&net.FlagUp == 0:
		return fmt.Errorf("check host veth %s: it is down", hostName)
	}
	br, err := linkByName(host.h, s.bridge)
	switch {
	case err != nil:
		return fmt.Errorf("check bridge %s: %w", s.bridge, err)
	case br == nil || br.Type() != "bridge":
		return fmt.Errorf("check bridge %s: not found", s.bridge)
	case hl.Attrs().MasterIndex != br.Attrs().Index:
		return fmt.Errorf("check host veth %s: it is not attached to bridge %s", hostName, s.bridge)
	}
	// bridge -d link show dev $hostName
	pi, err := host.h.LinkGetProtinfo(hl)
	if err != nil {
		return fmt.Errorf("check host veth %s: read bridge port flags: %w", hostName, err)
	}
	if pi.Hairpin != s.hairpin {
		return fmt.Errorf("check host veth %s: hairpin is %t, want %t", hostName, pi.Hairpin, s.hairpin)
	}
	return checkPorts(host, conf.DataDir, conf.Name, att, addr.Addr(), s.pool.Subnet, conf.ports)
}

// prevAddr returns the address prevResult gives the container interface.
// CHECK without prevResult is a runtime error (CNI spec, "CHECK").
func prevAddr(conf *NetConf, ifName, sandbox string) (netip.Prefix, error) {
	if conf.RawPrevResult == nil {
		return netip.Prefix{}, withCode(types.ErrInvalidNetworkConfig, errors.New(`network config: field "prevResult" is missing: CHECK needs ADD's result`))
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return netip.Prefix{}, withCode(types.ErrDecodingFailure, fmt.Errorf("network config: field \"prevResult\": %w", err))
	}
	res, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return netip.Prefix{}, withCode(types.ErrDecodingFailure, fmt.Errorf("network config: field \"prevResult\": %w", err))
	}
	for _, ipc := range res.IPs {
		if ipc.Interface == nil || *ipc.Interface < 0 || *ipc.Interface >= len(res.Interfaces) {
			continue
		}
		iface := res.Interfaces[*ipc.Interface]
		if iface.Name != ifName || iface.Sandbox != sandbox {
			continue
		}
		if p, ok := ipnet.Prefix(&ipc.Address); ok && p.Addr().Is4() {
			return p, nil
		}
	}
	return netip.Prefix{}, withCode(types.ErrInvalidNetworkConfig, fmt.Errorf(
		"network config: field \"prevResult\": no IPv4 address for interface %s in sandbox %s", ifName, sandbox))
}
