package cni

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/tulle-net/tulle/internal/ipam"
)

// gcGrace is how old an allocation must be before GC may free it: an ADD
// allocates before the runtime records the attachment, and a GC running in
// between must not free the address under it.
const gcGrace = time.Minute

// VersionInfo is what the plugin answers to VERSION.
func VersionInfo() version.PluginInfo { return version.PluginSupports(specVersions()...) }

// Options configure a Plugin. All fields are optional.
type Options struct {
	// Stdout receives ADD's result. Default: os.Stdout.
	Stdout io.Writer
	// HostNSPath is the network namespace holding the bridge and the host
	// ends of the veths. Default: the calling thread's namespace, which is
	// right for the plugin process (main locks its thread in init). Tests set
	// it to a namespace of their own so nothing lands in the root namespace.
	HostNSPath string
	// Now is GC's clock. Default: time.Now.
	Now func() time.Time
}

// Plugin carries out the CNI verbs. Its methods have the signature skel
// wants and may be called concurrently.
type Plugin struct {
	stdout io.Writer
	hostNS string
	now    func() time.Time
}

// New returns a Plugin.
func New(opts Options) *Plugin {
	p := &Plugin{stdout: opts.Stdout, hostNS: opts.HostNSPath, now: opts.Now}
	if p.stdout == nil {
		p.stdout = os.Stdout
	}
	if p.now == nil {
		p.now = time.Now
	}
	return p
}

// Add sets up the attachment and prints the result in the config's
// cniVersion.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	conf, res, err := p.add(args)
	if err != nil {
		return toCNIError(err)
	}
	out, err := forVersion(res, conf.CNIVersion).GetAsVersion(conf.CNIVersion)
	if err != nil {
		return toCNIError(fmt.Errorf("convert result to version %s: %w", conf.CNIVersion, err))
	}
	if err := out.PrintTo(p.stdout); err != nil {
		return toCNIError(withCode(types.ErrIOFailure, fmt.Errorf("write result: %w", err)))
	}
	return nil
}

// Del tears the attachment down. It succeeds when there is nothing left to
// tear down, so the runtime can repeat it.
func (p *Plugin) Del(args *skel.CmdArgs) error { return toCNIError(p.del(args)) }

// Check verifies that the attachment is still as ADD left it.
func (p *Plugin) Check(args *skel.CmdArgs) error { return toCNIError(p.check(args)) }

// GC frees the addresses (and veths) of attachments the runtime no longer
// lists in cni.dev/valid-attachments.
func (p *Plugin) GC(args *skel.CmdArgs) error { return toCNIError(p.gc(args)) }

// Status reports whether the plugin can ADD. It returns code 50, "plugin
// not available", when the agent has not published a valid subnet file,
// when that file is stale (the node's bridge carries another gateway than
// the file says: the agent moved to another subnet or is gone), or when
// every address of the node's subnet is allocated.
func (p *Plugin) Status(args *skel.CmdArgs) error { return toCNIError(p.status(args)) }

func (p *Plugin) status(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	unavailable := func(err error) error {
		return withCode(types.ErrPluginNotAvailable, fmt.Errorf("status of network %s: %w", conf.Name, err))
	}
	info, err := readSubnetFile(conf)
	if err != nil {
		return unavailable(err)
	}
	s, err := resolve(conf, info)
	if err != nil {
		return unavailable(err)
	}
	if err := p.checkFresh(conf, s); err != nil {
		return unavailable(err)
	}
	store, err := ipam.Open(conf.DataDir, conf.Name)
	if err != nil {
		return withCode(types.ErrIOFailure, err)
	}
	recs, err := store.List()
	if err != nil {
		return withCode(types.ErrIOFailure, err)
	}
	used := 0
	for _, r := range recs {
		if s.pool.Contains(r.Addr) {
			used++
		}
	}
	if used >= s.pool.Size() {
		return unavailable(fmt.Errorf("address pool %s is exhausted: all %d addresses are allocated (see %s); remove containers, or run GC to free those of containers that are gone",
			s.pool.Subnet, s.pool.Size(), store.Dir()))
	}
	return nil
}

// attachment validates the container ID and ifname the runtime passed.
func attachment(args *skel.CmdArgs) (ipam.Attachment, error) {
	if err := utils.ValidateContainerID(args.ContainerID); err != nil {
		return ipam.Attachment{}, fmt.Errorf("CNI_CONTAINERID %q: %w", args.ContainerID, err)
	}
	if err := utils.ValidateInterfaceName(args.IfName); err != nil {
		return ipam.Attachment{}, fmt.Errorf("CNI_IFNAME %q: %w", args.IfName, err)
	}
	return ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}, nil
}

// requireNetns checks that the runtime passed a namespace path.
func requireNetns(args *skel.CmdArgs) error {
	if args.Netns == "" {
		return withCode(types.ErrInvalidEnvironmentVariables, errors.New("CNI_NETNS is empty: need the container's network namespace path"))
	}
	return nil
}
