package ipam

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func openStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(t.TempDir(), "tcn-net")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func att(id string) Attachment { return Attachment{ContainerID: id, IfName: "eth0"} }

func mustAllocate(t *testing.T, s *Store, p Pool, a Attachment) Allocation {
	t.Helper()
	got, err := s.Allocate(p, a)
	if err != nil {
		t.Fatalf("Allocate(%s): %v", a, err)
	}
	return got
}

func TestOpenRejectsBadNetworkName(t *testing.T) {
	for _, name := range []string{"", "..", "a/b", "-x", "../etc"} {
		if _, err := Open(t.TempDir(), name); err == nil {
			t.Errorf("Open(%q) succeeded, want error", name)
		}
	}
}

func TestAllocateIsIdempotentAndDistinct(t *testing.T) {
	s := openStore(t)
	p := mustPool(t, "10.244.3.0/24", "10.244.3.1")
	a := mustAllocate(t, s, p, att("a"))
	if a.Addr != netip.MustParsePrefix("10.244.3.2/24") || a.Reused {
		t.Fatalf("first allocation = %+v, want 10.244.3.2/24 new", a)
	}
	again := mustAllocate(t, s, p, att("a"))
	if again.Addr != a.Addr || !again.Reused {
		t.Fatalf("repeated allocation = %+v, want %s reused", again, a.Addr)
	}
	b := mustAllocate(t, s, p, att("a").withIf("net1"))
	if b.Addr == a.Addr {
		t.Fatalf("second ifname of the same container got the same address %s", b.Addr)
	}
	b2, err := os.ReadFile(filepath.Join(s.Dir(), b.Addr.Addr().String()))
	if err != nil || string(b2) != "a\nnet1\n" {
		t.Fatalf("record file = %q, %v; want container ID and ifname", b2, err)
	}
}

func (a Attachment) withIf(ifname string) Attachment { a.IfName = ifname; return a }

func TestReleaseIsIdempotentAndNotInstantlyReused(t *testing.T) {
	s := openStore(t)
	p := mustPool(t, "10.244.3.0/24", "10.244.3.1")
	a := mustAllocate(t, s, p, att("a"))
	freed, err := s.Release(att("a"))
	if err != nil || len(freed) != 1 || freed[0] != a.Addr.Addr() {
		t.Fatalf("Release() = %v, %v; want [%s]", freed, err, a.Addr.Addr())
	}
	if freed, err := s.Release(att("a")); err != nil || len(freed) != 0 {
		t.Fatalf("second Release() = %v, %v; want nothing, no error", freed, err)
	}
	b := mustAllocate(t, s, p, att("b"))
	if b.Addr == a.Addr {
		t.Fatalf("released address %s handed out again at once", a.Addr)
	}
	if got, _ := s.Lookup(att("a")); len(got) != 0 {
		t.Fatalf("Lookup after release = %v, want none", got)
	}
}

func TestReleaseAddrOnlyFreesItsOwn(t *testing.T) {
	s := openStore(t)
	p := mustPool(t, "10.244.3.0/24", "10.244.3.1")
	a := mustAllocate(t, s, p, att("a"))
	if err := s.ReleaseAddr(a.Addr.Addr(), att("b")); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Lookup(att("a")); len(got) != 1 {
		t.Fatalf("ReleaseAddr of another attachment freed %s", a.Addr)
	}
	if err := s.ReleaseAddr(a.Addr.Addr(), att("a")); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Lookup(att("a")); len(got) != 0 {
		t.Fatalf("ReleaseAddr left %v", got)
	}
}

func TestExhaustionAndWrap(t *testing.T) {
	s := openStore(t)
	p := mustPool(t, "10.0.0.0/29", "10.0.0.1") // 5 usable
	seen := map[netip.Prefix]bool{}
	for i := range 5 {
		a := mustAllocate(t, s, p, att(fmt.Sprint(i)))
		seen[a.Addr] = true
	}
	if len(seen) != 5 {
		t.Fatalf("got %d distinct addresses, want 5", len(seen))
	}
	if _, err := s.Allocate(p, att("x")); err == nil || !strings.Contains(err.Error(), "no free address") {
		t.Fatalf("Allocate on a full pool = %v, want exhausted", err)
	}
	if _, err := s.Release(att("1")); err != nil {
		t.Fatal(err)
	}
	if a := mustAllocate(t, s, p, att("x")); a.Addr != netip.MustParsePrefix("10.0.0.3/29") {
		t.Fatalf("after wrap got %s, want the only free 10.0.0.3/29", a.Addr)
	}
}

func TestSubnetChangeDoesNotReuseOldAddresses(t *testing.T) {
	s := openStore(t)
	old := mustPool(t, "10.244.3.0/24", "10.244.3.1")
	a := mustAllocate(t, s, old, att("a"))
	mustAllocate(t, s, old, att("b"))

	cur := mustPool(t, "10.244.9.0/24", "10.244.9.1")
	got := mustAllocate(t, s, cur, att("a"))
	if !cur.Subnet.Contains(got.Addr.Addr()) || got.Reused {
		t.Fatalf("after subnet change a got %+v, want a new address in %s", got, cur.Subnet)
	}
	if got.Addr.Addr() != netip.MustParseAddr("10.244.9.2") {
		t.Fatalf("scan did not start at the new subnet's start: %s", got.Addr)
	}
	held, _ := s.Lookup(att("a"))
	if len(held) != 2 {
		t.Fatalf("Lookup = %v, want the old and the new address", held)
	}
	freed, err := s.Release(att("a"))
	if err != nil || len(freed) != 2 || freed[0] != a.Addr.Addr() {
		t.Fatalf("Release = %v, %v; want both addresses freed", freed, err)
	}
}

func TestCorruptRecordStaysTaken(t *testing.T) {
	s := openStore(t)
	p := mustPool(t, "10.0.0.0/30", "10.0.0.1") // only .2
	if err := os.WriteFile(filepath.Join(s.Dir(), "10.0.0.2"), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Allocate(p, att("a")); err == nil {
		t.Fatal("a corrupt record's address was handed out")
	}
}

func TestGC(t *testing.T) {
	s := openStore(t)
	p := mustPool(t, "10.244.3.0/24", "10.244.3.1")
	for _, id := range []string{"live", "dead1", "dead2"} {
		mustAllocate(t, s, p, att(id))
	}
	keep := func(a Attachment) bool { return a == att("live") }

	// Records newer than the cutoff survive: an ADD may be in flight.
	if freed, err := s.GC(keep, time.Now().Add(-time.Hour)); err != nil || len(freed) != 0 {
		t.Fatalf("GC with old cutoff = %v, %v; want nothing freed", freed, err)
	}
	freed, err := s.GC(keep, time.Now().Add(time.Hour))
	if err != nil || len(freed) != 2 {
		t.Fatalf("GC = %v, %v; want dead1 and dead2", freed, err)
	}
	recs, _ := s.List()
	if len(recs) != 1 || recs[0].Attachment != att("live") {
		t.Fatalf("after GC: %v, want only live", recs)
	}
}

func TestConcurrentGoroutines(t *testing.T) {
	s := openStore(t)
	p := mustPool(t, "10.244.3.0/24", "10.244.3.1")
	const n = 100
	got := make([]netip.Prefix, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			a, err := s.Allocate(p, att(fmt.Sprintf("c%03d", i)))
			got[i], errs[i] = a.Addr, err
		})
	}
	wg.Wait()
	seen := map[netip.Prefix]int{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("goroutine %d: %v", i, errs[i])
		}
		if j, dup := seen[got[i]]; dup {
			t.Fatalf("goroutines %d and %d both got %s", j, i, got[i])
		}
		seen[got[i]] = i
	}
	recs, err := s.List()
	if err != nil || len(recs) != n {
		t.Fatalf("List = %d records, %v; want %d", len(recs), err, n)
	}
}

// TestConcurrentProcesses runs 100 processes (this test binary re-executed)
// that allocate at the same time, as 100 plugin invocations would.
func TestConcurrentProcesses(t *testing.T) {
	if os.Getenv("TULLE_IPAM_HELPER_DIR") != "" {
		t.Skip("helper process")
	}
	if testing.Short() {
		t.Skip("spawns 100 processes")
	}
	dir := t.TempDir()
	const n = 100
	cmds := make([]*exec.Cmd, n)
	for i := range n {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAllocate$")
		cmd.Env = append(os.Environ(), "TULLE_IPAM_HELPER_DIR="+dir, fmt.Sprintf("TULLE_IPAM_HELPER_ID=p%03d", i))
		cmds[i] = cmd
	}
	for _, c := range cmds {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatalf("process %d: %v", i, err)
		}
	}
	s, err := Open(dir, "tcn-net")
	if err != nil {
		t.Fatal(err)
	}
	recs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, r := range recs {
		ids[r.ContainerID] = true
	}
	if len(recs) != n || len(ids) != n {
		t.Fatalf("%d processes left %d records for %d containers, want %d distinct", n, len(recs), len(ids), n)
	}
}

func TestHelperAllocate(t *testing.T) {
	dir := os.Getenv("TULLE_IPAM_HELPER_DIR")
	if dir == "" {
		t.Skip("only runs as a helper process")
	}
	s, err := Open(dir, "tcn-net")
	if err != nil {
		t.Fatal(err)
	}
	p := mustPool(t, "10.244.3.0/24", "10.244.3.1")
	if _, err := s.Allocate(p, att(os.Getenv("TULLE_IPAM_HELPER_ID"))); err != nil {
		t.Fatal(err)
	}
}

// TestGCRemovesDeadWritersTemps: a plugin killed between writing a record's
// temporary file and renaming it leaves ".tmp-*" behind; GC, which holds the
// store lock that every writer holds, removes such files and nothing else.
func TestGCRemovesDeadWritersTemps(t *testing.T) {
	s, err := Open(t.TempDir(), "net")
	if err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(s.dir, tempPrefix+"12345")
	other := filepath.Join(s.dir, "notes.txt")
	for _, p := range []string{stale, other} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.GC(func(Attachment) bool { return true }, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("temporary file of a dead writer survived GC: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Fatalf("GC removed a file that is not a temporary file: %v", err)
	}
}
