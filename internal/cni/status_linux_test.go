package cni

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/tulle-net/tulle/internal/ipnet"
	"github.com/tulle-net/tulle/internal/subnetfile"
)

// TestStatus walks STATUS through every reason it has to say "not
// available" (code 50) and back: no subnet file, a broken one, a stale one
// (the bridge carries another subnet's gateway), and an exhausted pool.
func TestStatus(t *testing.T) {
	n := newNode(t)
	p := New(Options{HostNSPath: n.ns.Path()})
	conf := n.conf("1.1.0", nil)
	status := func() error { return p.Status(&skel.CmdArgs{StdinData: conf}) }
	want50 := func(what, msg string) {
		t.Helper()
		err := status()
		if e, ok := err.(*types.Error); !ok || e.Code != types.ErrPluginNotAvailable || !strings.Contains(e.Msg, msg) {
			t.Fatalf("STATUS with %s = %v, want code 50 saying %q", what, err, msg)
		}
	}
	wantOK := func(what string) {
		t.Helper()
		if err := status(); err != nil {
			t.Fatalf("STATUS with %s: %v", what, err)
		}
	}

	mustOK(t, os.Remove(n.subnetFile))
	want50("no subnet file", "is 'tulle agent' running")
	mustOK(t, os.WriteFile(n.subnetFile, []byte("{"), 0o644))
	want50("a broken subnet file", "subnet file")
	mustOK(t, subnetfile.Write(n.subnetFile, n.info))
	wantOK("a valid subnet file and no bridge yet")

	// The agent set the bridge up for the file's subnet.
	attrs := netlink.NewLinkAttrs()
	attrs.Name = testBridge
	br := &netlink.Bridge{LinkAttrs: attrs}
	mustOK(t, n.h.LinkAdd(br))
	gw := netlink.Addr{IPNet: ipnet.From(netip.PrefixFrom(n.info.Gateway, n.info.Subnet.Bits()))}
	mustOK(t, n.h.AddrAdd(br, &gw))
	wantOK("the bridge carrying the file's gateway")

	// The agent moved to another subnet; the file still says the old one.
	mustOK(t, n.h.AddrDel(br, &gw))
	mustOK(t, n.h.AddrAdd(br, &netlink.Addr{IPNet: ipnet.From(netip.MustParsePrefix("10.250.9.1/24"))}))
	want50("a stale subnet file", "is stale")
	mustOK(t, n.h.AddrAdd(br, &gw))
	wantOK("the gateway back")

	// A /29 has 5 addresses to hand out (8 - network, broadcast, gateway).
	small := n.info
	small.Subnet = netip.MustParsePrefix("10.250.3.0/29")
	mustOK(t, subnetfile.Write(n.subnetFile, small))
	gw29 := netlink.Addr{IPNet: ipnet.From(netip.MustParsePrefix("10.250.3.1/29"))}
	mustOK(t, n.h.AddrAdd(br, &gw29))
	ids := []string{"ctr-1", "ctr-2", "ctr-3", "ctr-4", "ctr-5"}
	for i, id := range ids {
		n.add(t, id, newNS(t), conf)
		if i < len(ids)-1 {
			wantOK("a pool with free addresses")
		}
	}
	want50("every address allocated", "is exhausted")
	if err := p.Del(args("ctr-3", "eth0", "", conf)); err != nil {
		t.Fatalf("DEL ctr-3: %v", err)
	}
	wantOK("one address freed again")
}
