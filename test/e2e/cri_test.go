package e2e

// containerd 1.6 (Debian 12) with its CRI plugin, driven through the CRI
// gRPC API (k8s.io/cri-api, as the kubelet does; crictl cannot be installed
// here) on a 2-node lab. containerd runs inside node1's namespace with a
// private config, so the CNI plugin it executes runs there too.
//
//	       cr1-n1 (node1, 10.250.0.11)                cr1-n2 (node2, 10.250.0.12)
//	+--------------------------------------+    +------------------------------+
//	| containerd (private root/state/sock) |    |                              |
//	|  pod sandbox (pause: busybox sleep)  |    |  test: ping <pod IP>         |
//	|    + container httpd :80             |    |        GET http://<pod IP>/  |
//	|    eth0 10.244.x.y from tulle-cni    |    |        GET http://10.250.0.11:18081/
//	|  nft inet tulle: :18081 -> pod:80    |    |                              |
//	| tulle0 ---- tulle.1 ---- ul0 ========|====| ul0 ---- tulle.1 ---- tulle0 |
//	+--------------------------------------+    +------------------------------+
//
// The image is an OCI archive of a busybox-static rootfs written by the
// test and imported with `ctr images import`: no registry is needed.
// containerd keeps runc and shim state in /run/containerd whatever its
// config says; the test removes it (when it made it) and the cgroup parent
// /tulle-cr1 at the end.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tulle-net/tulle/internal/lab"
	"github.com/tulle-net/tulle/internal/netns"
)

const (
	criImage        = "localhost/tulle-busybox:1"
	criCgroupParent = "tulle-cr1"
	criNamespace    = "k8s.io" // the containerd namespace the CRI plugin uses
)

// containerdConfig is the private config (REAL-CLIENTS.md §4):
// restrict_oom_score_adj because root lacks CAP_SYS_RESOURCE here (the
// sandbox's oom_score_adj -998 fails otherwise), cgroupfs (no systemd),
// overlayfs, and the CNI dirs of the test. The busybox image doubles as
// the sandbox ("pause") image: its entrypoint is `sleep inf`.
const containerdConfig = `version = 2
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = %[5]q
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = %[6]q
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    disable_apparmor = true
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = %[7]q
      conf_dir = %[8]q
      max_conf_num = 1
`

// criNode is a containerd running in a lab node with a CRI client.
type criNode struct {
	sock string
	rt   runtimeapi.RuntimeServiceClient
	img  runtimeapi.ImageServiceClient
}

// startContainerd starts containerd in node n's namespace with a private
// config under a temp dir and connects a CRI client. Cleanup removes every
// pod left, stops containerd (SIGTERM, then SIGKILL after 15s) and any
// shim of it, and unmounts what it left in its root.
func startContainerd(t *testing.T, n node) *criNode {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "containerd.sock")
	cfg := fmt.Sprintf(containerdConfig,
		filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc",
		filepath.Join(dir, "opt"), criImage, cniBinDir(t, "loopback"), writeConfDir(t, n))
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "containerd.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	h, err := netns.Open(n.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	cmd := exec.Command("containerd", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := netns.StartIn(h, cmd); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			t.Errorf("containerd (pid %d) ignored SIGTERM for 15s: killing it", cmd.Process.Pid)
			_ = cmd.Process.Kill()
			<-exited
		}
		// Shims outlive containerd; ours name its socket on their command line.
		for _, p := range processesMentioning(sock) {
			pidText, _, _ := strings.Cut(p, ":")
			if pid, err := strconv.Atoi(pidText); err == nil && pid != os.Getpid() {
				t.Errorf("shim left running, killing it: %s", p)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if err := unmountUnder(dir); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("containerd log (last 6000 bytes):\n%s", tail(string(b), 6000))
			}
		}
	})
	if _, ok := waitFor(30*time.Second, func() bool {
		select {
		case err := <-exited:
			exited <- err
			return true
		default:
		}
		_, err := os.Stat(sock)
		return err == nil
	}); !ok {
		t.Fatalf("containerd socket %s did not appear within 30s", sock)
	}
	select {
	case err := <-exited:
		exited <- err
		b, _ := os.ReadFile(logPath)
		t.Fatalf("containerd exited: %v\n%s", err, tail(string(b), 4000))
	default:
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial containerd %s: %v", sock, err)
	}
	c := &criNode{sock: sock, rt: runtimeapi.NewRuntimeServiceClient(conn), img: runtimeapi.NewImageServiceClient(conn)}
	t.Cleanup(func() {
		c.removeAllPods(t)
		conn.Close()
	})
	return c
}

// removeAllPods stops and removes every pod sandbox (after a failure
// midway); a test that passed has none left.
func (c *criNode) removeAllPods(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := c.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		t.Errorf("list pod sandboxes: %v", err)
		return
	}
	for _, p := range resp.Items {
		t.Logf("removing leftover pod sandbox %.12s", p.Id)
		if _, err := c.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			t.Errorf("stop pod sandbox %.12s: %v", p.Id, err)
		}
		if _, err := c.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			t.Errorf("remove pod sandbox %.12s: %v", p.Id, err)
		}
	}
}

// waitReady polls the CRI Status until the runtime and the network (the
// CNI config loaded) are ready.
func (c *criNode) waitReady(t *testing.T, d time.Duration) {
	t.Helper()
	var last string
	_, ok := waitFor(d, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		resp, err := c.rt.Status(ctx, &runtimeapi.StatusRequest{})
		if err != nil {
			last = err.Error()
			return false
		}
		ready := 0
		last = ""
		for _, cond := range resp.Status.GetConditions() {
			if cond.Type == runtimeapi.RuntimeReady || cond.Type == runtimeapi.NetworkReady {
				if cond.Status {
					ready++
				} else {
					last += fmt.Sprintf("%s: %s %s; ", cond.Type, cond.Reason, cond.Message)
				}
			}
		}
		return ready == 2
	})
	if !ok {
		t.Fatalf("CRI not ready within %s: %s", d, last)
	}
}

// importImage writes an OCI archive of rootfs and imports it with ctr into
// the CRI's namespace, then waits until the CRI image service lists it.
func (c *criNode) importImage(t *testing.T, rootfs string) {
	t.Helper()
	archive := filepath.Join(t.TempDir(), "busybox-oci.tar")
	if err := writeOCIArchive(archive, rootfs, criImage, []string{"/bin/sleep", "inf"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ctr", "--address", c.sock, "-n", criNamespace, "images", "import", archive).CombinedOutput()
	if err != nil {
		t.Fatalf("ctr images import %s: %v\n%s", archive, err, out)
	}
	var last error
	if _, ok := waitFor(10*time.Second, func() bool {
		resp, err := c.img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: criImage}})
		if err == nil && resp.Image == nil {
			err = errors.New("image not found")
		}
		last = err
		return err == nil
	}); !ok {
		t.Fatalf("CRI image status %s after import: %v (ctr said: %s)", criImage, last, out)
	}
}

// TestContainerdCRI runs a pod through containerd's CRI on lab node1: the
// sandbox gets a tulle address from node1's subnet, reachable from node2
// (ping, and HTTP to a container of the pod); the pod's port mapping
// (hostPort 18081) is published by the plugin and reachable from node2 at
// node1's underlay address; StopPodSandbox + RemovePodSandbox (two CNI
// DELs) leave no allocation, host veth, port rule or namespace behind.
func TestContainerdCRI(t *testing.T) {
	requireE2E(t)
	requireCmds(t, "containerd", "ctr", "containerd-shim-runc-v2", "runc", "nft", "ping")
	if _, err := os.Stat("/usr/lib/cni/loopback"); err != nil && os.Getenv("CI") != "true" {
		t.Skip("needs /usr/lib/cni/loopback (containernetworking-plugins, installed by .ci/deps)")
	}
	l := upLab(t, lab.Options{Name: "cr1", Nodes: 2, Backend: "vxlan"})
	nodes := labNodes(l)
	n1, n2 := nodes[0], nodes[1]
	cleanupCgroups(t, criCgroupParent)
	cleanupCreatedDirs(t, "/run/containerd", "/var/lib/containerd")
	checkNoNewNetns(t)
	rootfs := buildRootfs(t)
	logDir := t.TempDir() // made before containerd: removed after it stops

	began := time.Now()
	c := startContainerd(t, n1)
	c.waitReady(t, 30*time.Second)
	t.Logf("node1: containerd up, CRI runtime and network ready after %s", time.Since(began).Round(time.Millisecond))
	c.importImage(t, rootfs)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const hostPort = 18081
	podCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "cr1-web", Namespace: "tulle-e2e", Uid: "cr1-web-uid"},
		Hostname:     "cr1-web",
		LogDirectory: logDir,
		PortMappings: []*runtimeapi.PortMapping{{Protocol: runtimeapi.Protocol_TCP, ContainerPort: 80, HostPort: hostPort}},
		Linux:        &runtimeapi.LinuxPodSandboxConfig{CgroupParent: "/" + criCgroupParent},
	}
	began = time.Now()
	run, err := c.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podCfg})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	pod := run.PodSandboxId
	t.Logf("RunPodSandbox %.12s took %s", pod, time.Since(began).Round(time.Millisecond))
	st, err := c.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod})
	if err != nil {
		t.Fatalf("PodSandboxStatus: %v", err)
	}
	podIP, err := netip.ParseAddr(st.GetStatus().GetNetwork().GetIp())
	if err != nil || !n1.subnet.Contains(podIP) {
		t.Fatalf("pod IP %q (%v) is not in node1's subnet %s", st.GetStatus().GetNetwork().GetIp(), err, n1.subnet)
	}
	rules, err := portRules(ctx, n1, pod)
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) == 0 {
		t.Errorf("node1: no tulle port rule for the pod's hostPort %d", hostPort)
	}
	t.Logf("pod %.12s: IP %s (node1 subnet %s), %d tulle port rules", pod, podIP, n1.subnet, len(rules))

	// The sandbox alone has no listener: ICMP from node2 first.
	if err := pingFrom(ctx, n2.ns, podIP); err != nil {
		t.Errorf("node2 -> pod %s: %v", podIP, err)
	}

	// A web server in the pod: its port 80 across the fabric, and the
	// pod's hostPort at node1's underlay address.
	ctrCfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "web"},
		Image:    &runtimeapi.ImageSpec{Image: criImage},
		Command:  []string{"httpd", "-f", "-p", "80", "-h", "/www"},
		LogPath:  "web.log",
		Linux:    &runtimeapi.LinuxContainerConfig{},
	}
	cr, err := c.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: ctrCfg, SandboxConfig: podCfg})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if _, err := c.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cr.ContainerId}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	took := waitHTTP(t, n2.ns, "http://"+netip.AddrPortFrom(podIP, 80).String()+"/", 15*time.Second)
	t.Logf("node2 -> pod %s:80 across the fabric: served after %s", podIP, took.Round(time.Millisecond))
	published := netip.AddrPortFrom(n1.ip, hostPort)
	took = waitHTTP(t, n2.ns, "http://"+published.String()+"/", 10*time.Second)
	t.Logf("node2 -> node1's published port %s -> pod:80: served after %s", published, took.Round(time.Millisecond))

	began = time.Now()
	if _, err := c.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: cr.ContainerId, Timeout: 2}); err != nil {
		t.Errorf("StopContainer: %v", err)
	}
	if _, err := c.rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: cr.ContainerId}); err != nil {
		t.Errorf("RemoveContainer: %v", err)
	}
	if _, err := c.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if _, err := c.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	t.Logf("stop + remove of container and pod took %s", time.Since(began).Round(time.Millisecond))
	if _, err := c.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod}); status.Code(err) != codes.NotFound {
		t.Errorf("PodSandboxStatus after RemovePodSandbox: %v, want NotFound", err)
	}
	assertDetached(t, n1, pod)
	assertNodeEmpty(t, n1)
}

// tail returns the last n bytes of s.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
