package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A running container is owned by a monitor, like conmon does for podman:
//
//	tulle run -d ──fork/exec, setsid──> tulle container-monitor NAME
//	     ^                                   │ PR_SET_CHILD_SUBREAPER
//	     │ fd 3: {"pid":N} or {"error":...}  │ runc run -d (stdio: container.log)
//	     └───────────────────────────────────┤   runc exits; the container's
//	                                         │   init is reparented to the monitor
//	                                         │ wait4(init)
//	                                         │ read oom_kill from the memory cgroup
//	                                         │ state.json: exited, code, OOM
//	                                         └ runc delete (cgroups), CNI DEL
//
// In the foreground the CLI itself plays the monitor, with the container's
// output copied to the terminal and the log.

// monitorReport is what the monitor writes on its report pipe once the
// container runs or failed to start.
type monitorReport struct {
	Pid   int    `json:"pid,omitempty"`
	Error string `json:"error,omitempty"`
}

// startMonitor starts `tulle container-monitor` detached (own session,
// stdio on /dev/null) and waits for its report.
func (r *Runner) startMonitor(ctx context.Context, st *State) error {
	pr, pw, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("start monitor of %s: %w", st.Name, err)
	}
	defer pr.Close()
	cmd := exec.Command(r.o.Self, MonitorCommand, "--state-dir", r.store.Dir(), "--runc", r.runc.bin, st.Name)
	cmd.ExtraFiles = []*os.File{pw}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	pw.Close()
	if err != nil {
		return fmt.Errorf("start monitor %s of %s: %w", r.o.Self, st.Name, err)
	}
	// The monitor outlives this process: never wait for it here.
	_ = cmd.Process.Release()
	if dl, ok := ctx.Deadline(); ok {
		_ = pr.SetReadDeadline(dl)
	} else {
		_ = pr.SetReadDeadline(time.Now().Add(2 * time.Minute))
	}
	b, err := io.ReadAll(pr)
	if err != nil {
		return fmt.Errorf("wait for monitor of %s: %w", st.Name, err)
	}
	var rep monitorReport
	if err := json.Unmarshal(b, &rep); err != nil {
		log, _ := os.ReadFile(filepath.Join(r.store.ContainerDir(st.Name), "monitor.log"))
		return fmt.Errorf("monitor of %s died before the container started (report %q): %s", st.Name, b, strings.TrimSpace(string(log)))
	}
	if rep.Error != "" {
		return errors.New(rep.Error)
	}
	return nil
}

// Monitor is the body of `tulle container-monitor`: it starts the
// container, reports on report (fd 3), and waits for the container to
// exit. It ignores ctx: a monitor must outlive signals meant for others.
func (r *Runner) Monitor(_ context.Context, name string, report *os.File) error {
	dir := r.store.ContainerDir(name)
	logf, err := os.OpenFile(filepath.Join(dir, "monitor.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	r.log = slog.New(slog.NewTextHandler(logf, nil)).With("component", "monitor", "name", name)
	var once sync.Once
	started := func(pid int, err error) {
		once.Do(func() {
			rep := monitorReport{Pid: pid}
			if err != nil {
				rep.Error = err.Error()
			}
			b, _ := json.Marshal(rep)
			_, _ = report.Write(b)
			report.Close()
		})
	}
	st, err := r.store.Load(name)
	if err != nil {
		started(0, err)
		return err
	}
	out, err := os.OpenFile(r.LogPath(name), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		started(0, fmt.Errorf("open log of %s: %w", name, err))
		return err
	}
	defer out.Close()
	null, err := os.Open(os.DevNull)
	if err != nil {
		started(0, err)
		return err
	}
	defer null.Close()
	_, err = r.supervise(context.Background(), st, [3]*os.File{null, out, out}, started)
	if err != nil {
		r.log.Error("supervise", "err", err)
	}
	return err
}

// runForeground runs the container as its own monitor: output goes to the
// caller and to the log; SIGINT/SIGTERM (ctx) are forwarded as SIGTERM.
func (r *Runner) runForeground(ctx context.Context, st *State, remove bool, stdio Stdio) (*State, error) {
	logf, err := os.OpenFile(r.LogPath(st.Name), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open log of %s: %w", st.Name, err)
	}
	defer logf.Close()
	var copies sync.WaitGroup
	pipeTo := func(w io.Writer) (*os.File, func(), error) {
		pr, pw, err := os.Pipe()
		if err != nil {
			return nil, nil, err
		}
		copies.Add(1)
		go func() {
			defer copies.Done()
			defer pr.Close()
			_, _ = io.Copy(io.MultiWriter(logf, w), pr)
		}()
		return pw, func() { pw.Close() }, nil
	}
	if stdio.Out == nil {
		stdio.Out = io.Discard
	}
	if stdio.Err == nil {
		stdio.Err = io.Discard
	}
	outW, closeOut, err := pipeTo(stdio.Out)
	if err != nil {
		return nil, err
	}
	errW, closeErr, err := pipeTo(stdio.Err)
	if err != nil {
		closeOut()
		return nil, err
	}
	in, _ := stdio.In.(*os.File)
	if in == nil {
		if in, err = os.Open(os.DevNull); err != nil {
			return nil, err
		}
		defer in.Close()
	}
	var startErr error
	code, err := r.supervise(ctx, st, [3]*os.File{in, outW, errW}, func(_ int, err error) {
		startErr = err
		// The container holds its own copies now.
		closeOut()
		closeErr()
	})
	closeOut()
	closeErr()
	copies.Wait()
	if startErr != nil {
		return nil, startErr
	}
	if err != nil {
		return nil, err
	}
	final, lerr := r.store.Load(st.Name)
	if lerr != nil {
		return nil, lerr
	}
	if remove {
		if err := r.teardown(context.WithoutCancel(ctx), final); err != nil {
			return final, fmt.Errorf("--rm: remove %s: %w", st.Name, err)
		}
	}
	if code != 0 {
		return final, &ExitError{Code: code}
	}
	return final, nil
}

// supervise starts the container with `runc run -d` (detached
// pass-through: the container inherits stdio), calls started once it runs
// (or failed to), waits for it as its subreaper and records its exit.
// Cancelling ctx forwards SIGTERM to the container.
func (r *Runner) supervise(ctx context.Context, st *State, stdio [3]*os.File, started func(pid int, err error)) (int, error) {
	dir := r.store.ContainerDir(st.Name)
	// Orphans are reparented to the nearest subreaper: the container's
	// init becomes our child when `runc run -d` exits.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		err = fmt.Errorf("become subreaper: %w", err)
		started(0, err)
		return 0, err
	}
	runcLog := filepath.Join(dir, "runc.log")
	pidFile := filepath.Join(dir, "pid")
	cmd := r.runc.command(context.Background(), "--log", runcLog, "--log-format", "json",
		"run", "-d", "--pid-file", pidFile, "--bundle", dir, st.ID)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio[0], stdio[1], stdio[2]
	if err := cmd.Run(); err != nil {
		msg := lastRuncError(runcLog)
		_ = r.runc.delete(context.Background(), st.ID)
		err = fmt.Errorf("runc run %s (bundle %s): %w: %s", st.Name, dir, err, msg)
		started(0, err)
		return 0, err
	}
	b, err := os.ReadFile(pidFile)
	pid := 0
	if err == nil {
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	if err != nil {
		_ = r.runc.delete(context.Background(), st.ID)
		err = fmt.Errorf("read pid of %s from %s: %w", st.Name, pidFile, err)
		started(0, err)
		return 0, err
	}
	if _, err := r.store.Update(st.Name, func(s *State) error {
		s.Status, s.Pid, s.MonitorPid, s.StartedAt = StatusRunning, pid, os.Getpid(), time.Now().UTC()
		return nil
	}); err != nil {
		_ = r.runc.delete(context.Background(), st.ID)
		started(0, err)
		return 0, err
	}
	started(pid, nil)
	r.log.Info("container started", "name", st.Name, "pid", pid)

	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			_ = r.runc.kill(context.Background(), st.ID, "TERM")
		case <-done:
		}
	}()
	code, werr := waitPid(pid)
	oom, oerr := oomKills(st.CgroupsPath)
	if oerr != nil {
		r.log.Warn("read OOM kills", "name", st.Name, "err", oerr)
	}
	upd, err := r.store.Update(st.Name, func(s *State) error {
		s.Status, s.ExitCode, s.OOMKilled, s.FinishedAt = StatusExited, code, oom > 0, time.Now().UTC()
		if werr != nil {
			s.Error = werr.Error()
		}
		return nil
	})
	if err != nil {
		return code, err
	}
	r.log.Info("container exited", "name", st.Name, "code", code, "oom_killed", oom > 0)
	// Free what an exited container holds, as Docker does at exit: its
	// cgroups (runc delete) and its address and published ports (CNI
	// DEL). The namespace, state and log stay until `tulle rm`.
	var errs []error
	if err := r.runc.delete(context.Background(), st.ID); err != nil {
		errs = append(errs, err)
	}
	if upd.Attached {
		if err := r.attacher(upd.CNIConf, upd.CNIPath).del(context.Background(), upd.ID, upd.Netns, upd.Ports); err != nil {
			errs = append(errs, err)
		} else if _, err := r.store.Update(st.Name, func(s *State) error { s.Attached = false; return nil }); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		r.log.Warn("release resources of exited container", "name", st.Name, "err", errors.Join(errs...))
	}
	return code, nil
}

// waitPid waits for our child (or reparented orphan) pid and returns its
// exit code, 128+signal for a signal, as a shell reports it.
func waitPid(pid int) (int, error) {
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(pid, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.ECHILD) {
			// Not our child (no subreaper?): poll until it is gone.
			for unix.Kill(pid, 0) == nil {
				time.Sleep(50 * time.Millisecond)
			}
			return -1, errors.New("exit code unknown: the container was not the monitor's child")
		}
		if err != nil {
			return -1, fmt.Errorf("wait for pid %d: %w", pid, err)
		}
		switch {
		case ws.Exited():
			return ws.ExitStatus(), nil
		case ws.Signaled():
			return 128 + int(ws.Signal()), nil
		}
	}
}
