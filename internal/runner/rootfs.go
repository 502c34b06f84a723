package runner

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// DefaultBusybox is Debian's busybox-static.
const DefaultBusybox = "/bin/busybox"

// BusyboxRootfs makes a root filesystem in dir from a static busybox: the
// binary in /bin, every applet as a symlink to it (busybox --list-full),
// the usual empty directories, and /etc/passwd, /etc/group, /etc/hosts.
// dir may exist but must be empty.
func BusyboxRootfs(dir, busybox string) error {
	if busybox == "" {
		busybox = DefaultBusybox
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return fmt.Errorf("read %s: %w (install busybox-static)", busybox, err)
	}
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return fmt.Errorf("%w: rootfs dir %s is not empty: choose a new or empty directory", ErrInvalid, dir)
	}
	out, err := exec.Command(busybox, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("%s --list-full: %w (is it busybox-static?)", busybox, err)
	}
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "run", "var", "www"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return fmt.Errorf("make rootfs %s: %w", dir, err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o777|fs.ModeSticky); err != nil {
		return fmt.Errorf("make rootfs %s: %w", dir, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin/busybox"), bb, 0o755); err != nil {
		return fmt.Errorf("make rootfs %s: %w", dir, err)
	}
	for _, p := range strings.Fields(string(out)) {
		if p == "bin/busybox" {
			continue
		}
		dst := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("make rootfs %s: %w", dir, err)
		}
		if err := os.Symlink("/bin/busybox", dst); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("make rootfs %s: %w", dir, err)
		}
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
		"etc/group":  "root:x:0:\nnogroup:x:65534:\n",
		"etc/hosts":  "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
	}
	for p, s := range files {
		if err := os.WriteFile(filepath.Join(dir, p), []byte(s), 0o644); err != nil {
			return fmt.Errorf("make rootfs %s: %w", dir, err)
		}
	}
	return nil
}
