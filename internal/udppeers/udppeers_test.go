package udppeers

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func sample() File {
	return File{
		Engine: Engine{TUN: "tulle-udp", MTU: 1464, Listen: netip.MustParseAddrPort("10.250.0.11:8285"), NetworkID: 1,
			Local: netip.MustParsePrefix("10.244.1.0/24"), Cluster: netip.MustParsePrefix("10.244.0.0/16")},
		Peers: []Peer{{Node: "node2", Subnet: netip.MustParsePrefix("10.244.2.0/24"), PublicIP: netip.MustParseAddr("10.250.0.12"), Port: 8285}},
	}
}

func TestRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", FileName)
	if _, err := Read(path); !errors.Is(err, ErrMissing) {
		t.Fatalf("Read of a missing file: %v, want ErrMissing", err)
	}
	f := sample()
	if err := Write(path, f); err != nil {
		t.Fatal(err)
	}
	got, err := Read(path)
	if err != nil || !reflect.DeepEqual(got, f) {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	// No temp files left behind.
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Errorf("dir holds %d entries, want only %s", len(ents), FileName)
	}
	if err := Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := Remove(path); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
}

func TestInvalid(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	for name, mutate := range map[string]func(*File){
		"tun name":     func(f *File) { f.Engine.TUN = "a-very-long-tun-name" },
		"mtu":          func(f *File) { f.Engine.MTU = 10 },
		"listen":       func(f *File) { f.Engine.Listen = netip.AddrPort{} },
		"network id":   func(f *File) { f.Engine.NetworkID = 0 },
		"local":        func(f *File) { f.Engine.Local = netip.MustParsePrefix("10.9.0.0/24") },
		"peer port":    func(f *File) { f.Peers[0].Port = 0 },
		"peer address": func(f *File) { f.Peers[0].PublicIP = netip.MustParseAddr("fd00::1") },
	} {
		f := sample()
		mutate(&f)
		if err := Write(path, f); err == nil {
			t.Errorf("%s: Write accepted %+v", name, f)
		}
	}
	// A torn or foreign file is an error, not a zero config.
	if err := os.WriteFile(path, []byte(`{"engine":{"tun":"x"`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("Read of a torn file: %v", err)
	}
}

func FuzzRead(f *testing.F) {
	b, _ := os.ReadFile("/dev/null")
	f.Add(b)
	f.Add([]byte(`{"engine":{"tun":"tulle-udp","mtu":1464,"listen":"10.0.0.1:8285","networkID":1,"local":"10.244.1.0/24","cluster":"10.244.0.0/16"},"peers":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), FileName)
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := Read(path)
		if err == nil && got.Validate() != nil {
			t.Fatalf("Read accepted an invalid file: %s", data)
		}
	})
}
