package netns

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	vnetns "github.com/vishvananda/netns"
)

// NsHandle is an open file descriptor of a network namespace. It is the
// vishvananda/netns type, so handles pass straight to netlink.NewHandleAt.
type NsHandle = vnetns.NsHandle

// RunDir is where named namespaces are bind-mounted (as 'ip netns' does).
const RunDir = "/run/netns"

// ErrInvalidName is wrapped when a namespace name cannot be a file name in
// RunDir.
var ErrInvalidName = errors.New("netns: invalid name")

// None returns the handle that means "no namespace": the caller's own.
func None() NsHandle { return vnetns.None() }

// Path returns the bind mount path of the named namespace.
func Path(name string) string { return filepath.Join(RunDir, name) }

func validName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') || len(name) > 255 {
		return fmt.Errorf("%w: %q (want 1-255 bytes, no '/')", ErrInvalidName, name)
	}
	return nil
}
