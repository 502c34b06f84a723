package dataplane

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/tulle-net/tulle/internal/netns"
	"github.com/tulle-net/tulle/internal/netns/nstest"
	"github.com/tulle-net/tulle/internal/plan"
)

// TestTrafficOverVXLAN proves the encapsulation end to end: two nodes on one
// underlay segment, each given the other as its only VXLAN peer, exchange TCP
// data between their bridge addresses, which are routable only through
// tulle.1.
//
//	node A (tdp-*)                                node B (tdp-*)
//	tulle0 10.244.1.1/24                          tulle0 10.244.2.1/24
//	tulle.1 10.244.1.0/32 mac ..0a                tulle.1 10.244.2.0/32 mac ..0b
//	    |  vxlan id 1 dstport 8472                    |
//	ul0 192.168.0.1/24 ====== veth ================ ul0 192.168.0.2/24
func TestTrafficOverVXLAN(t *testing.T) {
	t.Parallel()
	_, ha := nstest.New(t, "tdp")
	_, hb := nstest.New(t, "tdp")
	nstest.Veth(t,
		nstest.End{NS: ha, Name: "ul0", Addr: netip.MustParsePrefix("192.168.0.1/24")},
		nstest.End{NS: hb, Name: "ul0", Addr: netip.MustParsePrefix("192.168.0.2/24")})
	a, b := startNode(t, "a", ha), startNode(t, "b", hb)

	// node state for subnet 10.244.<self>.0/24 with the other node as peer.
	state := func(self, other int, selfMAC, otherMAC net.HardwareAddr) plan.State {
		p := peer{other, otherMAC}
		s := vxState(p)
		s.Bridge.Addr = netip.MustParsePrefix(fmt.Sprintf("10.244.%d.1/24", self))
		s.VXLAN.Local = netip.MustParseAddr(fmt.Sprintf("192.168.0.%d", self))
		s.VXLAN.MAC = selfMAC
		s.VXLAN.Addr = netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/32", self))
		s.Masquerade = &plan.Masquerade{Network: netip.MustParsePrefix("10.244.0.0/16"), Source: netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", self))}
		// peer's public IP is 192.168.0.<other>: fits peer.public().
		return s
	}
	a.applyTwice(t, state(1, 2, macA, macB))
	b.applyTwice(t, state(2, 1, macB, macA))

	// An echo server in B, listening on B's bridge address.
	var ln net.Listener
	if err := netns.Do(hb, func() error {
		var err error
		ln, err = net.Listen("tcp4", "10.244.2.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		_, err = io.Copy(c, c)
		served <- err
	}()

	// Dial from A. Enough data for many full-sized frames.
	payload := bytes.Repeat([]byte("tulle over vxlan "), 20000)
	var got []byte
	err := netns.Do(ha, func() error {
		d := net.Dialer{Timeout: 5 * time.Second}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := d.DialContext(ctx, "tcp4", ln.Addr().String())
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		go func() {
			_, _ = c.Write(payload)
			_ = c.(*net.TCPConn).CloseWrite()
		}()
		got, err = io.ReadAll(c)
		return err
	})
	if err != nil {
		t.Fatalf("A -> B over vxlan: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echo returned %d bytes, want %d", len(got), len(payload))
	}
	if err := <-served; err != nil {
		t.Fatalf("server: %v", err)
	}
	// And it really went through the tunnel.
	for _, n := range []*node{a, b} {
		st := n.link(t, "tulle.1").Attrs().Statistics
		if st == nil || st.TxPackets == 0 || st.RxPackets == 0 {
			t.Errorf("tulle.1 statistics %+v: no traffic through the tunnel", st)
		}
	}
}
