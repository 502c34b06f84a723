package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	types040 "github.com/containernetworking/cni/pkg/types/040"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/tulle-net/tulle/internal/ipam"
	"github.com/tulle-net/tulle/internal/ipnet"
	"github.com/tulle-net/tulle/internal/subnetfile"
)

func confJSON(extra string) []byte {
	base := `"cniVersion":"1.0.0","name":"tcn-net","type":"tulle"`
	if extra != "" {
		base += "," + extra
	}
	return []byte("{" + base + "}")
}

func TestParseConf(t *testing.T) {
	tests := []struct {
		name     string
		in       []byte
		code     uint   // 0: no error
		contains string // in the error message
		check    func(*testing.T, *NetConf)
	}{
		{name: "minimal gets defaults", in: confJSON(""), check: func(t *testing.T, c *NetConf) {
			if c.SubnetFile != "/run/tulle/subnet.json" || c.DataDir != "/var/lib/tulle/ipam" || !c.defaultGateway() || c.HairpinMode {
				t.Errorf("defaults: %+v", c)
			}
		}},
		{name: "all fields", in: confJSON(`"bridge":"br9","subnetFile":"/x/s.json","dataDir":"/x/d","mtu":1400,"hairpinMode":true,"isDefaultGateway":false,"dns":{"nameservers":["10.0.0.10"]}`),
			check: func(t *testing.T, c *NetConf) {
				if c.Bridge != "br9" || c.SubnetFile != "/x/s.json" || c.DataDir != "/x/d" || c.MTU != 1400 || !c.HairpinMode || c.defaultGateway() || c.DNS.Nameservers[0] != "10.0.0.10" {
					t.Errorf("fields: %+v", c)
				}
			}},
		{name: "runtime keys and namespaced keys pass", in: confJSON(`"runtimeConfig":{"portMappings":[]},"args":{},"capabilities":{"portMappings":true},"example.com/x":1`)},
		{name: "gc lists", in: confJSON(`"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],"cni.dev/attachments":[]`),
			check: func(t *testing.T, c *NetConf) {
				if !c.HasAttachments || len(c.ValidAttachments) != 1 {
					t.Errorf("attachments: %+v", c)
				}
			}},
		{name: "not json", in: []byte("{"), code: types.ErrDecodingFailure},
		{name: "unknown field", in: confJSON(`"isDefaultGW":true`), code: types.ErrUnsupportedField, contains: `"isDefaultGW"`},
		{name: "ipam", in: confJSON(`"ipam":{"type":"host-local"}`), code: types.ErrUnsupportedField, contains: `remove "ipam"`},
		{name: "empty ipam is fine", in: confJSON(`"ipam":{}`)},
		{name: "wrong type", in: []byte(`{"cniVersion":"1.0.0","name":"n","type":"bridge"}`), code: types.ErrInvalidNetworkConfig, contains: `"type": invalid value "bridge"`},
		{name: "old version", in: []byte(`{"cniVersion":"0.3.1","name":"n","type":"tulle"}`), code: types.ErrIncompatibleCNIVersion, contains: `"0.3.1"`},
		{name: "bad name", in: []byte(`{"cniVersion":"1.0.0","name":"../x","type":"tulle"}`), code: types.ErrInvalidNetworkConfig, contains: `"name"`},
		{name: "mtu too small", in: confJSON(`"mtu":100`), code: types.ErrInvalidNetworkConfig, contains: `"mtu": invalid value 100`},
		{name: "mtu not a number", in: confJSON(`"mtu":"big"`), code: types.ErrInvalidNetworkConfig, contains: `"mtu": invalid value "big"`},
		{name: "hairpin not a bool", in: confJSON(`"hairpinMode":"yes"`), code: types.ErrInvalidNetworkConfig, contains: `"hairpinMode"`},
		{name: "bridge too long", in: confJSON(`"bridge":"a-very-long-bridge-name"`), code: types.ErrInvalidNetworkConfig, contains: `"bridge": invalid value "a-very-long-bridge-name"`},
		{name: "relative dataDir", in: confJSON(`"dataDir":"ipam"`), code: types.ErrInvalidNetworkConfig, contains: `"dataDir"`},
		{name: "relative subnetFile", in: confJSON(`"subnetFile":"s.json"`), code: types.ErrInvalidNetworkConfig, contains: `"subnetFile"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseConf(tc.in)
			if tc.code == 0 {
				if err != nil {
					t.Fatalf("parseConf: %v", err)
				}
				if tc.check != nil {
					tc.check(t, c)
				}
				return
			}
			e, ok := toCNIError(err).(*types.Error)
			if !ok || e.Code != tc.code || !strings.Contains(e.Msg, tc.contains) {
				t.Fatalf("parseConf error = %v (code %v), want code %d containing %q", err, codeOf(err), tc.code, tc.contains)
			}
		})
	}
}

func codeOf(err error) uint {
	if e, ok := toCNIError(err).(*types.Error); ok {
		return e.Code
	}
	return 0
}

func FuzzParseConf(f *testing.F) {
	f.Add(confJSON(""))
	f.Add(confJSON(`"mtu":1400,"bridge":"x","isDefaultGateway":false`))
	f.Add(confJSON(`"prevResult":{"ips":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := parseConf(b)
		if err != nil {
			if codeOf(err) == types.ErrInternal {
				t.Fatalf("parse error without a CNI code: %v", err)
			}
			return
		}
		if c.Type != PluginType || !filepath.IsAbs(c.DataDir) || !filepath.IsAbs(c.SubnetFile) ||
			(c.MTU != 0 && (c.MTU < 576 || c.MTU > 65535)) || (c.Bridge != "" && !validIfName(c.Bridge)) || !ipam.ValidNetworkName(c.Name) {
			t.Fatalf("accepted invalid config %s: %+v", b, c)
		}
	})
}

func testInfo() subnetfile.Info {
	return subnetfile.Info{
		Network: netip.MustParsePrefix("10.250.0.0/16"),
		Subnet:  netip.MustParsePrefix("10.250.3.0/24"),
		Gateway: netip.MustParseAddr("10.250.3.1"),
		MTU:     1450,
		Bridge:  "tulle0",
	}
}

func TestResolve(t *testing.T) {
	c, err := parseConf(confJSON(""))
	if err != nil {
		t.Fatal(err)
	}
	s, err := resolve(c, testInfo())
	if err != nil {
		t.Fatal(err)
	}
	if s.bridge != "tulle0" || s.mtu != 1450 || len(s.routes) != 1 || s.routes[0].String() != "0.0.0.0/0" {
		t.Errorf("defaults from subnet file: %+v", s)
	}
	c, _ = parseConf(confJSON(`"bridge":"br1","mtu":1300,"isDefaultGateway":false`))
	s, _ = resolve(c, testInfo())
	if s.bridge != "br1" || s.mtu != 1300 || len(s.routes) != 1 || s.routes[0].String() != "10.250.0.0/16" {
		t.Errorf("overrides: %+v", s)
	}
	info := testInfo()
	info.Subnet = netip.MustParsePrefix("10.250.3.0/31")
	if _, err := resolve(c, info); codeOf(err) != types.ErrInvalidNetworkConfig {
		t.Errorf("resolve with a /31 subnet = %v, want code 7", err)
	}
}

func TestHostVethName(t *testing.T) {
	a := HostVethName("0123456789abcdef0123456789abcdef", "eth0")
	if len(a) > 15 || !strings.HasPrefix(a, "tl") || strings.HasPrefix(a, "tl-") {
		t.Fatalf("HostVethName = %q: want tl<hex>, at most 15 bytes", a)
	}
	if a != HostVethName("0123456789abcdef0123456789abcdef", "eth0") {
		t.Fatal("HostVethName is not stable")
	}
	if a == HostVethName("0123456789abcdef0123456789abcdef", "eth1") || HostVethName("ab", "c") == HostVethName("a", "bc") {
		t.Fatal("HostVethName collides across ifnames")
	}
}

func TestToCNIError(t *testing.T) {
	if toCNIError(nil) != nil {
		t.Fatal("toCNIError(nil) is not nil")
	}
	inner := withCode(types.ErrTryAgainLater, errors.New("subnet file missing"))
	e := toCNIError(fmt.Errorf("add container x: %w", inner)).(*types.Error)
	if e.Code != types.ErrTryAgainLater || e.Msg != "add container x: subnet file missing" {
		t.Fatalf("toCNIError = %+v", e)
	}
	if e := toCNIError(errors.New("boom")).(*types.Error); e.Code != types.ErrInternal {
		t.Fatalf("uncoded error got code %d", e.Code)
	}
}

// TestMergePrev puts tulle after another plugin in a chain: the earlier
// interfaces, addresses and routes come first, unchanged, and tulle's
// address points at its own interface.
func TestMergePrev(t *testing.T) {
	prev := &current.Result{
		CNIVersion: "1.1.0",
		Interfaces: []*current.Interface{{Name: "lo", Sandbox: "/run/netns/x"}},
		IPs:        []*current.IPConfig{{Interface: current.Int(0), Address: *ipnet.From(netip.MustParsePrefix("127.0.0.1/8"))}},
		DNS:        types.DNS{Nameservers: []string{"10.0.0.53"}},
	}
	ours := buildResult(resultInput{
		hostName: "tl0123456789ab", ifName: "eth0", sandbox: "/run/netns/x",
		addr: netip.MustParsePrefix("10.250.3.7/24"), gateway: netip.MustParseAddr("10.250.3.1"),
		routes: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, mtu: 1450,
	})
	got := mergePrev(prev, ours)
	if len(got.Interfaces) != 3 || got.Interfaces[0].Name != "lo" || got.Interfaces[2].Name != "eth0" {
		t.Fatalf("interfaces = %v", got.Interfaces)
	}
	if len(got.IPs) != 2 || *got.IPs[0].Interface != 0 || *got.IPs[1].Interface != 2 || got.IPs[1].Address.String() != "10.250.3.7/24" {
		t.Fatalf("ips = %v", got.IPs)
	}
	if *ours.IPs[0].Interface != 1 {
		t.Error("mergePrev changed tulle's own result")
	}
	if len(got.DNS.Nameservers) != 1 || got.DNS.Nameservers[0] != "10.0.0.53" {
		t.Errorf("dns = %+v, want prev's kept when the config has none", got.DNS)
	}
	if mergePrev(nil, ours) != ours {
		t.Error("without prevResult the result must be tulle's own")
	}
}

func TestBuildResultConverts(t *testing.T) {
	res := buildResult(resultInput{
		hostName: "tl0123456789ab", ifName: "eth0", sandbox: "/run/netns/x",
		addr: netip.MustParsePrefix("10.250.3.7/24"), gateway: netip.MustParseAddr("10.250.3.1"),
		routes: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, mtu: 1450,
	})
	for _, ver := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		r, err := forVersion(res, ver).GetAsVersion(ver)
		if err != nil {
			t.Fatalf("convert to %s: %v", ver, err)
		}
		b, _ := json.Marshal(r)
		// mtu (interfaces, routes) and advmss are CNI 1.1 fields.
		has11 := strings.Contains(string(b), `"mtu":1450`) && strings.Contains(string(b), `"advmss":1410`)
		if has11 != (ver == "1.1.0") {
			t.Errorf("%s: 1.1 fields present = %t: %s", ver, has11, b)
		}
		switch r := r.(type) {
		case *types040.Result:
			if ver != "0.4.0" || r.IPs[0].Address.String() != "10.250.3.7/24" || *r.IPs[0].Interface != 1 {
				t.Errorf("%s: %s", ver, b)
			}
		case *current.Result:
			if ver == "0.4.0" || r.IPs[0].Gateway.String() != "10.250.3.1" {
				t.Errorf("%s: %s", ver, b)
			}
		default:
			t.Errorf("%s: result type %T", ver, r)
		}
	}
}
