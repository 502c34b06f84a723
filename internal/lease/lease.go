package lease

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/tulle-net/tulle/internal/config"
)

// Lease is one node's hold on a subnet of the cluster network.
type Lease struct {
	Subnet netip.Prefix
	Attrs
	// Expiry is when the datastore lease runs out unless renewed; zero if
	// unknown. It is not part of the stored value.
	Expiry time.Time
}

// Attrs is the value stored under a lease key.
type Attrs struct {
	// Node is the node's stable name; nodes are identified by name, not IP.
	Node string `json:"node"`
	// PublicIP is the node's underlay address.
	PublicIP netip.Addr `json:"publicIP"`
	// BackendType is the backend the node runs ("vxlan", "host-gw", "udp").
	BackendType string `json:"backend"`
	// BackendData carries backend specifics (vxlan: the VTEP MAC; udp:
	// the port).
	BackendData BackendData `json:"backendData,omitzero"`
}

// BackendData is the backend-specific part of a lease.
type BackendData struct {
	// VtepMAC is the node's VXLAN device MAC address.
	VtepMAC string `json:"vtepMAC,omitempty"`
	// Port is the UDP port the node's udp backend listens on (udp only;
	// 0: unknown, peers use the cluster's backend.port).
	Port int `json:"port,omitempty"`
}

// ErrBadValue is wrapped when a datastore key or value cannot be decoded.
var ErrBadValue = errors.New("lease: bad datastore entry")

// SubnetKey renders a subnet as a key suffix: 10.244.3.0/24 -> "10.244.3.0-24".
func SubnetKey(p netip.Prefix) string {
	return p.Addr().String() + "-" + strconv.Itoa(p.Bits())
}

// ParseSubnetKey is the inverse of SubnetKey.
func ParseSubnetKey(s string) (netip.Prefix, error) {
	i := strings.LastIndexByte(s, '-')
	if i < 0 {
		return netip.Prefix{}, fmt.Errorf("%w: key %q is not <addr>-<bits>", ErrBadValue, s)
	}
	p, err := netip.ParsePrefix(s[:i] + "/" + s[i+1:])
	if err != nil || p.Masked() != p || !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("%w: key %q is not an IPv4 subnet", ErrBadValue, s)
	}
	return p, nil
}

// Encode renders the stored value of a lease.
func (a Attrs) Encode() []byte {
	b, _ := json.Marshal(a) // plain data: cannot fail
	return b
}

// Decode parses and checks a lease value read for subnet key k.
func Decode(subnet netip.Prefix, value []byte) (Lease, error) {
	var a Attrs
	if err := json.Unmarshal(value, &a); err != nil {
		return Lease{}, fmt.Errorf("%w: lease %s: %v", ErrBadValue, subnet, err)
	}
	if a.Node == "" {
		return Lease{}, fmt.Errorf("%w: lease %s has no node name", ErrBadValue, subnet)
	}
	if !a.PublicIP.IsValid() || !a.PublicIP.Is4() {
		return Lease{}, fmt.Errorf("%w: lease %s of node %q has no IPv4 publicIP", ErrBadValue, subnet, a.Node)
	}
	if a.BackendData.VtepMAC != "" {
		if _, err := net.ParseMAC(a.BackendData.VtepMAC); err != nil {
			return Lease{}, fmt.Errorf("%w: lease %s of node %q: vtepMAC %q: %v", ErrBadValue, subnet, a.Node, a.BackendData.VtepMAC, err)
		}
	}
	if p := a.BackendData.Port; p < 0 || p > 65535 {
		return Lease{}, fmt.Errorf("%w: lease %s of node %q: port %d is outside 1-65535", ErrBadValue, subnet, a.Node, p)
	}
	return Lease{Subnet: subnet, Attrs: a}, nil
}

// ErrExhausted is wrapped when no subnet is free.
var ErrExhausted = errors.New("lease: no free subnet")

// Choose picks the subnet for node given the current leases (pure).
//
// Order of preference: the subnet the node already holds (by node name);
// prev (the node's subnet before a restart) if it is still free and valid;
// otherwise a free subnet. To keep racing nodes from all trying the same
// subnet, the free subnet is picked among the first 64 free ones by seed.
// Subnets in avoid (lost races) are skipped.
func Choose(cfg config.Network, leases []Lease, node string, prev netip.Prefix, avoid map[netip.Prefix]bool, seed uint64) (netip.Prefix, error) {
	taken := make(map[netip.Prefix]bool, len(leases))
	for _, l := range leases {
		if l.Node == node && cfg.Contains(l.Subnet) && !avoid[l.Subnet] {
			return l.Subnet, nil
		}
		taken[l.Subnet] = true
	}
	if prev.IsValid() && cfg.Contains(prev) && !taken[prev] && !avoid[prev] {
		return prev, nil
	}
	const window = 64
	var free []netip.Prefix
	cfg.Subnets(func(p netip.Prefix) bool {
		if !taken[p] && !avoid[p] && !overlapsAny(p, leases) {
			free = append(free, p)
		}
		return len(free) < window
	})
	if len(free) == 0 {
		return netip.Prefix{}, fmt.Errorf("%w in network %s with subnetLen %d: %d of %d subnets are taken (%d recently lost races); widen the network or subnetMin/subnetMax, or remove stale leases with 'tulle leases'",
			ErrExhausted, cfg.Network, cfg.SubnetLen, len(taken), cfg.SubnetCount(), len(avoid))
	}
	return free[seed%uint64(len(free))], nil
}

// overlapsAny guards against leases of another subnetLen (config changed).
func overlapsAny(p netip.Prefix, leases []Lease) bool {
	for _, l := range leases {
		if l.Subnet.Bits() != p.Bits() && l.Subnet.Overlaps(p) {
			return true
		}
	}
	return false
}

// Gateway is the bridge address of a node subnet (.1).
func Gateway(subnet netip.Prefix) netip.Addr { return subnet.Addr().Next() }

// VTEPAddr is the address a node's VXLAN device holds (.0/32).
func VTEPAddr(subnet netip.Prefix) netip.Addr { return subnet.Addr() }
