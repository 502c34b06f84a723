package lab

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"

	"github.com/tulle-net/tulle/internal/netns/nstest"
)

// Kernel tests of the lab's own pieces (underlay, probes, teardown). The
// whole lab with agents is tested end to end in test/e2e.

// rootLinks lists the root namespace's links, to prove the lab adds none.
func rootLinks(t *testing.T) []string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	slices.Sort(names)
	return names
}

// assertGone fails if any namespace of lab name remains.
func assertGone(t *testing.T, name string) {
	t.Helper()
	names, err := listNS()
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range names {
		if isLabNS(name, ns) {
			t.Errorf("namespace %s remains", ns)
		}
	}
}

func fakeBins(t *testing.T, script string) (string, string) {
	t.Helper()
	dir := t.TempDir()
	exe, cni := filepath.Join(dir, "tulle"), filepath.Join(dir, "tulle-cni")
	for _, p := range []string{exe, cni} {
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return exe, cni
}

func TestUnderlay(t *testing.T) {
	nstest.RequireRoot(t)
	before := rootLinks(t)
	const name = "tlu1"
	root := t.TempDir()
	st := &State{Name: name, Dir: filepath.Join(root, name), Wire: true}
	for i := 1; i <= 2; i++ {
		st.Nodes = append(st.Nodes, NodeState{Name: nodeName(i), NS: nodeNS(name, i), IP: nodeIP(i), Dir: filepath.Join(st.Dir, nodeName(i))})
	}
	if err := os.MkdirAll(st.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	l := &Lab{log: testLogger(t), procs: &procs{}, st: st, opts: Options{Timeout: 10 * time.Second}}
	t.Cleanup(func() {
		if err := l.Down(context.Background()); err != nil {
			t.Errorf("down: %v", err)
		}
		assertGone(t, name)
		if after := rootLinks(t); !slices.Equal(before, after) {
			t.Errorf("root namespace links changed:\nbefore %v\nafter  %v", before, after)
		}
	})
	if err := l.buildUnderlay(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	res, err := l.Ping(ctx, "node1", "node2", PingOptions{Count: 20, Interval: 5 * time.Millisecond})
	if err != nil || res.Lost() != 0 {
		t.Fatalf("ping node1 -> node2: %+v, %v", res, err)
	}
	if err := l.TCPCheck(ctx, "node2", "node1"); err != nil {
		t.Fatal(err)
	}
	// The wire profile: no segmentation offload, GRO on, on both ends.
	for _, e := range [][2]string{{st.Nodes[0].NS, underlayIfName}, {switchNS(name), switchPort(1)}} {
		err := doInNS(e[0], func() error {
			et, err := ethtool.NewEthtool()
			if err != nil {
				return err
			}
			defer et.Close()
			f, err := et.Features(e[1])
			if err != nil {
				return err
			}
			if f["tx-tcp-segmentation"] || f["tx-generic-segmentation"] || f["tx-udp_tnl-segmentation"] || !f["rx-gro"] {
				t.Errorf("%s in %s: features tso=%t gso=%t udp_tnl=%t gro=%t", e[1], e[0],
					f["tx-tcp-segmentation"], f["tx-generic-segmentation"], f["tx-udp_tnl-segmentation"], f["rx-gro"])
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// Exec runs in the node: its ul0 carries the node's address.
	var out strings.Builder
	if err := l.Exec(ctx, "node2", []string{"ip", "-4", "-o", "addr", "show", "dev", underlayIfName}, nil, &out, &out); err != nil {
		t.Fatalf("exec: %v: %s", err, out.String())
	}
	if !strings.Contains(out.String(), nodeIP(2).String()+"/24") {
		t.Errorf("exec ip addr in node2: %s", out.String())
	}
}

func TestUpRollsBackOnFailure(t *testing.T) {
	nstest.RequireRoot(t)
	before := rootLinks(t)
	exe, cni := fakeBins(t, "echo fake tulle cannot start >&2; exit 3")
	root := t.TempDir()
	o := Options{Name: "tlu2", Nodes: 2, TulleBin: exe, CNIBin: cni, StateRoot: root, Timeout: 5 * time.Second, Logger: testLogger(t)}
	_, err := Up(context.Background(), o)
	if err == nil {
		t.Fatal("Up succeeded with a tulle binary that exits at once")
	}
	if !strings.Contains(err.Error(), "fake tulle cannot start") {
		t.Errorf("the error does not quote the log: %v", err)
	}
	assertGone(t, o.Name)
	if _, err := os.Stat(filepath.Join(root, o.Name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lab dir remains: %v", err)
	}
	if after := rootLinks(t); !slices.Equal(before, after) {
		t.Errorf("root namespace links changed: %v -> %v", before, after)
	}
}

func TestUpRefusesExistingLab(t *testing.T) {
	nstest.RequireRoot(t)
	exe, cni := fakeBins(t, "exit 0")
	root := t.TempDir()
	o := Options{Name: "tlu3", TulleBin: exe, CNIBin: cni, StateRoot: root}
	if err := os.MkdirAll(filepath.Join(root, o.Name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := writeState(&State{Name: o.Name, Dir: filepath.Join(root, o.Name)}); err != nil {
		t.Fatal(err)
	}
	_, err := Up(context.Background(), o)
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "tulle lab down --name tlu3") {
		t.Fatalf("Up over an existing lab = %v, want ErrExists with the down command", err)
	}
	// Down of a lab that never built anything is clean and idempotent.
	for range 2 {
		if _, err := Down(context.Background(), o); err != nil {
			t.Fatal(err)
		}
	}
	if found, err := Down(context.Background(), o); err != nil || found {
		t.Errorf("second Down = %t, %v; want nothing found", found, err)
	}
}
