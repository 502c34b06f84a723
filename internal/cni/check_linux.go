package cni

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

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
	hostName := HostVethName(att.ContainerID, att.IfName)
	facts, err := prevAttachment(conf, att.IfName, args.Netns, hostName)
	if err != nil {
		return err
	}
	prev := facts.addr
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
	if want := facts.contMAC; want != "" && !strings.EqualFold(c.Attrs().HardwareAddr.String(), want) {
		return fmt.Errorf("check %s: mac is %s, prevResult says %s", where, c.Attrs().HardwareAddr, want)
	}
	for _, dst := range s.routes {
		r, err := routeVia(cont.h, c, dst, s.pool.Gateway)
		switch {
		case err != nil:
			return fmt.Errorf("check %s: %w", where, err)
		case r == nil:
			return fmt.Errorf("check %s: route %s via %s not found", where, dst, s.pool.Gateway)
		case r.MTU != s.mtu || r.AdvMSS != routeAdvMSS(s.mtu):
			return fmt.Errorf("check %s: route %s via %s has mtu %d advmss %d, want mtu %d advmss %d",
				where, dst, s.pool.Gateway, r.MTU, r.AdvMSS, s.mtu, routeAdvMSS(s.mtu))
		}
	}

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
	case facts.hostMAC != "" && !strings.EqualFold(hl.Attrs().HardwareAddr.String(), facts.hostMAC):
		return fmt.Errorf("check host veth %s: mac is %s, prevResult says %s", hostName, hl.Attrs().HardwareAddr, facts.hostMAC)
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
	return checkPorts(host, conf.DataDir, conf.Name, s.bridge, att, addr.Addr(), s.pool.Subnet, conf.ports)
}

// prevFacts is what prevResult says about the attachment.
type prevFacts struct {
	addr    netip.Prefix // the container interface's IPv4 address
	contMAC string       // its MAC ("" if prevResult has none)
	hostMAC string       // the host veth's MAC ("" if not listed)
}

// prevResult parses the config's prevResult; nil when there is none (ADD of
// the first plugin in a chain).
func prevResult(conf *NetConf) (*current.Result, error) {
	if conf.RawPrevResult == nil {
		return nil, nil
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, withCode(types.ErrDecodingFailure, fmt.Errorf("network config: field \"prevResult\": %w", err))
	}
	res, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return nil, withCode(types.ErrDecodingFailure, fmt.Errorf("network config: field \"prevResult\": %w", err))
	}
	return res, nil
}

// prevAttachment returns what prevResult gives the container interface
// ifName in sandbox and its host veth hostName. CHECK without prevResult
// is a runtime error (CNI spec, "CHECK").
func prevAttachment(conf *NetConf, ifName, sandbox, hostName string) (prevFacts, error) {
	if conf.RawPrevResult == nil {
		return prevFacts{}, withCode(types.ErrInvalidNetworkConfig, errors.New(`network config: field "prevResult" is missing: CHECK needs ADD's result`))
	}
	res, err := prevResult(conf)
	if err != nil {
		return prevFacts{}, err
	}
	var f prevFacts
	for _, iface := range res.Interfaces {
		if iface.Name == hostName && iface.Sandbox == "" {
			f.hostMAC = iface.Mac
		}
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
			f.addr, f.contMAC = p, iface.Mac
			return f, nil
		}
	}
	return prevFacts{}, withCode(types.ErrInvalidNetworkConfig, fmt.Errorf(
		"network config: field \"prevResult\": no IPv4 address for interface %s in sandbox %s", ifName, sandbox))
}
