package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/tulle-net/tulle/internal/ipam"
	"github.com/tulle-net/tulle/internal/subnetfile"
)

// Defaults for the network configuration.
const (
	PluginType        = "tulle"
	DefaultBridge     = "tulle0"
	DefaultDataDir    = "/var/lib/tulle/ipam"
	DefaultSubnetFile = subnetfile.DefaultPath
)

// specVersions are the CNI spec versions the plugin speaks; VersionInfo and
// config validation both use them.
func specVersions() []string { return []string{"0.4.0", "1.0.0", "1.1.0"} }

// NetConf is the plugin's network configuration, read from stdin:
//
//	{
//	  "cniVersion": "1.0.0", "name": "tulle", "type": "tulle",
//	  "bridge": "tulle0",                       // default: subnet file's bridge
//	  "subnetFile": "/run/tulle/subnet.json",   // default
//	  "dataDir": "/var/lib/tulle/ipam",         // default
//	  "mtu": 1450,                              // default: subnet file's MTU
//	  "hairpinMode": false,
//	  "isDefaultGateway": true,                 // false: route only the cluster network
//	  "dns": {"nameservers": ["10.96.0.10"]},   // passed through to the result
//	  "capabilities": {"portMappings": true}    // the runtime then sends
//	  // "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]}
//	}
type NetConf struct {
	types.PluginConf

	Bridge      string `json:"bridge,omitempty"`
	SubnetFile  string `json:"subnetFile,omitempty"`
	DataDir     string `json:"dataDir,omitempty"`
	MTU         int    `json:"mtu,omitempty"`
	HairpinMode bool   `json:"hairpinMode,omitempty"`
	// IsDefaultGateway is nil when unset (meaning true).
	IsDefaultGateway *bool `json:"isDefaultGateway,omitempty"`

	// LegacyAttachments is the name an early CNI 1.1 draft gave
	// cni.dev/valid-attachments; libcni sends both (containernetworking/cni#1101).
	LegacyAttachments []types.GCAttachment `json:"cni.dev/attachments,omitempty"`
	// HasAttachments is true when either GC key was present, even if empty.
	HasAttachments bool `json:"-"`

	// ports are the validated runtimeConfig.portMappings (capability
	// "portMappings").
	ports []portMap
}

// defaultGateway reports whether the container's default route goes via the
// gateway.
func (c *NetConf) defaultGateway() bool { return c.IsDefaultGateway == nil || *c.IsDefaultGateway }

// cniKeys are the CNI-defined top-level keys, including what runtimes inject.
func cniKeys() []string {
	return []string{
		"cniVersion", "name", "type", "capabilities", "dns", "prevResult",
		"runtimeConfig", "args", "ipam",
	}
}

// ownKeys are tulle's keys.
func ownKeys() []string {
	return []string{"bridge", "subnetFile", "dataDir", "mtu", "hairpinMode", "isDefaultGateway"}
}

// parseConf decodes and validates the configuration, and fills in the
// defaults that do not depend on the subnet file. It has no side effects, so
// bad input is rejected before any is made.
func parseConf(stdin []byte) (*NetConf, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(stdin, &raw); err != nil {
		return nil, withCode(types.ErrDecodingFailure, fmt.Errorf("decode network config: %w", err))
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		// Keys namespaced like "cni.dev/x" or "example.com/x" are conventions
		// between runtimes and plugins (GC's attachment lists among them);
		// unknown ones are not for us. A plain unknown key is most likely a
		// typo of ours, which silently ignored would change behaviour.
		if !slices.Contains(cniKeys(), k) && !slices.Contains(ownKeys(), k) && !strings.ContainsAny(k, "/.") {
			return nil, withCode(types.ErrUnsupportedField, fmt.Errorf(
				"network config: unknown field %q (tulle's fields are %s)", k, strings.Join(ownKeys(), ", ")))
		}
	}
	conf := &NetConf{}
	if err := json.Unmarshal(stdin, &conf.PluginConf); err != nil {
		return nil, withCode(types.ErrDecodingFailure, fmt.Errorf("decode network config: %w", err))
	}
	fields := []struct {
		key string
		dst any
	}{
		{"bridge", &conf.Bridge},
		{"subnetFile", &conf.SubnetFile},
		{"dataDir", &conf.DataDir},
		{"mtu", &conf.MTU},
		{"hairpinMode", &conf.HairpinMode},
		{"isDefaultGateway", &conf.IsDefaultGateway},
		{"cni.dev/attachments", &conf.LegacyAttachments},
	}
	for _, f := range fields {
		v, ok := raw[f.key]
		if !ok {
			continue
		}
		if err := json.Unmarshal(v, f.dst); err != nil {
			return nil, invalidField(f.key, string(v), fmt.Sprintf("wrong type (%T)", f.dst))
		}
	}
	_, hasValid := raw["cni.dev/valid-attachments"]
	_, hasLegacy := raw["cni.dev/attachments"]
	conf.HasAttachments = hasValid || hasLegacy
	ports, err := parsePortMappings(raw["runtimeConfig"])
	if err != nil {
		return nil, err
	}
	conf.ports = ports

	if err := conf.validate(raw); err != nil {
		return nil, err
	}
	if conf.SubnetFile == "" {
		conf.SubnetFile = DefaultSubnetFile
	}
	if conf.DataDir == "" {
		conf.DataDir = DefaultDataDir
	}
	return conf, nil
}

func (c *NetConf) validate(raw map[string]json.RawMessage) error {
	switch {
	case c.Type != PluginType:
		return invalidField("type", quote(c.Type), `want "tulle"`)
	case !slices.Contains(specVersions(), c.CNIVersion):
		return withCode(types.ErrIncompatibleCNIVersion, fmt.Errorf(
			"network config: field \"cniVersion\": value %q is not supported (want one of %s)",
			c.CNIVersion, strings.Join(specVersions(), ", ")))
	case !ipam.ValidNetworkName(c.Name):
		return invalidField("name", quote(c.Name), "want letters, digits, '_', '.', '-', starting with a letter or digit")
	case hasIPAM(raw["ipam"]):
		return withCode(types.ErrUnsupportedField, errors.New(
			`network config: field "ipam": tulle allocates addresses from the node subnet itself; remove "ipam"`))
	case c.Bridge != "" && !validIfName(c.Bridge):
		return invalidField("bridge", quote(c.Bridge), "want an interface name of 1-15 bytes without '/', ':' or spaces")
	case c.SubnetFile != "" && !filepath.IsAbs(c.SubnetFile):
		return invalidField("subnetFile", quote(c.SubnetFile), "want an absolute path")
	case c.DataDir != "" && !filepath.IsAbs(c.DataDir):
		return invalidField("dataDir", quote(c.DataDir), "want an absolute path")
	case c.MTU != 0 && (c.MTU < 576 || c.MTU > 65535):
		return invalidField("mtu", fmt.Sprint(c.MTU), "want 576-65535, or leave it out to use the subnet file's MTU")
	}
	return nil
}

func quote(s string) string { return fmt.Sprintf("%q", s) }

// invalidField is the error for a field whose value we cannot use.
func invalidField(field, value, want string) error {
	return withCode(types.ErrInvalidNetworkConfig, fmt.Errorf(
		"network config: field %q: invalid value %s: %s", field, value, want))
}

// validIfName is the kernel's dev_valid_name.
func validIfName(s string) bool {
	return s != "" && len(s) <= 15 && s != "." && s != ".." && !strings.ContainsAny(s, "/: \t\n\r\v\f")
}

// settings is everything a verb needs once the config and the subnet file
// are merged.
type settings struct {
	bridge  string
	mtu     int
	gso     int // gso_max_size for the bridge and host veths (0: leave)
	ctrGSO  int // gso_max_size for the container's interface, at most (0: leave)
	hairpin bool
	pool    ipam.Pool
	// routes are the container's routes, all via the gateway.
	routes []netip.Prefix
}

// resolve merges conf with the node facts from the subnet file.
func resolve(conf *NetConf, info subnetfile.Info) (settings, error) {
	pool, err := ipam.NewPool(info.Subnet, info.Gateway)
	if err != nil {
		return settings{}, withCode(types.ErrInvalidNetworkConfig, fmt.Errorf("subnet file %s: %w", conf.SubnetFile, err))
	}
	// A published port needs hairpin on the container's bridge port for the
	// container to reach its own port through the node address: with
	// br_netfilter (bridge-nf-call-iptables=1, the default once the module
	// is loaded) the DNAT to the container itself happens in the bridge's
	// prerouting, and the bridge then forwards the frame back out of the
	// port it came in on. Docker and kubelet (hairpin-veth) do the same.
	s := settings{bridge: conf.Bridge, mtu: conf.MTU, hairpin: conf.HairpinMode || len(conf.ports) > 0, pool: pool}
	if s.bridge == "" {
		s.bridge = info.Bridge
	}
	if s.bridge == "" {
		s.bridge = DefaultBridge
	}
	if s.mtu == 0 {
		s.mtu = info.MTU
	}
	s.gso, s.ctrGSO = info.GSOMaxSize, info.WorkloadGSOMaxSize
	if conf.defaultGateway() {
		s.routes = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}
	} else {
		s.routes = []netip.Prefix{info.Network.Masked()}
	}
	return s, nil
}

// readSubnetFile reads the node facts. A missing file means the agent has not
// published them (yet): the runtime should try again later.
func readSubnetFile(conf *NetConf) (subnetfile.Info, error) {
	info, err := subnetfile.Read(conf.SubnetFile)
	switch {
	case errors.Is(err, subnetfile.ErrMissing):
		return info, withCode(types.ErrTryAgainLater, err)
	case err != nil:
		return info, withCode(types.ErrDecodingFailure, err)
	}
	return info, nil
}

// hasIPAM reports whether the config asks for an IPAM plugin. An empty
// object or null is what some tools write for "none".
func hasIPAM(v json.RawMessage) bool {
	var m map[string]any
	if len(v) == 0 || json.Unmarshal(v, &m) == nil && len(m) == 0 {
		return false
	}
	return true
}
