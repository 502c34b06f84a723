package ipam

import (
	"errors"
	"net/netip"
	"testing"
	"testing/quick"
)

func TestNewPool(t *testing.T) {
	tests := []struct {
		name    string
		subnet  string
		gateway string
		wantErr bool
		size    int
	}{
		{name: "slash24", subnet: "10.244.3.0/24", gateway: "10.244.3.1", size: 253},
		{name: "unmasked subnet is masked", subnet: "10.244.3.9/24", gateway: "10.244.3.1", size: 253},
		{name: "slash30", subnet: "10.0.0.0/30", gateway: "10.0.0.1", size: 1},
		{name: "slash31 too small", subnet: "10.0.0.0/31", gateway: "10.0.0.1", wantErr: true},
		{name: "ipv6", subnet: "fd00::/64", gateway: "fd00::1", wantErr: true},
		{name: "gateway outside", subnet: "10.244.3.0/24", gateway: "10.244.4.1", wantErr: true},
		{name: "gateway is network", subnet: "10.244.3.0/24", gateway: "10.244.3.0", wantErr: true},
		{name: "gateway is broadcast", subnet: "10.244.3.0/24", gateway: "10.244.3.255", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewPool(netip.MustParsePrefix(tc.subnet), netip.MustParseAddr(tc.gateway))
			if (err != nil) != tc.wantErr {
				t.Fatalf("NewPool(%s, %s) error = %v, want error %v", tc.subnet, tc.gateway, err, tc.wantErr)
			}
			if err == nil && p.Size() != tc.size {
				t.Errorf("Size() = %d, want %d", p.Size(), tc.size)
			}
		})
	}
}

func mustPool(t testing.TB, subnet, gw string) Pool {
	t.Helper()
	p, err := NewPool(netip.MustParsePrefix(subnet), netip.MustParseAddr(gw))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNext(t *testing.T) {
	p := mustPool(t, "10.1.2.0/29", "10.1.2.1") // usable: .2 .. .6
	set := func(as ...string) func(netip.Addr) bool {
		m := map[netip.Addr]bool{}
		for _, a := range as {
			m[netip.MustParseAddr(a)] = true
		}
		return func(a netip.Addr) bool { return m[a] }
	}
	tests := []struct {
		name  string
		last  string
		taken func(netip.Addr) bool
		want  string // "" means exhausted
	}{
		{name: "empty starts after gateway", taken: set(), want: "10.1.2.2"},
		{name: "after last", last: "10.1.2.3", taken: set(), want: "10.1.2.4"},
		{name: "skips taken", last: "10.1.2.3", taken: set("10.1.2.4", "10.1.2.5"), want: "10.1.2.6"},
		{name: "wraps and skips broadcast and network", last: "10.1.2.6", taken: set(), want: "10.1.2.2"},
		{name: "last is broadcast", last: "10.1.2.7", taken: set(), want: "10.1.2.2"},
		{name: "last outside subnet", last: "10.9.9.9", taken: set(), want: "10.1.2.2"},
		{name: "only one left before last", last: "10.1.2.4", taken: set("10.1.2.2", "10.1.2.4", "10.1.2.5", "10.1.2.6"), want: "10.1.2.3"},
		{name: "exhausted", last: "10.1.2.4", taken: set("10.1.2.2", "10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var last netip.Addr
			if tc.last != "" {
				last = netip.MustParseAddr(tc.last)
			}
			got, err := Next(p, last, tc.taken)
			if tc.want == "" {
				if !errors.Is(err, ErrExhausted) {
					t.Fatalf("Next() = %v, %v; want ErrExhausted", got, err)
				}
				return
			}
			if err != nil || got != netip.MustParseAddr(tc.want) {
				t.Fatalf("Next() = %v, %v; want %s", got, err, tc.want)
			}
		})
	}
}

// nextDumb is the obvious version of Next: list every usable address in
// order and take the first free one after last, else the first free one.
func nextDumb(p Pool, last netip.Addr, taken func(netip.Addr) bool) (netip.Addr, bool) {
	var all []netip.Addr
	for a := p.Subnet.Addr(); p.Subnet.Contains(a); a = a.Next() {
		if p.Contains(a) && !taken(a) {
			all = append(all, a)
		}
	}
	for _, a := range all {
		if last.IsValid() && a.Compare(last) > 0 && p.Subnet.Contains(last) {
			return a, true
		}
	}
	if len(all) == 0 {
		return netip.Addr{}, false
	}
	return all[0], true
}

func TestNextMatchesDumb(t *testing.T) {
	p := mustPool(t, "10.7.0.0/27", "10.7.0.1")
	f := func(lastOff uint8, takenMask uint32) bool {
		last := netip.AddrFrom4([4]byte{10, 7, 0, lastOff % 40}) // sometimes outside
		taken := func(a netip.Addr) bool {
			b := a.As4()
			return b[3] < 32 && takenMask&(1<<b[3]) != 0
		}
		got, err := Next(p, last, taken)
		want, ok := nextDumb(p, last, taken)
		if !ok {
			return errors.Is(err, ErrExhausted)
		}
		return err == nil && got == want
	}
	if err := quick.Check(f, &quick.Config{MaxCount: 5000}); err != nil {
		t.Fatal(err)
	}
}

func TestParseRecord(t *testing.T) {
	tests := []struct {
		in      string
		want    Attachment
		wantErr bool
	}{
		{in: "abc\neth0\n", want: Attachment{"abc", "eth0"}},
		{in: "abc\neth0", want: Attachment{"abc", "eth0"}},
		{in: "abc\r\neth0", want: Attachment{"abc", "eth0"}}, // host-local
		{in: "abc", wantErr: true},
		{in: "\neth0\n", wantErr: true},
		{in: "abc\n\n", wantErr: true},
		{in: "abc\neth0\nextra\n", wantErr: true},
	}
	for _, tc := range tests {
		got, err := parseRecord([]byte(tc.in))
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("parseRecord(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func FuzzParseRecord(f *testing.F) {
	f.Add([]byte("abc\neth0\n"))
	f.Add([]byte("abc\r\neth0"))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := parseRecord(b)
		if err != nil {
			return
		}
		// Whatever parses must survive a round trip.
		back, err := parseRecord(formatRecord(a))
		if err != nil || back != a {
			t.Fatalf("round trip of %q: %v, %v", b, back, err)
		}
	})
}
