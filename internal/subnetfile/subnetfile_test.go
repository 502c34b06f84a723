package subnetfile

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func good() Info {
	return Info{
		Network: netip.MustParsePrefix("10.244.0.0/16"), Subnet: netip.MustParsePrefix("10.244.3.0/24"),
		Gateway: netip.MustParseAddr("10.244.3.1"), MTU: 1450, IPMasq: true, Bridge: "tulle0", Node: "n1", Backend: "vxlan",
	}
}

func TestWriteRead(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sub", "subnet.json")
	if err := Write(p, good()); err != nil {
		t.Fatal(err)
	}
	got, err := Read(p)
	if err != nil || got != good() {
		t.Fatalf("got %+v, %v", got, err)
	}
	// Overwrite is atomic and leaves no temp files behind.
	g := good()
	g.MTU = 1400
	if err := Write(p, g); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(filepath.Dir(p))
	if len(ents) != 1 {
		t.Fatalf("want only subnet.json, got %d entries", len(ents))
	}
}

func TestReadErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Read(filepath.Join(dir, "none.json")); !errors.Is(err, ErrMissing) || !strings.Contains(err.Error(), "tulle agent") {
		t.Fatalf("missing file: %v", err)
	}
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"network":"10.244.0.0/16","subnet":"10.9.0.0/24"}`), 0o644)
	if _, err := Read(bad); err == nil || !strings.Contains(err.Error(), "not inside network") {
		t.Fatalf("bad file: %v", err)
	}
}

func TestWriteRejectsInvalid(t *testing.T) {
	for name, mod := range map[string]func(*Info){
		"gateway outside": func(i *Info) { i.Gateway = netip.MustParseAddr("10.1.1.1") },
		"low mtu":         func(i *Info) { i.MTU = 100 },
		"no bridge":       func(i *Info) { i.Bridge = "" },
		"no network":      func(i *Info) { i.Network = netip.Prefix{} },
	} {
		t.Run(name, func(t *testing.T) {
			i := good()
			mod(&i)
			p := filepath.Join(t.TempDir(), "s.json")
			if err := Write(p, i); err == nil {
				t.Fatal("accepted invalid info")
			}
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Fatal("invalid info was written")
			}
		})
	}
}
