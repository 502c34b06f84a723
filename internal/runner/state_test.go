package runner

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestStoreReserveIsExclusive(t *testing.T) {
	s := NewStore(filepath.Join(t.TempDir(), "containers"))
	var wg sync.WaitGroup
	errs := make([]error, 16)
	for i := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = s.Reserve("web") }()
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, ErrNameInUse):
			t.Errorf("Reserve: %v, want ErrNameInUse", err)
		}
	}
	if won != 1 {
		t.Errorf("%d concurrent Reserves of one name succeeded, want 1", won)
	}
	for _, name := range []string{"runc", "cni-cache"} {
		if err := s.Reserve(name); !errors.Is(err, ErrInvalid) {
			t.Errorf("Reserve(%q) = %v, want ErrInvalid", name, err)
		}
	}
}

func TestStoreSaveLoadUpdateList(t *testing.T) {
	s := NewStore(t.TempDir())
	if _, err := s.Load("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Load of a missing container: %v, want ErrNotFound", err)
	}
	for _, name := range []string{"b", "a"} {
		if err := s.Reserve(name); err != nil {
			t.Fatal(err)
		}
		if err := s.Save(&State{Name: name, ID: "id-" + name, Status: StatusRunning, Ports: []Port{{HostPort: 80, ContainerPort: 8080, Proto: "tcp"}}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Reserve("setting-up"); err != nil { // no state.json yet: skipped by List
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Update("a", func(st *State) error { st.ExitCode++; return nil }); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	st, err := s.Load("a")
	if err != nil {
		t.Fatal(err)
	}
	if st.ExitCode != 20 || st.ID != "id-a" || len(st.Ports) != 1 || st.Ports[0].HostPort != 80 {
		t.Errorf("after 20 concurrent updates: %+v", st)
	}
	all, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || all[0].Name != "a" || all[1].Name != "b" {
		t.Errorf("List = %v", all)
	}
	ents, _ := os.ReadDir(s.ContainerDir("a"))
	for _, e := range ents {
		if e.Name() != "state.json" && e.Name() != "lock" {
			t.Errorf("leftover %s in the container dir (temp file of an atomic write?)", e.Name())
		}
	}
	if err := s.RemoveDir("a"); err != nil || s.Exists("a") {
		t.Errorf("RemoveDir: %v, exists %v", err, s.Exists("a"))
	}
}

func TestStatusText(t *testing.T) {
	for _, tc := range []struct {
		st   State
		want string
	}{
		{State{Status: StatusRunning}, "running"},
		{State{Status: StatusExited, ExitCode: 0}, "exited (0)"},
		{State{Status: StatusExited, ExitCode: 137, OOMKilled: true}, "exited (137, OOM-killed)"},
		{State{Status: StatusExited, ExitCode: -1, Error: "lost"}, "exited (-1, lost)"},
	} {
		if got := tc.st.StatusText(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.st, got, tc.want)
		}
	}
}
