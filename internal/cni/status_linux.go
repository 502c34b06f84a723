package cni

import (
	"fmt"
	"net/netip"
)

// checkFresh tells a stale subnet file from a live one: the agent gives
// the bridge the gateway address of the subnet it holds, so a bridge that
// exists without the file's gateway means the file describes a lease the
// node no longer has. A missing bridge is not stale: ADD creates it.
func (p *Plugin) checkFresh(conf *NetConf, s settings) error {
	host, err := p.openHost()
	if err != nil {
		return err
	}
	defer host.close()
	br, err := linkByName(host.h, s.bridge)
	if err != nil || br == nil {
		return err
	}
	gw := netip.PrefixFrom(s.pool.Gateway, s.pool.Subnet.Bits())
	ok, err := hasAddr(host.h, br, gw)
	if err != nil {
		return fmt.Errorf("check bridge %s: %w", s.bridge, err)
	}
	if !ok {
		return fmt.Errorf("subnet file %s is stale: it says gateway %s, but bridge %s does not carry it; is 'tulle agent' running and done with its setup? It rewrites the file when its lease changes",
			conf.SubnetFile, gw, s.bridge)
	}
	return nil
}
