// Package udppeers owns udp-peers.json in the agent's state directory: the
// udp backend's last engine configuration and peer set. The agent rewrites
// it atomically (temp file + rename) whenever either changes, and reads it
// at start-up to open the engine and forward packets before etcd is
// reachable, so that a restarted agent interrupts traffic for the time the
// process takes to start, not for the time etcd takes to answer. The lab
// reads it to tell when every node knows every peer. It is plain data: it
// imports nothing of ours.
package udppeers

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/tulle-net/tulle/internal/atomicfile"
	"github.com/tulle-net/tulle/internal/udptun"
)

// FileName is the file's name in the agent's state directory.
const FileName = "udp-peers.json"

// ErrMissing is wrapped by Read when there is no file.
var ErrMissing = errors.New("udppeers: no udp-peers.json")

// File is the content of udp-peers.json.
type File struct {
	Engine Engine `json:"engine"`
	// Peers are the remote nodes, as last given to the engine.
	Peers []Peer `json:"peers"`
}

// Engine is the engine's configuration (udptun.Config without the logger).
type Engine struct {
	TUN       string         `json:"tun"`
	MTU       int            `json:"mtu"`
	Listen    netip.AddrPort `json:"listen"`
	NetworkID uint32         `json:"networkID"`
	Local     netip.Prefix   `json:"local"`
	Cluster   netip.Prefix   `json:"cluster"`
	// MaxRXPacket is udptun.Config.MaxRXPacket (0: 64 KiB).
	MaxRXPacket int `json:"maxRXPacket,omitempty"`
}

// Peer is one remote node.
type Peer struct {
	Node     string       `json:"node,omitempty"`
	Subnet   netip.Prefix `json:"subnet"`
	PublicIP netip.Addr   `json:"publicIP"`
	Port     uint16       `json:"port"`
}

// Validate checks what an engine would be opened with.
func (f File) Validate() error {
	e := f.Engine
	switch {
	case e.TUN == "" || len(e.TUN) > 15 || strings.ContainsAny(e.TUN, "/ \t\n:"):
		return fmt.Errorf("engine.tun %q is not an interface name", e.TUN)
	case e.MTU < 68 || e.MTU > 65535:
		return fmt.Errorf("engine.mtu %d is outside 68-65535", e.MTU)
	case !e.Listen.Addr().Is4() || e.Listen.Port() == 0:
		return fmt.Errorf("engine.listen %s is not an IPv4 address and port", e.Listen)
	case e.NetworkID == 0:
		return errors.New("engine.networkID is 0")
	case !e.Local.IsValid() || !e.Local.Addr().Is4() || !e.Cluster.IsValid() || !e.Cluster.Addr().Is4():
		return fmt.Errorf("engine.local %s or engine.cluster %s is not an IPv4 prefix", e.Local, e.Cluster)
	case !e.Cluster.Contains(e.Local.Addr()):
		return fmt.Errorf("engine.local %s is outside engine.cluster %s", e.Local, e.Cluster)
	case e.MaxRXPacket != 0 && (e.MaxRXPacket < 65535 || e.MaxRXPacket > udptun.MaxRXPacketLimit):
		return fmt.Errorf("engine.maxRXPacket %d is outside 65535-%d (0: 65535)", e.MaxRXPacket, udptun.MaxRXPacketLimit)
	}
	for i, p := range f.Peers {
		if !p.Subnet.IsValid() || !p.Subnet.Addr().Is4() || !p.PublicIP.Is4() || p.Port == 0 {
			return fmt.Errorf("peers[%d] %s at %s port %d: want an IPv4 subnet, an IPv4 address and a port", i, p.Subnet, p.PublicIP, p.Port)
		}
	}
	return nil
}

// Write stores f at path atomically, creating the directory.
func Write(path string, f File) error {
	if err := f.Validate(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	b, _ := json.MarshalIndent(f, "", "  ") // plain data: cannot fail
	b = append(b, '\n')
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return atomicfile.Write(path, b, 0o644)
}

// Read loads and validates the file at path; ErrMissing if there is none.
func Read(path string) (File, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return File{}, fmt.Errorf("%w: %s", ErrMissing, path)
	}
	if err != nil {
		return File{}, fmt.Errorf("read %s: %w", path, err)
	}
	var f File
	if err := json.Unmarshal(b, &f); err != nil {
		return File{}, fmt.Errorf("parse %s: %w", path, err)
	}
	if err := f.Validate(); err != nil {
		return File{}, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// Remove deletes the file at path; a missing file is not an error.
func Remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}
