package cni

import (
	"errors"
	"fmt"
	"github.com/tulle-net/tulle/internal/ipnet"
	"github.com/tulle-net/tulle/internal/subnetfile"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

func addrOf(t *testing.T, res *current.Result) netip.Prefix {
	t.Helper()
	if len(res.IPs) != 1 {
		t.Fatalf("result has %d IPs, want 1: %+v", len(res.IPs), res)
	}
	p, ok := ipnet.Prefix(&res.IPs[0].Address)
	if !ok {
		t.Fatalf("bad address in result: %v", res.IPs[0].Address)
	}
	return p
}

// dial connects from namespace from to addr:port over TCP and exchanges a
// byte, proving two-way reachability.
func dial(t *testing.T, from ns.NetNS, addr netip.Addr, port uint16) error {
	t.Helper()
	return from.Do(func(ns.NetNS) error {
		d := net.Dialer{Timeout: 3 * time.Second}
		c, err := d.Dial("tcp", netip.AddrPortFrom(addr, port).String())
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write([]byte{1}); err != nil {
			return err
		}
		b := make([]byte, 1)
		_, err = c.Read(b)
		return err
	})
}

// listen starts an echo-one-byte TCP server in namespace in, on addr:0.
// The socket belongs to the namespace it was created in, so accepting may
// happen on any thread.
func listen(t *testing.T, in ns.NetNS, addr netip.Addr) uint16 {
	t.Helper()
	var l net.Listener
	err := in.Do(func(ns.NetNS) (err error) {
		l, err = net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			b := make([]byte, 1)
			c.SetDeadline(time.Now().Add(3 * time.Second))
			if _, err := c.Read(b); err == nil {
				c.Write(b)
			}
			c.Close()
		}
	})
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

func TestAddTwoContainers(t *testing.T) {
	n := newNode(t)
	a, b := newNS(t), newNS(t)
	conf := n.conf("1.0.0", map[string]any{"dns": map[string]any{"nameservers": []string{"10.96.0.10"}}})
	resA := n.add(t, "ctr-a", a, conf)
	resB := n.add(t, "ctr-b", b, conf)
	ipA, ipB := addrOf(t, resA), addrOf(t, resB)
	gw := n.info.Gateway

	if ipA == ipB || !n.info.Subnet.Contains(ipA.Addr()) || !n.info.Subnet.Contains(ipB.Addr()) ||
		ipA.Bits() != 24 || ipA.Addr() == gw || ipB.Addr() == gw {
		t.Fatalf("addresses %s and %s: want distinct /24 host addresses of %s other than %s", ipA, ipB, n.info.Subnet, gw)
	}

	// The result: host veth, container iface with sandbox, IP with gateway
	// and interface index, default route, DNS passed through.
	if len(resA.Interfaces) != 2 || resA.Interfaces[0].Name != HostVethName("ctr-a", "eth0") ||
		resA.Interfaces[0].Mac == "" || resA.Interfaces[1].Name != "eth0" ||
		resA.Interfaces[1].Sandbox != a.Path() || resA.Interfaces[1].Mac == "" {
		t.Errorf("interfaces = %v", resA.Interfaces)
	}
	if ip := resA.IPs[0]; ip.Interface == nil || *ip.Interface != 1 || !ip.Gateway.Equal(gw.AsSlice()) {
		t.Errorf("ip config = %v", ip)
	}
	if len(resA.Routes) != 1 || resA.Routes[0].Dst.String() != "0.0.0.0/0" || !resA.Routes[0].GW.Equal(gw.AsSlice()) {
		t.Errorf("routes = %v", resA.Routes)
	}
	if len(resA.DNS.Nameservers) != 1 || resA.DNS.Nameservers[0] != "10.96.0.10" {
		t.Errorf("dns = %+v", resA.DNS)
	}

	// Kernel state, read back through netlink.
	br, ok := link(t, n.h, testBridge).(*netlink.Bridge)
	if !ok || br.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("bridge %s missing or down in the node namespace", testBridge)
	}
	if has, _ := hasAddr(n.h, br, netip.MustParsePrefix("10.250.3.1/24")); !has {
		t.Errorf("bridge has no gateway address 10.250.3.1/24")
	}
	for _, c := range []struct {
		id  string
		ns  ns.NetNS
		res *current.Result
	}{{"ctr-a", a, resA}, {"ctr-b", b, resB}} {
		hv := link(t, n.h, HostVethName(c.id, "eth0"))
		if hv == nil || hv.Attrs().MasterIndex != br.Attrs().Index || hv.Attrs().MTU != 1400 {
			t.Errorf("%s: host veth %v not on bridge with mtu 1400", c.id, hv)
		}
		if hv != nil && hv.Attrs().HardwareAddr.String() != c.res.Interfaces[0].Mac {
			t.Errorf("%s: host veth mac %s, result says %s", c.id, hv.Attrs().HardwareAddr, c.res.Interfaces[0].Mac)
		}
		ch := handle(t, c.ns)
		eth := link(t, ch, "eth0")
		if eth == nil || eth.Attrs().MTU != 1400 || eth.Attrs().Flags&net.FlagUp == 0 {
			t.Fatalf("%s: eth0 = %v, want up with mtu 1400", c.id, eth)
		}
		if r, _ := routeVia(ch, eth, netip.MustParsePrefix("0.0.0.0/0"), gw); r == nil {
			t.Errorf("%s: no default route via %s", c.id, gw)
		} else if r.MTU != 1400 || r.AdvMSS != 1360 {
			t.Errorf("%s: default route has mtu %d advmss %d, want 1400 and 1360", c.id, r.MTU, r.AdvMSS)
		}
		if lo := link(t, ch, "lo"); lo.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("%s: lo is down", c.id)
		}
	}

	// Reachability: container <-> container, container -> gateway.
	portA := listen(t, a, ipA.Addr())
	portGW := listen(t, n.ns, gw)
	if err := dial(t, b, ipA.Addr(), portA); err != nil {
		t.Errorf("b -> a %s: %v", ipA.Addr(), err)
	}
	for name, c := range map[string]ns.NetNS{"a": a, "b": b} {
		if err := dial(t, c, gw, portGW); err != nil {
			t.Errorf("%s -> gateway %s: %v", name, gw, err)
		}
	}

	// CHECK passes on what ADD built, and notices when it is broken.
	checkConf := withPrevResult(t, n.conf("1.0.0", nil), resA)
	if err := n.plugin.Check(args("ctr-a", "eth0", a.Path(), checkConf)); err != nil {
		t.Fatalf("CHECK after ADD: %v", err)
	}
	ah := handle(t, a)
	// A MAC other than the one in prevResult (a chained tuning plugin
	// would have updated prevResult when it changed it).
	eth0 := link(t, ah, "eth0")
	origMAC := eth0.Attrs().HardwareAddr
	mustOK(t, ah.LinkSetHardwareAddr(eth0, net.HardwareAddr{0x02, 0, 0, 0, 0xbe, 0xef}))
	err := n.plugin.Check(args("ctr-a", "eth0", a.Path(), checkConf))
	if err == nil || !strings.Contains(err.Error(), "mac is 02:00:00:00:be:ef, prevResult says "+origMAC.String()) {
		t.Fatalf("CHECK after changing the MAC = %v, want a mac mismatch", err)
	}
	mustOK(t, ah.LinkSetHardwareAddr(eth0, origMAC))
	// A route without the MTU and advmss ADD put on it.
	def := netip.MustParsePrefix("0.0.0.0/0")
	r, _ := routeVia(ah, eth0, def, gw)
	if r == nil {
		t.Fatal("no default route")
	}
	plain := *r
	plain.MTU, plain.AdvMSS = 0, 0
	mustOK(t, ah.RouteReplace(&plain))
	err = n.plugin.Check(args("ctr-a", "eth0", a.Path(), checkConf))
	if err == nil || !strings.Contains(err.Error(), "has mtu 0 advmss 0, want mtu 1400 advmss 1360") {
		t.Fatalf("CHECK after dropping the route mtu = %v, want a route mismatch", err)
	}
	mustOK(t, ah.RouteReplace(r))
	if err := n.plugin.Check(args("ctr-a", "eth0", a.Path(), checkConf)); err != nil {
		t.Fatalf("CHECK after restoring MAC and route: %v", err)
	}
	if err := ah.AddrDel(link(t, ah, "eth0"), &netlink.Addr{IPNet: ipnet.From(ipA)}); err != nil {
		t.Fatal(err)
	}
	err = n.plugin.Check(args("ctr-a", "eth0", a.Path(), checkConf))
	if err == nil || !strings.Contains(err.Error(), "address "+ipA.String()+" not found") {
		t.Fatalf("CHECK after flushing the address = %v, want address not found", err)
	}
}

// withPrevResult adds res as prevResult to conf, as the runtime does for
// CHECK.
func withPrevResult(t *testing.T, conf []byte, res *current.Result) []byte {
	t.Helper()
	var m map[string]any
	mustUnmarshal(t, conf, &m)
	b, err := res.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	var prev map[string]any
	mustUnmarshal(t, b, &prev)
	m["prevResult"] = prev
	return mustMarshal(t, m)
}

func TestAddIsIdempotent(t *testing.T) {
	n := newNode(t)
	c := newNS(t)
	conf := n.conf("1.0.0", nil)
	first := n.add(t, "ctr", c, conf)
	again := n.add(t, "ctr", c, conf)
	if addrOf(t, first) != addrOf(t, again) {
		t.Fatalf("repeated ADD gave %s, first gave %s", addrOf(t, again), addrOf(t, first))
	}
	if first.Interfaces[1].Mac != again.Interfaces[1].Mac {
		t.Fatalf("repeated ADD recreated the interface: mac %s -> %s", first.Interfaces[1].Mac, again.Interfaces[1].Mac)
	}
	if recs := n.records(t); len(recs) != 1 {
		t.Fatalf("IPAM holds %v, want one record", recs)
	}
}

func TestDel(t *testing.T) {
	n := newNode(t)
	c := newNS(t)
	conf := n.conf("1.0.0", nil)
	n.add(t, "ctr", c, conf)
	hostName := HostVethName("ctr", "eth0")

	for i := range 2 {
		if err := n.plugin.Del(args("ctr", "eth0", c.Path(), conf)); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	if recs := n.records(t); len(recs) != 0 {
		t.Errorf("IPAM still holds %v after DEL", recs)
	}
	if l := link(t, n.h, hostName); l != nil {
		t.Errorf("host veth %s still exists after DEL", hostName)
	}
	if l := link(t, handle(t, c), "eth0"); l != nil {
		t.Errorf("eth0 still exists in the container after DEL")
	}
	// Never added, no netns, and the subnet file gone: still fine.
	mustRemove(t, n.subnetFile)
	if err := n.plugin.Del(args("never", "eth0", "", conf)); err != nil {
		t.Errorf("DEL of an unknown container: %v", err)
	}
}

func TestDelAfterNetnsRemoved(t *testing.T) {
	n := newNode(t)
	c := newNS(t)
	conf := n.conf("1.0.0", nil)
	n.add(t, "ctr", c, conf)
	path := c.Path()
	c.Close()
	if err := removeNS(path); err != nil {
		t.Fatal(err)
	}
	if err := n.plugin.Del(args("ctr", "eth0", path, conf)); err != nil {
		t.Fatalf("DEL with the netns removed: %v", err)
	}
	if recs := n.records(t); len(recs) != 0 {
		t.Errorf("IPAM still holds %v", recs)
	}
	if l := link(t, n.h, HostVethName("ctr", "eth0")); l != nil {
		t.Errorf("host veth still exists")
	}
}

func TestAddRollsBack(t *testing.T) {
	n := newNode(t)
	conf := n.conf("1.0.0", nil)

	t.Run("ifname taken in the container", func(t *testing.T) {
		c := newNS(t)
		ch := handle(t, c)
		// ip link add eth0 type bridge (the dummy module is not available
		// on every test kernel; any link type will do)
		mustOK(t, ch.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "eth0", TxQLen: -1}}))
		_, err := n.tryAdd("ctr-taken", c, conf)
		t.Logf("ADD error: %v", err)
		var te *types.Error
		if !errors.As(err, &te) || te.Code != types.ErrInvalidEnvironmentVariables ||
			!strings.Contains(err.Error(), "eth0") || !strings.Contains(err.Error(), "already exists") {
			t.Fatalf("ADD = %v, want code 4 naming eth0 as existing", err)
		}
		assertNoTrace(t, n, "ctr-taken")
		if l := link(t, ch, "eth0"); l == nil || l.Type() != "bridge" {
			t.Fatalf("the container's own eth0 was touched: %v", l)
		}
	})

	t.Run("route conflict after the veth exists", func(t *testing.T) {
		// The container already has a default route, so ADD fails at its
		// last step, after allocating and creating the veth pair.
		c := newNS(t)
		ch := handle(t, c)
		// ip link add tcnd0 type veth peer name tcnd1 (both ends here)
		mustOK(t, ch.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "tcnd0", TxQLen: -1}, PeerName: "tcnd1"}))
		d := link(t, ch, "tcnd0")
		mustOK(t, ch.LinkSetUp(link(t, ch, "tcnd1")))
		mustOK(t, ch.AddrAdd(d, &netlink.Addr{IPNet: ipnet.From(netip.MustParsePrefix("192.0.2.2/24"))}))
		mustOK(t, ch.LinkSetUp(d))
		mustOK(t, ch.RouteAdd(&netlink.Route{LinkIndex: d.Attrs().Index, Gw: net.ParseIP("192.0.2.1")}))

		_, err := n.tryAdd("ctr-route", c, conf)
		t.Logf("ADD error: %v", err)
		if err == nil || !strings.Contains(err.Error(), "add route 0.0.0.0/0 via 10.250.3.1 dev eth0") {
			t.Fatalf("ADD = %v, want the route error", err)
		}
		assertNoTrace(t, n, "ctr-route")
		if l := link(t, ch, "eth0"); l != nil {
			t.Fatalf("eth0 left in the container after rollback")
		}
	})

	t.Run("failed repeat ADD keeps the live attachment", func(t *testing.T) {
		c1, c2 := newNS(t), newNS(t)
		res := n.add(t, "ctr-live", c1, conf)
		// Same container ID and ifname, another namespace: a runtime bug.
		if _, err := n.tryAdd("ctr-live", c2, conf); err == nil {
			t.Fatal("ADD of a live attachment into another netns succeeded")
		}
		recs := n.records(t)
		if len(recs) != 1 || recs[0].Addr != addrOf(t, res).Addr() {
			t.Fatalf("IPAM = %v, want the live attachment's %s kept", recs, addrOf(t, res))
		}
		if l := link(t, n.h, HostVethName("ctr-live", "eth0")); l == nil {
			t.Fatal("rollback removed the live attachment's host veth")
		}
		mustOK(t, n.plugin.Del(args("ctr-live", "eth0", c1.Path(), conf)))
	})
}

// assertNoTrace checks that a failed ADD left no allocation or host veth.
func assertNoTrace(t *testing.T, n *node, id string) {
	t.Helper()
	for _, r := range n.records(t) {
		if r.ContainerID == id {
			t.Errorf("allocation %s left behind for %s", r.Addr, id)
		}
	}
	if l := link(t, n.h, HostVethName(id, "eth0")); l != nil {
		t.Errorf("host veth %s left behind", l.Attrs().Name)
	}
}

func TestParallelAdds(t *testing.T) {
	n := newNode(t)
	const count = 100
	conf := n.conf("1.0.0", nil)
	conts := make([]ns.NetNS, count)
	for i := range conts {
		conts[i] = newNS(t)
	}
	results := make([]*current.Result, count)
	errs := make([]error, count)
	var wg sync.WaitGroup
	for i := range count {
		wg.Go(func() {
			results[i], errs[i] = n.tryAdd(fmt.Sprintf("ctr-%03d", i), conts[i], conf)
		})
	}
	wg.Wait()
	seen := map[netip.Prefix]int{}
	for i := range count {
		if errs[i] != nil {
			t.Fatalf("ADD %d: %v", i, errs[i])
		}
		a := addrOf(t, results[i])
		if j, dup := seen[a]; dup {
			t.Fatalf("containers %d and %d both got %s", j, i, a)
		}
		seen[a] = i
	}
	ports, err := retryDump(func() ([]netlink.Link, error) { return n.h.LinkList() })
	if err != nil {
		t.Fatal(err)
	}
	br := link(t, n.h, testBridge)
	onBridge := 0
	for _, l := range ports {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			onBridge++
		}
	}
	if onBridge != count {
		t.Fatalf("%d ports on the bridge, want %d", onBridge, count)
	}
}

func TestNoDefaultGatewayAndHairpin(t *testing.T) {
	n := newNode(t)
	c := newNS(t)
	conf := n.conf("1.0.0", map[string]any{"isDefaultGateway": false, "hairpinMode": true, "mtu": 1300})
	res := n.add(t, "ctr", c, conf)
	if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "10.250.0.0/16" {
		t.Fatalf("routes = %v, want only the cluster network", res.Routes)
	}
	ch := handle(t, c)
	eth := link(t, ch, "eth0")
	if r, _ := routeVia(ch, eth, netip.MustParsePrefix("0.0.0.0/0"), n.info.Gateway); r != nil {
		t.Error("default route present with isDefaultGateway false")
	}
	if r, _ := routeVia(ch, eth, n.info.Network, n.info.Gateway); r == nil {
		t.Error("no route to the cluster network")
	}
	if eth.Attrs().MTU != 1300 {
		t.Errorf("mtu = %d, want the config's 1300", eth.Attrs().MTU)
	}
	hv := link(t, n.h, HostVethName("ctr", "eth0"))
	pi, err := n.h.LinkGetProtinfo(hv)
	if err != nil || !pi.Hairpin {
		t.Errorf("hairpin = %v, %v; want on", pi.Hairpin, err)
	}
	if err := n.plugin.Check(args("ctr", "eth0", c.Path(), withPrevResult(t, conf, res))); err != nil {
		t.Errorf("CHECK: %v", err)
	}
}

func TestExistingBridge(t *testing.T) {
	n := newNode(t)
	// The agent made the bridge with its own address and left it down.
	attrs := netlink.NewLinkAttrs()
	attrs.Name = testBridge
	br := &netlink.Bridge{LinkAttrs: attrs}
	mustOK(t, n.h.LinkAdd(br))
	own := netip.MustParsePrefix("10.250.3.1/16")
	mustOK(t, n.h.AddrAdd(br, &netlink.Addr{IPNet: ipnet.From(own)}))

	n.add(t, "ctr", newNS(t), n.conf("1.0.0", nil))
	got := link(t, n.h, testBridge)
	if got.Attrs().Flags&net.FlagUp == 0 {
		t.Error("existing bridge not brought up")
	}
	addrs, _ := n.h.AddrList(got, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != own.String() {
		t.Errorf("bridge addresses = %v, want only its own %s", addrs, own)
	}
}

func TestBridgeNameTakenByOtherLink(t *testing.T) {
	n := newNode(t)
	// ip link add tcnbr0 type veth peer name tcnbr1
	mustOK(t, n.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: testBridge, TxQLen: -1}, PeerName: "tcnbr1"}))
	_, err := n.tryAdd("ctr", newNS(t), n.conf("1.0.0", nil))
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), "not a bridge") {
		t.Fatalf("ADD = %v, want code 7 'not a bridge'", err)
	}
	assertNoTrace(t, n, "ctr")
}

func TestAddWithoutSubnetFile(t *testing.T) {
	n := newNode(t)
	mustRemove(t, n.subnetFile)
	_, err := n.tryAdd("ctr", newNS(t), n.conf("1.0.0", nil))
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrTryAgainLater || !strings.Contains(err.Error(), "is 'tulle agent' running") {
		t.Fatalf("ADD = %v, want code 11 asking whether the agent runs", err)
	}
}

func TestGC(t *testing.T) {
	n := newNode(t)
	a, b := newNS(t), newNS(t)
	conf := n.conf("1.1.0", nil)
	n.add(t, "ctr-a", a, conf)
	n.add(t, "ctr-b", b, conf)

	gcConf := func(valid ...string) []byte {
		list := []map[string]string{}
		for _, id := range valid {
			list = append(list, map[string]string{"containerID": id, "ifname": "eth0"})
		}
		return n.conf("1.1.0", map[string]any{"cni.dev/valid-attachments": list})
	}
	// Right after ADD everything is within the grace period.
	mustOK(t, n.plugin.GC(args("", "", "", gcConf())))
	if recs := n.records(t); len(recs) != 2 {
		t.Fatalf("GC freed fresh allocations: %v", recs)
	}

	later := New(Options{HostNSPath: n.ns.Path(), Now: func() time.Time { return time.Now().Add(time.Hour) }})
	mustOK(t, later.GC(args("", "", "", gcConf("ctr-a"))))
	recs := n.records(t)
	if len(recs) != 1 || recs[0].ContainerID != "ctr-a" {
		t.Fatalf("after GC: %v, want only ctr-a", recs)
	}
	if l := link(t, n.h, HostVethName("ctr-b", "eth0")); l != nil {
		t.Error("GC left ctr-b's host veth")
	}
	if l := link(t, n.h, HostVethName("ctr-a", "eth0")); l == nil {
		t.Error("GC removed the valid ctr-a's host veth")
	}

	err := later.GC(args("", "", "", n.conf("1.1.0", nil)))
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig {
		t.Fatalf("GC without the attachment list = %v, want code 7", err)
	}
	if recs := n.records(t); len(recs) != 1 {
		t.Fatalf("GC without a list freed something: %v", recs)
	}
}

func mustOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestBridgeMACStable(t *testing.T) {
	n := newNode(t)
	conf := n.conf("1.0.0", nil)
	a, b := newNS(t), newNS(t)
	n.add(t, "ctr-a", a, conf)
	mac := link(t, n.h, testBridge).Attrs().HardwareAddr.String()
	n.add(t, "ctr-b", b, conf)
	mustOK(t, n.plugin.Del(args("ctr-a", "eth0", a.Path(), conf)))
	if got := link(t, n.h, testBridge).Attrs().HardwareAddr.String(); got != mac {
		t.Fatalf("gateway MAC changed from %s to %s when a port left", mac, got)
	}
}

// TestAddGSOMaxSize: with gsoMaxSize in subnet.json (the udp backend where
// the kernel has BIG TCP), ADD gives the host veth and the bridge that GSO
// limit; with workloadGSOMaxSize (the udp backend's largest super-packet
// for one UDP send) the container's eth0 gets that one; without them,
// everything keeps the default.
func TestAddGSOMaxSize(t *testing.T) {
	n := newNode(t)
	if l, err := n.h.LinkByName("lo"); err != nil || l.Attrs().GSOIPv4MaxSize == 0 {
		t.Skip("kernel has no gso_ipv4_max_size (Linux < 6.3)")
	}
	n.info.GSOMaxSize, n.info.WorkloadGSOMaxSize = 196608, 64272
	if err := subnetfile.Write(n.subnetFile, n.info); err != nil {
		t.Fatal(err)
	}
	c := newNS(t)
	res := n.add(t, "ctr", c, n.conf("1.0.0", nil))
	for _, name := range []string{HostVethName("ctr", "eth0"), testBridge} {
		a := link(t, n.h, name).Attrs()
		if a.GSOMaxSize != 196608 || a.GSOIPv4MaxSize != 196608 {
			t.Errorf("%s: gso_max_size %d gso_ipv4_max_size %d, want 196608", name, a.GSOMaxSize, a.GSOIPv4MaxSize)
		}
	}
	if a := link(t, handle(t, c), "eth0").Attrs(); a.GSOMaxSize != 64272 || a.GSOIPv4MaxSize != 64272 {
		t.Errorf("container eth0: gso_max_size %d gso_ipv4_max_size %d, want 64272", a.GSOMaxSize, a.GSOIPv4MaxSize)
	}
	if err := n.plugin.Check(args("ctr", "eth0", c.Path(), withPrevResult(t, n.conf("1.0.0", nil), res))); err != nil {
		t.Errorf("CHECK: %v", err)
	}

	m := newNode(t)
	d := newNS(t)
	m.add(t, "ctr2", d, m.conf("1.0.0", nil))
	if a := link(t, m.h, HostVethName("ctr2", "eth0")).Attrs(); a.GSOMaxSize != 65536 {
		t.Errorf("without gsoMaxSize: host veth gso_max_size %d, want 65536", a.GSOMaxSize)
	}
	if a := link(t, handle(t, d), "eth0").Attrs(); a.GSOMaxSize != 65536 {
		t.Errorf("without workloadGSOMaxSize: container eth0 gso_max_size %d, want 65536", a.GSOMaxSize)
	}
}
