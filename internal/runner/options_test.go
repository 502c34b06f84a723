package runner

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestParseMemory(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"64m", 64 << 20, true},
		{"64M", 64 << 20, true},
		{"64mb", 64 << 20, true},
		{"64MiB", 64 << 20, true},
		{"1g", 1 << 30, true},
		{"1.5g", 3 << 29, true},
		{"8192k", 8 << 20, true},
		{"6291456", 6 << 20, true},
		{"6291455", 0, false}, // below 6m
		{"5m", 0, false},
		{"64x", 0, false},
		{"m", 0, false},
		{"", 0, false},
		{"-64m", 0, false},
		{"1.2.3m", 0, false},
		{"99999999999g", 0, false},
	} {
		got, err := ParseMemory(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseMemory(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseMemory(%q): error %v does not wrap ErrInvalid", tc.in, err)
		}
	}
}

func TestParseCPUs(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0.5", 50000, true},
		{"1", 100000, true},
		{"2.25", 225000, true},
		{"0.01", 1000, true},
		{"0.001", 0, false},
		{"0", 0, false},
		{"-1", 0, false},
		{"abc", 0, false},
		{"NaN", 0, false},
		{"Inf", 0, false},
	} {
		got, err := ParseCPUs(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseCPUs(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestParsePort(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Port
		ok   bool
	}{
		{"8080:80", Port{HostPort: 8080, ContainerPort: 80, Proto: "tcp"}, true},
		{"8080:80/tcp", Port{HostPort: 8080, ContainerPort: 80, Proto: "tcp"}, true},
		{"5353:53/udp", Port{HostPort: 5353, ContainerPort: 53, Proto: "udp"}, true},
		{"5353:53/UDP", Port{HostPort: 5353, ContainerPort: 53, Proto: "udp"}, true},
		{"10.0.0.1:8080:80", Port{HostIP: netip.MustParseAddr("10.0.0.1"), HostPort: 8080, ContainerPort: 80, Proto: "tcp"}, true},
		{"0.0.0.0:8080:80", Port{HostPort: 8080, ContainerPort: 80, Proto: "tcp"}, true},
		{"8080", Port{}, false},
		{"8080:80/sctp", Port{}, false},
		{"0:80", Port{}, false},
		{"65536:80", Port{}, false},
		{"8080:x", Port{}, false},
		{"::1:8080:80", Port{}, false},
		{"a:b:c:d", Port{}, false},
	} {
		got, err := ParsePort(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParsePort(%q) = %+v, %v; want %+v, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestParseNetwork(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Network
		ok   bool
	}{
		{"", Network{Mode: NetworkBridge}, true},
		{"bridge", Network{Mode: NetworkBridge}, true},
		{"none", Network{Mode: NetworkNone}, true},
		{"host", Network{Mode: NetworkHost}, true},
		{"container:web", Network{Mode: NetworkContainer, Container: "web"}, true},
		{"container:", Network{}, false},
		{"container:-x", Network{}, false},
		{"overlay", Network{}, false},
		{"Host", Network{}, false},
	} {
		got, err := ParseNetwork(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseNetwork(%q) = %+v, %v; want %+v, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestCapabilities(t *testing.T) {
	def := DefaultCaps()
	for _, tc := range []struct {
		name      string
		add, drop []string
		want      []string
		ok        bool
	}{
		{"docker default", nil, nil, def, true},
		{"drop NET_RAW", nil, []string{"NET_RAW"}, without(def, "CAP_NET_RAW"), true},
		{"drop cap_net_raw lowercase", nil, []string{"cap_net_raw"}, without(def, "CAP_NET_RAW"), true},
		{"add NET_ADMIN", []string{"net_admin"}, nil, sorted(append(DefaultCaps(), "CAP_NET_ADMIN")), true},
		{"drop ALL add NET_RAW", []string{"NET_RAW"}, []string{"ALL"}, []string{"CAP_NET_RAW"}, true},
		{"add and drop the same: kept", []string{"NET_RAW"}, []string{"NET_RAW"}, def, true},
		{"add ALL", []string{"all"}, nil, allCaps, true},
		{"unknown", []string{"NET_TELEPORT"}, nil, nil, false},
		{"unknown drop", nil, []string{""}, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Capabilities(tc.add, tc.drop)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if tc.ok && !slices.Equal(got, tc.want) {
				t.Errorf("got %q\nwant %q", got, tc.want)
			}
		})
	}
	if len(def) != 14 {
		t.Errorf("Docker's default set has 14 capabilities, got %d: %q", len(def), def)
	}
	if !slices.IsSorted(allCaps) || !slices.IsSorted(defaultCaps) {
		t.Error("capability tables must be sorted")
	}
}

func without(s []string, x string) []string {
	return slices.DeleteFunc(slices.Clone(s), func(e string) bool { return e == x })
}

func sorted(s []string) []string { slices.Sort(s); return s }

func TestFlagsParse(t *testing.T) {
	rootfs := t.TempDir()
	ok := Flags{Name: "web", Rootfs: rootfs, Args: []string{"sh"}}
	for _, tc := range []struct {
		name    string
		mod     func(*Flags)
		wantErr string // substring; "" = valid
	}{
		{"minimal", func(*Flags) {}, ""},
		{"everything", func(f *Flags) {
			f.Network, f.Publish, f.Memory, f.CPUs, f.PidsLimit = "bridge", []string{"8080:80", "5353:53/udp"}, "64m", "0.5", 20
			f.CapAdd, f.CapDrop, f.Hostname, f.Env = []string{"NET_ADMIN"}, []string{"NET_RAW"}, "box", []string{"A=1"}
		}, ""},
		{"unknown network", func(f *Flags) { f.Network = "overlay" }, `--network "overlay": unknown network mode`},
		{"bad name", func(f *Flags) { f.Name = "a/b" }, "--name"},
		{"bad memory", func(f *Flags) { f.Memory = "lots" }, `--memory "lots"`},
		{"bad cpus", func(f *Flags) { f.CPUs = "-1" }, `--cpus "-1"`},
		{"negative pids", func(f *Flags) { f.PidsLimit = -1 }, "--pids-limit -1"},
		{"missing rootfs", func(f *Flags) { f.Rootfs = rootfs + "/nope" }, "--rootfs " + rootfs + "/nope: not a directory"},
		{"no rootfs", func(f *Flags) { f.Rootfs = "" }, "--rootfs is required"},
		{"no command", func(f *Flags) { f.Args = nil }, "no command given"},
		{"ports with host network", func(f *Flags) { f.Network, f.Publish = "host", []string{"80:80"} }, "only be published with --network bridge"},
		{"same port twice", func(f *Flags) { f.Publish = []string{"80:80", "80:81"} }, "published twice"},
		{"hostname with host network", func(f *Flags) { f.Network, f.Hostname = "host", "x" }, "--hostname x"},
		{"bad hostname", func(f *Flags) { f.Hostname = "a_b" }, `--hostname "a_b"`},
		{"bad env", func(f *Flags) { f.Env = []string{"NOVALUE"} }, `--env "NOVALUE"`},
		{"rm with -d", func(f *Flags) { f.Remove, f.Detach = true, true }, "--rm works only in the foreground"},
		{"unknown cap", func(f *Flags) { f.CapDrop = []string{"FLY"} }, `--cap-drop "FLY"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := ok
			tc.mod(&f)
			c, err := f.Parse()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.Rootfs != rootfs || c.Network.Mode != NetworkBridge {
					t.Errorf("config %+v", c)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrInvalid) || !contains(err.Error(), tc.wantErr) {
				t.Errorf("err = %v, want ErrInvalid mentioning %q", err, tc.wantErr)
			}
		})
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
