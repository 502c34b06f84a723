package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tulle-net/tulle/internal/lab"
	"github.com/tulle-net/tulle/internal/netns"
)

// TestMasquerade checks the agent's masquerade across real agents: a
// container's connection to a host outside the cluster network (the lab's
// underlay switch, 10.250.0.1) arrives from its node's public IP, while a
// connection to a container on another node keeps the container's own
// address. Without the SNAT the switch could not even answer: it has no
// route to the container subnets.
func TestMasquerade(t *testing.T) {
	requireE2E(t)
	for _, tc := range []struct{ name, backend string }{
		{"ms1", "vxlan"},
		{"ms2", "host-gw"},
	} {
		t.Run(tc.backend, func(t *testing.T) {
			l := upLab(t, lab.Options{Name: tc.name, Nodes: 2, Containers: 1, Backend: tc.backend})
			ns := func(target string) netns.NsHandle {
				t.Helper()
				name, err := l.NS(target)
				if err != nil {
					t.Fatal(err)
				}
				h, err := netns.Open(name)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { h.Close() })
				return h
			}
			ip := func(target string) netip.Addr {
				t.Helper()
				a, err := l.IP(target)
				if err != nil {
					t.Fatal(err)
				}
				return a
			}
			sw, err := netns.Open(tc.name + "-sw")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { sw.Close() })
			outside := masqEcho(t, sw, "10.250.0.1:7070")
			inside := masqEcho(t, ns("node2/c1"), netip.AddrPortFrom(ip("node2/c1"), 7070).String())

			c1 := ns("node1/c1")
			if got, want := masqSource(t, c1, outside), ip("node1"); got != want {
				t.Errorf("node1/c1 -> %s (outside the cluster) arrived from %s, want node1's public IP %s", outside, got, want)
			}
			if got, want := masqSource(t, c1, inside), ip("node1/c1"); got != want {
				t.Errorf("node1/c1 -> %s (node2/c1) arrived from %s, want the container's own %s", inside, got, want)
			}
		})
	}
}

// masqEcho listens on addr inside namespace h and answers every connection
// with the source address it saw. It stops at cleanup.
func masqEcho(t *testing.T, h netns.NsHandle, addr string) string {
	t.Helper()
	var ln net.Listener
	err := netns.Do(h, func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s\n", c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap())
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return addr
}

// masqSource connects from namespace h to addr and returns the source
// address the server saw.
func masqSource(t *testing.T, h netns.NsHandle, addr string) netip.Addr {
	t.Helper()
	var c net.Conn
	err := netns.Do(h, func() (err error) {
		d := net.Dialer{Timeout: 3 * time.Second}
		c, err = d.DialContext(context.Background(), "tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatalf("connect to %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read from %s: %v", addr, err)
	}
	a, err := netip.ParseAddr(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("answer from %s: %q", addr, line)
	}
	return a
}
