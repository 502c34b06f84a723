// Package subnetfile owns /run/tulle/subnet.json: the node's network facts
// the agent publishes once its dataplane is ready, and the CNI plugin reads on
// every ADD. Writes are atomic (temp file + rename), so a reader sees either
// the old or the new document, never a torn one.
package subnetfile

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/tulle-net/tulle/internal/atomicfile"
)

// DefaultPath is where the agent writes the file on a host.
const DefaultPath = "/run/tulle/subnet.json"

// Info is the content of subnet.json.
type Info struct {
	// Network is the cluster network (e.g. 10.244.0.0/16).
	Network netip.Prefix `json:"network"`
	// Subnet is this node's subnet (e.g. 10.244.3.0/24).
	Subnet netip.Prefix `json:"subnet"`
	// Gateway is the bridge address workloads route through (.1).
	Gateway netip.Addr `json:"gateway"`
	// MTU is the workload MTU.
	MTU int `json:"mtu"`
	// IPMasq reports whether the agent masquerades traffic leaving the
	// cluster network (so the plugin need not).
	IPMasq bool `json:"ipMasq"`
	// Bridge is the bridge name workloads attach to.
	Bridge string `json:"bridge"`
	// Node is the node name holding the lease.
	Node string `json:"node"`
	// Backend is the backend type.
	Backend string `json:"backend"`
	// GSOMaxSize, if not 0, is the gso_max_size and gso_ipv4_max_size the
	// plugin gives each workload's host-side veth (and the bridge): the
	// udp backend writes packets that large for workloads (BIG TCP).
	GSOMaxSize int `json:"gsoMaxSize,omitempty"`
	// WorkloadGSOMaxSize, if not 0, is the gso_max_size (and
	// gso_ipv4_max_size) the plugin gives each workload's eth0, at most:
	// the udp backend's largest super-packet that leaves in one UDP send.
	WorkloadGSOMaxSize int `json:"workloadGSOMaxSize,omitempty"`
}

// MaxGSOSize is Linux's GSO_MAX_SIZE, the largest GSOMaxSize.
const MaxGSOSize = 524280

// ErrMissing is wrapped when the file does not exist.
var ErrMissing = errors.New("subnetfile: missing")

// Validate checks the fields a consumer relies on.
func (i Info) Validate() error {
	switch {
	case !i.Network.IsValid():
		return errors.New("network is missing")
	case !i.Subnet.IsValid() || !i.Network.Contains(i.Subnet.Addr()):
		return fmt.Errorf("subnet %s is not inside network %s", i.Subnet, i.Network)
	case i.GSOMaxSize != 0 && (i.GSOMaxSize < 65536 || i.GSOMaxSize > MaxGSOSize):
		return fmt.Errorf("gsoMaxSize %d is outside 65536-%d", i.GSOMaxSize, MaxGSOSize)
	case i.WorkloadGSOMaxSize != 0 && (i.WorkloadGSOMaxSize < 16384 || i.WorkloadGSOMaxSize > 65536):
		return fmt.Errorf("workloadGSOMaxSize %d is outside 16384-65536", i.WorkloadGSOMaxSize)
	case !i.Subnet.Contains(i.Gateway):
		return fmt.Errorf("gateway %s is not inside subnet %s", i.Gateway, i.Subnet)
	case i.MTU < 576:
		return fmt.Errorf("mtu %d is below 576", i.MTU)
	case i.Bridge == "":
		return errors.New("bridge is missing")
	}
	return nil
}

// Write stores info at path atomically, creating the directory.
func Write(path string, info Info) error {
	if err := info.Validate(); err != nil {
		return fmt.Errorf("write subnet file %s: %w", path, err)
	}
	b, _ := json.MarshalIndent(info, "", "  ")
	b = append(b, '\n')
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write subnet file %s: %w", path, err)
	}
	if err := atomicfile.Write(path, b, 0o644); err != nil {
		return fmt.Errorf("write subnet file: %w", err)
	}
	return nil
}

// Read loads and validates the file at path.
func Read(path string) (Info, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Info{}, fmt.Errorf("%w: %s (is 'tulle agent' running on this node?)", ErrMissing, path)
	}
	if err != nil {
		return Info{}, fmt.Errorf("read subnet file %s: %w", path, err)
	}
	var info Info
	if err := json.Unmarshal(b, &info); err != nil {
		return Info{}, fmt.Errorf("parse subnet file %s: %w", path, err)
	}
	if err := info.Validate(); err != nil {
		return Info{}, fmt.Errorf("subnet file %s: %w", path, err)
	}
	return info, nil
}
