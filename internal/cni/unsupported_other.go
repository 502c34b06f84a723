//go:build !linux

package cni

import (
	"errors"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// errNotLinux is returned by every kernel verb off Linux: the plugin needs
// network namespaces, veths and bridges.
var errNotLinux = withCode(types.ErrInternal, errors.New("the tulle CNI plugin runs only on Linux"))

func (p *Plugin) add(*skel.CmdArgs) (*NetConf, *current.Result, error) { return nil, nil, errNotLinux }
func (p *Plugin) del(*skel.CmdArgs) error                              { return errNotLinux }
func (p *Plugin) check(*skel.CmdArgs) error                            { return errNotLinux }
func (p *Plugin) gc(*skel.CmdArgs) error                               { return errNotLinux }
func (p *Plugin) checkFresh(*NetConf, settings) error                  { return errNotLinux }
