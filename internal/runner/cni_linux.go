package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/tulle-net/tulle/internal/cni"
)

// ContainerIfName is the container's interface from the CNI plugin.
const ContainerIfName = "eth0"

// pluginType is the CNI type of tulle's plugin.
const pluginType = "tulle"

// cniAttacher attaches a namespace to the node's network by executing the
// CNI plugins of a conflist through libcni, as podman and containerd do.
// The plugins run in the caller's network namespace: the node's.
type cniAttacher struct {
	conf     string   // conflist file
	path     []string // CNI_PATH
	cacheDir string
	// pluginBin, when set, is the tulle-cni binary run for type "tulle"
	// when no directory of path has a "tulle" (tulle-cni next to tulle).
	pluginBin string
}

// pluginExec is libcni's default exec, except that type "tulle" may
// resolve to a tulle-cni binary outside the CNI path.
type pluginExec struct {
	*invoke.DefaultExec
	pluginBin string
}

func (e pluginExec) FindInPath(plugin string, paths []string) (string, error) {
	p, err := invoke.FindInPath(plugin, paths)
	if err != nil && plugin == pluginType && e.pluginBin != "" {
		if _, serr := os.Stat(e.pluginBin); serr == nil {
			return e.pluginBin, nil
		}
	}
	return p, err
}

func (a cniAttacher) exec() pluginExec {
	return pluginExec{
		DefaultExec: &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}},
		pluginBin:   a.pluginBin,
	}
}

func (a cniAttacher) config() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir(a.path, a.cacheDir, a.exec())
}

// load reads the conflist and checks that every plugin it names can be
// found: it has no side effects, so `tulle run` rejects a bad config
// before it creates anything.
func (a cniAttacher) load() (*libcni.NetworkConfigList, error) {
	if a.conf == "" {
		return nil, fmt.Errorf("%w: --cni-conf is empty: bridge networking needs the node's CNI conflist", ErrInvalid)
	}
	list, err := libcni.ConfListFromFile(a.conf)
	if err != nil {
		return nil, fmt.Errorf("%w: --cni-conf %s: %v (write the node's conflist there, see docs/cni.md, or pass --cni-conf)", ErrInvalid, a.conf, err)
	}
	ex := a.exec()
	for _, p := range list.Plugins {
		if _, err := ex.FindInPath(p.Network.Type, a.path); err != nil {
			return nil, fmt.Errorf("%w: CNI plugin %q of %s not found in --cni-path %q: install it there (e.g. tulle-cni as %s/%s) or pass --cni-path",
				ErrInvalid, p.Network.Type, a.conf, a.path, firstOr(a.path, "/opt/cni/bin"), p.Network.Type)
		}
	}
	return list, nil
}

func firstOr(s []string, def string) string {
	if len(s) > 0 {
		return s[0]
	}
	return def
}

func (a cniAttacher) runtimeConf(id, netnsPath string, ports []Port) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{ContainerID: id, NetNS: netnsPath, IfName: ContainerIfName}
	if len(ports) > 0 {
		var pm []cni.PortMapping
		for _, p := range ports {
			m := cni.PortMapping{HostPort: int(p.HostPort), ContainerPort: int(p.ContainerPort), Protocol: p.Proto}
			if p.HostIP.IsValid() {
				m.HostIP = p.HostIP.String()
			}
			pm = append(pm, m)
		}
		rt.CapabilityArgs = map[string]any{"portMappings": pm}
	}
	return rt
}

// ErrPortInUse is wrapped when the plugin refuses a host port another
// attachment on the node already publishes.
var ErrPortInUse = errors.New("host port in use")

// add runs CNI ADD for the container and returns its IPv4 address (CIDR).
// A failed ADD leaves nothing behind (the plugin rolls back).
func (a cniAttacher) add(ctx context.Context, list *libcni.NetworkConfigList, id, netnsPath string, ports []Port) (string, error) {
	res, err := a.config().AddNetworkList(ctx, list, a.runtimeConf(id, netnsPath, ports))
	if err != nil {
		var te *types.Error
		if errors.As(err, &te) && te.Code == cni.ErrPortInUse {
			return "", fmt.Errorf("%w: %s (publish another host port with -p, or remove the container holding it)", ErrPortInUse, te.Msg)
		}
		return "", fmt.Errorf("cni add %s (conflist %s, netns %s): %w", id, a.conf, netnsPath, err)
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return "", fmt.Errorf("cni add %s: convert result: %w", id, err)
	}
	for _, ip := range r.IPs {
		if ip.Address.IP.To4() != nil {
			return ip.Address.String(), nil
		}
	}
	return "", fmt.Errorf("cni add %s: the result has no IPv4 address", id)
}

// del runs CNI DEL (idempotent: frees the address, the veth and the port
// rules). It works without the namespace.
func (a cniAttacher) del(ctx context.Context, id, netnsPath string, ports []Port) error {
	list, err := libcni.ConfListFromFile(a.conf)
	if err != nil {
		return fmt.Errorf("cni del %s: read conflist %s: %w", id, a.conf, err)
	}
	if _, err := os.Stat(netnsPath); err != nil {
		netnsPath = "" // gone: the plugin cleans up the host side only
	}
	if err := a.config().DelNetworkList(ctx, list, a.runtimeConf(id, netnsPath, ports)); err != nil {
		return fmt.Errorf("cni del %s (conflist %s): %w", id, a.conf, err)
	}
	// libcni leaves the cache dir's empty subdirectories; ours only.
	_ = os.Remove(filepath.Join(a.cacheDir, "results"))
	return nil
}
