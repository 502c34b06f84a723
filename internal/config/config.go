package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"strings"
)

// Backend types.
const (
	BackendVXLAN  = "vxlan"
	BackendHostGW = "host-gw"
	// BackendUDP is the userspace encapsulation (internal/udptun): for
	// underlays that carry only UDP, or kernels without VXLAN.
	BackendUDP = "udp"
)

// Backends lists the backend types in the order errors and help name them.
func Backends() []string { return []string{BackendVXLAN, BackendHostGW, BackendUDP} }

// Defaults applied by Parse and Defaults.
const (
	DefaultSubnetLen = 24
	DefaultVNI       = 1
	DefaultVXLANPort = 8472
	// DefaultUDPPort is the udp backend's port (Flannel's 8285). It must
	// equal udptun.DefaultPort; config imports nothing of ours, so the
	// agent's tests check that the two agree.
	DefaultUDPPort = 8285
	// MaxSubnetLen leaves room for a gateway and at least two workloads.
	MaxSubnetLen = 30
	// VXLANOverhead is the outer IPv4 (20) + UDP (8) + VXLAN (8) + inner
	// Ethernet (14) header cost of one encapsulated frame.
	VXLANOverhead = 50
	// UDPOverhead is the outer IPv4 (20) + UDP (8) + tulle header (8) cost
	// of one packet of the udp backend (udptun.Overhead, checked by the
	// agent's tests).
	UDPOverhead = 36
	// MaxNetworkID bounds backend.vni: the VXLAN VNI is 24 bits, and the
	// udp header's network id is held to the same range so a config valid
	// for one backend stays valid for the other.
	MaxNetworkID = 1<<24 - 1
)

// ErrInvalid is wrapped by every validation error so callers can tell a bad
// document from an I/O failure.
var ErrInvalid = errors.New("config: invalid network config")

// Network is the cluster-wide network configuration.
type Network struct {
	// Network is the IPv4 CIDR every container address is drawn from.
	Network netip.Prefix `json:"network"`
	// SubnetLen is the prefix length of each node's slice (default 24).
	SubnetLen int `json:"subnetLen,omitempty"`
	// SubnetMin and SubnetMax bound the node subnets handed out (network
	// addresses of the first and last subnet). Zero means the whole network.
	SubnetMin netip.Addr `json:"subnetMin,omitzero"`
	SubnetMax netip.Addr `json:"subnetMax,omitzero"`
	// MTU overrides the workload MTU computed from the underlay.
	MTU int `json:"mtu,omitempty"`
	// Backend says how packets cross the underlay.
	Backend Backend `json:"backend"`
}

// Backend selects and tunes the encapsulation.
type Backend struct {
	Type string `json:"type"`
	// VNI is the VXLAN network identifier (vxlan), or the network id in
	// every udp header (udp; datagrams with another id are dropped).
	// Default 1.
	VNI int `json:"vni,omitempty"`
	// Port is the UDP port: VXLAN's (default 8472) or the udp backend's
	// (default 8285).
	Port int `json:"port,omitempty"`
	// DirectRouting uses host-gw routes for peers on the same L2 segment
	// and VXLAN for the rest (vxlan only).
	DirectRouting bool `json:"directRouting,omitempty"`
}

// Parse decodes a network config strictly (unknown fields are errors),
// applies defaults and validates it. The error names the field and value.
func Parse(data []byte) (Network, error) {
	var n Network
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&n); err != nil {
		return Network{}, fmt.Errorf("%w: decode: %v", ErrInvalid, err)
	}
	if dec.More() {
		return Network{}, fmt.Errorf("%w: trailing data after the JSON object", ErrInvalid)
	}
	n = n.WithDefaults()
	if err := n.Validate(); err != nil {
		return Network{}, err
	}
	return n, nil
}

// Marshal renders the config as indented JSON.
func (n Network) Marshal() []byte {
	b, _ := json.MarshalIndent(n, "", "  ") // plain data: cannot fail
	return b
}

// WithDefaults fills unset fields with their defaults.
func (n Network) WithDefaults() Network {
	if n.SubnetLen == 0 {
		n.SubnetLen = DefaultSubnetLen
	}
	if n.Backend.Type == "" {
		n.Backend.Type = BackendVXLAN
	}
	switch n.Backend.Type {
	case BackendVXLAN:
		if n.Backend.VNI == 0 {
			n.Backend.VNI = DefaultVNI
		}
		if n.Backend.Port == 0 {
			n.Backend.Port = DefaultVXLANPort
		}
	case BackendUDP:
		if n.Backend.VNI == 0 {
			n.Backend.VNI = DefaultVNI
		}
		if n.Backend.Port == 0 {
			n.Backend.Port = DefaultUDPPort
		}
	}
	// Host bits are left in place so that Validate reports them.
	if n.Network.IsValid() && n.Network.Addr().Is4() {
		if n.SubnetLen >= n.Network.Bits() && n.SubnetLen <= 32 {
			if !n.SubnetMin.IsValid() {
				n.SubnetMin = n.Network.Masked().Addr()
			}
			if !n.SubnetMax.IsValid() {
				n.SubnetMax = lastSubnet(n.Network.Masked(), n.SubnetLen)
			}
		}
	}
	return n
}

func invalid(field string, value any, why string) error {
	return fmt.Errorf("%w: %s %v: %s", ErrInvalid, field, value, why)
}

// Validate checks a defaulted config. Every error names the field and value
// and says what a valid one looks like.
func (n Network) Validate() error {
	if !n.Network.IsValid() {
		return invalid("network", `""`, "required: an IPv4 CIDR such as 10.244.0.0/16")
	}
	if !n.Network.Addr().Is4() {
		return invalid("network", n.Network, "must be an IPv4 CIDR (IPv6 is not supported yet)")
	}
	if n.Network.Addr() != n.Network.Masked().Addr() {
		return invalid("network", n.Network, "host bits are set; use "+n.Network.Masked().String())
	}
	if n.SubnetLen < 1 || n.SubnetLen > MaxSubnetLen {
		return invalid("subnetLen", n.SubnetLen, fmt.Sprintf("must be between %d and %d", n.Network.Bits()+1, MaxSubnetLen))
	}
	if n.SubnetLen <= n.Network.Bits() {
		return invalid("subnetLen", n.SubnetLen, fmt.Sprintf("network %s is too small for two subnets of /%d; use a subnetLen of at least %d", n.Network, n.SubnetLen, n.Network.Bits()+1))
	}
	for _, f := range []struct {
		name string
		a    netip.Addr
	}{{"subnetMin", n.SubnetMin}, {"subnetMax", n.SubnetMax}} {
		if !f.a.IsValid() {
			continue
		}
		if !n.Network.Contains(f.a) {
			return invalid(f.name, f.a, "outside network "+n.Network.String())
		}
		if p := netip.PrefixFrom(f.a, n.SubnetLen).Masked(); p.Addr() != f.a {
			return invalid(f.name, f.a, fmt.Sprintf("not on a /%d boundary; use %s", n.SubnetLen, p.Addr()))
		}
	}
	if n.SubnetMin.IsValid() && n.SubnetMax.IsValid() && n.SubnetMax.Less(n.SubnetMin) {
		return invalid("subnetMin", n.SubnetMin, "greater than subnetMax "+n.SubnetMax.String())
	}
	if c := n.SubnetCount(); c < 2 {
		return invalid("subnetMax", n.SubnetMax, fmt.Sprintf("subnetMin..subnetMax holds %d subnet(s); at least 2 are needed", c))
	}
	if n.MTU != 0 && (n.MTU < 576 || n.MTU > 65535) {
		return invalid("mtu", n.MTU, "must be between 576 and 65535, or 0 to derive it from the underlay")
	}
	switch n.Backend.Type {
	case BackendVXLAN, BackendUDP:
		if n.Backend.VNI < 1 || n.Backend.VNI > MaxNetworkID {
			return invalid("backend.vni", n.Backend.VNI, fmt.Sprintf("must be between 1 and %d", MaxNetworkID))
		}
		if n.Backend.Port < 1 || n.Backend.Port > 65535 {
			return invalid("backend.port", n.Backend.Port, "must be between 1 and 65535")
		}
		if n.Backend.Type == BackendUDP && n.Backend.DirectRouting {
			return invalid("backend.directRouting", true, "is a vxlan option; the udp backend carries every peer through its tunnel (remove it, or use the vxlan backend)")
		}
	case BackendHostGW:
		if n.Backend.VNI != 0 || n.Backend.Port != 0 || n.Backend.DirectRouting {
			return invalid("backend.type", n.Backend.Type, "takes no vni, port or directRouting (those are vxlan and udp options)")
		}
	default:
		return invalid("backend.type", fmt.Sprintf("%q", n.Backend.Type), "unknown; use one of "+strings.Join(Backends(), ", "))
	}
	return nil
}

// SubnetCount is the number of node subnets between SubnetMin and SubnetMax.
func (n Network) SubnetCount() int {
	if !n.SubnetMin.IsValid() || !n.SubnetMax.IsValid() || n.SubnetMax.Less(n.SubnetMin) {
		return 0
	}
	lo := new(big.Int).SetBytes(n.SubnetMin.AsSlice())
	hi := new(big.Int).SetBytes(n.SubnetMax.AsSlice())
	d := new(big.Int).Sub(hi, lo)
	d.Rsh(d, uint(32-n.SubnetLen))
	if !d.IsInt64() || d.Int64() > 1<<30 {
		return 1 << 30
	}
	return int(d.Int64()) + 1
}

// Subnets calls yield for every node subnet from SubnetMin to SubnetMax in
// order, stopping when yield returns false.
func (n Network) Subnets(yield func(netip.Prefix) bool) {
	if n.SubnetCount() == 0 {
		return
	}
	step := uint32(1) << (32 - n.SubnetLen)
	a := u32(n.SubnetMin)
	last := u32(n.SubnetMax)
	for {
		if !yield(netip.PrefixFrom(fromU32(a), n.SubnetLen)) || a == last {
			return
		}
		a += step
	}
}

// Contains reports whether p is a valid node subnet of this config: the right
// length, aligned and within SubnetMin..SubnetMax.
func (n Network) Contains(p netip.Prefix) bool {
	return p.IsValid() && p.Bits() == n.SubnetLen && p.Masked() == p &&
		!p.Addr().Less(n.SubnetMin) && !n.SubnetMax.Less(p.Addr())
}

// WorkloadMTU is the MTU for workload interfaces and the bridge, given the
// underlay MTU: the override if set, else the underlay minus the backend's
// encapsulation overhead.
func (n Network) WorkloadMTU(underlayMTU int) int {
	if n.MTU != 0 {
		return n.MTU
	}
	switch n.Backend.Type {
	case BackendVXLAN:
		return underlayMTU - VXLANOverhead
	case BackendUDP:
		return underlayMTU - UDPOverhead
	}
	return underlayMTU
}

func lastSubnet(p netip.Prefix, subnetLen int) netip.Addr {
	hostBits := 32 - p.Bits()
	a := u32(p.Addr()) | (uint32(1<<hostBits) - 1)
	a &^= uint32(1)<<(32-subnetLen) - 1
	return fromU32(a)
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func fromU32(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
