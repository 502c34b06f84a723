package lab

import (
	"os/exec"
	"testing"
	"time"
)

// TestReapNeverBlocksOnALiveChild: reap may be called on a child that only
// looks like a zombie (a leader while another thread execs); it must return
// at once and keep the child, and collect it once it has really exited.
func TestReapNeverBlocksOnALiveChild(t *testing.T) {
	var ps procs
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	ps.children = map[int]*exec.Cmd{pid: cmd}
	t.Cleanup(func() { _ = cmd.Process.Kill() })

	done := make(chan struct{})
	go func() { ps.reap(pid); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("reap blocked on a running child")
	}
	if ps.exited(pid) || ps.children[pid] == nil {
		t.Fatal("reap dropped a running child")
	}

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !ps.exited(pid) && time.Now().Before(deadline) {
		ps.reap(pid)
		time.Sleep(10 * time.Millisecond)
	}
	if !ps.exited(pid) {
		t.Fatal("reap never collected the killed child")
	}
	if how := ps.exits[pid]; how != "signal: killed" {
		t.Fatalf("exit recorded as %q", how)
	}
}

// TestAliveZombie: a process that exited and was not reaped (state Z, no
// thread left but the leader) is not alive, even though its start time
// still matches; the exec'ing-leader exception needs a second thread.
func TestAliveZombie(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	st, err := readProcStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	p := &Proc{PID: pid, StartTime: st.StartTime, Args: []string{"sleep", "30"}}
	var ps procs // not its parent's bookkeeping: reap leaves it alone
	if !ps.alive(p) {
		t.Fatal("running process reported dead")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := readProcStat(pid)
		if err == nil && st.State == 'Z' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d never became a zombie: %+v %v", pid, st, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if ps.alive(p) {
		t.Fatalf("zombie pid %d (%d threads) reported alive", pid, threads(pid))
	}
}
