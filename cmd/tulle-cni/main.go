// Command tulle-cni is the "tulle" CNI plugin. The runtime executes it with
// CNI_* variables and the network config on stdin; the verbs live in
// internal/cni.
package main

import (
	"runtime"
	"runtime/debug"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/tulle-net/tulle/internal/cni"
)

// The verbs open namespaces relative to the calling thread (the host
// namespace is "this thread's"), so the main goroutine must stay on one
// thread, as every reference plugin does.
func init() { runtime.LockOSThread() }

func main() {
	p := cni.New(cni.Options{})
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    p.Add,
		Del:    p.Del,
		Check:  p.Check,
		Status: p.Status,
		GC:     p.GC,
	}, cni.VersionInfo(), "tulle CNI plugin "+buildVersion())
}

// buildVersion is the module version, or the VCS revision of a development
// build.
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " " + s.Value[:12]
		}
	}
	return v
}
