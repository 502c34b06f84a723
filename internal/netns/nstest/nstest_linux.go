package nstest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/tulle-net/tulle/internal/netns"
)

// MaxNameLen keeps namespace names short enough to double as interface
// names (IFNAMSIZ - 1).
const MaxNameLen = 15

// RequireRoot skips the test when not running as root, but fails it when the
// environment variable CI is "true": CI must never pass by skipping.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		tb.Fatal("kernel test needs root, and CI=true: run the tests as root (go test -exec sudo)")
	}
	tb.Skip("kernel test needs root (go test -exec sudo)")
}

// New creates a namespace named prefix-<random hex> (at most MaxNameLen
// bytes), brings its loopback up, and deletes it in tb.Cleanup. It calls
// RequireRoot first.
func New(tb testing.TB, prefix string) (string, netns.NsHandle) {
	tb.Helper()
	RequireRoot(tb)
	n := min(8, MaxNameLen-len(prefix)-1)
	if n < 4 {
		tb.Fatalf("nstest: prefix %q is too long: %d bytes leave under 4 random characters in %d", prefix, len(prefix), MaxNameLen)
	}
	var (
		name string
		h    netns.NsHandle
		err  error
	)
	for range 5 { // a clash among 16^4+ names is rare; retry a few times
		name = prefix + "-" + randomHex(n)
		h, err = netns.Create(name)
		if !errors.Is(err, fs.ErrExist) {
			break
		}
	}
	if err != nil {
		tb.Fatalf("nstest: %v", err)
	}
	tb.Cleanup(func() {
		h.Close()
		if err := netns.Delete(name); err != nil {
			tb.Errorf("nstest: %v", err)
		}
	})
	nl := Handle(tb, h)
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		tb.Fatalf("nstest: set lo up in %s: %v", name, err)
	}
	return name, h
}

func randomHex(n int) string {
	b := make([]byte, (n+1)/2)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)[:n]
}

// Handle returns a netlink handle inside namespace h, closed in tb.Cleanup.
func Handle(tb testing.TB, h netns.NsHandle) *netlink.Handle {
	tb.Helper()
	var nl *netlink.Handle
	err := netns.Do(h, func() error {
		var err error
		nl, err = netlink.NewHandleAt(h)
		return err
	})
	if err != nil {
		tb.Fatalf("nstest: netlink handle: %v", err)
	}
	tb.Cleanup(nl.Close)
	return nl
}

// End is one end of a veth pair.
type End struct {
	NS   netns.NsHandle
	Name string       // interface name, at most 15 bytes
	Addr netip.Prefix // optional: an IPv4 address with prefix length
	MAC  net.HardwareAddr
}

// Veth creates a veth pair a.Name (in a.NS) <-> b.Name (in b.NS), gives each
// end its address and sets both up (ip link add a type veth peer name b
// netns B; ip addr add; ip link set up). The namespaces' deletion removes
// the pair.
func Veth(tb testing.TB, a, b End) {
	tb.Helper()
	if err := veth(tb, a, b); err != nil {
		tb.Fatalf("nstest: veth %s <-> %s: %v", a.Name, b.Name, err)
	}
}

func veth(tb testing.TB, a, b End) error {
	nla, nlb := Handle(tb, a.NS), Handle(tb, b.NS)
	la := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: a.Name, HardwareAddr: a.MAC},
		PeerName:         b.Name,
		PeerHardwareAddr: b.MAC,
		PeerNamespace:    netlink.NsFd(b.NS),
	}
	if err := nla.LinkAdd(la); err != nil {
		return fmt.Errorf("add link: %w", err)
	}
	for _, e := range []struct {
		nl *netlink.Handle
		End
	}{{nla, a}, {nlb, b}} {
		l, err := e.nl.LinkByName(e.Name)
		if err != nil {
			return err
		}
		if e.Addr.IsValid() {
			if err := e.nl.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{
				IP:   e.Addr.Addr().AsSlice(),
				Mask: net.CIDRMask(e.Addr.Bits(), e.Addr.Addr().BitLen()),
			}}); err != nil {
				return fmt.Errorf("add addr %s dev %s: %w", e.Addr, e.Name, err)
			}
		}
		if err := e.nl.LinkSetUp(l); err != nil {
			return fmt.Errorf("set link %s up: %w", e.Name, err)
		}
	}
	return nil
}
