package runner

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// cgroupRoot is where cgroup hierarchies are mounted.
const cgroupRoot = "/sys/fs/cgroup"

// cgroupV2 reports whether /sys/fs/cgroup is the unified hierarchy (pure
// v2). Hybrid hosts (v1 controllers plus cgroup2 at /sys/fs/cgroup/unified)
// are v1 for runc and for tulle.
func cgroupV2() bool {
	var st unix.Statfs_t
	return unix.Statfs(cgroupRoot, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

// oomKills returns how many processes the kernel's OOM killer killed in
// the container's memory cgroup: oom_kill in memory.oom_control (v1) or
// memory.events (v2). It must be read before runc deletes the cgroup.
func oomKills(cgroupsPath string) (int, error) {
	path := filepath.Join(cgroupRoot, "memory", cgroupsPath, "memory.oom_control")
	if cgroupV2() {
		path = filepath.Join(cgroupRoot, cgroupsPath, "memory.events")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read oom counter %s: %w", path, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				return 0, fmt.Errorf("parse %s: %q: %w", path, line, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("read oom counter %s: no oom_kill line (kernel older than 4.13?)", path)
}

// cgroupHierarchies lists the mounted hierarchies: /sys/fs/cgroup itself on
// v2, else every v1 controller, named and unified hierarchy below it.
func cgroupHierarchies() []string {
	if cgroupV2() {
		return []string{cgroupRoot}
	}
	ds, _ := filepath.Glob(filepath.Join(cgroupRoot, "*"))
	var out []string
	for _, d := range ds {
		if _, err := os.Stat(filepath.Join(d, "cgroup.procs")); err == nil {
			out = append(out, d)
		}
	}
	return out
}

// removeCgroups removes the container's cgroup from every hierarchy
// (runc delete normally has), then its parent if that became empty. Gone
// is success; a cgroup that still holds processes fails with EBUSY.
func removeCgroups(cgroupsPath string) error {
	var errs []error
	parent := filepath.Dir(cgroupsPath)
	for _, h := range cgroupHierarchies() {
		if err := unix.Rmdir(filepath.Join(h, cgroupsPath)); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", filepath.Join(h, cgroupsPath), err))
		}
		if parent != "/" && parent != "." {
			// Shared by every container of the parent: only when empty.
			_ = unix.Rmdir(filepath.Join(h, parent))
		}
	}
	return errors.Join(errs...)
}

// CgroupFile is the path of a cgroup interface file of the container
// (controller is ignored on v2), e.g. CgroupFile("cpu", p, "cpu.cfs_quota_us").
func CgroupFile(controller, cgroupsPath, file string) string {
	if cgroupV2() {
		return filepath.Join(cgroupRoot, cgroupsPath, file)
	}
	return filepath.Join(cgroupRoot, controller, cgroupsPath, file)
}
