package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/tulle-net/tulle/internal/runner"
)

// runnerFlags are the flags every container command shares: where state
// lives and which runc runs it. Run them all in the same network namespace
// (the node's): CNI DEL at `tulle rm` runs the plugin there.
type runnerFlags struct {
	stateDir, runc, cgroupParent, cniConf, cniPath, logLevel string
}

func (g *runnerFlags) add(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	f.StringVar(&g.stateDir, "state-dir", runner.DefaultStateDir, "containers' state directory (one per node)")
	f.StringVar(&g.runc, "runc", "runc", "runc binary")
	f.StringVar(&g.logLevel, "log-level", "warn", "debug, info, warn or error (to stderr)")
}

// runner builds the Runner from the flags.
func (g *runnerFlags) runner() (*runner.Runner, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find the tulle binary: %w", err)
	}
	o := runner.Options{
		StateDir: g.stateDir, Runc: g.runc, CgroupParent: g.cgroupParent, CNIConf: g.cniConf,
		Self: self, Logger: newLogger(g.logLevel),
	}
	if g.cniPath != "" {
		o.CNIPath = filepath.SplitList(g.cniPath)
	} else {
		o.CNIPath = []string{"/opt/cni/bin", "/usr/lib/cni"}
		o.PluginBin = filepath.Join(filepath.Dir(self), "tulle-cni")
	}
	return runner.New(o)
}

// cmdArgs drops the "--" cobra keeps when interspersed flags are off.
func cmdArgs(args []string) []string {
	if len(args) > 0 && args[0] == "--" {
		return args[1:]
	}
	return args
}

func newRunCmd() *cobra.Command {
	var g runnerFlags
	var f runner.Flags
	cmd := &cobra.Command{
		Use:   "run [flags] --rootfs DIR -- CMD [ARGS...]",
		Short: "Run a container (runc) with namespaces, cgroup limits, capabilities and a Docker network mode",
		Example: "  tulle run -d --name web -p 8080:80 --memory 64m --rootfs /srv/bb -- httpd -f -p 80\n" +
			"  tulle run --rm --network none --rootfs /srv/bb -- ip addr",
		RunE: func(cmd *cobra.Command, args []string) error {
			f.Args = cmdArgs(args)
			c, err := f.Parse()
			if err != nil {
				return err
			}
			r, err := g.runner()
			if err != nil {
				return err
			}
			st, err := r.Run(cmd.Context(), c, runner.Stdio{In: os.Stdin, Out: cmd.OutOrStdout(), Err: cmd.ErrOrStderr()})
			if err != nil {
				return err
			}
			if c.Detach {
				fmt.Fprintln(cmd.OutOrStdout(), st.Name)
			}
			return nil
		},
	}
	cmd.Flags().SetInterspersed(false) // flags after CMD belong to it
	g.add(cmd)
	fl := cmd.Flags()
	fl.BoolVarP(&f.Detach, "detach", "d", false, "run in the background and print the container name")
	fl.BoolVar(&f.Remove, "rm", false, "remove the container when it exits (foreground only)")
	fl.StringVar(&f.Name, "name", "", "container name (default: tulle-<random>)")
	fl.StringVar(&f.Network, "network", "bridge", "none, host, bridge or container:NAME")
	fl.StringArrayVarP(&f.Publish, "publish", "p", nil, "publish a port: [IP:]HOSTPORT:CPORT[/tcp|udp] (bridge only; repeatable)")
	fl.StringVar(&f.Memory, "memory", "", "memory limit, e.g. 64m (no swap; exceeding it OOM-kills)")
	fl.StringVar(&f.CPUs, "cpus", "", "CPU quota in CPUs, e.g. 0.5")
	fl.Int64Var(&f.PidsLimit, "pids-limit", 0, "maximum number of processes (0: no limit)")
	fl.StringArrayVar(&f.CapAdd, "cap-add", nil, "add a capability to Docker's default set (e.g. NET_ADMIN, ALL)")
	fl.StringArrayVar(&f.CapDrop, "cap-drop", nil, "drop a capability (e.g. NET_RAW, ALL)")
	fl.StringVar(&f.Hostname, "hostname", "", "hostname (default: the container name)")
	fl.StringArrayVarP(&f.Env, "env", "e", nil, "set an environment variable K=V (repeatable)")
	fl.StringVar(&f.Rootfs, "rootfs", "", "root filesystem directory (make one with `tulle rootfs busybox DIR`)")
	fl.StringVar(&g.cgroupParent, "cgroup-parent", runner.DefaultCgroupParent, "parent cgroup of the container's cgroup")
	fl.StringVar(&g.cniConf, "cni-conf", "/etc/cni/net.d/tulle.conflist", "the node's CNI conflist (bridge network)")
	fl.StringVar(&g.cniPath, "cni-path", "", "CNI plugin dirs, ':'-separated (default: tulle-cni next to tulle, /opt/cni/bin, /usr/lib/cni)")
	return cmd
}

// newMonitorCmd is the hidden command a detached container's monitor runs
// (see internal/runner/monitor_linux.go); fd 3 is its report pipe.
func newMonitorCmd() *cobra.Command {
	var g runnerFlags
	cmd := &cobra.Command{
		Use: runner.MonitorCommand + " NAME", Hidden: true, Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.runner()
			if err != nil {
				return err
			}
			return r.Monitor(cmd.Context(), args[0], os.NewFile(3, "report"))
		},
	}
	g.add(cmd)
	return cmd
}
