package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tulle-net/tulle/internal/config"
)

// Bench defaults: with both profiles and both backends, 2 paths x 2
// stream counts x 3 pairs x 3s is 144s of iperf3, about 3 minutes in all.
const (
	DefaultBenchDuration = 3 * time.Second
	DefaultBenchRepeat   = 3
)

// DefaultBenchBackends are the backends Bench measures by default.
func DefaultBenchBackends() []string {
	return []string{config.BackendVXLAN, config.BackendHostGW, config.BackendUDP}
}

// Underlay profiles of the bench.
const (
	// ProfileVeth is the plain veth underlay: it carries 64 KB GSO
	// super-packets unsegmented, which flatters every encapsulation.
	ProfileVeth = "veth"
	// ProfileWire is the NIC-like underlay (Options.Wire): frames of at
	// most 1514 bytes, GRO at the receivers.
	ProfileWire = "wire"
)

// BenchOptions configure Bench.
type BenchOptions struct {
	// Lab is the template of every lab built (optional: Name defaults to
	// "bench", Nodes to 2, Containers to 1; Backend and Wire are set per
	// run).
	Lab Options
	// Backends to measure (optional, default vxlan, host-gw and udp).
	Backends []string
	// Profiles to measure (optional, default veth and wire).
	Profiles []string
	// Duration of each iperf3 run (optional, default 3s).
	Duration time.Duration
	// Repeat is how many underlay/container pairs of iperf3 runs make one
	// throughput measurement (optional, default 3). The runs interleave,
	// U C U C U C, so drift in the machine (another tenant of the VM, CPU
	// frequency, where the scheduler puts the flow) hits both paths alike.
	Repeat int
	// Pings per RTT measurement (optional, default 200, at 10 ms).
	Pings int
	// IPerf3 is the iperf3 binary (optional, default "iperf3" on PATH).
	IPerf3 string
}

func (o BenchOptions) withDefaults() BenchOptions {
	if o.Lab.Name == "" {
		o.Lab.Name = "bench"
	}
	if o.Lab.Nodes == 0 {
		o.Lab.Nodes = 2
	}
	if o.Lab.Containers == 0 {
		o.Lab.Containers = 1
	}
	if len(o.Backends) == 0 {
		o.Backends = DefaultBenchBackends()
	}
	if len(o.Profiles) == 0 {
		o.Profiles = []string{ProfileVeth, ProfileWire}
	}
	if o.Duration == 0 {
		o.Duration = DefaultBenchDuration
	}
	if o.Repeat == 0 {
		o.Repeat = DefaultBenchRepeat
	}
	if o.Pings == 0 {
		o.Pings = 200
	}
	if o.IPerf3 == "" {
		o.IPerf3 = "iperf3"
	}
	return o
}

func (o BenchOptions) validate() error {
	for _, p := range o.Profiles {
		if p != ProfileVeth && p != ProfileWire {
			return fmt.Errorf("%w: profile %q: use %s or %s", ErrInvalid, p, ProfileVeth, ProfileWire)
		}
	}
	for _, b := range o.Backends {
		if !slices.Contains(config.Backends(), b) {
			return fmt.Errorf("%w: backend %q: use one of %s", ErrInvalid, b, strings.Join(config.Backends(), ", "))
		}
	}
	switch {
	case o.Lab.Nodes < 2:
		return fmt.Errorf("%w: nodes %d: the bench needs 2", ErrInvalid, o.Lab.Nodes)
	case o.Lab.Containers < 1:
		return fmt.Errorf("%w: containers %d: the bench needs 1 per node", ErrInvalid, o.Lab.Containers)
	case o.Duration < time.Second:
		return fmt.Errorf("%w: duration %s: iperf3 needs at least 1s", ErrInvalid, o.Duration)
	case o.Repeat < 1:
		return fmt.Errorf("%w: repeat %d: must be positive", ErrInvalid, o.Repeat)
	case o.Pings < 1:
		return fmt.Errorf("%w: pings %d: must be positive", ErrInvalid, o.Pings)
	}
	return nil
}

// BenchResult is one (backend, profile) run: the underlay between node1
// and node2 (the physical limit, measured in the same lab) against
// container node1/c1 to node2/c1.
type BenchResult struct {
	Backend, Profile string
	// TCP1 and TCP4 are the iperf3 runs with 1 and 4 (-P 4) streams.
	TCP1, TCP4 Throughput
	// Underlay1 .. Container4 are the medians of TCP1 and TCP4 in bits/s,
	// for callers that want one number per path.
	Underlay1, Container1 float64
	Underlay4, Container4 float64
	// Ping RTTs.
	UnderlayP50, UnderlayP99   time.Duration
	ContainerP50, ContainerP99 time.Duration
	// Lost pings (underlay, container).
	UnderlayLost, ContainerLost int
	// Idle is the share of the machine's CPU time (0..1) that was busy in
	// the second before the runs, with the lab idle: other work on the
	// machine, which adds noise and lands in the CPU/GB figures too.
	Idle float64
}

// summarize fills the median fields from TCP1 and TCP4.
func (r *BenchResult) summarize() {
	r.Underlay1, r.Container1 = r.TCP1.Medians()
	r.Underlay4, r.Container4 = r.TCP4.Medians()
}

// Ratio1 is container/underlay throughput with 1 stream (ratio of medians).
func (r BenchResult) Ratio1() float64 { return r.TCP1.Ratio() }

// Ratio4 is container/underlay throughput with 4 streams (ratio of medians).
func (r BenchResult) Ratio4() float64 { return r.TCP4.Ratio() }

// Run is one iperf3 run.
type Run struct {
	// BPS is the received TCP throughput in bits/s.
	BPS float64
	// Bytes is the number of bytes received.
	Bytes int64
	// CPU is the busy time of the whole machine (all CPUs, /proc/stat)
	// while the client ran: the sender, the receiver and every softirq in
	// between, plus whatever else the machine did meanwhile.
	CPU time.Duration
}

// Throughput is one measurement: pairs of runs over the underlay and the
// container path, interleaved. Underlay[i] ran just before Container[i].
type Throughput struct {
	Streams             int
	Underlay, Container []Run
}

// Medians returns the median throughput of each path in bits/s.
func (t Throughput) Medians() (underlay, container float64) {
	return median(bps(t.Underlay)), median(bps(t.Container))
}

// Ratio is the container median over the underlay median.
func (t Throughput) Ratio() float64 {
	ul, ct := t.Medians()
	return ratio(ct, ul)
}

// Spread is the lowest and highest container/underlay ratio of a pair of
// runs made back to back: how far a single pair, the old bench, can stray.
func (t Throughput) Spread() (lo, hi float64) {
	n := min(len(t.Underlay), len(t.Container))
	for i := range n {
		r := ratio(t.Container[i].BPS, t.Underlay[i].BPS)
		if i == 0 || r < lo {
			lo = r
		}
		if i == 0 || r > hi {
			hi = r
		}
	}
	return lo, hi
}

// CPUPerGB returns the machine's busy CPU seconds per GB (1e9 bytes)
// moved over each path, over all runs of that path.
func (t Throughput) CPUPerGB() (underlay, container float64) {
	return cpuPerGB(t.Underlay), cpuPerGB(t.Container)
}

func cpuPerGB(runs []Run) float64 {
	var cpu time.Duration
	var bytes int64
	for _, r := range runs {
		cpu, bytes = cpu+r.CPU, bytes+r.Bytes
	}
	return ratio(cpu.Seconds(), float64(bytes)/1e9)
}

func bps(runs []Run) []float64 {
	v := make([]float64, len(runs))
	for i, r := range runs {
		v[i] = r.BPS
	}
	return v
}

// median of v; the mean of the middle two when len(v) is even, 0 if empty.
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(v))
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// userHZ is the unit of /proc/stat: USER_HZ, 100 on every architecture
// Linux runs on in practice (sysconf(_SC_CLK_TCK)).
const userHZ = 100

// parseCPUStat returns the busy time of all CPUs together from the
// "cpu" line of /proc/stat: user + nice + system + irq + softirq (guest
// time is already inside user). idle and iowait are not busy; steal is
// time the hypervisor gave to someone else.
func parseCPUStat(b []byte) (time.Duration, error) {
	line, _, _ := strings.Cut(string(b), "\n")
	fs := strings.Fields(line)
	if len(fs) < 8 || fs[0] != "cpu" {
		return 0, fmt.Errorf("parse /proc/stat: first line %q is not the cpu total", line)
	}
	var busy int64
	for _, i := range []int{1, 2, 3, 6, 7} { // user nice system [idle iowait] irq softirq
		v, err := strconv.ParseInt(fs[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse /proc/stat field %d %q: %w", i, fs[i], err)
		}
		busy += v
	}
	return time.Duration(busy) * time.Second / userHZ, nil
}

// iperfReport is the part of `iperf3 -J` output the bench reads.
type iperfReport struct {
	End struct {
		SumReceived struct {
			Bytes         int64   `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// parseIperf3 returns the received TCP throughput (bits/s) and bytes of
// an `iperf3 -c ... -J` report; Run.CPU is left to the caller.
func parseIperf3(b []byte) (Run, error) {
	var r iperfReport
	if err := json.Unmarshal(b, &r); err != nil {
		return Run{}, fmt.Errorf("parse iperf3 json: %w", err)
	}
	if r.Error != "" {
		return Run{}, fmt.Errorf("iperf3: %s", r.Error)
	}
	sr := r.End.SumReceived
	if sr.BitsPerSecond <= 0 || sr.Bytes <= 0 {
		return Run{}, errors.New("parse iperf3 json: no end.sum_received.bits_per_second or bytes")
	}
	return Run{BPS: sr.BitsPerSecond, Bytes: sr.Bytes}, nil
}

// WriteBench renders results as a table: a row per measurement with the
// underlay, the container path and their ratio; for throughput also the
// spread of the pairs' ratios and the CPU cost of each path.
func WriteBench(w io.Writer, o BenchOptions, results []BenchResult) error {
	o = o.withDefaults()
	fmt.Fprintf(w, "tulle lab bench: node1 -> node2 over the underlay vs node1/c1 -> node2/c1\n")
	fmt.Fprintf(w, "iperf3 TCP: median of %d runs of %s per path, interleaved underlay/container; %d pings at 10ms\n\n", o.Repeat, o.Duration, o.Pings)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "PROFILE\tBACKEND\tMEASURE\tUNDERLAY\tCONTAINER\tRATIO\tPAIRS\tCPU/GB UL\tCPU/GB CT\t")
	for _, r := range results {
		var rows [][]string
		for _, t := range []Throughput{r.TCP1, r.TCP4} {
			ul, ct := t.Medians()
			lo, hi := t.Spread()
			cul, cct := t.CPUPerGB()
			rows = append(rows, []string{streams(t.Streams), gbit(ul), gbit(ct), fmt.Sprintf("%.2f", t.Ratio()),
				fmt.Sprintf("%.2f..%.2f", lo, hi), fmt.Sprintf("%.2fs", cul), fmt.Sprintf("%.2fs", cct)})
		}
		rows = append(rows,
			[]string{"ping p50", us(r.UnderlayP50), us(r.ContainerP50), fmt.Sprintf("%.2fx", ratio(float64(r.ContainerP50), float64(r.UnderlayP50))), "", "", ""},
			[]string{"ping p99", us(r.UnderlayP99), us(r.ContainerP99), fmt.Sprintf("%.2fx", ratio(float64(r.ContainerP99), float64(r.UnderlayP99))), "", "", ""},
		)
		if r.UnderlayLost+r.ContainerLost > 0 {
			rows = append(rows, []string{"pings lost", strconv.Itoa(r.UnderlayLost), strconv.Itoa(r.ContainerLost), "", "", "", ""})
		}
		for _, row := range rows {
			fmt.Fprintf(tw, "%s\t%s\t%s\t\n", r.Profile, r.Backend, strings.Join(row, "\t"))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nRATIO: container / underlay of the medians (throughput: higher is better, 1.00 = the underlay's limit; ping: lower is better).")
	fmt.Fprintln(w, "PAIRS: lowest..highest ratio of one underlay run and the container run right after it.")
	fmt.Fprintln(w, "CPU/GB: busy CPU seconds of the whole machine (/proc/stat) per GB received, underlay (UL) and container (CT) path.")
	if cs := CompareBackends(results, config.BackendUDP, config.BackendVXLAN); len(cs) > 0 {
		if err := writeComparisons(w, cs); err != nil {
			return err
		}
	}
	var busy []string
	for _, r := range results {
		if r.Idle >= noisyIdle {
			busy = append(busy, fmt.Sprintf("%s/%s %.0f%%", r.Profile, r.Backend, 100*r.Idle))
		}
	}
	if len(busy) > 0 {
		fmt.Fprintf(w, "WARNING: the machine was busy before measuring (%s of all CPUs, lab idle): expect noise.\n", strings.Join(busy, ", "))
	}
	return nil
}

// Comparison sets one backend's container path against another's, both
// measured in the same bench run and underlay profile (issue 5: udp
// against kernel vxlan).
type Comparison struct {
	Profile   string
	A, B      string // backends: A is compared against B
	Streams   int
	ABPS      float64 // container medians, bits/s
	BBPS      float64
	Ratio     float64 // ABPS / BBPS
	NormRatio float64 // (A container/underlay) / (B container/underlay): drift between the two labs cancels
	ACPU      float64 // CPU seconds per GB over the container path
	BCPU      float64
}

// CompareBackends pairs the results of backend a with those of b in the
// same profile, for 1 and 4 streams, in result order.
func CompareBackends(results []BenchResult, a, b string) []Comparison {
	var out []Comparison
	for _, ra := range results {
		if ra.Backend != a {
			continue
		}
		for _, rb := range results {
			if rb.Backend != b || rb.Profile != ra.Profile {
				continue
			}
			for _, tt := range [][2]Throughput{{ra.TCP1, rb.TCP1}, {ra.TCP4, rb.TCP4}} {
				_, actr := tt[0].Medians()
				_, bctr := tt[1].Medians()
				_, acpu := tt[0].CPUPerGB()
				_, bcpu := tt[1].CPUPerGB()
				out = append(out, Comparison{
					Profile: ra.Profile, A: a, B: b, Streams: tt[0].Streams,
					ABPS: actr, BBPS: bctr, Ratio: ratio(actr, bctr),
					NormRatio: ratio(tt[0].Ratio(), tt[1].Ratio()),
					ACPU:      acpu, BCPU: bcpu,
				})
			}
		}
	}
	return out
}

func writeComparisons(w io.Writer, cs []Comparison) error {
	a, b := cs[0].A, cs[0].B
	fmt.Fprintf(w, "\n%s against %s (container paths of the runs above):\n", a, b)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "PROFILE\tMEASURE\t%s\t%s\t%s/%s\tNORMALISED\tCPU/GB %s\tCPU/GB %s\tCPU RATIO\t\n",
		strings.ToUpper(b), strings.ToUpper(a), strings.ToUpper(a), strings.ToUpper(b), strings.ToUpper(b), strings.ToUpper(a))
	for _, c := range cs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.2f\t%.2f\t%.2fs\t%.2fs\t%.2fx\t\n", c.Profile, streams(c.Streams),
			gbit(c.BBPS), gbit(c.ABPS), c.Ratio, c.NormRatio, c.BCPU, c.ACPU, ratio(c.ACPU, c.BCPU))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "%s/%s: ratio of the container medians (issue 5 goal for udp: >= 0.60). NORMALISED: ratio of the two RATIO columns,\n", strings.ToUpper(a), strings.ToUpper(b))
	fmt.Fprintln(w, "which cancels a difference in the underlay between the two labs. CPU RATIO: CPU/GB of the first over the second (lower is cheaper).")
	return nil
}

// noisyIdle is the idle load above which WriteBench warns: more than a
// tenth of the machine busy with other work is enough to move a 1-stream
// result on a 2-CPU machine by more than the effects we look for.
const noisyIdle = 0.10

func streams(n int) string {
	if n == 1 {
		return "TCP 1 stream"
	}
	return fmt.Sprintf("TCP %d streams", n)
}

func gbit(bps float64) string { return fmt.Sprintf("%.2f Gbit/s", bps/1e9) }

func us(d time.Duration) string { return fmt.Sprintf("%dµs", d.Microseconds()) }

// sortedResults orders results by profile then backend as requested.
func sortedResults(o BenchOptions, rs []BenchResult) []BenchResult {
	idx := func(list []string, s string) int { return slices.Index(list, s) }
	slices.SortStableFunc(rs, func(a, b BenchResult) int {
		if d := idx(o.Profiles, a.Profile) - idx(o.Profiles, b.Profile); d != 0 {
			return d
		}
		return idx(o.Backends, a.Backend) - idx(o.Backends, b.Backend)
	})
	return rs
}
