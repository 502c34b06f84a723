package cni

import (
	"bytes"
	"errors"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	types040 "github.com/containernetworking/cni/pkg/types/040"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/types/create"
	"github.com/containernetworking/plugins/pkg/ns"
)

// buildPlugin compiles cmd/tulle-cni into a temporary directory as "tulle".
func buildPlugin(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), PluginType)
	cmd := exec.Command(goBin, "build", "-o", bin, "github.com/tulle-net/tulle/cmd/tulle-cni")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// execResult is what one plugin run returned.
type execResult struct {
	stdout, stderr []byte
	exitCode       int
}

// cniError decodes the error JSON the plugin prints on failure.
func (r execResult) cniError(t *testing.T) types.Error {
	t.Helper()
	var e types.Error
	mustUnmarshal(t, r.stdout, &e)
	return e
}

// execPlugin runs the binary the way a runtime does, from a thread locked
// in the node namespace, so the plugin's "host" namespace is the node's.
func (n *node) execPlugin(t *testing.T, bin, command, id, netnsPath string, stdin []byte) execResult {
	t.Helper()
	var r execResult
	err := n.ns.Do(func(ns.NetNS) error {
		cmd := exec.Command(bin)
		cmd.Env = []string{
			"CNI_COMMAND=" + command,
			"CNI_CONTAINERID=" + id,
			"CNI_NETNS=" + netnsPath,
			"CNI_IFNAME=eth0",
			"CNI_PATH=" + filepath.Dir(bin),
		}
		cmd.Stdin = bytes.NewReader(stdin)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		r = execResult{stdout: stdout.Bytes(), stderr: stderr.Bytes()}
		if ee, ok := errors.AsType[*exec.ExitError](err); ok {
			r.exitCode = ee.ExitCode()
			return nil
		}
		return err
	})
	if err != nil {
		t.Fatalf("exec %s %s: %v", bin, command, err)
	}
	return r
}

func TestBinary(t *testing.T) {
	n := newNode(t)
	bin := buildPlugin(t)

	t.Run("VERSION", func(t *testing.T) {
		r := n.execPlugin(t, bin, "VERSION", "", "", []byte(`{"cniVersion":"1.1.0"}`))
		var v struct {
			SupportedVersions []string `json:"supportedVersions"`
		}
		mustUnmarshal(t, r.stdout, &v)
		for _, want := range []string{"0.4.0", "1.0.0", "1.1.0"} {
			if !slices.Contains(v.SupportedVersions, want) {
				t.Errorf("VERSION = %s, missing %s", r.stdout, want)
			}
		}
	})

	for _, ver := range []string{"0.4.0", "1.0.0"} {
		t.Run("ADD CHECK DEL "+ver, func(t *testing.T) {
			c := newNS(t)
			conf := n.conf(ver, nil)
			id := "bin-" + ver
			r := n.execPlugin(t, bin, "ADD", id, c.Path(), conf)
			if r.exitCode != 0 {
				t.Fatalf("ADD exit %d: %s %s", r.exitCode, r.stdout, r.stderr)
			}
			res, err := create.Create(ver, r.stdout)
			if err != nil {
				t.Fatalf("parse %s result %s: %v", ver, r.stdout, err)
			}
			switch ver {
			case "0.4.0":
				if _, ok := res.(*types040.Result); !ok {
					t.Fatalf("0.4.0 result is %T", res)
				}
			case "1.0.0":
				if _, ok := res.(*current.Result); !ok {
					t.Fatalf("1.0.0 result is %T", res)
				}
			}
			cur, err := current.NewResultFromResult(res)
			if err != nil {
				t.Fatal(err)
			}
			if a := addrOf(t, cur); !n.info.Subnet.Contains(a.Addr()) {
				t.Fatalf("address %s outside %s", a, n.info.Subnet)
			}
			if eth := link(t, handle(t, c), "eth0"); eth == nil {
				t.Fatal("no eth0 in the container")
			}

			var m map[string]any
			mustUnmarshal(t, conf, &m)
			var prev map[string]any
			mustUnmarshal(t, r.stdout, &prev)
			m["prevResult"] = prev
			if r := n.execPlugin(t, bin, "CHECK", id, c.Path(), mustMarshal(t, m)); r.exitCode != 0 {
				t.Fatalf("CHECK exit %d: %s %s", r.exitCode, r.stdout, r.stderr)
			}
			for i := range 2 {
				if r := n.execPlugin(t, bin, "DEL", id, c.Path(), conf); r.exitCode != 0 {
					t.Fatalf("DEL #%d exit %d: %s %s", i+1, r.exitCode, r.stdout, r.stderr)
				}
			}
			if l := link(t, n.h, HostVethName(id, "eth0")); l != nil {
				t.Fatal("host veth left after DEL")
			}
		})
	}

	t.Run("errors carry codes", func(t *testing.T) {
		c := newNS(t)
		r := n.execPlugin(t, bin, "ADD", "bin-bad", c.Path(), n.conf("1.0.0", map[string]any{"mtu": 10}))
		if e := r.cniError(t); r.exitCode == 0 || e.Code != types.ErrInvalidNetworkConfig || !strings.Contains(e.Msg, `"mtu"`) {
			t.Errorf("ADD with mtu 10: exit %d, %s", r.exitCode, r.stdout)
		}
		r = n.execPlugin(t, bin, "STATUS", "", "", n.conf("1.1.0", nil))
		if r.exitCode != 0 {
			t.Errorf("STATUS with the subnet file: exit %d, %s", r.exitCode, r.stdout)
		}
		mustRemove(t, n.subnetFile)
		r = n.execPlugin(t, bin, "STATUS", "", "", n.conf("1.1.0", nil))
		if e := r.cniError(t); r.exitCode == 0 || e.Code != types.ErrPluginNotAvailable || !strings.Contains(e.Msg, "is 'tulle agent' running") {
			t.Errorf("STATUS without the subnet file: exit %d, %s", r.exitCode, r.stdout)
		}
		r = n.execPlugin(t, bin, "ADD", "bin-nofile", c.Path(), n.conf("1.0.0", nil))
		if e := r.cniError(t); r.exitCode == 0 || e.Code != types.ErrTryAgainLater {
			t.Errorf("ADD without the subnet file: exit %d, %s", r.exitCode, r.stdout)
		}
		if len(r.stderr) != 0 {
			t.Logf("stderr: %s", r.stderr)
		}
		assertNoTrace(t, n, "bin-nofile")
	})
}
