package runner

import (
	"slices"
	"strings"
)

// DefaultCaps is Docker's default capability set (moby
// oci/caps/defaults.go): a container may ping (NET_RAW), bind low ports and
// change owners, but not load modules, change the network or mount.
var defaultCaps = []string{
	"CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID",
	"CAP_KILL", "CAP_MKNOD", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETFCAP",
	"CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT",
}

// DefaultCaps returns a copy of Docker's default capability set, sorted.
func DefaultCaps() []string { return slices.Clone(defaultCaps) }

// allCaps are the capabilities of Linux 6.x (include/uapi/linux/capability.h),
// the ones --cap-add and --cap-drop accept.
var allCaps = []string{
	"CAP_AUDIT_CONTROL", "CAP_AUDIT_READ", "CAP_AUDIT_WRITE", "CAP_BLOCK_SUSPEND", "CAP_BPF",
	"CAP_CHECKPOINT_RESTORE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH",
	"CAP_FOWNER", "CAP_FSETID", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_KILL", "CAP_LEASE",
	"CAP_LINUX_IMMUTABLE", "CAP_MAC_ADMIN", "CAP_MAC_OVERRIDE", "CAP_MKNOD", "CAP_NET_ADMIN",
	"CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_RAW", "CAP_PERFMON", "CAP_SETFCAP",
	"CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYSLOG", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
	"CAP_SYS_CHROOT", "CAP_SYS_MODULE", "CAP_SYS_NICE", "CAP_SYS_PACCT", "CAP_SYS_PTRACE",
	"CAP_SYS_RAWIO", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_WAKE_ALARM",
}

// NormalizeCap turns "net_raw", "NET_RAW" or "CAP_NET_RAW" into
// "CAP_NET_RAW", and "all" into "ALL". ok is false for an unknown name.
func NormalizeCap(s string) (string, bool) {
	u := strings.ToUpper(strings.TrimSpace(s))
	if u == "ALL" {
		return u, true
	}
	if !strings.HasPrefix(u, "CAP_") {
		u = "CAP_" + u
	}
	return u, slices.Contains(allCaps, u)
}

// Capabilities applies --cap-add and --cap-drop to Docker's default set
// the way Docker does: "ALL" in add means every capability, "ALL" in drop
// means none but the added ones, and a capability both added and dropped
// is kept (Docker drops first, then adds). The result is sorted.
func Capabilities(add, drop []string) ([]string, error) {
	norm := func(flag string, in []string) ([]string, error) {
		var out []string
		for _, s := range in {
			c, ok := NormalizeCap(s)
			if !ok {
				return nil, invalid("--%s %q: unknown capability; use a name like NET_RAW or CAP_NET_ADMIN (see capabilities(7)), or ALL", flag, s)
			}
			out = append(out, c)
		}
		return out, nil
	}
	a, err := norm("cap-add", add)
	if err != nil {
		return nil, err
	}
	d, err := norm("cap-drop", drop)
	if err != nil {
		return nil, err
	}
	set := map[string]bool{}
	if !slices.Contains(d, "ALL") {
		for _, c := range defaultCaps {
			set[c] = true
		}
	}
	if slices.Contains(a, "ALL") {
		for _, c := range allCaps {
			set[c] = true
		}
	}
	for _, c := range a {
		if c != "ALL" {
			set[c] = true
		}
	}
	for _, c := range d {
		if c != "ALL" && !slices.Contains(a, c) {
			delete(set, c)
		}
	}
	out := make([]string, 0, len(set))
	for c := range set {
		out = append(out, c)
	}
	slices.Sort(out)
	return out, nil
}
