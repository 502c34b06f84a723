package lab

import (
	"fmt"
	"net/netip"

	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"

	"github.com/tulle-net/tulle/internal/netns"
)

// The underlay: a bridge in the switch namespace and one veth per node.
// Every netlink call goes through a handle bound to a lab namespace.

// setupSwitch makes the switch namespace's bridge and gives it the switch
// address, where etcd listens.
//
//	ip -n L-sw link set lo up
//	ip -n L-sw link add br0 type bridge; ip -n L-sw addr add 10.250.0.1/24 dev br0
//	ip -n L-sw link set br0 up
func setupSwitch(ns string) error {
	h, err := handleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := setUp(h, "lo"); err != nil {
		return fmt.Errorf("setup switch %s: %w", ns, err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: switchBridgeName, MTU: underlayMTU}}
	if err := h.LinkAdd(br); err != nil {
		return fmt.Errorf("add bridge %s in netns %s: %w", switchBridgeName, ns, err)
	}
	if err := addAddr(h, switchBridgeName, netip.PrefixFrom(switchIP(), underlay.Bits())); err != nil {
		return fmt.Errorf("setup switch %s: %w", ns, err)
	}
	if err := setUp(h, switchBridgeName); err != nil {
		return fmt.Errorf("setup switch %s: %w", ns, err)
	}
	return nil
}

// setupNodeLink plugs node i into the switch: a veth created in the switch
// namespace with its peer placed straight into the node namespace, so it
// never exists in the root namespace.
//
//	ip -n L-sw link add nI mtu 1500 master br0 type veth peer name ul0 netns L-nI
//	ip -n L-nI addr add 10.250.0.(10+I)/24 dev ul0; ip -n L-nI link set ul0 up
func setupNodeLink(swNS, ns string, i int, wire bool) error {
	hs, err := handleAt(swNS)
	if err != nil {
		return err
	}
	defer hs.Close()
	hn, err := handleAt(ns)
	if err != nil {
		return err
	}
	defer hn.Close()
	nsh, err := netns.Open(ns)
	if err != nil {
		return err
	}
	defer nsh.Close()
	br, err := hs.LinkByName(switchBridgeName)
	if err != nil {
		return fmt.Errorf("find bridge %s in netns %s: %w", switchBridgeName, swNS, err)
	}
	port := switchPort(i)
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: port, MTU: underlayMTU, MasterIndex: br.Attrs().Index},
		PeerName:      underlayIfName,
		PeerNamespace: netlink.NsFd(nsh),
	}
	if err := hs.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s in netns %s peer %s in netns %s: %w", port, swNS, underlayIfName, ns, err)
	}
	for _, dev := range []string{"lo", underlayIfName} {
		if err := setUp(hn, dev); err != nil {
			return fmt.Errorf("setup node %s: %w", ns, err)
		}
	}
	if err := addAddr(hn, underlayIfName, netip.PrefixFrom(nodeIP(i), underlay.Bits())); err != nil {
		return fmt.Errorf("setup node %s: %w", ns, err)
	}
	if err := setUp(hs, port); err != nil {
		return fmt.Errorf("setup switch port %s: %w", port, err)
	}
	if wire {
		if err := setWire(swNS, port); err != nil {
			return err
		}
		if err := setWire(ns, underlayIfName); err != nil {
			return err
		}
	}
	return nil
}

// setupContainerNS brings up lo in a fresh container namespace; eth0 comes
// from the plugin.
func setupContainerNS(ns string) error {
	h, err := handleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := setUp(h, "lo"); err != nil {
		return fmt.Errorf("setup container %s: %w", ns, err)
	}
	return nil
}

// setUp is ip link set DEV up.
func setUp(h *netlink.Handle, dev string) error {
	l, err := h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("find link %s: %w", dev, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set link %s up: %w", dev, err)
	}
	return nil
}

// addAddr is ip addr add P dev DEV.
func addAddr(h *netlink.Handle, dev string, p netip.Prefix) error {
	l, err := h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("find link %s: %w", dev, err)
	}
	a, err := netlink.ParseAddr(p.String())
	if err != nil {
		return fmt.Errorf("parse addr %s: %w", p, err)
	}
	if err := h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("add addr %s dev %s: %w", p, dev, err)
	}
	return nil
}

// wireFeatures make a veth behave like a NIC on a wire: no segmentation
// offload, so every frame on the underlay is at most MTU + 14 bytes (plain
// veths pass 64 KB GSO super-packets unsegmented, which flatters every
// encapsulation), and GRO at the receiver, as a NIC driver does.
var wireFeatures = map[string]bool{
	"tx-tcp-segmentation":          false, // tso
	"tx-tcp-ecn-segmentation":      false,
	"tx-tcp-mangleid-segmentation": false,
	"tx-tcp6-segmentation":         false,
	"tx-generic-segmentation":      false, // gso
	"tx-udp_tnl-segmentation":      false, // VXLAN super-packets
	"tx-udp_tnl-csum-segmentation": false,
	"tx-udp-segmentation":          false,
	"tx-gso-list":                  false,
	"rx-gro":                       true,
}

// setWire applies wireFeatures to dev in netns ns through the ethtool ioctl
// (ethtool -K DEV tso off gso off tx-udp_tnl-segmentation off ... gro on).
// The ioctl socket is opened inside ns, so the name resolves there.
func setWire(ns, dev string) error {
	err := doInNS(ns, func() error {
		et, err := ethtool.NewEthtool()
		if err != nil {
			return err
		}
		defer et.Close()
		names, err := et.FeatureNames(dev)
		if err != nil {
			return err
		}
		want := map[string]bool{}
		for k, v := range wireFeatures {
			if _, ok := names[k]; ok { // older kernels lack some
				want[k] = v
			}
		}
		if err := et.Change(dev, want); err != nil {
			return err
		}
		got, err := et.Features(dev)
		if err != nil {
			return err
		}
		for _, k := range []string{"tx-tcp-segmentation", "tx-generic-segmentation", "rx-gro"} {
			if got[k] != wireFeatures[k] {
				return fmt.Errorf("feature %s is still %t", k, got[k])
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("set wire offloads on %s in netns %s: %w", dev, ns, err)
	}
	return nil
}
