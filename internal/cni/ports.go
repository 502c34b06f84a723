package cni

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/tulle-net/tulle/internal/ipam"
)

// ErrPortInUse is the CNI error code (plugin-specific, >= 100) of an ADD
// whose host port is already published on the node by another attachment.
const ErrPortInUse uint = 100

// Chains of table inet tulle that the plugin owns. The agent owns the
// table's other chains (its masquerade) and never touches these; the plugin
// never touches the agent's (internal/dataplane, nftTable).
const (
	chainPortsPrerouting  = "ports-prerouting"
	chainPortsOutput      = "ports-output"
	chainPortsPostrouting = "ports-postrouting"
	chainPortsInput       = "ports-input"
)

// portMappingsKey is the CNI capability, and the runtimeConfig key, of
// published ports (CONVENTIONS.md, "portMappings").
const portMappingsKey = "portMappings"

// PortMapping is one entry of runtimeConfig.portMappings as the runtime
// sends it.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol,omitempty"`
	HostIP        string `json:"hostIP,omitempty"`
}

// runtimeConfig is the part of runtimeConfig tulle reads; other keys belong
// to other capabilities and are ignored.
type runtimeConfig struct {
	PortMappings []PortMapping `json:"portMappings,omitempty"`
}

// portMap is a validated port mapping.
type portMap struct {
	proto string // "tcp" or "udp"
	// hostIP is the host address the mapping listens on; the zero Addr
	// means every local address of the node.
	hostIP   netip.Addr
	hostPort uint16
	contPort uint16
}

// String renders m like the tag does: "tcp *:8080->80".
func (m portMap) String() string {
	return fmt.Sprintf("%s %s:%d->%d", m.proto, hostIPText(m.hostIP), m.hostPort, m.contPort)
}

func hostIPText(a netip.Addr) string {
	if !a.IsValid() {
		return "*"
	}
	return a.String()
}

// onLoopback reports whether m is reachable as 127.0.0.1:hostPort from the
// node: it listens on every address or on a loopback one.
func (m portMap) onLoopback() bool { return !m.hostIP.IsValid() || m.hostIP.IsLoopback() }

// overlaps reports whether m and o would catch the same packets: same
// protocol and host port, and host addresses that are equal or one of them
// "any".
func (m portMap) overlaps(o portMap) bool {
	return m.proto == o.proto && m.hostPort == o.hostPort &&
		(!m.hostIP.IsValid() || !o.hostIP.IsValid() || m.hostIP == o.hostIP)
}

// parsePortMappings validates runtimeConfig.portMappings. It has no side
// effects, so ADD rejects bad mappings before it changes anything.
func parsePortMappings(raw json.RawMessage) ([]portMap, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	var rc runtimeConfig
	if err := json.Unmarshal(raw, &rc); err != nil {
		return nil, invalidField("runtimeConfig", string(raw), fmt.Sprintf("decode: %v", err))
	}
	var out []portMap
	for i, pm := range rc.PortMappings {
		field := fmt.Sprintf("runtimeConfig.portMappings[%d]", i)
		m, err := validatePortMapping(pm)
		if err != nil {
			return nil, invalidField(field, string(mustJSON(pm)), err.Error())
		}
		for _, o := range out {
			if m.overlaps(o) {
				return nil, invalidField(field, string(mustJSON(pm)), fmt.Sprintf("host port %s/%d is mapped twice", m.proto, m.hostPort))
			}
		}
		out = append(out, m)
	}
	return out, nil
}

func validatePortMapping(pm PortMapping) (portMap, error) {
	m := portMap{proto: strings.ToLower(pm.Protocol)}
	if m.proto == "" {
		m.proto = "tcp"
	}
	if m.proto != "tcp" && m.proto != "udp" {
		return m, fmt.Errorf("protocol %q is not supported (want tcp or udp)", pm.Protocol)
	}
	if pm.HostPort < 1 || pm.HostPort > 65535 {
		return m, fmt.Errorf("hostPort %d is outside 1-65535", pm.HostPort)
	}
	if pm.ContainerPort < 1 || pm.ContainerPort > 65535 {
		return m, fmt.Errorf("containerPort %d is outside 1-65535", pm.ContainerPort)
	}
	m.hostPort, m.contPort = uint16(pm.HostPort), uint16(pm.ContainerPort)
	if pm.HostIP != "" {
		a, err := netip.ParseAddr(pm.HostIP)
		switch {
		case err != nil:
			return m, fmt.Errorf("hostIP %q is not an IP address", pm.HostIP)
		case !a.Unmap().Is4():
			// The workloads have IPv4 addresses only: a connection to an
			// IPv6 host address cannot be DNATed to them.
			return m, fmt.Errorf("hostIP %s is IPv6, but tulle gives containers IPv4 addresses only; leave hostIP out or give an IPv4 address of the node (127.0.0.1 for the node alone)", a)
		}
		if a = a.Unmap(); !a.IsUnspecified() {
			m.hostIP = a
		}
	}
	return m, nil
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v) // a PortMapping always marshals
	return b
}

// portTag is what the plugin writes as the comment (rule user data) of every
// port rule, so that DEL, GC and CHECK find exactly one attachment's rules
// and ADD finds the host ports in use without parsing rule expressions:
//
//	tulle-cni <network> <container ID> <ifname> <proto> <hostIP|*>:<hostPort>-><containerPort>
//
// No field can contain a space (CNI validates the container ID and ifname,
// ipam.ValidNetworkName the network name).
type portTag struct {
	network string
	att     ipam.Attachment
	m       portMap
}

const tagPrefix = "tulle-cni "

// maxTagLen keeps the comment within the kernel's rule user data limit
// (NFT_USERDATA_MAXLEN, 256 bytes, minus the TLV header and NUL).
const maxTagLen = 250

func (t portTag) String() string {
	return fmt.Sprintf("%s%s %s %s %s", tagPrefix, t.network, t.att.ContainerID, t.att.IfName, t.m)
}

// parseTag is the inverse of portTag.String; ok is false for a comment the
// plugin did not write.
func parseTag(s string) (portTag, bool) {
	rest, ok := strings.CutPrefix(s, tagPrefix)
	if !ok {
		return portTag{}, false
	}
	f := strings.Fields(rest)
	if len(f) != 5 {
		return portTag{}, false
	}
	t := portTag{network: f[0], att: ipam.Attachment{ContainerID: f[1], IfName: f[2]}, m: portMap{proto: f[3]}}
	hostPart, cont, ok := strings.Cut(f[4], "->")
	if !ok {
		return portTag{}, false
	}
	i := strings.LastIndexByte(hostPart, ':')
	if i < 0 {
		return portTag{}, false
	}
	if ip := hostPart[:i]; ip != "*" {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return portTag{}, false
		}
		t.m.hostIP = a
	}
	hp, err1 := strconv.ParseUint(hostPart[i+1:], 10, 16)
	cp, err2 := strconv.ParseUint(cont, 10, 16)
	if err1 != nil || err2 != nil {
		return portTag{}, false
	}
	t.m.hostPort, t.m.contPort = uint16(hp), uint16(cp)
	return t, true
}

// ownedBy reports whether the rule tagged t belongs to att on network.
func (t portTag) ownedBy(network string, att ipam.Attachment) bool {
	return t.network == network && t.att == att
}

// portConflict returns the error for the first wanted mapping whose host port
// another attachment (in any network) already publishes, given the tags of
// the published rules; nil when there is none.
func portConflict(want []portMap, network string, att ipam.Attachment, published []portTag) error {
	for _, m := range want {
		for _, t := range published {
			if t.ownedBy(network, att) || !m.overlaps(t.m) {
				continue
			}
			return withCode(ErrPortInUse, fmt.Errorf(
				"publish port %s for %s: host port %s/%d is already published on this node by %s on network %s (%s); pick another hostPort or remove that container",
				m, att, m.proto, m.hostPort, t.att, t.network, t.m))
		}
	}
	return nil
}

// checkTagLen rejects an attachment whose tags would not fit in a rule's
// user data.
func checkTagLen(network string, att ipam.Attachment, ms []portMap) error {
	for _, m := range ms {
		if t := (portTag{network: network, att: att, m: m}).String(); len(t) > maxTagLen {
			return withCode(types.ErrInvalidEnvironmentVariables, fmt.Errorf(
				"publish port %s for %s: network name, container ID and ifname are too long to tag the rule (%d bytes, max %d)",
				m, att, len(t), maxTagLen))
		}
	}
	return nil
}
