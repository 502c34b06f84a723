package cni

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tulle-net/tulle/internal/netns"
	"github.com/tulle-net/tulle/internal/netns/nstest"
	"github.com/tulle-net/tulle/internal/subnetfile"
)

// Speed (issue 3, "Speed"): tulle-cni against the reference bridge +
// host-local plugins, both exec'd as binaries the way a runtime runs them,
// measured in the same run on identical node namespaces:
//
//	node tbn-<hex> (tulle)                   node tbn-<hex> (reference)
//	+------------------------------+         +------------------------------+
//	| tbnbr0 10.250.3.1/24         |         | tbr0 10.250.3.1/24           |
//	|   +-- tl<hex> --- eth0 in    |         |   +-- veth<hex> --- eth0 in  |
//	|       container tbn-<hex>    |         |       container tbn-<hex>    |
//	+------------------------------+         +------------------------------+
//
// Both get the same /24, MTU 1400 and a default route via .1; the
// reference is "bridge" (isGateway, no ipMasq) with "host-local" IPAM from
// /usr/lib/cni, cniVersion 1.0.0 (the newest it speaks). Each plugin has a
// node namespace of its own, since two bridges carrying one /24 in one
// namespace would share its route. Every namespace is tbn-<hex> and is
// removed when the benchmark ends.
//
//	go test -run '^$' -bench 'CNICompare' -benchtime 1x ./internal/cni/
//
// prints the table (latency p50/p99 of ADD and DEL with the two plugins
// interleaved call by call, and parallel ADD throughput); BenchmarkADD and
// BenchmarkDEL are the per-call Go benchmarks of each plugin. Add
// "-args -cnibench.containers=20" for a quick run, or
// "-args -cnibench.tulle=PATH" to measure another tulle-cni build (a
// before/after).

const (
	refPluginDir = "/usr/lib/cni"
	benchNetwork = "tbn-net"
	// benchWorkers run the parallel ADDs.
	benchWorkers = 8
)

// benchContainers is how many containers each measurement of
// BenchmarkCNICompare attaches.
var benchContainers = flag.Int("cnibench.containers", 100, "BenchmarkCNICompare: containers per measurement")

// benchTulle is a prebuilt tulle-cni to measure instead of building this
// tree (e.g. bin/tulle-cni, or an older build for a before/after).
var benchTulle = flag.String("cnibench.tulle", "", "benchmarks: tulle-cni binary to measure (default: build this tree as make build does)")

// benchPlugin is one plugin under measurement on its own node.
type benchPlugin struct {
	name string
	node *crashNode
	conf []byte
	// conts are container namespace names, removed at cleanup.
	mu    sync.Mutex
	conts []string
}

func benchInfo(bridge string) subnetfile.Info {
	return subnetfile.Info{
		Network: netip.MustParsePrefix("10.250.0.0/16"),
		Subnet:  netip.MustParsePrefix("10.250.3.0/24"),
		Gateway: netip.MustParseAddr("10.250.3.1"),
		MTU:     1400,
		Bridge:  bridge,
		Node:    "tbn-node",
		Backend: "vxlan",
	}
}

// setupBench returns tulle (built from this tree) and the reference, each
// on a fresh node namespace.
func setupBench(b *testing.B) (tulle, ref *benchPlugin) {
	b.Helper()
	nstest.RequireRoot(b)
	refBin := filepath.Join(refPluginDir, "bridge")
	for _, p := range []string{refBin, filepath.Join(refPluginDir, "host-local")} {
		if _, err := os.Stat(p); err != nil {
			b.Skipf("reference plugin missing: %v", err)
		}
	}
	bin, err := filepath.Abs(*benchTulle)
	if *benchTulle == "" {
		bin = buildPluginTB(b)
	} else if err != nil {
		b.Fatal(err)
	}
	b.Logf("tulle-cni: %s", bin)
	tn := newCrashNode(b, "tbn", benchInfo("tbnbr0"), bin)
	tulle = &benchPlugin{name: "tulle", node: tn, conf: mustJSONTB(b, map[string]any{
		"cniVersion": "1.0.0",
		"name":       benchNetwork,
		"type":       "tulle",
		"subnetFile": tn.subnetFile,
		"dataDir":    tn.dataDir,
	})}
	rn := newCrashNode(b, "tbn", benchInfo("tbr0"), refBin)
	ref = &benchPlugin{name: "reference", node: rn, conf: mustJSONTB(b, map[string]any{
		"cniVersion": "1.0.0",
		"name":       benchNetwork,
		"type":       "bridge",
		"bridge":     "tbr0",
		"isGateway":  true,
		"ipMasq":     false,
		"mtu":        1400,
		"ipam": map[string]any{
			"type":    "host-local",
			"subnet":  "10.250.3.0/24",
			"dataDir": filepath.Join(b.TempDir(), "host-local"),
			"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
		},
	})}
	for _, p := range []*benchPlugin{tulle, ref} {
		b.Cleanup(func() {
			for _, name := range p.conts {
				if err := netns.Delete(name); err != nil {
					b.Errorf("remove netns %s: %v", name, err)
				}
			}
		})
	}
	return tulle, ref
}

// container makes a container namespace for p.
func (p *benchPlugin) container(b testing.TB) string {
	b.Helper()
	for range 5 {
		name := "tbn-" + randomID(rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())), 8)
		h, err := netns.Create(name)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			b.Fatal(err)
		}
		h.Close()
		p.mu.Lock()
		p.conts = append(p.conts, name)
		p.mu.Unlock()
		return name
	}
	b.Fatal("no free netns name")
	return ""
}

// call runs one verb and fails the benchmark if the plugin fails.
func (p *benchPlugin) call(b testing.TB, command, id, nsName string) time.Duration {
	r := p.node.exec(b, command, id, netns.Path(nsName), p.conf, -1)
	if r.exitCode != 0 {
		b.Fatalf("%s %s %s: %s", p.name, command, id, r)
	}
	return r.took
}

// removeContainers deletes the container namespaces made so far.
func (p *benchPlugin) removeContainers(b testing.TB) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, name := range p.conts {
		if err := netns.Delete(name); err != nil {
			b.Errorf("remove netns %s: %v", name, err)
		}
	}
	p.conts = nil
}

// parallelAdd attaches n fresh containers with w workers and returns the
// wall time; the containers are DELed (untimed) afterwards.
func (p *benchPlugin) parallelAdd(b testing.TB, round, n, w int) time.Duration {
	names := make([]string, n)
	for i := range names {
		names[i] = p.container(b)
	}
	id := func(i int) string { return fmt.Sprintf("tbn-par%d-%03d", round, i) }
	next := make(chan int, n)
	for i := range n {
		next <- i
	}
	close(next)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := time.Now()
	for range w {
		wg.Go(func() {
			for i := range next {
				r, err := p.node.run("ADD", id(i), netns.Path(names[i]), p.conf, -1)
				if err == nil && r.exitCode != 0 {
					err = fmt.Errorf("%s ADD %s: %s", p.name, id(i), r)
				}
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	for i := range n {
		p.call(b, "DEL", id(i), names[i])
	}
	p.removeContainers(b)
	return took
}

// BenchmarkCNICompare measures both plugins in one run and prints the
// table with the tulle/reference ratios. Run it with -benchtime 1x.
func BenchmarkCNICompare(b *testing.B) {
	tulle, ref := setupBench(b)
	plugins := []*benchPlugin{tulle, ref}
	for b.Loop() {
		addT := map[string][]time.Duration{}
		delT := map[string][]time.Duration{}
		names := map[string][]string{}
		for _, p := range plugins {
			for range *benchContainers {
				names[p.name] = append(names[p.name], p.container(b))
			}
		}
		// Interleaved call by call, alternating which plugin goes first, so
		// both see the same background load.
		order := func(i int) []*benchPlugin {
			if i%2 == 0 {
				return plugins
			}
			return []*benchPlugin{ref, tulle}
		}
		id := func(i int) string { return fmt.Sprintf("tbn-lat-%03d", i) }
		for i := range *benchContainers {
			for _, p := range order(i) {
				addT[p.name] = append(addT[p.name], p.call(b, "ADD", id(i), names[p.name][i]))
			}
		}
		for i := range *benchContainers {
			for _, p := range order(i) {
				delT[p.name] = append(delT[p.name], p.call(b, "DEL", id(i), names[p.name][i]))
			}
		}
		for _, p := range plugins {
			p.removeContainers(b)
		}
		// Parallel ADD throughput, in ABBA order.
		par := map[string]time.Duration{}
		for round, p := range []*benchPlugin{tulle, ref, ref, tulle} {
			par[p.name] += p.parallelAdd(b, round, *benchContainers, benchWorkers)
		}
		thr := func(name string) float64 { return float64(2**benchContainers) / par[name].Seconds() }

		var tb strings.Builder
		fmt.Fprintf(&tb, "\n%d containers, latency interleaved call by call; parallel: %d workers x %d containers, twice (ABBA)\n",
			*benchContainers, benchWorkers, *benchContainers)
		fmt.Fprintf(&tb, "| metric | tulle | reference | tulle/reference |\n|---|---:|---:|---:|\n")
		row := func(metric string, tv, rv float64, unit string) float64 {
			fmt.Fprintf(&tb, "| %s | %.1f %s | %.1f %s | %.2f |\n", metric, tv, unit, rv, unit, tv/rv)
			return tv / rv
		}
		ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
		r := row("ADD p50", ms(pct(addT["tulle"], 50)), ms(pct(addT["reference"], 50)), "ms")
		b.ReportMetric(r, "add-p50-ratio")
		row("ADD p99", ms(pct(addT["tulle"], 99)), ms(pct(addT["reference"], 99)), "ms")
		r = row("DEL p50", ms(pct(delT["tulle"], 50)), ms(pct(delT["reference"], 50)), "ms")
		b.ReportMetric(r, "del-p50-ratio")
		row("DEL p99", ms(pct(delT["tulle"], 99)), ms(pct(delT["reference"], 99)), "ms")
		r = row(fmt.Sprintf("parallel ADD (%d workers)", benchWorkers), thr("tulle"), thr("reference"), "att/s")
		b.ReportMetric(r, "par-add-ratio")
		b.Log(tb.String())
	}
}

// pct is the p-th percentile (nearest rank) of ds.
func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(i-1, 0)]
}

// BenchmarkADD is one ADD per iteration into a fresh container namespace;
// making the namespace and the DEL after it are not timed.
func BenchmarkADD(b *testing.B) {
	tulle, ref := setupBench(b)
	for _, p := range []*benchPlugin{tulle, ref} {
		b.Run(p.name, func(b *testing.B) {
			var ds []time.Duration
			i := 0
			for b.Loop() {
				b.StopTimer()
				name := p.container(b)
				id := fmt.Sprintf("tbn-add-%d", i)
				b.StartTimer()
				ds = append(ds, p.call(b, "ADD", id, name))
				b.StopTimer()
				p.call(b, "DEL", id, name)
				p.removeContainers(b)
				b.StartTimer()
				i++
			}
			b.ReportMetric(float64(pct(ds, 50))/1e6, "p50-ms")
			b.ReportMetric(float64(pct(ds, 99))/1e6, "p99-ms")
		})
	}
}

// BenchmarkDEL is one DEL per iteration of an attachment ADDed (untimed)
// just before.
func BenchmarkDEL(b *testing.B) {
	tulle, ref := setupBench(b)
	for _, p := range []*benchPlugin{tulle, ref} {
		b.Run(p.name, func(b *testing.B) {
			var ds []time.Duration
			i := 0
			for b.Loop() {
				b.StopTimer()
				name := p.container(b)
				id := fmt.Sprintf("tbn-del-%d", i)
				p.call(b, "ADD", id, name)
				b.StartTimer()
				ds = append(ds, p.call(b, "DEL", id, name))
				b.StopTimer()
				p.removeContainers(b)
				b.StartTimer()
				i++
			}
			b.ReportMetric(float64(pct(ds, 50))/1e6, "p50-ms")
			b.ReportMetric(float64(pct(ds, 99))/1e6, "p99-ms")
		})
	}
}

// buildPluginTB is buildPlugin for benchmarks, with make build's flags
// (stripped, which also changes start-up time).
func buildPluginTB(tb testing.TB) string {
	tb.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(tb.TempDir(), PluginType)
	cmd := exec.Command(goBin, "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "github.com/tulle-net/tulle/cmd/tulle-cni")
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func mustJSONTB(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
