package udptun_test

// Kernel tests: real TUN devices and UDP sockets in throw-away namespaces.
//
//	  ns A (node 1)                                  ns B (node 2)
//	  tun ut1t 10.244.1.0/32                         tun ut1t 10.244.2.0/32
//	  route 10.244.0.0/16 dev ut1t                   route 10.244.0.0/16 dev ut1t
//	  engine: listen 192.168.50.1:8285               engine: listen 192.168.50.2:8285
//	        |                                              |
//	  veth ut1a 192.168.50.1/24 ======(underlay)====== veth ut1b 192.168.50.2/24
//	                                                       |
//	                                                  veth ut1c 192.168.60.1/24
//	                                                       |
//	                                           ns C (not a peer): veth ut1d 192.168.60.2/24

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/tulle-net/tulle/internal/netns"
	"github.com/tulle-net/tulle/internal/netns/nstest"
	"github.com/tulle-net/tulle/internal/udptun"
)

const (
	testTUN   = "uq1t"
	testNetID = 0x00c0ffee
)

var (
	cluster = netip.MustParsePrefix("10.244.0.0/16")
	subnetA = netip.MustParsePrefix("10.244.1.0/24")
	subnetB = netip.MustParsePrefix("10.244.2.0/24")
	pubA    = netip.MustParseAddr("192.168.50.1")
	pubB    = netip.MustParseAddr("192.168.50.2")
)

type node struct {
	ns     netns.NsHandle
	nl     *netlink.Handle
	cfg    udptun.Config
	eng    *udptun.Engine
	cancel context.CancelFunc
	done   chan error
}

// twoNodes builds A and B joined by a veth underlay, each with a running
// engine peered with the other, TUN configured as the dataplane would.
func twoNodes(t *testing.T, prefix string, tunMTU int) (a, b *node) {
	t.Helper()
	_, nsA := nstest.New(t, prefix)
	_, nsB := nstest.New(t, prefix)
	nstest.Veth(t,
		nstest.End{NS: nsA, Name: prefix + "a", Addr: netip.PrefixFrom(pubA, 24)},
		nstest.End{NS: nsB, Name: prefix + "b", Addr: netip.PrefixFrom(pubB, 24)})
	a = newNode(t, nsA, prefix, pubA, subnetA, tunMTU)
	b = newNode(t, nsB, prefix, pubB, subnetB, tunMTU)
	a.eng.SetPeers([]udptun.Peer{{Subnet: subnetB, PublicIP: pubB}})
	b.eng.SetPeers([]udptun.Peer{{Subnet: subnetA, PublicIP: pubA}})
	return a, b
}

func newNode(t *testing.T, h netns.NsHandle, prefix string, pub netip.Addr, local netip.Prefix, tunMTU int) *node {
	t.Helper()
	n := &node{ns: h, nl: nstest.Handle(t, h), cfg: udptun.Config{
		TUNName: prefix + "t", MTU: 1500 - udptun.Overhead, Listen: netip.AddrPortFrom(pub, udptun.DefaultPort),
		NetworkID: testNetID, Local: local, Cluster: cluster,
	}}
	n.open(t)
	configureTUN(t, n.nl, n.cfg.TUNName, local.Addr(), tunMTU)
	n.start(t)
	t.Cleanup(func() { n.stop(t); _ = n.eng.Close() })
	return n
}

func (n *node) open(t *testing.T) {
	t.Helper()
	err := netns.Do(n.ns, func() error {
		var err error
		n.eng, err = udptun.Open(n.cfg)
		return err
	})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
}

func (n *node) start(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel, n.done = cancel, make(chan error, 1)
	go func() { n.done <- n.eng.Run(ctx) }()
}

func (n *node) stop(t *testing.T) {
	t.Helper()
	if n.cancel == nil {
		return
	}
	n.cancel()
	n.cancel = nil
	select {
	case err := <-n.done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("Run did not return 5 s after its context ended")
	}
}

// configureTUN does what the dataplane does: ip link set dev NAME mtu M up;
// ip addr add LOCAL.0/32 dev NAME; ip route replace CLUSTER dev NAME.
func configureTUN(t *testing.T, nl *netlink.Handle, name string, addr netip.Addr, mtu int) {
	t.Helper()
	l, err := nl.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetMTU(l, mtu); err != nil {
		t.Fatal(err)
	}
	if err := nl.AddrReplace(l, &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	if err := nl.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: &net.IPNet{IP: cluster.Addr().AsSlice(), Mask: net.CIDRMask(cluster.Bits(), 32)}}); err != nil {
		t.Fatal(err)
	}
}

// icmpConn opens a raw ICMP socket in ns h.
func icmpConn(t *testing.T, h netns.NsHandle) *icmp.PacketConn {
	t.Helper()
	var c *icmp.PacketConn
	if err := netns.Do(h, func() error {
		var err error
		c, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ping sends echo requests to dst until a message of the wanted type from
// from arrives or the deadline passes; it returns that message.
func ping(t *testing.T, c *icmp.PacketConn, dst netip.Addr, size int, want icmp.Type, from netip.Addr) *icmp.Message {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	buf := make([]byte, 2000)
	for seq := 1; time.Now().Before(deadline); seq++ {
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: os.Getpid() & 0xffff, Seq: seq, Data: make([]byte, size)}}
		wb, _ := msg.Marshal(nil)
		if _, err := c.WriteTo(wb, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			t.Fatalf("send echo to %v: %v", dst, err)
		}
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		for {
			n, peer, err := c.ReadFrom(buf)
			if err != nil {
				break
			}
			m, err := icmp.ParseMessage(1, buf[:n])
			if err != nil {
				continue
			}
			if m.Type == want && peer.(*net.IPAddr).IP.Equal(from.AsSlice()) {
				return m
			}
		}
	}
	t.Fatalf("no ICMP %v from %v after echo requests to %v", want, from, dst)
	return nil
}

func waitStat(t *testing.T, what string, get func() uint64, min uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if get() >= min {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s = %d, want >= %d", what, get(), min)
}

func TestKernelPingAndTCP(t *testing.T) {
	t.Parallel()
	a, b := twoNodes(t, "uq1", 1500-udptun.Overhead)
	c := icmpConn(t, a.ns)
	ping(t, c, subnetB.Addr(), 56, ipv4.ICMPTypeEchoReply, subnetB.Addr())

	// TCP: 4 MiB from A to B's .0, echoed byte count checked.
	var ln net.Listener
	if err := netns.Do(b.ns, func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(subnetB.Addr(), 5001).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const size = 4 << 20
	got := make(chan int64, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer conn.Close()
		var n int64
		buf := make([]byte, 64<<10)
		for {
			k, err := conn.Read(buf)
			n += int64(k)
			if err != nil {
				break
			}
		}
		got <- n
	}()
	var conn net.Conn
	if err := netns.Do(a.ns, func() error {
		var err error
		conn, err = net.DialTimeout("tcp4", netip.AddrPortFrom(subnetB.Addr(), 5001).String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	select {
	case n := <-got:
		if n != size {
			t.Fatalf("B received %d bytes, want %d", n, size)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("TCP transfer timed out")
	}
	sa, sb := a.eng.Stats(), b.eng.Stats()
	if sa.PacketsOut == 0 || sb.PacketsIn == 0 || sa.BytesOut < size || sb.BytesIn < size {
		t.Errorf("stats A %+v B %+v: want A out and B in >= %d bytes", sa, sb, size)
	}
	for r := range udptun.NumDropReasons {
		// IPv6 autoconfiguration on the TUN device (router solicitations)
		// is read by the TX side and dropped as malformed: not IPv4.
		if d := sb.Drops[r]; d != 0 && r != udptun.DropMalformed {
			t.Errorf("B dropped %d packets: %v", d, r)
		}
	}
}

// sendDatagram sends payload from ns h (bound to src, port 0) to dst.
func sendDatagram(t *testing.T, h netns.NsHandle, src netip.Addr, dst netip.AddrPort, payload []byte) {
	t.Helper()
	if err := netns.Do(h, func() error {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.WriteToUDPAddrPort(payload, dst)
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

// innerPacket is a minimal valid IPv4/UDP packet from src to dst.
func innerPacket(src, dst netip.Addr) []byte {
	p := make([]byte, 28)
	p[0], p[8], p[9] = 0x45, 64, 17
	p[2], p[3] = 0, 28
	copy(p[12:16], src.AsSlice())
	copy(p[16:20], dst.AsSlice())
	return p
}

func header(netID uint32) []byte {
	return []byte{0x74, 0x75, 1, 0, byte(netID >> 24), byte(netID >> 16), byte(netID >> 8), byte(netID)}
}

func TestKernelSpoofAndWrongNetwork(t *testing.T) {
	t.Parallel()
	a, b := twoNodes(t, "uq2", 1500-udptun.Overhead)
	_, nsC := nstest.New(t, "uq2")
	pubC := netip.MustParseAddr("192.168.60.2")
	nstest.Veth(t,
		nstest.End{NS: b.ns, Name: "uq2c", Addr: netip.MustParsePrefix("192.168.60.1/24")},
		nstest.End{NS: nsC, Name: "uq2d", Addr: netip.PrefixFrom(pubC, 24)})
	nlC := nstest.Handle(t, nsC)
	if err := nlC.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: pubB.AsSlice(), Mask: net.CIDRMask(32, 32)}, Gw: net.IPv4(192, 168, 60, 1)}); err != nil {
		t.Fatal(err)
	}
	dst := b.cfg.Listen
	inner := innerPacket(netip.MustParseAddr("10.244.1.7"), netip.MustParseAddr("10.244.2.9"))

	// A non-peer with a perfectly valid header.
	for range 3 {
		sendDatagram(t, nsC, pubC, dst, append(header(testNetID), inner...))
	}
	waitStat(t, "B unknown_sender", func() uint64 { return b.eng.Stats().Drops[udptun.DropUnknownSender] }, 3)

	// The peer, but another network's id, then a bad magic.
	sendDatagram(t, a.ns, pubA, dst, append(header(testNetID+1), inner...))
	waitStat(t, "B wrong_network", func() uint64 { return b.eng.Stats().Drops[udptun.DropWrongNetwork] }, 1)
	bad := append(header(testNetID), inner...)
	bad[0] = 'x'
	sendDatagram(t, a.ns, pubA, dst, bad)
	waitStat(t, "B bad_header", func() uint64 { return b.eng.Stats().Drops[udptun.DropBadHeader] }, 1)
	if s := b.eng.Stats(); s.PacketsIn != 0 {
		t.Errorf("B decapsulated %d packets, want 0 (all were invalid)", s.PacketsIn)
	}
	// And a valid one from the peer is accepted.
	sendDatagram(t, a.ns, pubA, dst, append(header(testNetID), inner...))
	waitStat(t, "B packets in", func() uint64 { return b.eng.Stats().PacketsIn }, 1)
}

func TestKernelICMPErrors(t *testing.T) {
	t.Parallel()
	// The TUN MTU is larger than the engine's, so the kernel lets a
	// too-big DF packet through to the engine, which must answer it.
	a, _ := twoNodes(t, "uq3", 1500)
	c := icmpConn(t, a.ns)

	m := ping(t, c, netip.MustParseAddr("10.244.77.1"), 56, ipv4.ICMPTypeDestinationUnreachable, subnetA.Addr())
	if m.Code != 0 {
		t.Errorf("unknown subnet: ICMP code %d, want 0 (net unreachable)", m.Code)
	}
	if d := a.eng.Stats().Drops[udptun.DropNoRoute]; d == 0 {
		t.Error("no_route not counted")
	}

	// TTL 1: the kernel does not decrement locally sent packets; the
	// engine does, as a router.
	if err := c.IPv4PacketConn().SetTTL(1); err != nil {
		t.Fatal(err)
	}
	ping(t, c, subnetB.Addr(), 56, ipv4.ICMPTypeTimeExceeded, subnetA.Addr())
	if err := c.IPv4PacketConn().SetTTL(64); err != nil {
		t.Fatal(err)
	}

	// DF and 1500 bytes > MTU 1464: fragmentation needed, MTU 1464; the
	// kernel learns the path MTU, visible as IP_MTU on a connected socket.
	var u *net.UDPConn
	if err := netns.Do(a.ns, func() error {
		var err error
		u, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(subnetB.Addr(), 9)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	rc, _ := u.SyscallConn()
	mtu := func() (v int) {
		_ = rc.Control(func(fd uintptr) { v, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU) })
		return v
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
	})
	want := 1500 - udptun.Overhead
	deadline := time.Now().Add(5 * time.Second)
	for mtu() != want && time.Now().Before(deadline) {
		_, err := u.Write(make([]byte, 1500-28))
		if err != nil && !errors.Is(err, syscall.EMSGSIZE) && !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := mtu(); got != want {
		t.Errorf("path MTU to %v = %d, want %d from ICMP fragmentation needed", subnetB.Addr(), got, want)
	}
	if d := a.eng.Stats().Drops[udptun.DropTooBig]; d == 0 {
		t.Error("too_big not counted")
	}
	if s := a.eng.Stats(); s.ICMPSent < 3 {
		t.Errorf("ICMPSent = %d, want >= 3", s.ICMPSent)
	}
}

func TestKernelRestartKeepsDevice(t *testing.T) {
	t.Parallel()
	a, b := twoNodes(t, "uq4", 1500-udptun.Overhead)
	c := icmpConn(t, a.ns)
	ping(t, c, subnetB.Addr(), 56, ipv4.ICMPTypeEchoReply, subnetB.Addr())

	// Restart B: the device, its address and route stay; a new Open
	// re-attaches and traffic resumes without any reconfiguration.
	b.stop(t)
	if err := b.eng.Close(); err != nil {
		t.Fatal(err)
	}
	l, err := b.nl.LinkByName(b.cfg.TUNName)
	if err != nil {
		t.Fatalf("TUN device gone after Close: %v", err)
	}
	routes, err := b.nl.RouteList(l, netlink.FAMILY_V4)
	if err != nil || len(routes) == 0 {
		t.Fatalf("routes via the TUN after Close: %v, %v", routes, err)
	}
	start := time.Now()
	b.open(t)
	b.eng.SetPeers([]udptun.Peer{{Subnet: subnetA, PublicIP: pubA}})
	b.start(t)
	t.Logf("re-Open + Run took %v", time.Since(start))
	ping(t, c, subnetB.Addr(), 56, ipv4.ICMPTypeEchoReply, subnetB.Addr())
}

func TestKernelOpenErrors(t *testing.T) {
	t.Parallel()
	_, h := nstest.New(t, "uq5")
	nl := nstest.Handle(t, h)
	if err := nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uq5x"}, PeerName: "uq5y"}); err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddr("192.168.70.1")
	if err := nl.AddrAdd(must(nl.LinkByName("uq5x")), &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetUp(must(nl.LinkByName("uq5x"))); err != nil {
		t.Fatal(err)
	}
	base := udptun.Config{TUNName: "uq5t", MTU: 1464, Listen: netip.AddrPortFrom(addr, 18285), NetworkID: 1, Local: subnetA, Cluster: cluster}
	open := func(cfg udptun.Config) (*udptun.Engine, error) {
		var e *udptun.Engine
		err := netns.Do(h, func() error {
			var err error
			e, err = udptun.Open(cfg)
			return err
		})
		return e, err
	}
	cases := []struct {
		name string
		mod  func(*udptun.Config)
		want error
	}{
		{"name too long", func(c *udptun.Config) { c.TUNName = "uq5-much-too-long" }, nil},
		{"not a tun", func(c *udptun.Config) { c.TUNName = "uq5x" }, udptun.ErrNotTUN},
		{"address not here", func(c *udptun.Config) { c.Listen = netip.MustParseAddrPort("192.168.71.1:18285") }, syscall.EADDRNOTAVAIL},
	}
	for _, tc := range cases {
		cfg := base
		tc.mod(&cfg)
		e, err := open(cfg)
		if err == nil {
			e.Close()
			t.Errorf("%s: Open succeeded", tc.name)
			continue
		}
		if tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: Open = %v, want %v", tc.name, err, tc.want)
		}
		t.Logf("%s: %v", tc.name, err)
	}
	// Port in use: a second engine on the same address.
	e1, err := open(base)
	if err != nil {
		t.Fatal(err)
	}
	defer e1.Close()
	cfg := base
	cfg.TUNName = "uq5u"
	if e2, err := open(cfg); !errors.Is(err, syscall.EADDRINUSE) {
		if e2 != nil {
			e2.Close()
		}
		t.Errorf("second Open on %v = %v, want EADDRINUSE", base.Listen, err)
	}
	if _, err := nl.LinkByName("uq5u"); err == nil {
		t.Error("failed Open left a TUN device behind")
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
