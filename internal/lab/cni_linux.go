package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"golang.org/x/sync/errgroup"
)

// Containers are attached the way a container runtime does it: libcni reads
// a network config list and executes the plugin binary found on the CNI
// path, with CNI_NETNS pointing at the container's namespace. The plugin
// must run inside the node's namespace (tulle0 and the host-side veth live
// there), so libcni is called on a thread inside it and the plugin process
// inherits that namespace.

// cniConfList is the node's network config list, also written to
// <node dir>/tulle.conflist so a user can replay it with cnitool.
func cniConfList(n *NodeState) []byte {
	doc := map[string]any{
		"cniVersion": "1.0.0",
		"name":       cniNetworkName,
		"plugins": []map[string]any{{
			"type":       pluginType,
			"subnetFile": subnetFilePath(n),
			"dataDir":    filepath.Join(n.Dir, "ipam"),
		}},
	}
	b, _ := json.MarshalIndent(doc, "", "  ") // plain data: cannot fail
	return b
}

// cniBinDir is the lab's CNI_PATH: libcni looks the plugin up by its type
// ("tulle"), so it holds a symlink tulle -> the tulle-cni binary.
func (l *Lab) cniBinDir() (string, error) {
	dir := filepath.Join(l.st.Dir, "cni-bin")
	if err := os.MkdirAll(dir, labDirPermissions); err != nil {
		return "", fmt.Errorf("create cni bin dir %s: %w", dir, err)
	}
	link := filepath.Join(dir, pluginType)
	if err := os.Symlink(l.st.CNIBin, link); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("link plugin %s to %s: %w", link, l.st.CNIBin, err)
	}
	return dir, nil
}

// attachContainers creates k containers per node and attaches each through
// the plugin; nodes proceed in parallel, a node's containers in order.
func (l *Lab) attachContainers(ctx context.Context, k int) error {
	if k == 0 {
		return nil
	}
	binDir, err := l.cniBinDir()
	if err != nil {
		return err
	}
	cacheDir := filepath.Join(l.st.Dir, "cni-cache")
	// Record every container namespace before creating any.
	l.mu.Lock()
	for i := range l.st.Nodes {
		n := &l.st.Nodes[i]
		for j := len(n.Containers) + 1; j <= k; j++ {
			ns := containerNS(l.st.Name, i+1, j)
			n.Containers = append(n.Containers, ContainerState{
				Name: containerName(j), NS: ns, ID: ns,
			})
			l.st.addNS(ns)
		}
	}
	err = l.saveLocked()
	l.mu.Unlock()
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	for i := range l.st.Nodes {
		g.Go(func() error {
			// One CNIConfig per goroutine: it sets itself up lazily and
			// is not safe for concurrent use.
			cni := libcni.NewCNIConfigWithCacheDir([]string{binDir}, cacheDir, nil)
			for j := 1; j <= k; j++ {
				if err := l.attach(gctx, cni, i+1, j); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return l.save()
}

// attach creates container j of node i and runs CNI ADD for it.
func (l *Lab) attach(ctx context.Context, cni *libcni.CNIConfig, i, j int) error {
	l.mu.Lock()
	n := l.st.Nodes[i-1]
	c := n.Containers[j-1]
	l.mu.Unlock()
	name := nodeName(i) + "/" + c.Name
	if err := createNS(c.NS); err != nil {
		return err
	}
	if err := setupContainerNS(c.NS); err != nil {
		return err
	}
	confBytes := cniConfList(&n)
	if err := os.WriteFile(filepath.Join(n.Dir, "tulle.conflist"), confBytes, 0o644); err != nil {
		return fmt.Errorf("write cni config for %s: %w", n.Name, err)
	}
	list, err := libcni.NetworkConfFromBytes(confBytes)
	if err != nil {
		return fmt.Errorf("parse cni config for %s: %w", n.Name, err)
	}
	rt := &libcni.RuntimeConf{ContainerID: c.ID, NetNS: nsPath(c.NS), IfName: containerIfName}
	var res types.Result
	err = doInNS(n.NS, func() error {
		var err error
		res, err = cni.AddNetworkList(ctx, list, rt)
		return err
	})
	if err != nil {
		return fmt.Errorf("cni add %s (netns %s) on %s: %w", name, c.NS, n.Name, err)
	}
	ip, err := resultIPv4(res)
	if err != nil {
		return fmt.Errorf("cni add %s: %w", name, err)
	}
	l.mu.Lock()
	l.st.Nodes[i-1].Containers[j-1].IP = ip
	l.mu.Unlock()
	l.log.Debug("container attached", keyContainer, name, keyIP, ip)
	return nil
}

// resultIPv4 picks the container's IPv4 address from a CNI result.
func resultIPv4(res types.Result) (netip.Prefix, error) {
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("convert cni result: %w", err)
	}
	for _, ipc := range r.IPs {
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok || !a.Unmap().Is4() {
			continue
		}
		bits, _ := ipc.Address.Mask.Size()
		return netip.PrefixFrom(a.Unmap(), bits), nil
	}
	return netip.Prefix{}, errors.New("cni result has no IPv4 address")
}
