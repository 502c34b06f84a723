package runner

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Network modes (--network).
const (
	NetworkBridge    = "bridge"
	NetworkNone      = "none"
	NetworkHost      = "host"
	NetworkContainer = "container"
)

// Flags are the raw values of `tulle run`'s flags, as the CLI collects
// them. Parse validates them into a Config without touching the system
// (except for checking that the rootfs exists).
type Flags struct {
	Name      string
	Detach    bool
	Remove    bool     // --rm: remove the container when it exits (foreground only)
	Network   string   // none, host, bridge or container:NAME; "" means bridge
	Publish   []string // -p [IP:]HOSTPORT:CPORT[/tcp|udp]
	Memory    string   // --memory 64m
	CPUs      string   // --cpus 0.5
	PidsLimit int64    // --pids-limit N; 0 = no limit
	CapAdd    []string
	CapDrop   []string
	Hostname  string
	Env       []string // K=V
	Rootfs    string
	Args      []string // the command
}

// Network is a parsed --network value.
type Network struct {
	Mode      string // NetworkBridge, NetworkNone, NetworkHost, NetworkContainer
	Container string // for NetworkContainer: the container whose netns is joined
}

func (n Network) String() string {
	if n.Mode == NetworkContainer {
		return NetworkContainer + ":" + n.Container
	}
	return n.Mode
}

// Port is one published port (-p).
type Port struct {
	HostIP        netip.Addr // invalid: every address of the node
	HostPort      uint16
	ContainerPort uint16
	Proto         string // "tcp" or "udp"
}

func (p Port) String() string {
	s := fmt.Sprintf("%d:%d/%s", p.HostPort, p.ContainerPort, p.Proto)
	if p.HostIP.IsValid() {
		s = p.HostIP.String() + ":" + s
	}
	return s
}

// Config is a validated `tulle run` request.
type Config struct {
	Name     string
	Detach   bool
	Remove   bool
	Network  Network
	Ports    []Port
	Memory   int64 // bytes; 0 = no limit
	CPUQuota int64 // µs per CPUPeriod; 0 = no limit
	Pids     int64 // 0 = no limit
	Caps     []string
	Hostname string
	Env      []string
	Rootfs   string // absolute
	Args     []string
}

// CPUPeriod is the CFS period --cpus is expressed in (Docker's: 100 ms).
const CPUPeriod = 100000

// minMemory is Docker's lower bound for --memory: below it runc cannot even
// start the container's init.
const minMemory = 6 << 20

// ErrInvalid is wrapped by every validation error of Parse (bad input:
// nothing was created).
var ErrInvalid = errors.New("invalid input")

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
}

// nameRE is Docker's container name rule.
var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// maxNameLen keeps every name-derived path short and readable.
const maxNameLen = 64

// ValidName checks a container name (--name, and NAME arguments).
func ValidName(name string) error {
	if len(name) > maxNameLen || !nameRE.MatchString(name) {
		return invalid("container name %q: use 1-%d characters [a-zA-Z0-9_.-], starting with a letter or digit", name, maxNameLen)
	}
	return nil
}

// Parse validates f. It is pure apart from a stat of the rootfs. The
// container name is not checked against existing containers here (the
// store does that atomically when it reserves the name); an empty name
// stays empty and the caller generates one.
func (f Flags) Parse() (Config, error) {
	c := Config{Name: f.Name, Detach: f.Detach, Remove: f.Remove, Hostname: f.Hostname}
	if f.Name != "" {
		if err := ValidName(f.Name); err != nil {
			return Config{}, fmt.Errorf("--name: %w", err)
		}
	}
	if f.Remove && f.Detach {
		return Config{}, invalid("--rm works only in the foreground: drop -d, or remove the container later with `tulle rm -f`")
	}
	var err error
	if c.Network, err = ParseNetwork(f.Network); err != nil {
		return Config{}, err
	}
	for _, p := range f.Publish {
		port, err := ParsePort(p)
		if err != nil {
			return Config{}, err
		}
		for _, q := range c.Ports {
			if q.HostPort == port.HostPort && q.Proto == port.Proto {
				return Config{}, invalid("-p %s: host port %d/%s is published twice", p, port.HostPort, port.Proto)
			}
		}
		c.Ports = append(c.Ports, port)
	}
	if len(c.Ports) > 0 && c.Network.Mode != NetworkBridge {
		return Config{}, invalid("-p %s: ports can only be published with --network bridge, not %s", f.Publish[0], c.Network)
	}
	if f.Memory != "" {
		if c.Memory, err = ParseMemory(f.Memory); err != nil {
			return Config{}, err
		}
	}
	if f.CPUs != "" {
		if c.CPUQuota, err = ParseCPUs(f.CPUs); err != nil {
			return Config{}, err
		}
	}
	if f.PidsLimit < 0 {
		return Config{}, invalid("--pids-limit %d: want a positive number of processes (0: no limit)", f.PidsLimit)
	}
	c.Pids = f.PidsLimit
	if c.Caps, err = Capabilities(f.CapAdd, f.CapDrop); err != nil {
		return Config{}, err
	}
	if f.Hostname != "" {
		if c.Network.Mode == NetworkHost {
			return Config{}, invalid("--hostname %s: a --network host container has the node's hostname; drop --hostname or use another network mode", f.Hostname)
		}
		if len(f.Hostname) > 63 || !hostnameRE.MatchString(f.Hostname) {
			return Config{}, invalid("--hostname %q: want a DNS label, 1-63 characters [a-zA-Z0-9-]", f.Hostname)
		}
	}
	for _, e := range f.Env {
		k, _, ok := strings.Cut(e, "=")
		if !ok || k == "" || strings.ContainsAny(k, " \t\n\x00") {
			return Config{}, invalid("--env %q: want KEY=VALUE", e)
		}
	}
	c.Env = slices.Clone(f.Env)
	if f.Rootfs == "" {
		return Config{}, invalid("--rootfs is required: a directory holding the container's root filesystem (make one with `tulle rootfs busybox DIR`)")
	}
	abs, err := filepath.Abs(f.Rootfs)
	if err != nil {
		return Config{}, invalid("--rootfs %s: %v", f.Rootfs, err)
	}
	if fi, err := os.Stat(abs); err != nil || !fi.IsDir() {
		return Config{}, invalid("--rootfs %s: not a directory (make one with `tulle rootfs busybox %s`)", f.Rootfs, f.Rootfs)
	}
	c.Rootfs = abs
	if len(f.Args) == 0 {
		return Config{}, invalid("no command given: usage: tulle run [flags] --rootfs DIR -- CMD [ARGS...]")
	}
	c.Args = slices.Clone(f.Args)
	return c, nil
}

var hostnameRE = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?$`)

// ParseNetwork parses --network: none, host, bridge (the default, also for
// "") or container:NAME.
func ParseNetwork(s string) (Network, error) {
	switch s {
	case "", NetworkBridge:
		return Network{Mode: NetworkBridge}, nil
	case NetworkNone, NetworkHost:
		return Network{Mode: s}, nil
	}
	if name, ok := strings.CutPrefix(s, NetworkContainer+":"); ok {
		if err := ValidName(name); err != nil {
			return Network{}, fmt.Errorf("--network %s: %w", s, err)
		}
		return Network{Mode: NetworkContainer, Container: name}, nil
	}
	return Network{}, invalid("--network %q: unknown network mode; use none, host, bridge or container:NAME", s)
}

// ParsePort parses -p [IP:]HOSTPORT:CPORT[/tcp|udp].
func ParsePort(s string) (Port, error) {
	bad := func(why string) (Port, error) {
		return Port{}, invalid("-p %q: %s; want [IP:]HOSTPORT:CONTAINERPORT[/tcp|udp], e.g. 8080:80 or 5353:53/udp", s, why)
	}
	spec, proto, hasProto := strings.Cut(s, "/")
	p := Port{Proto: "tcp"}
	if hasProto {
		switch strings.ToLower(proto) {
		case "tcp", "udp":
			p.Proto = strings.ToLower(proto)
		default:
			return bad(fmt.Sprintf("protocol %q is not tcp or udp", proto))
		}
	}
	parts := strings.Split(spec, ":")
	switch len(parts) {
	case 2:
	case 3:
		a, err := netip.ParseAddr(parts[0])
		if err != nil || !a.Is4() {
			return bad(fmt.Sprintf("host IP %q is not an IPv4 address", parts[0]))
		}
		if !a.IsUnspecified() {
			p.HostIP = a
		}
		parts = parts[1:]
	default:
		return bad("not HOSTPORT:CONTAINERPORT")
	}
	hp, err := parsePortNumber(parts[0])
	if err != nil {
		return bad("host port " + err.Error())
	}
	cp, err := parsePortNumber(parts[1])
	if err != nil {
		return bad("container port " + err.Error())
	}
	p.HostPort, p.ContainerPort = hp, cp
	return p, nil
}

func parsePortNumber(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q is not a number in 1-65535", s)
	}
	return uint16(n), nil
}

// ParseMemory parses --memory like Docker: a number of bytes with an
// optional binary unit b, k, m or g (also kb, mb, gb, kib, mib, gib; any
// case). The minimum is 6m.
func ParseMemory(s string) (int64, error) {
	bad := func(why string) (int64, error) {
		return 0, invalid("--memory %q: %s; want a size like 64m, 512k or 1g (at least 6m)", s, why)
	}
	t := strings.ToLower(strings.TrimSpace(s))
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], t[i:]
	if num == "" {
		return bad("no number")
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return bad("bad number")
	}
	mult := map[string]float64{
		"": 1, "b": 1,
		"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
		"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
		"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
	}[unit]
	if mult == 0 {
		return bad(fmt.Sprintf("unknown unit %q", unit))
	}
	b := v * mult
	if b > math.MaxInt64/2 {
		return bad("too large")
	}
	n := int64(b)
	if n < minMemory {
		return bad("below the minimum")
	}
	return n, nil
}

// ParseCPUs parses --cpus (a decimal number of CPUs, e.g. 0.5) into a CFS
// quota per CPUPeriod, as Docker does. The host's CPU count is not
// checked: the quota may exceed it.
func ParseCPUs(s string) (int64, error) {
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) || v < 0.01 || v > 1024 {
		return 0, invalid("--cpus %q: want a number of CPUs from 0.01 to 1024, e.g. 0.5 or 2", s)
	}
	return int64(math.Round(v * CPUPeriod)), nil
}
