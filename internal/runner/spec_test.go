package runner

import (
	"encoding/json"
	"reflect"
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func baseConfig() Config {
	return Config{Name: "web", Rootfs: "/srv/rootfs", Args: []string{"httpd", "-f"}, Caps: DefaultCaps(),
		Network: Network{Mode: NetworkBridge}}
}

func nsTypes(s *specs.Spec) map[specs.LinuxNamespaceType]string {
	m := map[specs.LinuxNamespaceType]string{}
	for _, n := range s.Linux.Namespaces {
		m[n.Type] = n.Path
	}
	return m
}

func TestBuildSpec(t *testing.T) {
	in := SpecInput{NetnsPath: "/run/tulle/containers/web/netns", CgroupsPath: "/tulle/abc", NofileHard: 20000}
	for _, tc := range []struct {
		name  string
		c     func(*Config)
		in    func(*SpecInput)
		check func(*testing.T, *specs.Spec)
	}{
		{"namespaces: own pid ipc mnt uts, net at the path", nil, nil, func(t *testing.T, s *specs.Spec) {
			want := map[specs.LinuxNamespaceType]string{
				specs.PIDNamespace: "", specs.IPCNamespace: "", specs.MountNamespace: "", specs.UTSNamespace: "",
				specs.NetworkNamespace: "/run/tulle/containers/web/netns",
			}
			if got := nsTypes(s); !reflect.DeepEqual(got, want) {
				t.Errorf("namespaces %v, want %v", got, want)
			}
			if s.Hostname != "web" {
				t.Errorf("hostname %q, want the name", s.Hostname)
			}
			if s.Linux.CgroupsPath != "/tulle/abc" || s.Root.Path != "/srv/rootfs" || !slices.Equal(s.Process.Args, []string{"httpd", "-f"}) {
				t.Errorf("cgroups %q root %q args %q", s.Linux.CgroupsPath, s.Root.Path, s.Process.Args)
			}
		}},
		{"host network: no net or uts namespace, no hostname", nil, func(in *SpecInput) { in.NetnsPath, in.HostNetwork = "", true }, func(t *testing.T, s *specs.Spec) {
			got := nsTypes(s)
			if _, ok := got[specs.NetworkNamespace]; ok {
				t.Error("host network has a network namespace")
			}
			if _, ok := got[specs.UTSNamespace]; ok {
				t.Error("host network has its own UTS namespace")
			}
			if s.Hostname != "" {
				t.Errorf("hostname %q without a UTS namespace", s.Hostname)
			}
		}},
		{"cgroup v2: private cgroup namespace", nil, func(in *SpecInput) { in.CgroupV2 = true }, func(t *testing.T, s *specs.Spec) {
			if _, ok := nsTypes(s)[specs.CgroupNamespace]; !ok {
				t.Error("no cgroup namespace on v2")
			}
		}},
		{"hostname flag", func(c *Config) { c.Hostname = "box" }, nil, func(t *testing.T, s *specs.Spec) {
			if s.Hostname != "box" || !slices.Contains(s.Process.Env, "HOSTNAME=box") {
				t.Errorf("hostname %q env %q", s.Hostname, s.Process.Env)
			}
		}},
		{"limits", func(c *Config) { c.Memory, c.CPUQuota, c.Pids = 64<<20, 50000, 20 }, nil, func(t *testing.T, s *specs.Spec) {
			r := s.Linux.Resources
			if *r.Memory.Limit != 64<<20 || *r.Memory.Swap != 64<<20 {
				t.Errorf("memory %d swap %d", *r.Memory.Limit, *r.Memory.Swap)
			}
			if *r.CPU.Quota != 50000 || *r.CPU.Period != 100000 {
				t.Errorf("cpu quota %d period %d", *r.CPU.Quota, *r.CPU.Period)
			}
			if *r.Pids.Limit != 20 {
				t.Errorf("pids %d", *r.Pids.Limit)
			}
		}},
		{"no limits: no resource sections", nil, nil, func(t *testing.T, s *specs.Spec) {
			r := s.Linux.Resources
			if r.Memory != nil || r.CPU != nil || r.Pids != nil {
				t.Errorf("unexpected limits %+v", r)
			}
			if len(r.Devices) != 1 || r.Devices[0].Allow {
				t.Errorf("devices %+v, want deny-all", r.Devices)
			}
		}},
		{"capabilities: the config's set in bounding, effective, permitted only", func(c *Config) { c.Caps = []string{"CAP_NET_RAW"} }, nil, func(t *testing.T, s *specs.Spec) {
			c := s.Process.Capabilities
			for _, set := range [][]string{c.Bounding, c.Effective, c.Permitted} {
				if !slices.Equal(set, []string{"CAP_NET_RAW"}) {
					t.Errorf("caps %q", set)
				}
			}
			if len(c.Inheritable) != 0 || len(c.Ambient) != 0 {
				t.Errorf("inheritable %q ambient %q", c.Inheritable, c.Ambient)
			}
		}},
		{"rlimit clamped to the hard limit", nil, nil, func(t *testing.T, s *specs.Spec) {
			want := []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 20000, Soft: 1024}}
			if !reflect.DeepEqual(s.Process.Rlimits, want) {
				t.Errorf("rlimits %+v, want %+v", s.Process.Rlimits, want)
			}
		}},
		{"rlimit: soft clamped too", nil, func(in *SpecInput) { in.NofileHard = 512 }, func(t *testing.T, s *specs.Spec) {
			if r := s.Process.Rlimits[0]; r.Hard != 512 || r.Soft != 512 {
				t.Errorf("rlimit %+v", r)
			}
		}},
		{"rlimit: unknown hard limit", nil, func(in *SpecInput) { in.NofileHard = 0 }, func(t *testing.T, s *specs.Spec) {
			if r := s.Process.Rlimits[0]; r.Hard != 1<<20 || r.Soft != 1024 {
				t.Errorf("rlimit %+v", r)
			}
		}},
		{"env: PATH, HOSTNAME, user; user PATH replaces", func(c *Config) { c.Env = []string{"A=1", "PATH=/bin"} }, nil, func(t *testing.T, s *specs.Spec) {
			want := []string{"HOSTNAME=web", "A=1", "PATH=/bin"}
			if !slices.Equal(s.Process.Env, want) {
				t.Errorf("env %q, want %q", s.Process.Env, want)
			}
		}},
		{"mounts and masks", nil, nil, func(t *testing.T, s *specs.Spec) {
			var dests []string
			for _, m := range s.Mounts {
				dests = append(dests, m.Destination)
			}
			for _, d := range []string{"/proc", "/dev", "/dev/pts", "/dev/shm", "/sys", "/sys/fs/cgroup"} {
				if !slices.Contains(dests, d) {
					t.Errorf("no %s mount", d)
				}
			}
			if !slices.Contains(s.Linux.MaskedPaths, "/proc/kcore") || !slices.Contains(s.Linux.ReadonlyPaths, "/proc/sys") {
				t.Error("masked or read-only paths missing")
			}
			if s.Process.OOMScoreAdj != nil {
				t.Error("oomScoreAdj set: a negative value needs CAP_SYS_RESOURCE")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, i := baseConfig(), in
			if tc.c != nil {
				tc.c(&c)
			}
			if tc.in != nil {
				tc.in(&i)
			}
			s, err := BuildSpec(c, i)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, s)
		})
	}
}

func TestBuildSpecPureAndValid(t *testing.T) {
	in := SpecInput{NetnsPath: "/x/netns", CgroupsPath: "/tulle/abc", NofileHard: 20000}
	a, err := BuildSpec(baseConfig(), in)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := BuildSpec(baseConfig(), in)
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	if string(ja) != string(jb) {
		t.Error("same input, different specs")
	}
	for _, bad := range []SpecInput{
		{NetnsPath: "/x", CgroupsPath: ""},
		{CgroupsPath: "/tulle/x"}, // neither a netns path nor host network
	} {
		if _, err := BuildSpec(baseConfig(), bad); err == nil {
			t.Errorf("BuildSpec(%+v) succeeded", bad)
		}
	}
	c := baseConfig()
	c.Args = nil
	if _, err := BuildSpec(c, in); err == nil {
		t.Error("BuildSpec without a command succeeded")
	}
}
