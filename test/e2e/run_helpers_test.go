package e2e

// Helpers of the `tulle run` tests (run_test.go): a node's tulle runner
// (its own state dir, cgroup parent, conflist and CNI dir), and what must be
// gone after `tulle rm`.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tulle-net/tulle/internal/cni"
	"github.com/tulle-net/tulle/internal/runner"
)

// runHost is `tulle run` on one lab node: every command runs inside the
// node's namespace with the node's own state dir and cgroup parent, as on
// a real host (where the defaults would be /run/tulle/containers and /tulle).
type runHost struct {
	n            node
	stateDir     string
	cgroupParent string // without the leading '/'
	conf         string // the node's conflist
	cniPath      string
}

// runNewHost prepares node n for `tulle run`. Its cleanup (registered
// after the cgroup cleanup, so it runs before it) removes every container
// left with `tulle rm -f`.
func runNewHost(t *testing.T, n node, cgroupParent string) *runHost {
	t.Helper()
	cleanupCgroups(t, cgroupParent)
	h := &runHost{
		n: n, stateDir: filepath.Join(t.TempDir(), "containers"), cgroupParent: cgroupParent,
		conf: filepath.Join(writeConfDir(t, n), "10-tulle.conflist"), cniPath: cniBinDir(t),
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		states, err := h.ps(ctx)
		if err != nil {
			t.Errorf("%s: tulle ps at cleanup: %v", n.name, err)
			return
		}
		for _, st := range states {
			t.Logf("%s: removing leftover container %s (%s)", n.name, st.Name, st.StatusText())
			if _, err := h.ctl(ctx, "rm", "-f", st.Name); err != nil {
				t.Errorf("%s: tulle rm -f %s: %v", n.name, st.Name, err)
			}
		}
		// Anything a crashed test left mounted below the state dir.
		if err := unmountUnder(filepath.Dir(h.stateDir)); err != nil {
			t.Error(err)
		}
	})
	return h
}

// run is `tulle run FLAGS... ARGS...` with the node's CNI and cgroup flags.
func (h *runHost) run(ctx context.Context, args ...string) (string, error) {
	argv := []string{bins.tulle, "run", "--state-dir", h.stateDir, "--cgroup-parent", "/" + h.cgroupParent,
		"--cni-conf", h.conf, "--cni-path", h.cniPath}
	return nsCommand(ctx, h.n.ns, nil, append(argv, args...)...)
}

// ctl is `tulle SUB --state-dir DIR ARGS...`; sub may be two words
// ("netns ls").
func (h *runHost) ctl(ctx context.Context, sub string, args ...string) (string, error) {
	argv := append([]string{bins.tulle}, strings.Fields(sub)...)
	argv = append(argv, "--state-dir", h.stateDir)
	return nsCommand(ctx, h.n.ns, nil, append(argv, args...)...)
}

// ps returns every container's state (tulle ps --json).
func (h *runHost) ps(ctx context.Context) ([]*runner.State, error) {
	out, err := h.ctl(ctx, "ps", "--json")
	if err != nil {
		return nil, err
	}
	var states []*runner.State
	if err := json.Unmarshal([]byte(out), &states); err != nil {
		return nil, fmt.Errorf("decode tulle ps --json %q: %w", out, err)
	}
	return states, nil
}

// inspect returns one container's state, failing the test when it is not
// listed.
func (h *runHost) inspect(t *testing.T, ctx context.Context, name string) *runner.State {
	t.Helper()
	states, err := h.ps(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range states {
		if st.Name == name {
			return st
		}
	}
	t.Fatalf("%s: container %s not in tulle ps", h.n.name, name)
	return nil
}

// mustRun starts a detached container and returns its state.
func (h *runHost) mustRun(t *testing.T, ctx context.Context, name string, args ...string) *runner.State {
	t.Helper()
	began := time.Now()
	out, err := h.run(ctx, append([]string{"-d", "--name", name}, args...)...)
	if err != nil {
		t.Fatalf("%s: tulle run -d --name %s: %v", h.n.name, name, err)
	}
	if strings.TrimSpace(out) != name {
		t.Errorf("tulle run -d printed %q, want the name %q", out, name)
	}
	st := h.inspect(t, ctx, name)
	if st.Status != runner.StatusRunning || st.Pid <= 0 {
		t.Fatalf("%s: %s after run -d: status %s, pid %d", h.n.name, name, st.StatusText(), st.Pid)
	}
	t.Logf("%s: tulle run -d %s (%s, ip %s) took %s", h.n.name, name, st.Network, st.IP, time.Since(began).Round(time.Millisecond))
	return st
}

// waitExited polls tulle ps until the container has exited.
func (h *runHost) waitExited(t *testing.T, ctx context.Context, name string, d time.Duration) *runner.State {
	t.Helper()
	var st *runner.State
	if _, ok := waitFor(d, func() bool {
		st = h.inspect(t, ctx, name)
		return st.Status == runner.StatusExited
	}); !ok {
		t.Fatalf("%s: container %s still %s after %s", h.n.name, name, st.StatusText(), d)
	}
	return st
}

// runExitCode returns the exit code in err from a command (0 for nil, -1
// when it did not run to an exit).
func runExitCode(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	default:
		return -1
	}
}

// runLeftovers lists what of container st is still on the host: its state
// dir, runc state, cgroup dirs, netns mount, CNI allocation / veth / port
// rules / cached result.
func (h *runHost) runLeftovers(ctx context.Context, st *runner.State) []string {
	var left []string
	dir := filepath.Join(h.stateDir, st.Name)
	if _, err := os.Stat(dir); err == nil {
		left = append(left, "state dir "+dir)
	}
	if _, err := os.Stat(filepath.Join(h.stateDir, "runc", st.ID)); err == nil {
		left = append(left, "runc state "+st.ID)
	}
	for _, hier := range cgroupHierarchies() {
		p := filepath.Join(hier, st.CgroupsPath)
		if _, err := os.Stat(p); err == nil {
			left = append(left, "cgroup "+p)
		}
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(b), " "+dir+"/") {
		left = append(left, "netns mount under "+dir)
	}
	if allocs, err := allocations(h.n); err == nil && st.IP != "" {
		ip, _, _ := strings.Cut(st.IP, "/")
		if slices.Contains(allocs, ip) {
			left = append(left, "allocation "+ip)
		}
	}
	if veths, err := pluginVeths(h.n); err == nil && slices.Contains(veths, cni.HostVethName(st.ID, "eth0")) {
		left = append(left, "host veth "+cni.HostVethName(st.ID, "eth0"))
	}
	if rules, err := portRules(ctx, h.n, st.ID); err == nil && len(rules) > 0 {
		left = append(left, fmt.Sprintf("port rules %q", rules))
	}
	cached, _ := filepath.Glob(filepath.Join(h.stateDir, "cni-cache", "results", "*"+st.ID+"*"))
	left = append(left, cached...)
	return left
}

// assertEmpty fails unless the runner holds nothing: no container dir,
// runc root or CNI cache in the state dir, no cgroup below the parent.
func (h *runHost) assertEmpty(t *testing.T) {
	t.Helper()
	ents, err := os.ReadDir(h.stateDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("%s: %s left in the state dir %s", h.n.name, e.Name(), h.stateDir)
	}
	for _, hier := range cgroupHierarchies() {
		kids, _ := filepath.Glob(filepath.Join(hier, h.cgroupParent, "*"))
		for _, k := range kids {
			if fi, err := os.Stat(k); err == nil && fi.IsDir() {
				t.Errorf("%s: cgroup %s left", h.n.name, k)
			}
		}
	}
}

// runStatIno is a file's inode number (a namespace's identity for nsfs).
func runStatIno(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}
