package cni

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/tulle-net/tulle/internal/ipam"
)

func TestParsePortMappings(t *testing.T) {
	tests := []struct {
		name    string
		raw     string
		want    []portMap
		wantErr string
	}{
		{"none", ``, nil, ""},
		{"other capabilities only", `{"bandwidth":{"ingressRate":1}}`, nil, ""},
		{"defaults to tcp, 0.0.0.0 is any", `{"portMappings":[{"hostPort":8080,"containerPort":80,"hostIP":"0.0.0.0"}]}`,
			[]portMap{{proto: "tcp", hostPort: 8080, contPort: 80}}, ""},
		{"udp and hostIP", `{"portMappings":[{"hostPort":53,"containerPort":5353,"protocol":"UDP","hostIP":"192.0.2.1"}]}`,
			[]portMap{{proto: "udp", hostIP: netip.MustParseAddr("192.0.2.1"), hostPort: 53, contPort: 5353}}, ""},
		{"same port, both protocols", `{"portMappings":[{"hostPort":80,"containerPort":80},{"hostPort":80,"containerPort":80,"protocol":"udp"}]}`,
			[]portMap{{proto: "tcp", hostPort: 80, contPort: 80}, {proto: "udp", hostPort: 80, contPort: 80}}, ""},
		{"sctp", `{"portMappings":[{"hostPort":80,"containerPort":80,"protocol":"sctp"}]}`, nil, `protocol "sctp" is not supported`},
		{"host port 0", `{"portMappings":[{"hostPort":0,"containerPort":80}]}`, nil, "hostPort 0 is outside 1-65535"},
		{"container port too big", `{"portMappings":[{"hostPort":80,"containerPort":70000}]}`, nil, "containerPort 70000 is outside 1-65535"},
		{"bad hostIP", `{"portMappings":[{"hostPort":80,"containerPort":80,"hostIP":"nope"}]}`, nil, `hostIP "nope" is not an IP address`},
		{"IPv6 hostIP", `{"portMappings":[{"hostPort":80,"containerPort":80,"hostIP":"::1"}]}`, nil, "IPv6, but tulle gives containers IPv4 addresses only"},
		{"IPv6 any", `{"portMappings":[{"hostPort":80,"containerPort":80,"hostIP":"::"}]}`, nil, "IPv6, but tulle gives containers IPv4 addresses only"},
		{"loopback hostIP", `{"portMappings":[{"hostPort":80,"containerPort":80,"hostIP":"127.0.0.1"}]}`,
			[]portMap{{proto: "tcp", hostIP: netip.MustParseAddr("127.0.0.1"), hostPort: 80, contPort: 80}}, ""},
		{"IPv4-mapped IPv6 is IPv4", `{"portMappings":[{"hostPort":80,"containerPort":80,"hostIP":"::ffff:192.0.2.1"}]}`,
			[]portMap{{proto: "tcp", hostIP: netip.MustParseAddr("192.0.2.1"), hostPort: 80, contPort: 80}}, ""},
		{"mapped twice", `{"portMappings":[{"hostPort":80,"containerPort":80},{"hostPort":80,"containerPort":81,"hostIP":"192.0.2.1"}]}`, nil, "host port tcp/80 is mapped twice"},
		{"wrong type", `{"portMappings":{"hostPort":80}}`, nil, "decode"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parsePortMappings(json.RawMessage(tc.raw))
			if tc.wantErr != "" {
				var te *types.Error
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.As(toCNIError(err), &te) || te.Code != types.ErrInvalidNetworkConfig {
					t.Fatalf("err = %v, want code 7 containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("[%d] = %v, want %v", i, got[i], tc.want[i])
				}
			}
		})
	}
}

func TestPortTagRoundTrip(t *testing.T) {
	att := ipam.Attachment{ContainerID: strings.Repeat("ab", 32), IfName: "eth0"}
	for _, m := range []portMap{
		{proto: "tcp", hostPort: 8080, contPort: 80},
		{proto: "udp", hostIP: netip.MustParseAddr("192.0.2.1"), hostPort: 65535, contPort: 1},
	} {
		tag := portTag{network: "my-net.1", att: att, m: m}
		got, ok := parseTag(tag.String())
		if !ok || got != tag {
			t.Errorf("parseTag(%q) = %v, %t", tag, got, ok)
		}
	}
	for _, s := range []string{"", "tulle: masquerade", "tulle-cni a b c tcp", "tulle-cni a b c tcp *:x->1", "tulle-cni a b c tcp nope:1->1"} {
		if _, ok := parseTag(s); ok {
			t.Errorf("parseTag(%q) accepted", s)
		}
	}
}

func TestPortConflict(t *testing.T) {
	a := ipam.Attachment{ContainerID: "a", IfName: "eth0"}
	b := ipam.Attachment{ContainerID: "b", IfName: "eth0"}
	ip1, ip2 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	published := []portTag{
		{network: "n", att: a, m: portMap{proto: "tcp", hostPort: 80, contPort: 80}},
		{network: "n", att: a, m: portMap{proto: "udp", hostIP: ip1, hostPort: 53, contPort: 53}},
	}
	tests := []struct {
		name string
		att  ipam.Attachment
		m    portMap
		ok   bool
	}{
		{"same attachment again", a, portMap{proto: "tcp", hostPort: 80, contPort: 8080}, true},
		{"tcp 80 by another", b, portMap{proto: "tcp", hostPort: 80, contPort: 80}, false},
		{"tcp 80 on one address", b, portMap{proto: "tcp", hostIP: ip2, hostPort: 80, contPort: 80}, false},
		{"udp 80", b, portMap{proto: "udp", hostPort: 80, contPort: 80}, true},
		{"udp 53 on another address", b, portMap{proto: "udp", hostIP: ip2, hostPort: 53, contPort: 53}, true},
		{"udp 53 on every address", b, portMap{proto: "udp", hostPort: 53, contPort: 53}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := portConflict([]portMap{tc.m}, "n", tc.att, published)
			var te *types.Error
			switch {
			case tc.ok && err != nil:
				t.Fatalf("unexpected conflict: %v", err)
			case !tc.ok && (!errors.As(toCNIError(err), &te) || te.Code != ErrPortInUse):
				t.Fatalf("err = %v, want code %d", err, ErrPortInUse)
			}
		})
	}
}

func TestCheckTagLen(t *testing.T) {
	m := []portMap{{proto: "tcp", hostPort: 80, contPort: 80}}
	if err := checkTagLen("tulle", ipam.Attachment{ContainerID: strings.Repeat("a", 64), IfName: "eth0"}, m); err != nil {
		t.Fatal(err)
	}
	if err := checkTagLen("tulle", ipam.Attachment{ContainerID: strings.Repeat("a", 250), IfName: "eth0"}, m); err == nil {
		t.Fatal("a 250-byte container ID fits a tag")
	}
}
