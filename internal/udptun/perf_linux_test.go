package udptun_test

// Throughput against kernel VXLAN, in the same run, on the same topology
// (skipped unless TULLE_UDPTUN_PERF=1):
//
//	c1 (10.244.1.2)           n1                                n2           c2 (10.244.2.2)
//	  p1c ====== p1n 10.244.1.1   p1u 192.168.50.1 ===== 192.168.50.2 p2u   10.244.2.1 p2n ====== p2c
//	                         tun p1t (udp engine)  or  vxlan p1v  ...  tun p2t  or  vxlan p2v
//
// iperf3 -c runs in c1, iperf3 -s in c2; both backends use their own MTU
// on the container veths (udp 1464, vxlan 1450). Rounds alternate the
// backends; the medians and their ratio are printed.
//
//	TULLE_UDPTUN_PERF=1 go test -count=1 -run Perf -v ./internal/udptun/
//	(TULLE_UDPTUN_PERF_SECONDS=5, TULLE_UDPTUN_PERF_ROUNDS=3)

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/tulle-net/tulle/internal/netns"
	"github.com/tulle-net/tulle/internal/netns/nstest"
	"github.com/tulle-net/tulle/internal/udptun"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func TestPerfVsVXLAN(t *testing.T) {
	if os.Getenv("TULLE_UDPTUN_PERF") != "1" {
		t.Skip("set TULLE_UDPTUN_PERF=1 to measure throughput against kernel VXLAN")
	}
	nstest.RequireRoot(t)
	secs := envInt("TULLE_UDPTUN_PERF_SECONDS", 5)
	rounds := envInt("TULLE_UDPTUN_PERF_ROUNDS", 3)
	results := map[string][]float64{}
	for r := range rounds {
		for _, streams := range []int{1, 4} {
			for _, be := range []string{"udp", "vxlan"} {
				name := fmt.Sprintf("%s-P%d", be, streams)
				t.Run(fmt.Sprintf("%s/round%d", name, r), func(t *testing.T) {
					pn := perfTopology(t, be)
					bps := iperf(t, pn.c1, pn.c2, streams, secs)
					t.Logf("%s: %.2f Gbit/s", name, bps/1e9)
					for i, e := range pn.engs {
						s := e.Stats()
						t.Logf("  engine %d: out %d pkts in %d pkts, drops %v", i+1, s.PacketsOut, s.PacketsIn, s.Drops)
					}
					results[name] = append(results[name], bps)
				})
			}
		}
	}
	med := func(v []float64) float64 {
		if len(v) == 0 {
			return 0
		}
		v = slices.Clone(v)
		slices.Sort(v)
		return v[len(v)/2]
	}
	for _, streams := range []int{1, 4} {
		u, v := med(results[fmt.Sprintf("udp-P%d", streams)]), med(results[fmt.Sprintf("vxlan-P%d", streams)])
		t.Logf("streams=%d  udp %.2f Gbit/s  vxlan %.2f Gbit/s  ratio %.2f  (medians of %d; all udp %v vxlan %v)",
			streams, u/1e9, v/1e9, u/v, rounds, gbits(results[fmt.Sprintf("udp-P%d", streams)]), gbits(results[fmt.Sprintf("vxlan-P%d", streams)]))
	}
}

func gbits(v []float64) []string {
	var s []string
	for _, x := range v {
		s = append(s, fmt.Sprintf("%.2f", x/1e9))
	}
	return s
}

// perfNet is the picture above: container and node namespaces and, for
// udp, the two engines.
type perfNet struct {
	c1, c2, n1, n2 netns.NsHandle
	engs           []*udptun.Engine
}

// perfTopology builds the picture above for backend be ("udp" or "vxlan").
func perfTopology(t *testing.T, be string) perfNet {
	return perfTopologyNS(t, be, "uq6")
}

// perfTopologyNS is perfTopology with namespaces named prefix-....
func perfTopologyNS(t *testing.T, be, prefix string) perfNet {
	_, n1 := nstest.New(t, prefix)
	_, n2 := nstest.New(t, prefix)
	_, c1 := nstest.New(t, prefix)
	_, c2 := nstest.New(t, prefix)
	var engs []*udptun.Engine
	nstest.Veth(t, nstest.End{NS: n1, Name: "p1u", Addr: netip.PrefixFrom(pubA, 24)}, nstest.End{NS: n2, Name: "p2u", Addr: netip.PrefixFrom(pubB, 24)})
	mtu := 1500 - udptun.Overhead
	if be == "vxlan" {
		mtu = 1450
	}
	for i, n := range []struct {
		node, ctr netns.NsHandle
		local     netip.Prefix
		pub, peer netip.Addr
		peerNet   netip.Prefix
	}{{n1, c1, subnetA, pubA, pubB, subnetB}, {n2, c2, subnetB, pubB, pubA, subnetA}} {
		id := strconv.Itoa(i + 1)
		gw := n.local.Addr().Next()
		ctrIP := gw.Next()
		nstest.Veth(t, nstest.End{NS: n.node, Name: "p" + id + "n", Addr: netip.PrefixFrom(gw, 24)}, nstest.End{NS: n.ctr, Name: "p" + id + "c", Addr: netip.PrefixFrom(ctrIP, 24)})
		nlN, nlC := nstest.Handle(t, n.node), nstest.Handle(t, n.ctr)
		for _, x := range []struct {
			nl   *netlink.Handle
			name string
		}{{nlN, "p" + id + "n"}, {nlC, "p" + id + "c"}} {
			if err := x.nl.LinkSetMTU(must(x.nl.LinkByName(x.name)), mtu); err != nil {
				t.Fatal(err)
			}
		}
		if err := nlC.RouteAdd(&netlink.Route{Gw: gw.AsSlice()}); err != nil {
			t.Fatalf("default route in container: %v", err)
		}
		if err := netns.Do(n.node, func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0) }); err != nil {
			t.Fatal(err)
		}
		switch be {
		case "udp":
			nd := newNode(t, n.node, "p"+id, n.pub, n.local, mtu)
			engs = append(engs, nd.eng)
			nd.eng.SetPeers([]udptun.Peer{{Subnet: n.peerNet, PublicIP: n.peer}})
		case "vxlan":
			// ip link add pNv type vxlan id 1 local PUB remote PEER dstport 8472 dev pNu
			under := must(nlN.LinkByName("p" + id + "u"))
			vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "p" + id + "v", MTU: mtu}, VxlanId: 1,
				VtepDevIndex: under.Attrs().Index, SrcAddr: n.pub.AsSlice(), Group: n.peer.AsSlice(), Port: 8472, Learning: true}
			if err := nlN.LinkAdd(vx); err != nil {
				t.Fatalf("add vxlan: %v", err)
			}
			l := must(nlN.LinkByName(vx.Name))
			if err := nlN.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: n.local.Addr().AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
				t.Fatal(err)
			}
			if err := nlN.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
			// ip route add PEERNET via PEERNET.0 dev pNv onlink
			if err := nlN.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: &net.IPNet{IP: n.peerNet.Addr().AsSlice(), Mask: net.CIDRMask(24, 32)},
				Gw: n.peerNet.Addr().AsSlice(), Flags: int(netlink.FLAG_ONLINK)}); err != nil {
				t.Fatalf("route via vxlan: %v", err)
			}
		}
	}
	return perfNet{c1: c1, c2: c2, n1: n1, n2: n2, engs: engs}
}

// iperf runs iperf3 -s in c2 and iperf3 -c in c1 and returns the received
// bits per second.
func iperf(t *testing.T, c1, c2 netns.NsHandle, streams, secs int) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+60)*time.Second)
	defer cancel()
	var out bytes.Buffer
	var res struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	for try := 0; ; try++ {
		// A one-off server per attempt: -1 exits after any client, even
		// one that failed.
		srv := exec.Command("/usr/bin/iperf3", "-s", "-1", "-B", "10.244.2.2", "-p", "5201")
		if err := netns.StartIn(c2, srv); err != nil {
			t.Fatal(err)
		}
		stopSrv := func() { _ = srv.Process.Kill(); _ = srv.Wait() }
		time.Sleep(300 * time.Millisecond)
		out.Reset()
		cli := exec.CommandContext(ctx, "/usr/bin/iperf3", "-c", "10.244.2.2", "-p", "5201", "-t", strconv.Itoa(secs), "-O", "1", "-P", strconv.Itoa(streams), "-J")
		cli.Stdout = &out
		if err := netns.StartIn(c1, cli); err != nil {
			stopSrv()
			t.Fatal(err)
		}
		err := cli.Wait()
		stopSrv()
		jerr := json.Unmarshal(out.Bytes(), &res)
		if err == nil && jerr == nil && res.Error == "" && res.End.SumReceived.BitsPerSecond > 0 {
			break
		}
		if try > 20 {
			t.Fatalf("iperf3 client: %v %v %q\n%s", err, jerr, res.Error, out.String())
		}
		time.Sleep(100 * time.Millisecond) // server not listening yet
	}
	return res.End.SumReceived.BitsPerSecond
}
