package runner

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tulle-net/tulle/internal/atomicfile"
)

// DefaultStateDir is where containers live unless --state-dir says
// otherwise (lab nodes sharing one filesystem each get their own).
const DefaultStateDir = "/run/tulle/containers"

// Container statuses.
const (
	StatusCreated = "created" // being set up: network, bundle, runc
	StatusRunning = "running"
	StatusExited  = "exited"
)

// State is a container's state.json.
type State struct {
	Name    string    `json:"name"`
	ID      string    `json:"id"` // runc container ID and CNI container ID
	Status  string    `json:"status"`
	Created time.Time `json:"created"`

	Pid        int       `json:"pid,omitempty"`        // the container's init, in the host pid namespace
	MonitorPid int       `json:"monitorPid,omitempty"` // the monitor process (0 in the foreground: the CLI)
	StartedAt  time.Time `json:"startedAt,omitzero"`
	FinishedAt time.Time `json:"finishedAt,omitzero"`
	ExitCode   int       `json:"exitCode"`
	OOMKilled  bool      `json:"oomKilled,omitempty"`
	Error      string    `json:"error,omitempty"` // why the monitor could not record a normal exit

	Network   string `json:"network"`             // the --network value (Network.String)
	NetworkOf string `json:"networkOf,omitempty"` // container:NAME: NAME
	// Netns is the network namespace the container runs in; "" for the
	// node's own (host). OwnNetns: tulle made it (bridge, none) and
	// removes it with the container.
	Netns    string `json:"netns,omitempty"`
	OwnNetns bool   `json:"ownNetns,omitempty"`
	IP       string `json:"ip,omitempty"` // bridge: address from the CNI plugin (CIDR)
	Ports    []Port `json:"ports,omitempty"`

	Rootfs      string   `json:"rootfs"`
	Args        []string `json:"args"`
	CgroupsPath string   `json:"cgroupsPath"`
	CNIConf     string   `json:"cniConf,omitempty"` // copy of the conflist ADD used, for DEL
	// Attached: a CNI ADD was made and no DEL has succeeded since.
	Attached bool     `json:"attached,omitempty"`
	CNIPath  []string `json:"cniPath,omitempty"`
}

// StatusText is the status as `tulle ps` shows it: "running",
// "exited (137, OOM-killed)".
func (s *State) StatusText() string {
	if s.Status != StatusExited {
		return s.Status
	}
	t := fmt.Sprintf("exited (%d", s.ExitCode)
	if s.OOMKilled {
		t += ", OOM-killed"
	}
	if s.Error != "" {
		t += ", " + s.Error
	}
	return t + ")"
}

// ErrNotFound is wrapped when a container does not exist.
var ErrNotFound = errors.New("no such container")

// ErrNameInUse is wrapped when run's --name is taken.
var ErrNameInUse = errors.New("container name in use")

// Store is the state directory: one directory per container name.
//
//	<dir>/<name>/state.json   State, replaced atomically (rename)
//	<dir>/<name>/config.json  the OCI bundle's spec (rootfs: the user's dir)
//	<dir>/<name>/lock         flock for read-modify-write of state.json
//	<dir>/<name>/netns        bind mount of the network namespace
//	<dir>/<name>/container.log, runc.log
//	<dir>/runc                runc's --root
//	<dir>/cni-cache           libcni's cache dir
type Store struct{ dir string }

// NewStore returns the store rooted at dir (created when needed).
func NewStore(dir string) *Store { return &Store{dir: dir} }

// Dir is the store's root.
func (s *Store) Dir() string { return s.dir }

// ContainerDir is the directory of container name.
func (s *Store) ContainerDir(name string) string { return filepath.Join(s.dir, name) }

// RuncRoot is runc's state root for this store.
func (s *Store) RuncRoot() string { return filepath.Join(s.dir, "runc") }

// CNICacheDir is libcni's cache dir for this store.
func (s *Store) CNICacheDir() string { return filepath.Join(s.dir, "cni-cache") }

// reserved are the store's own entries, which can never be container names.
var reserved = []string{"runc", "cni-cache"}

// Reserve creates the directory of name; it fails with ErrNameInUse when
// it exists. mkdir is atomic, so of two concurrent runs with one name
// exactly one wins.
func (s *Store) Reserve(name string) error {
	if slices.Contains(reserved, name) {
		return fmt.Errorf("%w: %q is reserved for tulle's own state; choose another --name", ErrInvalid, name)
	}
	if err := os.MkdirAll(s.dir, 0o711); err != nil {
		return fmt.Errorf("create state dir %s: %w", s.dir, err)
	}
	err := os.Mkdir(s.ContainerDir(name), 0o700)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%w: %q is taken by an existing container; remove it with `tulle rm -f %s` or choose another --name", ErrNameInUse, name, name)
	}
	if err != nil {
		return fmt.Errorf("create container dir %s: %w", s.ContainerDir(name), err)
	}
	return nil
}

// Exists reports whether container name has a directory.
func (s *Store) Exists(name string) bool {
	_, err := os.Stat(s.ContainerDir(name))
	return err == nil
}

// Save writes st atomically (temp file + rename).
func (s *Store) Save(st *State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state of %s: %w", st.Name, err)
	}
	return atomicfile.Write(filepath.Join(s.ContainerDir(st.Name), "state.json"), b, 0o600)
}

// Load reads the state of container name.
func (s *Store) Load(name string) (*State, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(s.ContainerDir(name), "state.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s (see `tulle ps`; state dir %s)", ErrNotFound, name, s.dir)
	}
	if err != nil {
		return nil, fmt.Errorf("read state of %s: %w", name, err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("decode state of %s (%s): %w", name, filepath.Join(s.ContainerDir(name), "state.json"), err)
	}
	return &st, nil
}

// List returns the state of every container, by name. Directories without
// a readable state.json (a run being set up) are skipped.
func (s *Store) List() ([]*State, error) {
	ents, err := os.ReadDir(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list containers in %s: %w", s.dir, err)
	}
	var out []*State
	for _, e := range ents {
		if !e.IsDir() || slices.Contains(reserved, e.Name()) || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		st, err := s.Load(e.Name())
		if err != nil {
			continue
		}
		out = append(out, st)
	}
	return out, nil
}

// Update runs fn on the current state of name under the container's lock
// and saves the result, so concurrent writers (the monitor recording an
// exit, `tulle stop`) do not lose each other's changes.
func (s *Store) Update(name string, fn func(*State) error) (*State, error) {
	unlock, err := s.lock(name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	st, err := s.Load(name)
	if err != nil {
		return nil, err
	}
	if err := fn(st); err != nil {
		return st, err
	}
	return st, s.Save(st)
}

// lock takes an exclusive flock on <container dir>/lock.
func (s *Store) lock(name string) (func(), error) {
	path := filepath.Join(s.ContainerDir(name), "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	if err != nil {
		return nil, fmt.Errorf("lock container %s: %w", name, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock container %s: %w", name, err)
	}
	return func() { f.Close() }, nil // closing releases the flock
}

// RemoveDir removes the container's directory (after its netns mount is
// gone), and the store's runc root and CNI cache when they are empty.
func (s *Store) RemoveDir(name string) error {
	if err := os.RemoveAll(s.ContainerDir(name)); err != nil {
		return fmt.Errorf("remove container dir %s: %w", s.ContainerDir(name), err)
	}
	// rmdir fails on a non-empty dir: only leftovers of the last container go.
	for _, d := range []string{filepath.Join(s.CNICacheDir(), "results"), s.CNICacheDir(), s.RuncRoot()} {
		_ = unix.Rmdir(d)
	}
	return nil
}
