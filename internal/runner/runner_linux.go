package runner

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"golang.org/x/sys/unix"

	"github.com/tulle-net/tulle/internal/atomicfile"
)

// Options configure a Runner.
type Options struct {
	StateDir     string   // required: containers' state (DefaultStateDir)
	Runc         string   // optional: the runc binary; default "runc" from PATH
	CgroupParent string   // optional: parent of every container's cgroup; default "/tulle"
	CNIConf      string   // bridge networking: the node's CNI conflist
	CNIPath      []string // bridge networking: CNI_PATH
	// PluginBin is optional: a tulle-cni binary run for plugin type
	// "tulle" when no directory of CNIPath has one.
	PluginBin string
	// Self is the tulle binary, re-executed as the monitor of a detached
	// container (`tulle container-monitor`). Required for Detach.
	Self   string
	Logger *slog.Logger // optional
}

// DefaultCgroupParent holds every container's cgroup: <parent>/<id>.
const DefaultCgroupParent = "/tulle"

// MonitorCommand is the hidden tulle subcommand Self runs as the monitor:
// `tulle container-monitor --state-dir DIR --runc RUNC NAME`, with the
// report pipe as fd 3.
const MonitorCommand = "container-monitor"

// Stdio is a container's (or an exec'd command's) standard streams.
type Stdio struct {
	In       io.Reader
	Out, Err io.Writer
}

// ExitError is returned when a foreground container or an exec'd command
// exits non-zero: the CLI exits with Code, as `docker run` does.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("command exited with status %d", e.Code) }

// ExitCode is the code the CLI exits with.
func (e *ExitError) ExitCode() int { return e.Code }

// Runner runs containers of one state directory.
type Runner struct {
	o     Options
	store *Store
	runc  runc
	log   *slog.Logger
}

// New returns a Runner; it touches nothing yet.
func New(o Options) (*Runner, error) {
	if o.StateDir == "" {
		return nil, errors.New("runner: StateDir is required")
	}
	if o.Runc == "" {
		o.Runc = "runc"
	}
	if o.CgroupParent == "" {
		o.CgroupParent = DefaultCgroupParent
	}
	if !strings.HasPrefix(o.CgroupParent, "/") || strings.Contains(o.CgroupParent, "..") {
		return nil, fmt.Errorf("%w: --cgroup-parent %q: want an absolute cgroup path like /tulle", ErrInvalid, o.CgroupParent)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	st := NewStore(o.StateDir)
	return &Runner{o: o, store: st, runc: runc{bin: o.Runc, root: st.RuncRoot()}, log: o.Logger.With("component", "runner")}, nil
}

// Store is the runner's state store.
func (r *Runner) Store() *Store { return r.store }

func (r *Runner) attacher(conf string, path []string) cniAttacher {
	return cniAttacher{conf: conf, path: path, cacheDir: r.store.CNICacheDir(), pluginBin: r.o.PluginBin}
}

// Run creates and starts a container. Bad input (Config problems, a name
// in use, a missing conflist or plugin, a taken host port, a network
// container that is not running) is rejected before anything is created;
// a failure after that removes everything made so far. Detached, Run
// returns once the container runs under its monitor; in the foreground it
// returns when the container exits, with an *ExitError for a non-zero
// status.
func (r *Runner) Run(ctx context.Context, c Config, stdio Stdio) (_ *State, err error) {
	began := time.Now()
	if c.Name == "" {
		c.Name = "tulle-" + randomHex(4)
	}
	if r.store.Exists(c.Name) {
		return nil, fmt.Errorf("--name: %w: %q is taken by an existing container; remove it with `tulle rm -f %s` or choose another --name", ErrNameInUse, c.Name, c.Name)
	}
	if c.Detach && r.o.Self == "" {
		return nil, errors.New("run -d: the runner has no tulle binary to start the monitor with")
	}
	if _, err := exec.LookPath(r.runc.bin); err != nil {
		return nil, fmt.Errorf("runc %q not found: install runc or pass --runc: %w", r.runc.bin, err)
	}
	id := randomHex(16)
	dir := r.store.ContainerDir(c.Name)
	st := &State{
		Name: c.Name, ID: id, Status: StatusCreated, Created: time.Now().UTC(),
		MonitorPid: os.Getpid(), Network: c.Network.String(), Ports: c.Ports,
		Rootfs: c.Rootfs, Args: c.Args, CgroupsPath: path.Join(r.o.CgroupParent, id),
	}
	in := SpecInput{CgroupsPath: st.CgroupsPath, NofileHard: hardNofile(), CgroupV2: cgroupV2()}
	var list *libcni.NetworkConfigList
	att := r.attacher(r.o.CNIConf, r.o.CNIPath)
	switch c.Network.Mode {
	case NetworkBridge:
		if list, err = att.load(); err != nil {
			return nil, err
		}
		if err := r.checkPorts(c.Ports); err != nil {
			return nil, err
		}
		// DEL reads the copy in the container dir: the user's file may
		// change or go before the container is removed.
		st.CNIConf, st.CNIPath = filepath.Join(dir, "cni.conflist"), r.o.CNIPath
		st.Netns, st.OwnNetns = filepath.Join(dir, "netns"), true
	case NetworkNone:
		st.Netns, st.OwnNetns = filepath.Join(dir, "netns"), true
	case NetworkHost:
		in.HostNetwork = true
	case NetworkContainer:
		peer, err := r.runningPeer(ctx, c)
		if err != nil {
			return nil, err
		}
		st.NetworkOf, st.Netns = peer.Name, peer.Netns
		in.HostNetwork = peer.Netns == ""
		if in.HostNetwork && c.Hostname != "" {
			return nil, fmt.Errorf("%w: --hostname %s: container %s uses the host network, so this container has the node's hostname; drop --hostname", ErrInvalid, c.Hostname, peer.Name)
		}
	default:
		return nil, fmt.Errorf("%w: network mode %q", ErrInvalid, c.Network.Mode)
	}
	in.NetnsPath = st.Netns
	spec, err := BuildSpec(c, in)
	if err != nil {
		return nil, err
	}
	specJSON, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode spec of %s: %w", c.Name, err)
	}

	// Side effects from here on: undo them all on failure.
	if err := r.store.Reserve(c.Name); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && !errors.As(err, new(*ExitError)) {
			if terr := r.teardown(context.WithoutCancel(ctx), st); terr != nil {
				err = errors.Join(err, fmt.Errorf("roll back %s: %w", c.Name, terr))
			}
		}
	}()
	if err := r.store.Save(st); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(filepath.Join(dir, "config.json"), specJSON, 0o600); err != nil {
		return nil, err
	}
	if st.OwnNetns {
		if err := createNetns(st.Netns); err != nil {
			return nil, err
		}
	}
	if list != nil {
		if err := atomicfile.Write(st.CNIConf, list.Bytes, 0o600); err != nil {
			return nil, err
		}
		st.Attached = true // from here on, even a failed ADD gets a DEL
		if err := r.store.Save(st); err != nil {
			return nil, err
		}
		ip, err := att.add(ctx, list, st.ID, st.Netns, c.Ports)
		if err != nil {
			return nil, err
		}
		st.IP = ip
		if err := r.store.Save(st); err != nil {
			return nil, err
		}
	}
	if c.Detach {
		if err := r.startMonitor(ctx, st); err != nil {
			return nil, err
		}
		st, err = r.store.Load(c.Name)
		if err != nil {
			return nil, err
		}
		r.log.Info("container running", "name", st.Name, "id", st.ID, "network", st.Network, "ip", st.IP, "pid", st.Pid,
			"duration", time.Since(began).Round(time.Millisecond))
		return st, nil
	}
	return r.runForeground(ctx, st, c.Remove, stdio)
}

// runningPeer returns the running container whose network namespace
// container:NAME joins.
func (r *Runner) runningPeer(ctx context.Context, c Config) (*State, error) {
	name := c.Network.Container
	if name == c.Name {
		return nil, fmt.Errorf("%w: --network container:%s: a container cannot join its own network", ErrInvalid, name)
	}
	peer, err := r.store.Load(name)
	if err != nil {
		return nil, fmt.Errorf("%w: --network container:%s: %v", ErrInvalid, name, err)
	}
	r.refresh(ctx, peer)
	if peer.Status != StatusRunning {
		return nil, fmt.Errorf("%w: --network container:%s: container %s is %s, not running; start a new one with `tulle run -d --name %s ...`",
			ErrInvalid, name, name, peer.StatusText(), name)
	}
	return peer, nil
}

// checkPorts rejects host ports another tulle container of this store
// publishes, or that a process of this node listens on. The plugin
// checks again atomically (code 100) at ADD.
func (r *Runner) checkPorts(ports []Port) error {
	if len(ports) == 0 {
		return nil
	}
	states, err := r.store.List()
	if err != nil {
		return err
	}
	for _, p := range ports {
		for _, s := range states {
			if s.Status == StatusExited {
				continue
			}
			for _, q := range s.Ports {
				if q.Proto == p.Proto && q.HostPort == p.HostPort && (!q.HostIP.IsValid() || !p.HostIP.IsValid() || q.HostIP == p.HostIP) {
					return fmt.Errorf("%w: -p %s: host port %d/%s is already published by container %s; choose another host port or remove %s",
						ErrPortInUse, p, p.HostPort, p.Proto, s.Name, s.Name)
				}
			}
		}
		if err := portFree(p); err != nil {
			return err
		}
	}
	return nil
}

// portFree binds the host port for a moment: a process listening on it
// would be shadowed by the DNAT rule, so it counts as taken.
func portFree(p Port) error {
	host := "0.0.0.0"
	if p.HostIP.IsValid() {
		host = p.HostIP.String()
	}
	addr := net.JoinHostPort(host, fmt.Sprint(p.HostPort))
	var c io.Closer
	var err error
	if p.Proto == "udp" {
		c, err = net.ListenPacket("udp4", addr)
	} else {
		c, err = net.Listen("tcp4", addr)
	}
	switch {
	case err == nil:
		return c.Close()
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("%w: -p %s: host port %d/%s is in use on this node (a process listens on it); choose another host port", ErrPortInUse, p, p.HostPort, p.Proto)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("%w: -p %s: %s is not an address of this node", ErrInvalid, p, host)
	default:
		return fmt.Errorf("-p %s: check host port %s: %w", p, addr, err)
	}
}

// teardown removes everything of a container: the runc container (and its
// cgroups), the CNI attachment (address, veth, port rules), its own network
// namespace, its cgroup dirs and its state dir. Each step is idempotent and
// runs even when an earlier one failed.
func (r *Runner) teardown(ctx context.Context, st *State) error {
	var errs []error
	if err := r.runc.delete(ctx, st.ID); err != nil {
		errs = append(errs, err)
	}
	if st.Attached {
		if err := r.attacher(st.CNIConf, st.CNIPath).del(ctx, st.ID, st.Netns, st.Ports); err != nil {
			errs = append(errs, err)
		}
	}
	if st.OwnNetns {
		if err := deleteNetns(st.Netns); err != nil {
			errs = append(errs, err)
		}
	}
	if err := removeCgroups(st.CgroupsPath); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		// Keep the state dir: `tulle rm -f` can retry.
		return errors.Join(errs...)
	}
	return r.store.RemoveDir(st.Name)
}

// refresh marks a container exited when its monitor is gone and runc no
// longer runs it (the monitor was killed), so ps, stop and rm do not wait
// for an exit nobody will record.
func (r *Runner) refresh(ctx context.Context, st *State) {
	if st.Status == StatusExited || processAlive(st.MonitorPid) {
		return
	}
	rs, err := r.runc.state(ctx, st.ID)
	if err == nil && rs.Status != "stopped" {
		return // running without a monitor: its exit will not be recorded
	}
	upd, err := r.store.Update(st.Name, func(s *State) error {
		if s.Status != StatusExited && !processAlive(s.MonitorPid) {
			s.Status, s.ExitCode, s.Error = StatusExited, -1, "exit not recorded: its monitor is gone"
		}
		return nil
	})
	if err == nil {
		*st = *upd
	}
}

// processAlive reports whether pid is a live tulle process (the monitor,
// or the CLI running a container in the foreground).
func processAlive(pid int) bool {
	if pid <= 0 || unix.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	argv0, _, _ := strings.Cut(string(b), "\x00")
	return strings.Contains(filepath.Base(argv0), "tulle") || strings.HasSuffix(argv0, ".test")
}

// List returns every container, refreshed, by name.
func (r *Runner) List(ctx context.Context) ([]*State, error) {
	states, err := r.store.List()
	if err != nil {
		return nil, err
	}
	for _, st := range states {
		r.refresh(ctx, st)
	}
	return states, nil
}

// Inspect returns one container's state, refreshed.
func (r *Runner) Inspect(ctx context.Context, name string) (*State, error) {
	st, err := r.store.Load(name)
	if err != nil {
		return nil, err
	}
	r.refresh(ctx, st)
	return st, nil
}

// waitExited polls the container's state until it is exited and its
// monitor is done releasing what it held (cgroups, address, ports), or d
// passes.
func (r *Runner) waitExited(ctx context.Context, name string, d time.Duration) (*State, bool) {
	deadline := time.Now().Add(d)
	for {
		st, err := r.Inspect(ctx, name)
		if err != nil || st.Status == StatusExited && !processAlive(st.MonitorPid) {
			return st, err == nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return st, false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop sends SIGTERM to the container's init, and SIGKILL after timeout
// (as `docker stop`; an init without a SIGTERM handler, like sh, ignores
// it). It returns once the exit is recorded. Stopping an exited container
// does nothing.
func (r *Runner) Stop(ctx context.Context, name string, timeout time.Duration) (*State, error) {
	st, err := r.Inspect(ctx, name)
	if err != nil {
		return nil, err
	}
	if st.Status == StatusExited {
		return st, nil
	}
	if err := r.runc.kill(ctx, st.ID, "TERM"); err != nil {
		return st, fmt.Errorf("stop %s: %w", name, err)
	}
	if after, ok := r.waitExited(ctx, name, timeout); ok {
		return after, nil
	}
	return r.kill(ctx, name, st)
}

// kill sends SIGKILL and waits for the recorded exit.
func (r *Runner) kill(ctx context.Context, name string, st *State) (*State, error) {
	if err := r.runc.kill(ctx, st.ID, "KILL"); err != nil {
		return st, fmt.Errorf("kill %s: %w", name, err)
	}
	after, ok := r.waitExited(ctx, name, 10*time.Second)
	if !ok {
		return st, fmt.Errorf("kill %s: no exit recorded 10s after SIGKILL (monitor pid %d); see %s", name, st.MonitorPid, r.store.ContainerDir(name))
	}
	return after, nil
}

// Remove removes a container and everything it holds. A running container
// (or one whose network namespace a running container joined) is refused
// unless force, which kills it first.
func (r *Runner) Remove(ctx context.Context, name string, force bool) error {
	st, err := r.Inspect(ctx, name)
	if err != nil {
		return err
	}
	if st.Status == StatusExited && processAlive(st.MonitorPid) {
		// The monitor is still releasing the container's resources.
		pid := st.MonitorPid
		if _, ok := r.waitExited(ctx, name, 10*time.Second); !ok {
			return fmt.Errorf("remove %s: its monitor (pid %d) is still busy after 10s; try again", name, pid)
		}
	}
	if st.Status != StatusExited {
		if !force {
			return fmt.Errorf("container %s is %s: stop it first (`tulle stop %s`) or use `tulle rm -f %s`", name, st.Status, name, name)
		}
		if st, err = r.kill(ctx, name, st); err != nil {
			return err
		}
	}
	if st.OwnNetns && !force {
		all, err := r.List(ctx)
		if err != nil {
			return err
		}
		for _, o := range all {
			if o.NetworkOf == name && o.Status == StatusRunning {
				return fmt.Errorf("container %s's network namespace is shared by running container %s: remove %s first, or use `tulle rm -f %s`", name, o.Name, o.Name, name)
			}
		}
	}
	if err := r.teardown(ctx, st); err != nil {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	r.log.Info("container removed", "name", name, "id", st.ID)
	return nil
}

// Exec runs args in a running container (runc exec: its namespaces,
// cgroups, capabilities and environment) and waits for it.
func (r *Runner) Exec(ctx context.Context, name string, args []string, stdio Stdio) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: no command given: usage: tulle exec NAME -- CMD [ARGS...]", ErrInvalid)
	}
	st, err := r.Inspect(ctx, name)
	if err != nil {
		return err
	}
	if st.Status != StatusRunning {
		return fmt.Errorf("exec in %s: container is %s, not running", name, st.StatusText())
	}
	cmd := r.runc.command(ctx, append([]string{"exec", st.ID}, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio.In, stdio.Out, stdio.Err
	return exitError(cmd.Run(), "exec in "+name)
}

// exitError turns a non-zero exit of a command into an *ExitError.
func exitError(err error, what string) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() > 0 {
		return &ExitError{Code: ee.ExitCode()}
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// LogPath is the file holding a container's stdout and stderr.
func (r *Runner) LogPath(name string) string {
	return filepath.Join(r.store.ContainerDir(name), "container.log")
}

// Logs copies a container's output to w.
func (r *Runner) Logs(ctx context.Context, name string, w io.Writer) error {
	if _, err := r.store.Load(name); err != nil {
		return err
	}
	f, err := os.Open(r.LogPath(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil // it never printed anything
	}
	if err != nil {
		return fmt.Errorf("logs of %s: %w", name, err)
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// hardNofile is this process's hard RLIMIT_NOFILE; runc cannot go above
// it without CAP_SYS_RESOURCE.
func hardNofile() uint64 {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	return rl.Max
}
