package lab

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// procStat is what the lab reads from /proc/<pid>/stat.
type procStat struct {
	State     byte
	StartTime uint64
}

// parseProcStat parses the content of /proc/<pid>/stat. The command name
// (field 2) may hold spaces and parentheses, so fields are counted from the
// last ')'.
func parseProcStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("parse proc stat %q: no ')'", b)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); field 22 (starttime) is f[19].
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("parse proc stat %q: too few fields", b)
	}
	st, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("parse proc stat starttime %q: %w", f[19], err)
	}
	return procStat{State: f[0][0], StartTime: st}, nil
}

// parseCmdline splits /proc/<pid>/cmdline into its arguments.
func parseCmdline(b []byte) []string {
	b = bytes.TrimSuffix(b, []byte{0})
	if len(b) == 0 {
		return nil
	}
	return strings.Split(string(b), "\x00")
}

// sameProcess reports whether a live process (its stat and cmdline) is the
// one p recorded: same start time, same arguments, and not a zombie. An
// empty command line with the right start time still counts: the kernel
// shows one while a fresh process is between its exec and setting up the
// new argv (fs/exec.c begin_new_exec .. create_elf_tables), which is right
// after Start returns.
func sameProcess(p *Proc, st procStat, cmdline []string) bool {
	return st.State != 'Z' && st.StartTime == p.StartTime &&
		(len(cmdline) == 0 || slices.Equal(cmdline, p.Args))
}
