package cni

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/tulle-net/tulle/internal/ipam"
)

// cnitoolCacheDir is where cnitool (libcni's default, not configurable from
// cnitool) caches results: <dir>/results/<network>-<containerID>-<ifname>.
const cnitoolCacheDir = "/var/lib/cni"

// findCnitool returns the cnitool binary that .ci/deps installs (on PATH or
// in $HOME/go/bin). Without it the test skips, but fails under CI=true.
func findCnitool(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("cnitool"); err == nil {
		return p
	}
	if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, "go", "bin", "cnitool")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("cnitool not found on PATH or in $HOME/go/bin, and CI=true forbids skipping: run .ci/deps")
	}
	t.Skip("cnitool not found (go install github.com/containernetworking/cni/cnitool@v1.3.1, or run .ci/deps)")
	return ""
}

// cnitoolRun is one cnitool invocation's outcome.
type cnitoolRun struct {
	out  string
	code int
}

// TestCnitool drives the plugin binary through the real client, cnitool
// v1.3.1, with a 1.1.0 conflist, from a thread locked in the node
// namespace: add (with a published port via CAP_ARGS), check, status, gc,
// del, del again.
//
// cnitool v1.3.1's gc calls libcni GCNetworkList with no valid list: libcni
// first DELs every attachment of the network in its own cache, then calls
// the plugin's GC without cni.dev/valid-attachments, which the spec says
// the runtime must send. The reference host-local GC then frees every
// address of the network, including live attachments that cnitool did not
// create (REAL-CLIENTS.md, section 1). tulle refuses a GC without the list
// (code 7), so such a live attachment keeps its address, veth and ports.
func TestCnitool(t *testing.T) {
	bin := findCnitool(t)
	n := newPortsNode(t)
	plugin := buildPlugin(t)
	cont, _ := n.container(t)
	live, _ := n.container(t)

	b := make([]byte, 4)
	rand.Read(b)
	network := "tpm-" + hex.EncodeToString(b)
	t.Cleanup(func() {
		matches, _ := filepath.Glob(filepath.Join(cnitoolCacheDir, "results", network+"-*"))
		for _, m := range matches {
			os.Remove(m)
		}
	})
	netDir := t.TempDir()
	conflist := map[string]any{
		"cniVersion": "1.1.0",
		"name":       network,
		"plugins": []map[string]any{{
			"type":         PluginType,
			"subnetFile":   n.subnetFile,
			"dataDir":      n.dataDir,
			"capabilities": map[string]bool{"portMappings": true},
		}},
	}
	if err := os.WriteFile(filepath.Join(netDir, "10-"+network+".conflist"), mustMarshal(t, conflist), 0o644); err != nil {
		t.Fatal(err)
	}
	capArgs := `{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}`
	run := func(verb string, path string) cnitoolRun {
		t.Helper()
		var r cnitoolRun
		err := n.ns.Do(func(ns.NetNS) error {
			cmd := exec.Command(bin, verb, network, path)
			cmd.Env = append(os.Environ(),
				"NETCONFPATH="+netDir,
				"CNI_PATH="+filepath.Dir(plugin),
				"CAP_ARGS="+capArgs,
			)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			r.out = out.String()
			if ee, ok := errors.AsType[*exec.ExitError](err); ok {
				r.code = ee.ExitCode()
				return nil
			}
			return err
		})
		if err != nil {
			t.Fatalf("cnitool %s: %v", verb, err)
		}
		return r
	}
	mustRun := func(verb string) string {
		t.Helper()
		r := run(verb, cont.Path())
		if r.code != 0 {
			t.Fatalf("cnitool %s: exit %d: %s", verb, r.code, r.out)
		}
		return r.out
	}

	var res struct {
		IPs []struct{ Address string } `json:"ips"`
	}
	mustUnmarshal(t, []byte(mustRun("add")), &res)
	if len(res.IPs) != 1 || !strings.HasPrefix(res.IPs[0].Address, "10.250.3.") {
		t.Fatalf("cnitool add result: %+v", res)
	}
	mustReach(t, n.peerH, "tcp4", nodeUnderlay+":8080", peerUnderlay)
	mustRun("check")
	mustRun("status")

	// A live attachment of the same network that cnitool did not make.
	n.add(t, "ctr-live", live, n.portsConf(network, PortMapping{HostPort: 8081, ContainerPort: 80}))

	gc := run("gc", cont.Path())
	if gc.code == 0 || !strings.Contains(gc.out, "cni.dev/valid-attachments") {
		t.Fatalf("cnitool gc without a valid list: exit %d, want tulle's refusal: %s", gc.code, gc.out)
	}
	records := func() []ipam.Record {
		t.Helper()
		s, err := ipam.Open(n.dataDir, network)
		if err != nil {
			t.Fatal(err)
		}
		recs, err := s.List()
		if err != nil {
			t.Fatal(err)
		}
		return recs
	}
	// libcni's DEL (not tulle's GC) removed cnitool's own attachment.
	if out := n.nft(t, "list", "table", "inet", "tulle"); strings.Contains(out, "tcp *:8080") {
		t.Errorf("cnitool gc did not DEL its cached attachment:\n%s", out)
	}
	recs := records()
	var liveHeld bool
	for _, r := range recs {
		liveHeld = liveHeld || r.ContainerID == "ctr-live"
	}
	if !liveHeld {
		t.Errorf("gc freed the live attachment's address; records %v", recs)
	}
	if link(t, n.h, HostVethName("ctr-live", "eth0")) == nil {
		t.Error("gc deleted the live attachment's veth")
	}
	mustReach(t, n.peerH, "tcp4", nodeUnderlay+":8081", peerUnderlay)

	for range 2 {
		mustRun("del")
	}
	out := n.nft(t, "list", "table", "inet", "tulle")
	if strings.Contains(out, "tcp *:8080") || !strings.Contains(out, "ctr-live eth0 tcp *:8081") {
		t.Fatalf("after cnitool del:\n%s", out)
	}
	if recs := records(); len(recs) != 1 || recs[0].ContainerID != "ctr-live" {
		t.Errorf("after cnitool del, records %v, want only ctr-live's", recs)
	}
	if cached, _ := filepath.Glob(filepath.Join(cnitoolCacheDir, "results", network+"-*")); len(cached) > 0 {
		t.Errorf("cnitool cache entries left after del: %v", cached)
	}
}
