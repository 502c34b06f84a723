package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tulle-net/tulle/internal/config"
)

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
	// Backends to measure (optional, default vxlan and host-gw).
	Backends []string
	// Profiles to measure (optional, default veth and wire).
	Profiles []string
	// Duration of each iperf3 run (optional, default 5s).
	Duration time.Duration
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
		o.Backends = []string{config.BackendVXLAN, config.BackendHostGW}
	}
	if len(o.Profiles) == 0 {
		o.Profiles = []string{ProfileVeth, ProfileWire}
	}
	if o.Duration == 0 {
		o.Duration = 5 * time.Second
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
		if b != config.BackendVXLAN && b != config.BackendHostGW {
			return fmt.Errorf("%w: backend %q: use %s or %s", ErrInvalid, b, config.BackendVXLAN, config.BackendHostGW)
		}
	}
	switch {
	case o.Lab.Nodes < 2:
		return fmt.Errorf("%w: nodes %d: the bench needs 2", ErrInvalid, o.Lab.Nodes)
	case o.Lab.Containers < 1:
		return fmt.Errorf("%w: containers %d: the bench needs 1 per node", ErrInvalid, o.Lab.Containers)
	case o.Duration < time.Second:
		return fmt.Errorf("%w: duration %s: iperf3 needs at least 1s", ErrInvalid, o.Duration)
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
	// Throughput in bits/s, TCP, as received.
	Underlay1, Container1 float64 // 1 stream
	Underlay4, Container4 float64 // 4 streams (-P 4)
	// Ping RTTs.
	UnderlayP50, UnderlayP99   time.Duration
	ContainerP50, ContainerP99 time.Duration
	// Lost pings (underlay, container).
	UnderlayLost, ContainerLost int
}

// Ratio1 is container/underlay throughput with 1 stream.
func (r BenchResult) Ratio1() float64 { return ratio(r.Container1, r.Underlay1) }

// Ratio4 is container/underlay throughput with 4 streams.
func (r BenchResult) Ratio4() float64 { return ratio(r.Container4, r.Underlay4) }

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// iperfReport is the part of `iperf3 -J` output the bench reads.
type iperfReport struct {
	End struct {
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// parseIperf3 returns the received TCP throughput (bits/s) of an
// `iperf3 -c ... -J` report.
func parseIperf3(b []byte) (float64, error) {
	var r iperfReport
	if err := json.Unmarshal(b, &r); err != nil {
		return 0, fmt.Errorf("parse iperf3 json: %w", err)
	}
	if r.Error != "" {
		return 0, fmt.Errorf("iperf3: %s", r.Error)
	}
	if r.End.SumReceived.BitsPerSecond <= 0 {
		return 0, errors.New("parse iperf3 json: no end.sum_received.bits_per_second")
	}
	return r.End.SumReceived.BitsPerSecond, nil
}

// WriteBench renders results as a table: a row per measurement with the
// underlay, the container path and their ratio.
func WriteBench(w io.Writer, o BenchOptions, results []BenchResult) error {
	o = o.withDefaults()
	fmt.Fprintf(w, "tulle lab bench: node1 -> node2 over the underlay vs node1/c1 -> node2/c1; iperf3 TCP %s per run; %d pings at 10ms\n\n", o.Duration, o.Pings)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "PROFILE\tBACKEND\tMEASURE\tUNDERLAY\tCONTAINER\tRATIO\t")
	for _, r := range results {
		rows := [][]string{
			{"TCP 1 stream", gbit(r.Underlay1), gbit(r.Container1), fmt.Sprintf("%.2f", r.Ratio1())},
			{"TCP 4 streams", gbit(r.Underlay4), gbit(r.Container4), fmt.Sprintf("%.2f", r.Ratio4())},
			{"ping p50", us(r.UnderlayP50), us(r.ContainerP50), fmt.Sprintf("%.2fx", ratio(float64(r.ContainerP50), float64(r.UnderlayP50)))},
			{"ping p99", us(r.UnderlayP99), us(r.ContainerP99), fmt.Sprintf("%.2fx", ratio(float64(r.ContainerP99), float64(r.UnderlayP99)))},
		}
		for _, row := range rows {
			fmt.Fprintf(tw, "%s\t%s\t%s\t\n", r.Profile, r.Backend, strings.Join(row, "\t"))
		}
		if r.UnderlayLost+r.ContainerLost > 0 {
			fmt.Fprintf(tw, "%s\t%s\tpings lost\t%d\t%d\t\t\n", r.Profile, r.Backend, r.UnderlayLost, r.ContainerLost)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nRATIO: container / underlay (throughput: higher is better, 1.00 = the underlay's limit; ping: lower is better).")
	return nil
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
