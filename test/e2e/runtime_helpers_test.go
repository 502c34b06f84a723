package e2e

// Helpers shared by the real-runtime tests (podman_test.go, cri_test.go):
// running a program inside a lab namespace, probing from a namespace,
// reading what the plugin left on a node, a busybox rootfs and an OCI image
// built without a registry, and cleanup of the host state the runtimes make
// outside our temp dirs (cgroups, /run/runc, /run/containerd).

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/tulle-net/tulle/internal/cni"
	"github.com/tulle-net/tulle/internal/lab"
	"github.com/tulle-net/tulle/internal/netns"
)

// webPage is what every test web server (busybox httpd -h /www) serves.
const webPage = "tulle-e2e-hello\n"

// cniNetwork is the network name of the runtime tests' conflists. It is the
// lab's own network name, so the runtimes and the lab share one IPAM store
// per node (<node dir>/ipam/tulle), as two runtimes on one host must.
const cniNetwork = "tulle"

// requireCmds skips when a program is missing, and fails when CI=true
// (.ci/deps installs them), so CI can never pass by skipping.
func requireCmds(t *testing.T, names ...string) {
	t.Helper()
	var missing []string
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("needs %s on PATH (bash .ci/deps installs them)", strings.Join(missing, ", "))
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// nsCommand runs argv inside lab namespace ns (forked from a thread in ns,
// so the process and its children live there) with env added to ours, and
// returns its stdout; the error carries stderr. Daemons the command leaves
// behind (conmon) may keep its pipes open: after the command exits, Wait
// gives them 5s and then returns without them.
func nsCommand(ctx context.Context, ns string, env []string, argv ...string) (string, error) {
	h, err := netns.Open(ns)
	if err != nil {
		return "", err
	}
	defer h.Close()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := netns.StartIn(h, cmd); err != nil {
		return "", err
	}
	err = cmd.Wait()
	if err != nil && !errors.Is(err, exec.ErrWaitDelay) {
		return stdout.String(), fmt.Errorf("run %q in netns %s: %w\n%s", strings.Join(argv, " "), ns, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// httpGetIn fetches url with a TCP connection made inside namespace ns.
func httpGetIn(ctx context.Context, ns, url string) (string, error) {
	h, err := netns.Open(ns)
	if err != nil {
		return "", err
	}
	defer h.Close()
	tr := &http.Transport{
		DisableKeepAlives: true,
		// The socket is created on a thread inside ns and stays there.
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := netns.Do(h, func() error {
				var err error
				c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := cl.Do(req)
	if err != nil {
		return "", fmt.Errorf("get %s from netns %s: %w", url, ns, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("get %s from netns %s: read body: %w", url, ns, err)
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("get %s from netns %s: %s", url, ns, resp.Status)
	}
	return string(b), nil
}

// waitHTTP polls url from namespace ns until it serves webPage or d passes,
// and returns how long that took.
func waitHTTP(t *testing.T, ns, url string, d time.Duration) time.Duration {
	t.Helper()
	var last error
	took, ok := waitFor(d, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		body, err := httpGetIn(ctx, ns, url)
		if err == nil && body != webPage {
			err = fmt.Errorf("body %q, want %q", body, webPage)
		}
		last = err
		return err == nil
	})
	if !ok {
		t.Fatalf("%s from %s: not served within %s: %v", url, ns, d, last)
	}
	return took
}

// pingFrom sends 3 ICMP echo requests from namespace ns to dst with the
// system ping (iputils) and fails unless all are answered.
func pingFrom(ctx context.Context, ns string, dst netip.Addr) error {
	out, err := nsCommand(ctx, ns, nil, "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", dst.String())
	if err != nil {
		return err
	}
	if !strings.Contains(out, " 0% packet loss") {
		return fmt.Errorf("ping %s from netns %s: %s", dst, ns, strings.TrimSpace(out))
	}
	return nil
}

// node is one lab node as the runtime tests see it.
type node struct {
	name, ns   string
	ip         netip.Addr   // underlay address
	subnet     netip.Prefix // pod subnet from the agent
	subnetFile string
	dataDir    string // the plugin's dataDir: allocations in dataDir/<network>
}

func labNodes(l *lab.Lab) []node {
	var out []node
	for _, n := range l.State().Nodes {
		out = append(out, node{
			name: n.Name, ns: n.NS, ip: n.IP, subnet: n.Subnet,
			subnetFile: filepath.Join(n.Dir, "subnet.json"),
			dataDir:    filepath.Join(n.Dir, "ipam"),
		})
	}
	return out
}

// tulleConflist is the conflist a runtime on node n uses: the plugin alone,
// publishing ports itself (capability portMappings).
func tulleConflist(n node) []byte {
	doc := map[string]any{
		"cniVersion": "1.0.0",
		"name":       cniNetwork,
		"plugins": []map[string]any{{
			"type":         "tulle",
			"subnetFile":   n.subnetFile,
			"dataDir":      n.dataDir,
			"capabilities": map[string]bool{"portMappings": true},
		}},
	}
	b, _ := json.MarshalIndent(doc, "", "  ") // plain data: cannot fail
	return b
}

// writeConfDir writes the node's conflist into a new temp dir and returns it.
func writeConfDir(t *testing.T, n node) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "10-tulle.conflist"), tulleConflist(n), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// cniBinDir returns a temp dir holding tulle -> the test's tulle-cni, and
// symlinks to the named reference plugins from /usr/lib/cni.
func cniBinDir(t *testing.T, reference ...string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Symlink(bins.cni, filepath.Join(dir, "tulle")); err != nil {
		t.Fatal(err)
	}
	for _, p := range reference {
		src := filepath.Join("/usr/lib/cni", p)
		if _, err := os.Stat(src); err != nil {
			t.Fatalf("reference plugin %s: %v (install containernetworking-plugins)", p, err)
		}
		if err := os.Symlink(src, filepath.Join(dir, p)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// allocations lists the addresses the plugin holds on a node: one file per
// address in <dataDir>/<network>.
func allocations(n node) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(n.dataDir, cniNetwork))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// pluginVeths lists the plugin's host veths on a node (cni.HostVethName:
// "tl" + 12 hex; the agent's own links are "tl-*").
func pluginVeths(n node) ([]string, error) {
	h, err := netns.Open(n.ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil, err
	}
	defer nl.Close()
	links, err := nl.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links in %s: %w", n.ns, err)
	}
	var out []string
	for _, l := range links {
		name := l.Attrs().Name
		if l.Type() == "veth" && strings.HasPrefix(name, "tl") && !strings.HasPrefix(name, "tl-") {
			out = append(out, name)
		}
	}
	return out, nil
}

// portRules returns the rules of table inet tulle on a node that mention
// id (the plugin tags every port rule with the container ID).
func portRules(ctx context.Context, n node, id string) ([]string, error) {
	out, err := nsCommand(ctx, n.ns, nil, "nft", "list", "table", "inet", "tulle")
	if err != nil {
		if strings.Contains(err.Error(), "No such file or directory") {
			return nil, nil // no table: no rules
		}
		return nil, err
	}
	var rules []string
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, id) {
			rules = append(rules, strings.TrimSpace(line))
		}
	}
	return rules, nil
}

// assertDetached fails unless the attachment (id, eth0) left nothing on
// node n: no allocation, no host veth, no port rule. It polls for up to 10s
// because runtimes may finish their teardown asynchronously.
func assertDetached(t *testing.T, n node, id string) {
	t.Helper()
	veth := cni.HostVethName(id, "eth0")
	var allocs, veths, rules, cached []string
	var lastErr error
	_, ok := waitFor(10*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var errs [3]error
		allocs, errs[0] = allocations(n)
		veths, errs[1] = pluginVeths(n)
		rules, errs[2] = portRules(ctx, n, id)
		lastErr = errors.Join(errs[:]...)
		// libcni's result cache (both runtimes use the default dir).
		cached, _ = filepath.Glob(filepath.Join("/var/lib/cni/results", "*-"+id+"-eth0"))
		return lastErr == nil && len(allocs) == 0 && !slices.Contains(veths, veth) && len(rules) == 0 && len(cached) == 0
	})
	if !ok {
		t.Errorf("%s after teardown of %.12s: allocations %q, plugin veths %q (its own: %s), port rules %q, cached results %q, errors: %v",
			n.name, id, allocs, veths, veth, rules, cached, lastErr)
	}
}

// buildRootfs makes a busybox-static root filesystem in a temp dir: every
// applet as a symlink to /bin/busybox, root in /etc/passwd, and /www/index.html
// holding webPage.
func buildRootfs(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "run", "www", "var"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("read /bin/busybox (install busybox-static): %v", err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	// busybox --list-full prints every applet's path: "bin/sh", "usr/bin/wget", ...
	out, err := exec.Command("/bin/busybox", "--list-full").Output()
	if err != nil {
		t.Fatalf("busybox --list-full: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		if p == "bin/busybox" {
			continue
		}
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/bin/busybox", filepath.Join(root, p)); err != nil && !errors.Is(err, fs.ErrExist) {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"etc/passwd":     "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":      "root:x:0:\n",
		"www/index.html": webPage,
	}
	for p, s := range files {
		if err := os.WriteFile(filepath.Join(root, p), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(root, "tmp"), 0o777|fs.ModeSticky); err != nil {
		t.Fatal(err)
	}
	return root
}

// writeOCIArchive writes an OCI image layout tar (one uncompressed layer:
// rootfs) to path, named ref for containerd (annotation
// io.containerd.image.name, which `ctr images import` uses as is).
func writeOCIArchive(path, rootfs, ref string, entrypoint []string) error {
	layer, err := tarDir(rootfs)
	if err != nil {
		return err
	}
	digest := func(b []byte) string {
		s := sha256.Sum256(b)
		return "sha256:" + hex.EncodeToString(s[:])
	}
	const (
		mtManifest = "application/vnd.oci.image.manifest.v1+json"
		mtConfig   = "application/vnd.oci.image.config.v1+json"
		mtLayer    = "application/vnd.oci.image.layer.v1.tar"
		mtIndex    = "application/vnd.oci.image.index.v1+json"
	)
	platform := map[string]string{"architecture": runtime.GOARCH, "os": "linux"}
	config, _ := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH, "os": "linux",
		"config": map[string]any{
			"Entrypoint": entrypoint,
			"Env":        []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
			"WorkingDir": "/",
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{digest(layer)}},
	})
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": mtManifest,
		"config": map[string]any{"mediaType": mtConfig, "digest": digest(config), "size": len(config)},
		"layers": []map[string]any{{"mediaType": mtLayer, "digest": digest(layer), "size": len(layer)}},
	})
	tag := ref[strings.LastIndex(ref, ":")+1:]
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": mtIndex,
		"manifests": []map[string]any{{
			"mediaType": mtManifest, "digest": digest(manifest), "size": len(manifest), "platform": platform,
			"annotations": map[string]string{"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": tag},
		}},
	})
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Name: d, Mode: 0o755, Typeflag: tar.TypeDir}); err != nil {
			return err
		}
	}
	entries := []struct {
		name string
		b    []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
	}
	for _, b := range [][]byte{layer, config, manifest} {
		entries = append(entries, struct {
			name string
			b    []byte
		}{"blobs/sha256/" + strings.TrimPrefix(digest(b), "sha256:"), b})
	}
	for _, e := range entries {
		if err := add(e.name, e.b); err != nil {
			return fmt.Errorf("write oci archive %s: %w", path, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write oci archive %s: %w", path, err)
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// tarDir returns an uncompressed tar of dir (files, dirs, symlinks; owned
// by root), entries relative to dir.
func tarDir(dir string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		hdr.Name, hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = rel, 0, 0, "", ""
		if fi.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := io.Copy(tw, f); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("tar %s: %w", dir, err)
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("tar %s: %w", dir, err)
	}
	return buf.Bytes(), nil
}

// cgroupHierarchies are the mounted cgroup hierarchies (v1 controllers,
// named ones and the v2 "unified" one in hybrid mode).
func cgroupHierarchies() []string {
	ds, _ := filepath.Glob("/sys/fs/cgroup/*")
	var out []string
	for _, d := range ds {
		if _, err := os.Stat(filepath.Join(d, "cgroup.procs")); err == nil {
			out = append(out, d)
		}
	}
	return out
}

// cleanupCgroups removes, at the end of the test, each top-level cgroup of
// names that did not exist when it was called (the runtimes make them with
// the cgroupfs driver and leave the parents behind). A cgroup still holding
// processes after 10s has them killed first: they can only be the test's
// containers, since the cgroup is the test's own. Register it before
// starting the runtime, so it runs after the runtime is stopped.
func cleanupCgroups(t *testing.T, names ...string) {
	t.Helper()
	var ours []string
	for _, name := range names {
		existed := false
		for _, h := range cgroupHierarchies() {
			if _, err := os.Stat(filepath.Join(h, name)); err == nil {
				existed = true
			}
		}
		if existed {
			t.Logf("cgroup /%s existed before the test: left alone", name)
			continue
		}
		ours = append(ours, name)
	}
	t.Cleanup(func() {
		for _, name := range ours {
			if err := removeCgroupTree(name, 10*time.Second); err != nil {
				t.Errorf("remove cgroup /%s: %v", name, err)
			}
		}
	})
}

// removeCgroupTree rmdirs /name and its children in every hierarchy,
// deepest first, once no process is left in them.
func removeCgroupTree(name string, d time.Duration) error {
	var errs []error
	for _, h := range cgroupHierarchies() {
		top := filepath.Join(h, name)
		var dirs []string
		_ = filepath.WalkDir(top, func(p string, de fs.DirEntry, err error) error {
			if err == nil && de.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		slices.Reverse(dirs)
		for _, dir := range dirs {
			deadline, killed := time.Now().Add(d), false
			for pids := cgroupProcs(dir); len(pids) > 0; pids = cgroupProcs(dir) {
				if time.Now().After(deadline) {
					if killed {
						break // rmdir below fails with EBUSY and says so
					}
					for _, pid := range pids {
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
					errs = append(errs, fmt.Errorf("%s still held pids %v after %s: killed them", dir, pids, d))
					deadline, killed = time.Now().Add(5*time.Second), true
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err := unix.Rmdir(dir); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("rmdir %s: %w", dir, err))
			}
		}
	}
	return errors.Join(errs...)
}

func cgroupProcs(dir string) []int {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// cleanupCreatedDirs removes, at the end of the test, each of paths that
// did not exist when it was called, if only empty directories are left in
// it (runtimes keep runc and shim state there even with private roots);
// anything else left is reported.
func cleanupCreatedDirs(t *testing.T, paths ...string) {
	t.Helper()
	var absent []string
	for _, p := range paths {
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			absent = append(absent, p)
		}
	}
	t.Cleanup(func() {
		for _, p := range absent {
			var dirs, other []string
			_ = filepath.WalkDir(p, func(q string, de fs.DirEntry, err error) error {
				switch {
				case err != nil:
				case de.IsDir():
					dirs = append(dirs, q)
				default:
					other = append(other, q)
				}
				return nil
			})
			if len(other) > 0 {
				t.Errorf("%s (made by this test) still holds %q", p, other)
				continue
			}
			slices.Reverse(dirs)
			for _, d := range dirs {
				if err := os.Remove(d); err != nil {
					t.Errorf("remove %s: %v", d, err)
				}
			}
		}
	})
}

// runtimeNetns lists the namespaces runtimes create in /run/netns
// (podman: netns-<uuid>, containerd: cni-<uuid>).
func runtimeNetns() []string {
	ents, _ := os.ReadDir(netns.RunDir)
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "netns-") || strings.HasPrefix(e.Name(), "cni-") {
			out = append(out, e.Name())
		}
	}
	return out
}

// checkNoNewNetns fails at the end of the test if a runtime namespace
// appeared that was not there when it was called.
func checkNoNewNetns(t *testing.T) {
	t.Helper()
	before := runtimeNetns()
	t.Cleanup(func() {
		for _, n := range runtimeNetns() {
			if !slices.Contains(before, n) {
				t.Errorf("runtime namespace %s/%s left behind", netns.RunDir, n)
			}
		}
	})
}

// unmountUnder detaches every mount below dir (a runtime's root in a temp
// dir) so the temp dir can be removed even after a crash.
func unmountUnder(dir string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var mps []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			mps = append(mps, f[4])
		}
	}
	// Deepest first.
	slices.SortFunc(mps, func(a, b string) int { return len(b) - len(a) })
	var errs []error
	for _, mp := range mps {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}
