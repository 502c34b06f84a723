package runner

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// runc drives the runc binary with a tulle-owned state root, so `runc
// list` without --root never shows tulle's containers and two stores never
// see each other's.
type runc struct {
	bin  string // "runc" or a path
	root string // --root
}

func (r runc) command(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, r.bin, append([]string{"--root", r.root}, args...)...)
}

// output runs runc and returns its stdout; the error carries stderr.
func (r runc) output(ctx context.Context, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := r.command(ctx, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("runc %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// errNoContainer is returned by state for a container runc does not know.
var errNoContainer = errors.New("runc: container does not exist")

// runcState is the part of `runc state` tulle reads.
type runcState struct {
	Status string `json:"status"` // created, running, paused, stopped
	Pid    int    `json:"pid"`
}

// state is `runc state ID`.
func (r runc) state(ctx context.Context, id string) (runcState, error) {
	out, err := r.output(ctx, "state", id)
	if err != nil {
		if strings.Contains(err.Error(), "does not exist") {
			return runcState{}, errNoContainer
		}
		return runcState{}, err
	}
	var s runcState
	if err := json.Unmarshal(out, &s); err != nil {
		return runcState{}, fmt.Errorf("decode runc state %s: %w", id, err)
	}
	return s, nil
}

// kill is `runc kill ID SIG`; a container that is gone or already stopped
// is not an error.
func (r runc) kill(ctx context.Context, id, sig string) error {
	_, err := r.output(ctx, "kill", id, sig)
	if err != nil && (strings.Contains(err.Error(), "does not exist") || strings.Contains(err.Error(), "not running") ||
		strings.Contains(err.Error(), "process already finished")) {
		return nil
	}
	return err
}

// delete is `runc delete --force ID`: it kills what is left and removes
// runc's state and the container's cgroups. A container runc does not know
// is not an error.
func (r runc) delete(ctx context.Context, id string) error {
	_, err := r.output(ctx, "delete", "--force", id)
	if err != nil && strings.Contains(err.Error(), "does not exist") {
		return nil
	}
	return err
}

// lastRuncError returns the last error runc logged to its JSON log file
// (--log FILE --log-format json), or "".
func lastRuncError(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var last string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e struct{ Level, Msg string }
		if json.Unmarshal(sc.Bytes(), &e) == nil && (e.Level == "error" || e.Level == "fatal") {
			last = e.Msg
		}
	}
	return last
}
