package runner

import (
	"errors"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ociVersion is the runtime-spec version written into config.json: the one
// Debian 12's runc 1.1 implements. The fields used are all in 1.0.
const ociVersion = "1.0.2"

// DefaultPath is the PATH a container gets unless --env sets one (Docker's).
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Default rlimit of open files, as containerd's default spec; both values
// are clamped to the caller's hard limit (root lacks CAP_SYS_RESOURCE on
// some hosts, so runc could not raise them).
const (
	defaultNofileSoft = 1024
	defaultNofileHard = 1 << 20
)

// AnnotationName carries the container name in config.json.
const AnnotationName = "org.tulle.name"

// SpecInput is what BuildSpec needs besides the Config: facts about the
// host and decisions the runner made.
type SpecInput struct {
	// NetnsPath is the network namespace the container joins (bridge,
	// none, container:NAME). Required unless HostNetwork.
	NetnsPath string
	// HostNetwork: no network namespace of its own (--network host, or
	// container:NAME of a host-network container).
	HostNetwork bool
	// CgroupsPath is the container's cgroup, e.g. /tulle/<id>. Required.
	CgroupsPath string
	// NofileHard is the caller's hard RLIMIT_NOFILE (getrlimit); 0 means
	// unknown (no clamping).
	NofileHard uint64
	// CgroupV2: the host is on the unified hierarchy; the container gets a
	// private cgroup namespace, as Docker does there.
	CgroupV2 bool
}

// BuildSpec returns the OCI runtime spec of a container. It is a pure
// function: the same input gives the same spec.
func BuildSpec(c Config, in SpecInput) (*specs.Spec, error) {
	if in.CgroupsPath == "" {
		return nil, errors.New("build spec: no cgroups path")
	}
	if in.NetnsPath == "" && !in.HostNetwork {
		return nil, errors.New("build spec: no network namespace path and not host network")
	}
	if c.Rootfs == "" || len(c.Args) == 0 {
		return nil, errors.New("build spec: rootfs and command are required")
	}
	hostname := c.Hostname
	switch {
	case in.HostNetwork:
		hostname = "" // no UTS namespace: the node's hostname
	case hostname == "":
		hostname = c.Name
	}
	caps := slices.Clone(c.Caps)
	nsTypes := []specs.LinuxNamespace{
		{Type: specs.PIDNamespace},
		{Type: specs.IPCNamespace},
		{Type: specs.MountNamespace},
	}
	if !in.HostNetwork {
		// A host-network container shares the node's hostname too (Docker).
		nsTypes = append(nsTypes, specs.LinuxNamespace{Type: specs.UTSNamespace})
		nsTypes = append(nsTypes, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: in.NetnsPath})
	}
	if in.CgroupV2 {
		nsTypes = append(nsTypes, specs.LinuxNamespace{Type: specs.CgroupNamespace})
	}
	soft, hard := uint64(defaultNofileSoft), uint64(defaultNofileHard)
	if in.NofileHard > 0 {
		hard = min(hard, in.NofileHard)
		soft = min(soft, hard)
	}
	resources := &specs.LinuxResources{
		// Deny every device but runc's defaults (null, zero, full, tty,
		// random, urandom, ptmx), which runc allows itself.
		Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
	}
	if c.Memory > 0 {
		limit, swap := c.Memory, c.Memory // swap == limit: no swap, exceeding means OOM
		resources.Memory = &specs.LinuxMemory{Limit: &limit, Swap: &swap}
	}
	if c.CPUQuota > 0 {
		quota, period := c.CPUQuota, uint64(CPUPeriod)
		resources.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
	}
	if c.Pids > 0 {
		pids := c.Pids
		resources.Pids = &specs.LinuxPids{Limit: &pids}
	}
	s := &specs.Spec{
		Version:  ociVersion,
		Hostname: hostname,
		Root:     &specs.Root{Path: c.Rootfs},
		Process: &specs.Process{
			Args: slices.Clone(c.Args),
			Env:  containerEnv(hostname, c.Env),
			Cwd:  "/",
			User: specs.User{UID: 0, GID: 0},
			Capabilities: &specs.LinuxCapabilities{
				Bounding:  caps,
				Effective: slices.Clone(caps),
				Permitted: slices.Clone(caps),
			},
			Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: hard, Soft: soft}},
		},
		Mounts: defaultMounts(),
		Linux: &specs.Linux{
			CgroupsPath: in.CgroupsPath,
			Namespaces:  nsTypes,
			Resources:   resources,
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
				"/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
				"/proc/timer_stats", "/sys/devices/virtual/powercap", "/sys/firmware",
			},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
		Annotations: map[string]string{AnnotationName: c.Name},
	}
	return s, nil
}

// containerEnv is PATH and HOSTNAME, then the user's variables; a user
// variable replaces a default one of the same name.
func containerEnv(hostname string, user []string) []string {
	env := []string{"PATH=" + DefaultPath}
	if hostname != "" {
		env = append(env, "HOSTNAME="+hostname)
	}
	for _, kv := range user {
		k, _, _ := strings.Cut(kv, "=")
		env = slices.DeleteFunc(env, func(e string) bool { return strings.HasPrefix(e, k+"=") })
		env = append(env, kv)
	}
	return env
}

// defaultMounts are runc's default mounts (`runc spec`), which Docker uses
// too.
func defaultMounts() []specs.Mount {
	return []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
	}
}
