package netns_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tulle-net/tulle/internal/netns"
	"github.com/tulle-net/tulle/internal/netns/nstest"
)

// inode identifies a namespace: two handles name the same namespace when
// their nsfs inodes match.
func inode(t *testing.T, fd int) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func threadInode(t *testing.T) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func processInode(t *testing.T) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestCreateDoDelete(t *testing.T) {
	nstest.RequireRoot(t)
	t.Parallel()
	name := "tdp-ns-" + fmt.Sprint(os.Getpid()%100000)
	h, err := netns.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(); _ = netns.Delete(name) })

	if _, err := netns.Create(name); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second Create(%s) = %v, want fs.ErrExist", name, err)
	}
	nsIno := inode(t, int(h))
	if nsIno == processInode(t) {
		t.Fatal("new namespace is the test's own")
	}
	h2, err := netns.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	if got := inode(t, int(h2)); got != nsIno {
		t.Errorf("Open inode %d, Create inode %d", got, nsIno)
	}
	h2.Close()

	var inside uint64
	if err := netns.Do(h, func() error { inside = threadInode(t); return nil }); err != nil {
		t.Fatal(err)
	}
	if inside != nsIno {
		t.Errorf("Do ran in namespace %d, want %d", inside, nsIno)
	}
	want := errors.New("boom")
	if err := netns.Do(h, func() error { return want }); !errors.Is(err, want) {
		t.Errorf("Do error = %v, want %v", err, want)
	}

	if err := netns.Delete(name); err != nil {
		t.Fatal(err)
	}
	if err := netns.Delete(name); err != nil {
		t.Errorf("second Delete: %v, want nil (idempotent)", err)
	}
	if _, err := netns.Open(name); err == nil {
		t.Error("Open after Delete succeeded")
	}
}

func TestInvalidName(t *testing.T) {
	for _, name := range []string{"", ".", "..", "a/b"} {
		if _, err := netns.Create(name); !errors.Is(err, netns.ErrInvalidName) {
			t.Errorf("Create(%q) = %v, want ErrInvalidName", name, err)
		}
		if err := netns.Delete(name); !errors.Is(err, netns.ErrInvalidName) {
			t.Errorf("Delete(%q) = %v, want ErrInvalidName", name, err)
		}
	}
}

// TestThreadsComeBack hammers Create and Do from many goroutines and checks
// that no thread of the pool is left in a test namespace: every goroutine
// that is not locked must see the process's namespace.
func TestThreadsComeBack(t *testing.T) {
	nstest.RequireRoot(t)
	t.Parallel()
	home := processInode(t)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			_, h := nstest.New(t, "tdp")
			for range 20 {
				if err := netns.Do(h, func() error { return nil }); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	for range 200 {
		wg.Go(func() {
			if got := threadInode(t); got != home {
				t.Errorf("goroutine runs in namespace %d, want the process's %d", got, home)
			}
		})
	}
	wg.Wait()
}

func TestStartIn(t *testing.T) {
	_, h := nstest.New(t, "tdp")
	// In a fresh namespace only lo exists.
	cmd := exec.Command("/bin/cat", "/proc/net/dev")
	var out strings.Builder
	cmd.Stdout = &out
	if err := netns.StartIn(h, cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	var ifaces []string
	for _, line := range strings.Split(out.String(), "\n")[2:] {
		if name, _, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			ifaces = append(ifaces, name)
		}
	}
	if len(ifaces) != 1 || ifaces[0] != "lo" {
		t.Errorf("process in new namespace sees interfaces %v, want [lo]", ifaces)
	}
}
