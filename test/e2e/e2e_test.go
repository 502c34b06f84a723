// Package e2e runs whole tulle clusters in network namespaces on this
// machine: real `tulle etcd` and `tulle agent` processes, containers attached
// by executing the real tulle-cni plugin through libcni, real traffic.
// Skipped under -short; needs root (skipped locally without it, failed when
// CI=true).
//
// Topology of every test lab (name <L>, e.g. te1; N nodes, K containers):
//
//	                    netns <L>-sw
//	+-----------------------------------------------------+
//	| br0 10.250.0.1/24    tulle etcd :2379 (this lab only)|
//	+---n1-----------n2----------- ... ---nN---------------+
//	    | veth        |                   |
//	+---ul0---+   +---ul0---+         +---ul0---+   underlay, MTU 1500
//	| <L>-n1  |   | <L>-n2  |   ...   | <L>-nN  |   10.250.0.(10+i)/24
//	| agent   |   | agent   |         | agent   |   `tulle agent` process
//	| tulle.1 |---| tulle.1 |  vxlan  | tulle.1 |   (or host-gw routes)
//	| tulle0  |   | tulle0  |         | tulle0  |   bridge, 10.244.x.1/24
//	+--+---+--+   +--+---+--+         +--+---+--+
//	   |   |         |   |               |   |
//	<L>-n1c1 ...  <L>-n2c1 ...        <L>-nNcK      containers, eth0 from
//	                                                the tulle CNI plugin
//
// Nothing is created in the root namespace; every test checks that its
// links, addresses and routes are unchanged and that no namespace of its lab
// survives.
package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// bins holds the binaries TestMain built, shared by every test (set once
// before any test runs, read-only after).
var bins struct {
	tulle, cni string
	dir        string
}

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() || os.Geteuid() != 0 {
		// Every test skips (or, with CI=true and no root, fails) on its own.
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "tulle-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		if err := build(dir); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: build binaries:", err)
			return 1
		}
		bins.dir = dir
		bins.tulle = filepath.Join(dir, "tulle")
		bins.cni = filepath.Join(dir, "tulle-cni")
		return m.Run()
	}()
	os.Exit(code)
}

// build runs go build -o dir/ ./cmd/... from the module root: tulle, the
// tulle-cni plugin and tulle-etcd (which `tulle etcd` hands over to).
func build(dir string) error {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	ctx := context.Background()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+"/", "./cmd/...")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	return nil
}
