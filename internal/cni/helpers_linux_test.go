package cni

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/tulle-net/tulle/internal/ipam"
	"github.com/tulle-net/tulle/internal/subnetfile"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Lab safety: every namespace here is named tcn-<hex>, bind-mounted under
// /run/netns and removed in t.Cleanup; the bridge and host veths live in a
// "node" namespace the test made, never in the root namespace. Plugins under
// test always get Options.HostNSPath, or run from a thread locked in the node
// namespace.

// requireRoot skips a kernel test when not root, but fails it under CI=true
// so CI cannot pass by skipping. (nstest.RequireRoot will replace it.)
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("kernel test needs root, and CI=true forbids skipping")
	}
	t.Skip("kernel test needs root")
}

const nsRunDir = "/run/netns"

// newNS creates a bind-mounted network namespace tcn-<hex> and removes it
// when the test ends. The namespace is made on a goroutine that locks its
// thread and never unlocks it, so the thread dies instead of going back to
// the pool in the wrong namespace (as plugins/pkg/testutils.NewNS does).
func newNS(t *testing.T) ns.NetNS {
	t.Helper()
	b := make([]byte, 5)
	rand.Read(b)
	path := filepath.Join(nsRunDir, "tcn-"+hex.EncodeToString(b))
	if err := os.MkdirAll(nsRunDir, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()

	var wg sync.WaitGroup
	wg.Go(func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		if err = unix.Unshare(unix.CLONE_NEWNET); err != nil {
			err = fmt.Errorf("unshare: %w", err)
			return
		}
		self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if err = unix.Mount(self, path, "none", unix.MS_BIND, ""); err != nil {
			err = fmt.Errorf("bind mount %s: %w", path, err)
		}
	})
	wg.Wait()
	if err != nil {
		os.Remove(path)
		t.Fatalf("create netns %s: %v", path, err)
	}
	n, err := ns.GetNS(path)
	if err != nil {
		removeNS(path)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.Close()
		if err := removeNS(path); err != nil {
			t.Errorf("remove netns %s: %v", path, err)
		}
	})
	return n
}

// removeNS unmounts and removes a namespace made by newNS; gone is fine.
func removeNS(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// handle returns a netlink handle inside n, closed at cleanup.
func handle(t *testing.T, n ns.NetNS) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(netns.NsHandle(int(n.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// node is a simulated host: a namespace for the bridge and host veths, a
// subnet file and an IPAM data directory.
type node struct {
	ns         ns.NetNS
	h          *netlink.Handle
	subnetFile string
	dataDir    string
	info       subnetfile.Info
	plugin     *Plugin
}

const testBridge = "tcnbr0"

func newNode(t *testing.T) *node {
	t.Helper()
	requireRoot(t)
	return newNodeIn(t, newNS(t))
}

// newNodeIn makes a node whose host side is the namespace hostNS.
func newNodeIn(t *testing.T, hostNS ns.NetNS) *node {
	t.Helper()
	dir := t.TempDir()
	n := &node{
		ns:         hostNS,
		subnetFile: filepath.Join(dir, "subnet.json"),
		dataDir:    filepath.Join(dir, "ipam"),
		info: subnetfile.Info{
			Network: netip.MustParsePrefix("10.250.0.0/16"),
			Subnet:  netip.MustParsePrefix("10.250.3.0/24"),
			Gateway: netip.MustParseAddr("10.250.3.1"),
			MTU:     1400,
			Bridge:  testBridge,
			Node:    "tcn-node",
			Backend: "vxlan",
		},
	}
	n.h = handle(t, n.ns)
	if err := subnetfile.Write(n.subnetFile, n.info); err != nil {
		t.Fatal(err)
	}
	n.plugin = New(Options{HostNSPath: n.ns.Path()})
	return n
}

// conf renders a network config for this node; extra overrides fields.
func (n *node) conf(version string, extra map[string]any) []byte {
	m := map[string]any{
		"cniVersion": version,
		"name":       "tcn-net",
		"type":       "tulle",
		"subnetFile": n.subnetFile,
		"dataDir":    n.dataDir,
	}
	for k, v := range extra {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	b, _ := json.Marshal(m)
	return b
}

func args(id, ifname string, netnsPath string, conf []byte) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: id, IfName: ifname, Netns: netnsPath, StdinData: conf}
}

// add runs ADD in-process and returns the parsed 1.0.0 result.
func (n *node) add(t *testing.T, id string, cont ns.NetNS, conf []byte) *current.Result {
	t.Helper()
	res, err := n.tryAdd(id, cont, conf)
	if err != nil {
		t.Fatalf("ADD %s: %v", id, err)
	}
	return res
}

func (n *node) tryAdd(id string, cont ns.NetNS, conf []byte) (*current.Result, error) {
	var out syncBuffer
	p := New(Options{HostNSPath: n.ns.Path(), Stdout: &out})
	if err := p.Add(args(id, "eth0", cont.Path(), conf)); err != nil {
		return nil, err
	}
	res, err := current.NewResult(out.Bytes())
	if err != nil {
		return nil, fmt.Errorf("parse result %s: %w", out.Bytes(), err)
	}
	return res.(*current.Result), nil
}

type syncBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = append(s.b, p...)
	return len(p), nil
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.b...)
}

// records returns the node's IPAM records.
func (n *node) records(t *testing.T) []ipam.Record {
	t.Helper()
	s, err := ipam.Open(n.dataDir, "tcn-net")
	if err != nil {
		t.Fatal(err)
	}
	recs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// link returns the link called name in h, or nil.
func link(t *testing.T, h *netlink.Handle, name string) netlink.Link {
	t.Helper()
	l, err := linkByName(h, name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}
