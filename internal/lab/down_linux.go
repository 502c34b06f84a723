package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/tulle-net/tulle/internal/logkey"
)

// Down tears down lab o.Name (o.StateRoot and o.Logger are used too): it
// uses the recorded state when there is one, and otherwise still deletes the
// namespaces a lab of that name creates. A lab that does not exist is not an
// error; Down reports whether there was anything to remove.
func Down(ctx context.Context, o Options) (bool, error) {
	l, err := Load(o)
	switch {
	case err == nil:
		return true, l.Down(ctx)
	case errors.Is(err, ErrInvalid):
		return false, err
	case !errors.Is(err, ErrNotFound):
		// A corrupt state file: the namespaces can still go, but its
		// processes cannot be identified, so say so.
		o.loggerOrDiscard().Warn("lab state unreadable: its processes cannot be stopped", logkey.Err, err)
	}
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.StateRoot == "" {
		o.StateRoot = DefaultStateRoot
	}
	dir := filepath.Join(o.StateRoot, o.Name)
	names, lerr := labNamespaces(o.Name, nil)
	if lerr != nil {
		return false, lerr
	}
	_, serr := os.Stat(dir)
	if len(names) == 0 && serr != nil {
		return false, nil
	}
	l = &Lab{
		log:   o.loggerOrDiscard().With(logkey.Lab, o.Name),
		procs: &procs{},
		opts:  o,
		st:    &State{Name: o.Name, Dir: dir},
	}
	return true, l.Down(ctx)
}

func (o Options) loggerOrDiscard() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

// Down stops the lab's agents (SIGTERM, then SIGKILL after 5 s) and etcd,
// deletes its namespaces (which removes every link, address and route in
// them) and its state directory. It keeps going after a failure and returns
// all errors; the state directory stays if anything failed, so Down can be
// run again.
func (l *Lab) Down(ctx context.Context) error {
	st := l.State()
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	addErr := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	stopped := 0
	for _, n := range st.Nodes {
		if n.Agent == nil {
			continue
		}
		stopped++
		wg.Go(func() {
			if err := l.procs.stop(ctx, n.Agent, syscall.SIGTERM); err != nil {
				addErr(fmt.Errorf("stop agent of %s: %w", n.Name, err))
			}
		})
	}
	wg.Wait()
	if st.Etcd != nil {
		stopped++
		if err := l.procs.stop(ctx, st.Etcd, syscall.SIGTERM); err != nil {
			addErr(fmt.Errorf("stop etcd: %w", err))
		}
	}

	names, err := labNamespaces(st.Name, st.Namespaces)
	if err != nil {
		addErr(err)
	}
	// A crash between starting a process and recording its pid leaves
	// only its argv: a process inside the lab's namespaces running exactly
	// a command line the lab recorded is one the lab started.
	var strays []string
	for _, np := range nsProcesses(names) {
		if !slices.ContainsFunc(recordedArgs(st), func(a []string) bool { return slices.Equal(a, np.cmdline) }) {
			strays = append(strays, fmt.Sprintf("%d (%s)", np.pid, np.comm))
			continue
		}
		stopped++
		p := &Proc{PID: np.pid, StartTime: np.stat.StartTime, Args: np.cmdline}
		if err := l.procs.stop(ctx, p, syscall.SIGTERM); err != nil {
			addErr(fmt.Errorf("stop unrecorded lab process %d: %w", np.pid, err))
		}
	}
	if len(strays) > 0 {
		// Not ours to kill: say which, so the user can.
		l.log.Warn("processes the lab did not start run in its namespaces; they keep those namespaces alive until they exit",
			keyProcesses, strings.Join(strays, ", "))
	}
	// Containers first, then nodes, then the switch: the reverse of Up.
	slices.Reverse(names)
	for _, ns := range names {
		if err := deleteNS(ns); err != nil {
			addErr(err)
		}
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(st.Dir); err != nil {
			addErr(fmt.Errorf("remove lab dir %s: %w", st.Dir, err))
		}
	}
	l.log.Info("lab down", keyNamespaces, len(names), keyProcesses, stopped, keyErrors, len(errs))
	return errors.Join(errs...)
}

// labNamespaces returns the recorded namespaces (in creation order) plus any
// other present namespace whose name only a lab of this name would use.
func labNamespaces(lab string, recorded []string) ([]string, error) {
	names := slices.Clone(recorded)
	present, err := listNS()
	if err != nil {
		return names, err
	}
	var extra []string
	for _, ns := range present {
		if isLabNS(lab, ns) && !slices.Contains(names, ns) {
			extra = append(extra, ns)
		}
	}
	// Unrecorded ones first so that the reversed order still removes
	// containers before nodes before the switch as far as names tell.
	slices.SortFunc(extra, func(a, b string) int { return strings.Compare(a, b) })
	return append(extra, names...), nil
}

// recordedArgs lists the command lines of every process the lab recorded.
func recordedArgs(st State) [][]string {
	var out [][]string
	if st.Etcd != nil {
		out = append(out, st.Etcd.Args)
	}
	for _, n := range st.Nodes {
		if n.Agent != nil {
			out = append(out, n.Agent.Args)
		}
	}
	return out
}

// nsProc is a process found inside one of the lab's namespaces.
type nsProc struct {
	pid     int
	stat    procStat
	cmdline []string
	comm    string
}

// nsProcesses lists the processes, other than this one, whose network
// namespace is one of the named ones.
func nsProcesses(names []string) []nsProc {
	inodes := map[uint64]bool{}
	for _, ns := range names {
		var st syscall.Stat_t
		if err := syscall.Stat(nsPath(ns), &st); err == nil {
			inodes[st.Ino] = true
		}
	}
	if len(inodes) == 0 {
		return nil
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var out []nsProc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		dir := "/proc/" + e.Name()
		var st syscall.Stat_t
		if err := syscall.Stat(dir+"/ns/net", &st); err != nil || !inodes[st.Ino] {
			continue
		}
		ps, err := readProcStat(pid)
		if err != nil || ps.State == 'Z' {
			continue
		}
		cmdline, _ := os.ReadFile(dir + "/cmdline")
		comm, _ := os.ReadFile(dir + "/comm")
		out = append(out, nsProc{pid: pid, stat: ps, cmdline: parseCmdline(cmdline), comm: strings.TrimSpace(string(comm))})
	}
	return out
}
