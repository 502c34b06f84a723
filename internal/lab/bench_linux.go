package lab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

const iperfPort = 5201

// Bench builds one lab per (profile, backend), measures the underlay and
// the container path between two nodes in it with iperf3 and ping, tears
// the lab down and returns the results in order. Progress goes to w.
func Bench(ctx context.Context, o BenchOptions, w io.Writer) ([]BenchResult, error) {
	o = o.withDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	bin, err := exec.LookPath(o.IPerf3)
	if err != nil {
		return nil, fmt.Errorf("find iperf3 %q: %w (install it: apt-get install iperf3)", o.IPerf3, err)
	}
	o.IPerf3 = bin
	var results []BenchResult
	for _, profile := range o.Profiles {
		for _, backend := range o.Backends {
			lo := o.Lab
			lo.Backend, lo.Wire = backend, profile == ProfileWire
			fmt.Fprintf(w, "bench %s/%s: building a %d-node lab ... ", profile, backend, lo.Nodes)
			l, err := Up(ctx, lo)
			if err != nil {
				fmt.Fprintln(w, "failed")
				return results, err
			}
			fmt.Fprintf(w, "measuring ")
			idle, err := idleLoad(ctx, time.Second)
			if err != nil {
				fmt.Fprintln(w, "failed")
				return results, errors.Join(err, l.Down(context.WithoutCancel(ctx)))
			}
			r, err := l.benchOne(ctx, o, w)
			r.Idle = idle
			r.Backend, r.Profile = backend, profile
			derr := l.Down(context.WithoutCancel(ctx))
			if err = errors.Join(err, derr); err != nil {
				fmt.Fprintln(w, "failed")
				return results, fmt.Errorf("bench %s/%s: %w", profile, backend, err)
			}
			fmt.Fprintf(w, "%.2f of the underlay (1 stream)\n", r.Ratio1())
			results = append(results, r)
		}
	}
	fmt.Fprintln(w)
	return sortedResults(o, results), nil
}

// benchOne measures node1 -> node2 and node1/c1 -> node2/c1: for 1 and
// then 4 streams, o.Repeat pairs of iperf3 runs (U C U C ...), then the
// pings. It prints a dot per run to w.
func (l *Lab) benchOne(ctx context.Context, o BenchOptions, w io.Writer) (BenchResult, error) {
	r := BenchResult{TCP1: Throughput{Streams: 1}, TCP4: Throughput{Streams: 4}}
	type path struct{ from, to string }
	ul, ct := path{"node1", "node2"}, path{"node1/c1", "node2/c1"}
	for _, t := range []*Throughput{&r.TCP1, &r.TCP4} {
		for range o.Repeat {
			for _, m := range []struct {
				p    path
				runs *[]Run
			}{{ul, &t.Underlay}, {ct, &t.Container}} {
				run, err := l.IPerf3(ctx, o.IPerf3, m.p.from, m.p.to, t.Streams, o.Duration)
				if err != nil {
					return r, err
				}
				*m.runs = append(*m.runs, run)
				fmt.Fprint(w, ".")
			}
		}
	}
	r.summarize()
	fmt.Fprint(w, " ")
	for _, m := range []struct {
		p        path
		p50, p99 *time.Duration
		lost     *int
	}{
		{ul, &r.UnderlayP50, &r.UnderlayP99, &r.UnderlayLost},
		{ct, &r.ContainerP50, &r.ContainerP99, &r.ContainerLost},
	} {
		res, err := l.Ping(ctx, m.p.from, m.p.to, PingOptions{Count: o.Pings, Interval: 10 * time.Millisecond})
		if err != nil {
			return r, err
		}
		*m.p50, *m.p99, *m.lost = res.Percentile(50), res.Percentile(99), res.Lost()
	}
	return r, nil
}

// IPerf3 runs `iperf3 -s -1` in the destination's namespace and
// `iperf3 -c DST -J -t D -P streams` in the source's, and returns the
// received TCP throughput and bytes, and the machine's busy CPU time
// while the client ran.
func (l *Lab) IPerf3(ctx context.Context, bin, from, to string, streams int, d time.Duration) (Run, error) {
	srcNS, err := l.NS(from)
	if err != nil {
		return Run{}, err
	}
	dstNS, err := l.NS(to)
	if err != nil {
		return Run{}, err
	}
	dst, err := l.IP(to)
	if err != nil {
		return Run{}, err
	}
	port := strconv.Itoa(iperfPort)
	var srvOut bytes.Buffer
	srv := exec.CommandContext(ctx, bin, "-s", "-1", "-B", dst.String(), "-p", port)
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := startInNS(dstNS, srv); err != nil {
		return Run{}, fmt.Errorf("start iperf3 server in %s: %w", to, err)
	}
	defer func() {
		// -1 makes it exit after one test; make sure it does.
		_ = srv.Process.Kill()
		_ = srv.Wait()
	}()
	if err := waitListening(ctx, srv.Process.Pid, iperfPort); err != nil {
		return Run{}, fmt.Errorf("iperf3 server in %s: %w: %s", to, err, srvOut.String())
	}
	cpu0, err := cpuBusy()
	if err != nil {
		return Run{}, err
	}
	out, err := output(ctx, srcNS, bin, "-c", dst.String(), "-p", port, "-J",
		"-t", strconv.Itoa(int(d.Round(time.Second)/time.Second)), "-P", strconv.Itoa(streams))
	cpu1, cerr := cpuBusy()
	run, perr := parseIperf3(out)
	if perr != nil {
		return Run{}, fmt.Errorf("iperf3 %s -> %s (%d streams): %w", from, to, streams, errors.Join(perr, err))
	}
	if cerr != nil {
		return Run{}, cerr
	}
	run.CPU = cpu1 - cpu0
	return run, nil
}

// idleLoad is the share of all CPUs busy during d, measured while the lab
// is idle: the load that other work puts on the machine.
func idleLoad(ctx context.Context, d time.Duration) (float64, error) {
	b0, err := cpuBusy()
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(d):
	}
	b1, err := cpuBusy()
	if err != nil {
		return 0, err
	}
	return ratio((b1 - b0).Seconds(), time.Since(t0).Seconds()*float64(runtime.NumCPU())), nil
}

// cpuBusy is the busy time of all CPUs since boot, from /proc/stat.
func cpuBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("read cpu time: %w", err)
	}
	return parseCPUStat(b)
}

// waitListening polls /proc/<pid>/net/tcp{,6} (the tables of the process's
// namespace) until a socket listens on port. Probing with a connection
// instead would use up `iperf3 -s -1`'s single test.
func waitListening(ctx context.Context, pid, port int) error {
	want := fmt.Sprintf(":%04X", port)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		for _, f := range []string{"tcp", "tcp6"} {
			if listening(fmt.Sprintf("/proc/%d/net/%s", pid, f), want) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for a listener on port %d: %w", port, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// listening reports whether a /proc/net/tcp table has a LISTEN (0A) socket
// whose local address ends in portHex (":1451").
func listening(path, portHex string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) > 3 && strings.HasSuffix(fs[1], portHex) && fs[3] == "0A" {
			return true
		}
	}
	return false
}
