package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/tulle-net/tulle/internal/atomicfile"
)

// ErrNotFound is wrapped when no lab of the given name exists.
var ErrNotFound = errors.New("lab: not found")

// ErrExists is wrapped when Up finds a lab of the same name.
var ErrExists = errors.New("lab: already exists")

// State is what a lab records in <StateRoot>/<name>/state.json. It is
// written before every step that creates something, so that Down can undo
// whatever a crashed or failed Up left behind.
type State struct {
	Name    string    `json:"name"`
	Dir     string    `json:"dir"`
	Created time.Time `json:"created"`
	Backend string    `json:"backend"`
	Wire    bool      `json:"wire"`
	// Resync and ReleaseOnExit are the agents' flags, reused on restart.
	Resync        Duration `json:"resync"`
	ReleaseOnExit bool     `json:"releaseOnExit"`
	TulleBin      string   `json:"tulleBin"`
	CNIBin        string   `json:"cniBin"`
	// Namespaces lists every namespace the lab created (or was about to),
	// in creation order.
	Namespaces []string `json:"namespaces"`
	// Etcd is the embedded etcd process in the switch namespace.
	Etcd *Proc `json:"etcd,omitempty"`
	// Nodes are node1..nodeN in order.
	Nodes []NodeState `json:"nodes"`
}

// NodeState is one node of a lab.
type NodeState struct {
	Name string     `json:"name"`
	NS   string     `json:"netns"`
	IP   netip.Addr `json:"ip"`
	// Dir holds the agent's state dir, IPAM data and logs.
	Dir string `json:"dir"`
	// Agent is the node's agent process (nil: not started).
	Agent *Proc `json:"agent,omitempty"`
	// Subnet is the node subnet from its subnet.json, once ready.
	Subnet netip.Prefix `json:"subnet,omitzero"`
	// Containers are c1..cK in order.
	Containers []ContainerState `json:"containers,omitempty"`
}

// ContainerState is one container (a namespace with eth0 from the plugin).
type ContainerState struct {
	Name string `json:"name"`
	NS   string `json:"netns"`
	// ID is the CNI container ID.
	ID string `json:"id"`
	// IP is the address the plugin gave eth0, with its prefix length.
	IP netip.Prefix `json:"ip,omitzero"`
}

// Proc identifies a process the lab started. A pid alone could be reused
// after a crash, so Down signals it only while the start time and command
// line in /proc still match.
type Proc struct {
	PID int `json:"pid"`
	// StartTime is field 22 of /proc/<pid>/stat (clock ticks after boot).
	StartTime uint64   `json:"startTime"`
	Args      []string `json:"args"`
	Log       string   `json:"log"`
}

// Duration is a time.Duration that reads and writes as "30s".
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// node returns the state of node i (1-based) or an error naming the lab.
func (s *State) node(i int) (*NodeState, error) {
	if i < 1 || i > len(s.Nodes) {
		return nil, fmt.Errorf("lab %s has no node%d (it has node1..node%d)", s.Name, i, len(s.Nodes))
	}
	return &s.Nodes[i-1], nil
}

// nsOf returns the namespace of a target.
func (s *State) nsOf(t Target) (string, error) {
	n, err := s.node(t.Node)
	if err != nil {
		return "", err
	}
	if t.Container == 0 {
		return n.NS, nil
	}
	if t.Container > len(n.Containers) {
		return "", fmt.Errorf("lab %s: %s has no container c%d (it has %d)", s.Name, n.Name, t.Container, len(n.Containers))
	}
	return n.Containers[t.Container-1].NS, nil
}

// addNS records a namespace before it is created; it is idempotent.
func (s *State) addNS(ns string) {
	for _, have := range s.Namespaces {
		if have == ns {
			return
		}
	}
	s.Namespaces = append(s.Namespaces, ns)
}

func statePath(dir string) string { return filepath.Join(dir, stateFileName) }

// writeState stores st atomically in its directory.
func writeState(st *State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode lab state %s: %w", st.Name, err)
	}
	if err := atomicfile.Write(statePath(st.Dir), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("lab state: %w", err)
	}
	return nil
}

// readState loads the state of lab name under root.
func readState(root, name string) (*State, error) {
	path := statePath(filepath.Join(root, name))
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: no lab %q (%s is missing; start one with 'tulle lab up --name %s')", ErrNotFound, name, path, name)
	}
	if err != nil {
		return nil, fmt.Errorf("read lab state %s: %w", path, err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("parse lab state %s: %w", path, err)
	}
	if st.Name != name {
		return nil, fmt.Errorf("parse lab state %s: it names lab %q, not %q", path, st.Name, name)
	}
	return &st, nil
}
