package lab

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/tulle-net/tulle/internal/config"
)

// Defaults applied by Options.withDefaults.
const (
	DefaultName       = "tl"
	DefaultDemoName   = "demo"
	DefaultNodes      = 3
	DefaultStateRoot  = "/run/tulle/labs"
	DefaultResync     = 30 * time.Second
	DefaultNetwork    = "10.244.0.0/16"
	DefaultSubnetLen  = 24
	defaultUpTimeout  = 60 * time.Second
	maxNodes          = 100
	maxContainers     = 50
	maxNameLen        = 6
	minResync         = time.Second
	pluginType        = "tulle" // CNI "type"; the binary is tulle-cni
	pluginBinaryName  = "tulle-cni"
	stateFileName     = "state.json"
	underlayMTU       = 1500
	agentHealthPort   = 9142
	etcdClientPort    = 2379
	cniNetworkName    = "tulle"
	containerIfName   = "eth0"
	underlayIfName    = "ul0"
	switchBridgeName  = "br0"
	switchPortPrefix  = "n"
	labDirPermissions = 0o755
)

// ErrInvalid is wrapped by every Options validation error.
var ErrInvalid = errors.New("lab: invalid options")

// nameRE is what a lab name may look like: it prefixes every namespace, so
// keep it short and free of the separator "-".
var nameRE = regexp.MustCompile(`^[a-z][a-z0-9]*$`)

// Options describe a lab. The zero value plus defaults is a 3-node vxlan lab
// named "tl" without containers.
type Options struct {
	// Name is the lab name and the prefix of its namespaces (optional,
	// default "tl"): lowercase letters and digits, at most 6 bytes.
	Name string
	// Nodes is the number of nodes (optional, default 3, at most 100).
	Nodes int
	// Containers is the number of containers per node (optional, default 0).
	Containers int
	// Backend is "vxlan", "host-gw" or "udp" (optional, default vxlan).
	Backend string
	// SubnetLen is the node subnet length in the cluster network
	// 10.244.0.0/16 (optional, default 24; longer leaves room for more
	// nodes, e.g. injected leases in a scale test).
	SubnetLen int
	// Wire makes the underlay NIC-like: TSO/GSO off on the underlay veths
	// so frames stay at most 1514 bytes, GRO on at the receivers (optional).
	Wire bool
	// Resync is the agents' periodic resync interval (optional, default 30s).
	Resync time.Duration
	// ReleaseOnExit starts agents with --release-on-exit (optional).
	ReleaseOnExit bool
	// TulleBin is the tulle binary that runs etcd and the agents (optional,
	// default: the running executable).
	TulleBin string
	// CNIBin is the tulle-cni plugin binary (optional, default: tulle-cni
	// next to TulleBin).
	CNIBin string
	// StateRoot holds one directory per lab (optional, default
	// /run/tulle/labs).
	StateRoot string
	// Timeout bounds each wait of Up: etcd, agent readiness, convergence
	// (optional, default 60s).
	Timeout time.Duration
	// Logger receives progress (optional, default: discard).
	Logger *slog.Logger
}

// withDefaults fills unset fields. It resolves TulleBin from the running
// executable, the only thing here that reads the environment.
func (o Options) withDefaults() (Options, error) {
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.Nodes == 0 {
		o.Nodes = DefaultNodes
	}
	if o.Backend == "" {
		o.Backend = config.BackendVXLAN
	}
	if o.Resync == 0 {
		o.Resync = DefaultResync
	}
	if o.SubnetLen == 0 {
		o.SubnetLen = DefaultSubnetLen
	}
	if o.StateRoot == "" {
		o.StateRoot = DefaultStateRoot
	}
	if o.Timeout == 0 {
		o.Timeout = defaultUpTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.TulleBin == "" {
		exe, err := os.Executable()
		if err != nil {
			return o, fmt.Errorf("find tulle binary: %w", err)
		}
		o.TulleBin = exe
	}
	if o.CNIBin == "" {
		o.CNIBin = filepath.Join(filepath.Dir(o.TulleBin), pluginBinaryName)
	}
	return o, nil
}

// validate checks defaulted options before any side effect. Every error
// names the option and the value and says what would be accepted.
func (o Options) validate() error {
	if err := validateName(o.Name); err != nil {
		return err
	}
	switch {
	case o.Nodes < 1 || o.Nodes > maxNodes:
		return fmt.Errorf("%w: nodes %d: must be between 1 and %d", ErrInvalid, o.Nodes, maxNodes)
	case o.Containers < 0 || o.Containers > maxContainers:
		return fmt.Errorf("%w: containers %d: must be between 0 and %d", ErrInvalid, o.Containers, maxContainers)
	case !slices.Contains(config.Backends(), o.Backend):
		return fmt.Errorf("%w: backend %q: use one of %s", ErrInvalid, o.Backend, strings.Join(config.Backends(), ", "))
	case o.Resync < minResync:
		return fmt.Errorf("%w: resync %s: must be at least %s", ErrInvalid, o.Resync, minResync)
	case o.Timeout <= 0:
		return fmt.Errorf("%w: timeout %s: must be positive", ErrInvalid, o.Timeout)
	case !filepath.IsAbs(o.StateRoot):
		return fmt.Errorf("%w: state root %q: must be an absolute path", ErrInvalid, o.StateRoot)
	}
	for _, b := range []struct{ what, path string }{{"tulle binary", o.TulleBin}, {"plugin binary", o.CNIBin}} {
		st, err := os.Stat(b.path)
		if err != nil {
			return fmt.Errorf("%w: %s %s: %v (build it with 'make build' or pass its path)", ErrInvalid, b.what, b.path, err)
		}
		if st.IsDir() || st.Mode().Perm()&0o111 == 0 {
			return fmt.Errorf("%w: %s %s: not an executable file", ErrInvalid, b.what, b.path)
		}
	}
	return nil
}

// validateName checks a lab name; Load and Down use it too, so that a name
// can never reach a path or a namespace pattern unchecked.
func validateName(name string) error {
	if len(name) == 0 || len(name) > maxNameLen || !nameRE.MatchString(name) {
		return fmt.Errorf("%w: name %q: use 1 to %d lowercase letters or digits, starting with a letter", ErrInvalid, name, maxNameLen)
	}
	return nil
}

// networkConfig is the cluster network of a lab: 10.244.0.0/16 cut into
// subnets of subnetLen. Parse validates subnetLen, naming it on error.
func networkConfig(backend string, subnetLen int) (config.Network, error) {
	doc := fmt.Sprintf(`{"network":%q,"subnetLen":%d,"backend":{"type":%q}}`, DefaultNetwork, subnetLen, backend)
	n, err := config.Parse([]byte(doc))
	if err != nil {
		return config.Network{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return n, nil
}
