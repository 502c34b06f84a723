package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// procs starts and stops the lab's long-running processes (etcd, agents).
// Processes outlive the `tulle lab up` that started them: each runs in its
// own session with output to a log file, and is found again through its
// recorded Proc.
type procs struct {
	mu sync.Mutex
	// children are the processes this process started, by pid; they are
	// reaped (Wait) once seen exiting, so none stays a zombie.
	children map[int]*exec.Cmd
	// exits holds how reaped children ended ("exit status 1"), for errors.
	exits map[int]string
}

const (
	pollInterval = 20 * time.Millisecond
	termTimeout  = 5 * time.Second
)

// start starts args inside netns ns, detached (setsid), stdout and stderr
// appended to logPath, and returns its identity.
func (ps *procs) start(ns string, args []string, logPath string) (*Proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log %s: %w", logPath, err)
	}
	defer logf.Close() // the child holds its own copy
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := startInNS(ns, cmd); err != nil {
		return nil, fmt.Errorf("start %s in netns %s: %w", args[0], ns, err)
	}
	pid := cmd.Process.Pid
	ps.mu.Lock()
	if ps.children == nil {
		ps.children = map[int]*exec.Cmd{}
	}
	ps.children[pid] = cmd
	ps.mu.Unlock()
	st, err := readProcStat(pid)
	if err == nil && st.State == 'Z' {
		// Z may also be a leader whose other thread is exec'ing; only an
		// exit that reap collected counts.
		if ps.reap(pid); ps.exited(pid) {
			err = fmt.Errorf("exited at once; end of %s:\n%s", logPath, logTail(logPath, 15))
		}
	}
	if err != nil {
		ps.reap(pid)
		return nil, fmt.Errorf("start %s in netns %s (see %s): %w", args[0], ns, logPath, err)
	}
	// Record the command line as the kernel shows it, since an interpreter
	// (#!) rewrites argv. It is empty until the exec has set up the new
	// argv, a moment after Start returns, so wait for it briefly.
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); err == nil && len(b) > 0 {
			args = parseCmdline(b)
			break
		}
	}
	return &Proc{PID: pid, StartTime: st.StartTime, Args: args, Log: logPath}, nil
}

// startProc starts a recorded process: it writes the intent (argv, no pid)
// to the slot in state.json first, then starts the process and records its
// identity. A crash between the two leaves the argv, by which Down still
// finds the process among those running in the lab's namespaces.
func (l *Lab) startProc(ns string, args []string, logPath string, slot func(*State) **Proc) (*Proc, error) {
	l.mu.Lock()
	*slot(l.st) = &Proc{Args: args, Log: logPath}
	err := l.saveLocked()
	l.mu.Unlock()
	if err != nil {
		return nil, err
	}
	p, err := l.procs.start(ns, args, logPath)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	*slot(l.st) = p
	return p, l.saveLocked()
}

// alive reports whether the recorded process is still the one running.
func (ps *procs) alive(p *Proc) bool {
	if p == nil || p.PID <= 0 {
		return false
	}
	st, err := readProcStat(p.PID)
	if err != nil {
		return false
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/cmdline")
	if err != nil {
		return false
	}
	if st.State == 'Z' {
		ps.reap(p.PID)
		// While a non-leader thread of a multi-threaded process execs
		// ('tulle etcd' handing over to tulle-etcd), the kernel shows the
		// leader as a zombie with an empty command line until the exec
		// completes; the exec'ing thread is still listed under task/. A
		// process that really exited has no thread left but the zombie
		// leader.
		if st.StartTime == p.StartTime && threads(p.PID) > 1 {
			return true
		}
	}
	return sameProcess(p, st, parseCmdline(cmdline))
}

// threads is the number of threads /proc lists for pid (0 if gone).
func threads(pid int) int {
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		return 0
	}
	return len(ents)
}

// signal sends sig to the recorded process if it is still the one we
// started; anything else under that pid is left alone.
func (ps *procs) signal(p *Proc, sig syscall.Signal) error {
	if !ps.alive(p) {
		return nil
	}
	if err := unix.Kill(p.PID, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal %s pid %d: %w", sig, p.PID, err)
	}
	return nil
}

// wait polls until the recorded process is gone or ctx ends.
func (ps *procs) wait(ctx context.Context, p *Proc) error {
	t := time.NewTicker(pollInterval / 2)
	defer t.Stop()
	for ps.alive(p) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for pid %d to exit: %w", p.PID, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// stop sends sig (SIGTERM or SIGKILL) and waits for the process to exit;
// after termTimeout a SIGTERM is followed by a SIGKILL.
func (ps *procs) stop(ctx context.Context, p *Proc, sig syscall.Signal) error {
	if err := ps.signal(p, sig); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, termTimeout)
	err := ps.wait(wctx, p)
	cancel()
	if err == nil || sig == syscall.SIGKILL || ctx.Err() != nil {
		return err
	}
	if err := ps.signal(p, syscall.SIGKILL); err != nil {
		return err
	}
	return ps.wait(ctx, p)
}

// reap collects a child of ours that has exited (a zombie), so it does not
// linger. It never blocks: state Z is not proof of an exit, because while a
// non-leader thread of a multi-threaded process execs (as 'tulle etcd' does
// to hand over to tulle-etcd) the kernel shows the leader as a zombie until
// the exec completes. A blocking Wait there hung lab up for good.
func (ps *procs) reap(pid int) {
	ps.mu.Lock()
	cmd, ok := ps.children[pid]
	ps.mu.Unlock()
	if !ok {
		return
	}
	var ws unix.WaitStatus
	got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
	if err != nil || got != pid {
		return // still running (or not ours to wait for)
	}
	how := "exited"
	switch {
	case ws.Exited():
		how = fmt.Sprintf("exit status %d", ws.ExitStatus())
	case ws.Signaled():
		how = "signal: " + ws.Signal().String()
	}
	_ = cmd.Process.Release()
	ps.mu.Lock()
	delete(ps.children, pid)
	if ps.exits == nil {
		ps.exits = map[int]string{}
	}
	ps.exits[pid] = how
	ps.mu.Unlock()
}

// exited reports whether reap has collected pid's exit.
func (ps *procs) exited(pid int) bool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	_, ok := ps.exits[pid]
	return ok
}

// why says why a recorded process is not running: how it exited if it was
// our child, else what /proc shows.
func (ps *procs) why(p *Proc) string {
	ps.mu.Lock()
	how, ok := ps.exits[p.PID]
	ps.mu.Unlock()
	if ok {
		return how
	}
	st, err := readProcStat(p.PID)
	if err != nil {
		return "gone"
	}
	cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/cmdline")
	return fmt.Sprintf("pid %d is now state %c, start time %d (recorded %d), command %q (recorded %q)",
		p.PID, st.State, st.StartTime, p.StartTime, parseCmdline(cmdline), p.Args)
}

func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if errors.Is(err, fs.ErrNotExist) {
		return procStat{}, fmt.Errorf("pid %d: %w", pid, os.ErrProcessDone)
	}
	if err != nil {
		return procStat{}, err
	}
	return parseProcStat(b)
}
