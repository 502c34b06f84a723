package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"sync"
	"time"
)

// demoParallel bounds the pair checks running at once.
const demoParallel = 8

// Demo builds a lab (3 nodes, 2 containers each by default), prints its
// nodes and containers, checks that every container reaches every other one
// with ping and a TCP exchange, prints the matrix, and tears the lab down
// unless o.Keep. It returns an *UnreachableError if any pair failed.
func Demo(ctx context.Context, o DemoOptions, w io.Writer) (Report, error) {
	o = o.withDefaults()
	lo, err := o.Lab.withDefaults()
	if err != nil {
		return Report{}, err
	}
	writeDemoHeader(w, lo)
	l, err := Up(ctx, lo)
	if err != nil {
		return Report{}, err
	}
	st := l.State()
	r := Report{Lab: st.Name, Backend: st.Backend, Nodes: st.Nodes, Timings: l.Timings()}
	writeBuildSteps(w, st, r.Timings)
	writeInventory(w, st.Nodes)

	r.Pairs = l.CheckAllPairs(ctx)
	writeMatrix(w, containerNames(st), r.Pairs)
	writeVerdict(w, r)

	if o.Keep {
		fmt.Fprintf(w, "\nLab %q kept. Try:\n  tulle lab status --name %[1]s\n  tulle lab exec --name %[1]s node1/c1 -- %s -c 3 %s\n  tulle lab exec --name %[1]s node1 -- ip route\n  tulle lab down --name %[1]s\n",
			st.Name, pingCommand(), firstOtherIP(st))
	} else {
		fmt.Fprintf(w, "\nTearing down lab %q ... ", st.Name)
		t := time.Now()
		derr := l.Down(context.WithoutCancel(ctx))
		r.Teardown = time.Since(t)
		if derr != nil {
			fmt.Fprintln(w, "FAILED")
			return r, fmt.Errorf("demo: %w", derr)
		}
		fmt.Fprintf(w, "done in %s (namespaces, processes and state removed).\n", secs(r.Teardown))
	}
	if ctx.Err() != nil {
		return r, fmt.Errorf("demo: %w", ctx.Err())
	}
	if f := r.Failed(); f > 0 {
		return r, &UnreachableError{Failed: f, Total: len(r.Pairs)}
	}
	return r, nil
}

// CheckAllPairs checks every ordered pair of distinct containers with a
// ping (up to 3 echo requests) and a TCP echo exchange.
func (l *Lab) CheckAllPairs(ctx context.Context) []PairResult {
	names := containerNames(l.State())
	var pairs []PairResult
	for _, from := range names {
		for _, to := range names {
			if from != to {
				pairs = append(pairs, PairResult{From: from, To: to})
			}
		}
	}
	sem := make(chan struct{}, demoParallel)
	var wg sync.WaitGroup
	for i := range pairs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			l.checkPair(ctx, &pairs[i])
		})
	}
	wg.Wait()
	return pairs
}

func (l *Lab) checkPair(ctx context.Context, p *PairResult) {
	var errs []error
	res, err := l.Ping(ctx, p.From, p.To, PingOptions{Count: 3, Interval: 50 * time.Millisecond, Wait: time.Second})
	switch {
	case err != nil:
		errs = append(errs, err)
	case res.Received == 0:
		errs = append(errs, fmt.Errorf("ping: %d echo requests, no reply", res.Sent))
	default:
		p.Ping, p.RTT = true, res.RTTs[0]
	}
	if err := l.TCPCheck(ctx, p.From, p.To); err != nil {
		errs = append(errs, err)
	} else {
		p.TCP = true
	}
	if err := errors.Join(errs...); err != nil {
		p.Err = err.Error()
	}
}

// containerNames lists "nodeI/cJ" in order.
func containerNames(st State) []string {
	var names []string
	for _, n := range st.Nodes {
		for _, c := range n.Containers {
			names = append(names, n.Name+"/"+c.Name)
		}
	}
	return names
}

// pingCommand is "ping", or "busybox ping" where only busybox has one (as
// on a minimal Debian with busybox-static).
func pingCommand() string {
	if _, err := exec.LookPath("ping"); err != nil {
		if _, err := exec.LookPath("busybox"); err == nil {
			return "busybox ping"
		}
	}
	return "ping"
}

func firstOtherIP(st State) string {
	if len(st.Nodes) > 1 && len(st.Nodes[1].Containers) > 0 {
		return st.Nodes[1].Containers[0].IP.Addr().String()
	}
	return "10.244.0.2"
}
