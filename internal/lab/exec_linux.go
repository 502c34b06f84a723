package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
)

// Exec runs argv inside a target's namespace ("node1", "node2/c1") with the
// given stdio and waits for it. A non-zero exit is returned as an error
// wrapping *exec.ExitError (its ExitCode method gives the code).
func (l *Lab) Exec(ctx context.Context, target string, argv []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(argv) == 0 {
		return errors.New("exec: no command given; usage: tulle lab exec node1[/c1] -- CMD [ARGS...]")
	}
	ns, err := l.NS(target)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	if err := startInNS(ns, cmd); err != nil {
		return fmt.Errorf("exec %s in %s: %w", argv[0], target, err)
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("exec %s in %s: %w", argv[0], target, err)
	}
	return nil
}

// output runs argv in namespace ns and returns its stdout; the error carries
// stderr.
func output(ctx context.Context, ns string, argv ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := startInNS(ns, cmd); err != nil {
		return nil, err
	}
	if err := cmd.Wait(); err != nil {
		return stdout.Bytes(), fmt.Errorf("run %q in netns %s: %w: %s", argv, ns, err, stderr.String())
	}
	return stdout.Bytes(), nil
}

// IP returns a target's address: a container's eth0 address, or a node's
// underlay (public) IP.
func (l *Lab) IP(target string) (netip.Addr, error) {
	t, err := ParseTarget(target)
	if err != nil {
		return netip.Addr{}, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.st.node(t.Node)
	if err != nil {
		return netip.Addr{}, err
	}
	if t.Container == 0 {
		return n.IP, nil
	}
	if _, err := l.st.nsOf(t); err != nil {
		return netip.Addr{}, err
	}
	c := n.Containers[t.Container-1]
	if !c.IP.IsValid() {
		return netip.Addr{}, fmt.Errorf("%s has no address (not attached)", target)
	}
	return c.IP.Addr(), nil
}
