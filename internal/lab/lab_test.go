package lab

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tulle-net/tulle/internal/udppeers"
)

func TestNames(t *testing.T) {
	if got := switchNS("tl"); got != "tl-sw" {
		t.Errorf("switchNS = %q", got)
	}
	if got := containerNS("te1", 10, 2); got != "te1-n10c2" {
		t.Errorf("containerNS = %q", got)
	}
	if got := nodeIP(3); got != netip.MustParseAddr("10.250.0.13") {
		t.Errorf("nodeIP(3) = %s", got)
	}
	if got := etcdEndpoint(); got != "http://10.250.0.1:2379" {
		t.Errorf("etcdEndpoint = %q", got)
	}
	// The longest names stay far below the limits: namespace names are
	// files, and interface names (switch ports) must fit in 15 bytes.
	if n := len(containerNS("abcdef", maxNodes, maxContainers)); n > 20 {
		t.Errorf("longest container netns name is %d bytes", n)
	}
	if n := len(switchPort(maxNodes)); n > 15 {
		t.Errorf("switch port name is %d bytes", n)
	}
}

func TestIsLabNS(t *testing.T) {
	for _, tc := range []struct {
		lab, ns string
		want    bool
	}{
		{"tl", "tl-sw", true},
		{"tl", "tl-n1", true},
		{"tl", "tl-n12c3", true},
		{"tl", "tl-n0", false},
		{"tl", "tl-n01", false},
		{"tl", "tl-n1c", false},
		{"tl", "tl-x1", false},
		{"tl", "tl1-n1", false},
		{"te1", "te12-n1", false},
		{"tl", "tl-sw2", false},
		{"tl", "tl-n1c2c3", false},
		{"tl", "cni-1234", false},
	} {
		if got := isLabNS(tc.lab, tc.ns); got != tc.want {
			t.Errorf("isLabNS(%q, %q) = %t, want %t", tc.lab, tc.ns, got, tc.want)
		}
	}
}

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Target
		wantErr bool
	}{
		{in: "node1", want: Target{Node: 1}},
		{in: "node12/c3", want: Target{Node: 12, Container: 3}},
		{in: "node0", wantErr: true},
		{in: "n1", wantErr: true},
		{in: "node1/", wantErr: true},
		{in: "node1/x1", wantErr: true},
		{in: "node1/c01", wantErr: true},
		{in: "", wantErr: true},
	} {
		got, err := ParseTarget(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ParseTarget(%q) = %+v, %v; want %+v, err %t", tc.in, got, err, tc.want, tc.wantErr)
		}
		if err == nil && got.String() != tc.in {
			t.Errorf("Target(%q).String() = %q", tc.in, got.String())
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "tulle")
	cni := filepath.Join(dir, "tulle-cni")
	for _, p := range []string{exe, cni} {
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	base := Options{TulleBin: exe}
	for _, tc := range []struct {
		name    string
		mod     func(*Options)
		wantErr string // substring; empty: valid
	}{
		{"defaults", func(*Options) {}, ""},
		{"host-gw", func(o *Options) { o.Backend = "host-gw" }, ""},
		{"udp", func(o *Options) { o.Backend = "udp" }, ""},
		{"bad backend", func(o *Options) { o.Backend = "ipip" }, `backend "ipip": use one of vxlan, host-gw, udp`},
		{"long name", func(o *Options) { o.Name = "abcdefg" }, `name "abcdefg"`},
		{"dash in name", func(o *Options) { o.Name = "a-b" }, `name "a-b"`},
		{"upper name", func(o *Options) { o.Name = "Tl" }, `name "Tl"`},
		{"too many nodes", func(o *Options) { o.Nodes = 101 }, "nodes 101"},
		{"negative containers", func(o *Options) { o.Containers = -1 }, "containers -1"},
		{"short resync", func(o *Options) { o.Resync = time.Millisecond }, "resync 1ms"},
		{"relative root", func(o *Options) { o.StateRoot = "labs" }, `state root "labs"`},
		{"missing plugin", func(o *Options) { o.CNIBin = filepath.Join(dir, "nope") }, "plugin binary"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			tc.mod(&o)
			o, err := o.withDefaults()
			if err != nil {
				t.Fatal(err)
			}
			err = o.validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("validate: %v", err)
				}
				if o.CNIBin != cni {
					t.Errorf("CNIBin = %q, want %q", o.CNIBin, cni)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("validate = %v, want ErrInvalid naming %q", err, tc.wantErr)
			}
		})
	}
}

func TestNetworkConfig(t *testing.T) {
	for _, b := range []string{"vxlan", "host-gw", "udp"} {
		n, err := networkConfig(b, 26)
		if err != nil || n.Backend.Type != b || n.SubnetLen != 26 {
			t.Errorf("networkConfig(%s) = %+v, %v", b, n, err)
		}
	}
	if _, err := networkConfig("vxlan", 31); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "subnetLen 31") {
		t.Errorf("networkConfig(subnetLen 31) = %v, want ErrInvalid naming subnetLen", err)
	}
}

func TestStateRoundTrip(t *testing.T) {
	root := t.TempDir()
	st := &State{
		Name: "tl", Dir: filepath.Join(root, "tl"), Backend: "vxlan", Resync: Duration(2 * time.Second),
		Created: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Etcd:    &Proc{PID: 42, StartTime: 7, Args: []string{"tulle", "etcd"}},
		Nodes: []NodeState{{
			Name: "node1", NS: "tl-n1", IP: nodeIP(1), Subnet: netip.MustParsePrefix("10.244.3.0/24"),
			Containers: []ContainerState{{Name: "c1", NS: "tl-n1c1", ID: "tl-n1c1", IP: netip.MustParsePrefix("10.244.3.2/24")}},
		}},
	}
	st.addNS("tl-sw")
	st.addNS("tl-n1")
	st.addNS("tl-sw")
	if err := os.MkdirAll(st.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := writeState(st); err != nil {
		t.Fatal(err)
	}
	got, err := readState(root, "tl")
	if err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(st)
	b, _ := json.Marshal(got)
	if !bytes.Equal(a, b) {
		t.Errorf("round trip:\n got %s\nwant %s", b, a)
	}
	if len(got.Namespaces) != 2 {
		t.Errorf("addNS is not idempotent: %v", got.Namespaces)
	}
	if ns, err := got.nsOf(Target{Node: 1, Container: 1}); err != nil || ns != "tl-n1c1" {
		t.Errorf("nsOf(node1/c1) = %q, %v", ns, err)
	}
	if _, err := got.nsOf(Target{Node: 1, Container: 2}); err == nil {
		t.Error("nsOf(node1/c2) succeeded on a node with one container")
	}
	if _, err := got.nsOf(Target{Node: 2}); err == nil {
		t.Error("nsOf(node2) succeeded on a 1-node lab")
	}
	if _, err := readState(root, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("readState(missing) = %v, want ErrNotFound", err)
	}
}

func TestParseProcStat(t *testing.T) {
	// comm with spaces and parentheses, as /proc allows.
	line := []byte("1234 (tulle (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 9 0 987654 1000 200 18446744073709551615\n")
	st, err := parseProcStat(line)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != 'S' || st.StartTime != 987654 {
		t.Errorf("parseProcStat = %+v, want state S starttime 987654", st)
	}
	if _, err := parseProcStat([]byte("1234 (x) S 1")); err == nil {
		t.Error("short stat parsed")
	}
	p := &Proc{PID: 1234, StartTime: 987654, Args: []string{"/bin/tulle", "agent"}}
	cmd := parseCmdline([]byte("/bin/tulle\x00agent\x00"))
	if !sameProcess(p, st, cmd) {
		t.Error("sameProcess: the recorded process is not recognised")
	}
	if sameProcess(p, procStat{State: 'S', StartTime: 1}, cmd) {
		t.Error("sameProcess: a reused pid (other start time) is taken for ours")
	}
	if sameProcess(p, procStat{State: 'Z', StartTime: 987654}, cmd) {
		t.Error("sameProcess: a zombie counts as running")
	}
	if !sameProcess(p, st, nil) {
		t.Error("sameProcess: a process between exec and argv setup (empty cmdline) is not recognised")
	}
	if sameProcess(p, st, []string{"/bin/sleep", "1"}) {
		t.Error("sameProcess: another command is taken for ours")
	}
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	r := PingResult{Sent: 101, Received: 100, RTTs: ds}
	if got := r.Percentile(50); got != 50*time.Millisecond {
		t.Errorf("p50 = %s", got)
	}
	if got := r.Percentile(99); got != 99*time.Millisecond {
		t.Errorf("p99 = %s", got)
	}
	if got := r.Percentile(100); got != 100*time.Millisecond {
		t.Errorf("p100 = %s", got)
	}
	if r.Lost() != 1 {
		t.Errorf("Lost = %d", r.Lost())
	}
	if got := (PingResult{}).Percentile(50); got != 0 {
		t.Errorf("empty p50 = %s", got)
	}
}

func TestPingTracker(t *testing.T) {
	tr := newPingTracker(56)
	t0 := time.Unix(0, 0)
	tr.onSend(1, t0)
	tr.onSend(2, t0)
	if !tr.onReply(1, tr.payload, t0.Add(time.Millisecond)) {
		t.Error("reply to seq 1 not matched")
	}
	if tr.onReply(1, tr.payload, t0.Add(2*time.Millisecond)) {
		t.Error("duplicate reply counted")
	}
	if tr.onReply(2, []byte("other"), t0) {
		t.Error("reply with a foreign payload counted")
	}
	if tr.onReply(3, tr.payload, t0) {
		t.Error("reply to an unsent seq counted")
	}
	r := tr.snapshot(10 * time.Millisecond)
	if r.Sent != 2 || r.Received != 1 || r.Lost() != 1 || r.RTTs[0] != time.Millisecond {
		t.Errorf("result = %+v", r)
	}
	if tr.outstanding() != 1 {
		t.Errorf("outstanding = %d", tr.outstanding())
	}
}

// TestPingOutages: unanswered requests are grouped into runs of
// consecutive sequence numbers, also across the 16-bit wrap, and the
// longest run is the outage a restart caused.
func TestPingOutages(t *testing.T) {
	tr := newPingTracker(56)
	t0 := time.Unix(100, 0)
	const iv = 10 * time.Millisecond
	seq := uint16(65530)
	var answered []uint16
	for i := range 30 {
		at := t0.Add(time.Duration(i) * iv)
		tr.onSend(seq, at)
		// Lost: i = 2 (1 request), i = 4..12 (9, across the wrap), i = 29.
		if !(i == 2 || (i >= 4 && i <= 12) || i == 29) {
			answered = append(answered, seq)
		}
		seq++
	}
	for _, s := range answered {
		tr.onReply(s, tr.payload, t0.Add(time.Second))
	}
	r := tr.snapshot(iv)
	if r.Lost() != 11 || len(r.Outages) != 3 {
		t.Fatalf("lost %d in %d outages %+v; want 11 in 3", r.Lost(), len(r.Outages), r.Outages)
	}
	m := r.MaxOutage()
	if m.Lost != 9 || m.Span != 90*time.Millisecond || !m.First.Equal(t0.Add(4*iv)) {
		t.Errorf("max outage %+v; want 9 requests, 90ms, from the 5th", m)
	}
	if (PingResult{}).MaxOutage().Lost != 0 {
		t.Error("no outage without losses expected")
	}
}

// TestMissingUDPPeers: a udp lab has converged when every node's
// udp-peers.json lists every other node's subnet.
func TestMissingUDPPeers(t *testing.T) {
	dir := t.TempDir()
	st := State{Name: "ud", Backend: "udp"}
	for i := 1; i <= 3; i++ {
		st.Nodes = append(st.Nodes, NodeState{Name: nodeName(i), Dir: filepath.Join(dir, nodeName(i)),
			IP: nodeIP(i), Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24)})
	}
	write := func(i int, peers ...int) {
		f := udppeers.File{Engine: udppeers.Engine{TUN: "tulle-udp", MTU: 1464, Listen: netip.AddrPortFrom(nodeIP(i), 8285),
			NetworkID: 1, Local: st.Nodes[i-1].Subnet, Cluster: netip.MustParsePrefix(DefaultNetwork)}}
		for _, p := range peers {
			f.Peers = append(f.Peers, udppeers.Peer{Subnet: st.Nodes[p-1].Subnet, PublicIP: nodeIP(p), Port: 8285})
		}
		if err := udppeers.Write(filepath.Join(st.Nodes[i-1].Dir, udppeers.FileName), f); err != nil {
			t.Fatal(err)
		}
	}
	write(1, 2, 3)
	write(2, 1)
	got := missingUDPPeers(st, nil)
	want := []string{"node2's udp engine does not know node3's 10.244.3.0/24", "node3 has no udp peers yet"}
	if len(got) != 2 || got[0] != want[0] || !strings.HasPrefix(got[1], want[1]) {
		t.Fatalf("missing %q, want %q", got, want)
	}
	write(2, 1, 3)
	write(3, 2, 1)
	if got := missingUDPPeers(st, nil); len(got) != 0 {
		t.Fatalf("converged lab reports %q", got)
	}
	if n := udpPeerCount(st.Nodes[2]); n != 2 {
		t.Errorf("udpPeerCount = %d, want 2", n)
	}
}

func TestParseMetrics(t *testing.T) {
	in := `# HELP tulle_udp_drops_total Packets dropped.
# TYPE tulle_udp_drops_total counter
tulle_udp_drops_total{reason="unknown_sender"} 3
tulle_udp_peers 2
go_gc_duration_seconds{quantile="0.5"} 1.5e-05
garbage
bad_value x
`
	m, err := parseMetrics(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if m[`tulle_udp_drops_total{reason="unknown_sender"}`] != 3 || m["tulle_udp_peers"] != 2 || m[`go_gc_duration_seconds{quantile="0.5"}`] != 1.5e-05 || len(m) != 3 {
		t.Errorf("parsed %v", m)
	}
}

func TestParseIperf3(t *testing.T) {
	b, err := os.ReadFile("testdata/iperf3-P2.json")
	if err != nil {
		t.Fatal(err)
	}
	run, err := parseIperf3(b)
	if err != nil || run.BPS < 6.6e9 || run.BPS > 6.7e9 || run.Bytes != 844890112 {
		t.Errorf("parseIperf3 = %+v, %v", run, err)
	}
	if _, err := parseIperf3([]byte(`{"start":{},"end":{},"error":"unable to connect to server: Connection refused"}`)); err == nil || !strings.Contains(err.Error(), "Connection refused") {
		t.Errorf("error report: %v", err)
	}
	if _, err := parseIperf3([]byte("not json")); err == nil {
		t.Error("garbage parsed")
	}
}

func TestListening(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "tcp")
	table := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0D00000A:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0D00000A:1452 0E00000A:C000 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
`
	if err := os.WriteFile(p, []byte(table), 0o644); err != nil {
		t.Fatal(err)
	}
	if !listening(p, ":1451") {
		t.Error("listener on 5201 not found")
	}
	if listening(p, ":1452") {
		t.Error("an established socket counted as listening")
	}
}

func TestWriteMatrix(t *testing.T) {
	names := []string{"node1/c1", "node2/c1"}
	pairs := []PairResult{
		{From: "node1/c1", To: "node2/c1", Ping: true, TCP: true},
		{From: "node2/c1", To: "node1/c1", Ping: true, Err: "tcp: refused"},
	}
	var b bytes.Buffer
	writeMatrix(&b, names, pairs)
	want := `Reachability, from row to column (ok = ping and TCP echo both work):
FROM \ TO  node1/c1  node2/c1
node1/c1   -         ok
node2/c1   no-tcp    -

`
	if b.String() != want {
		t.Errorf("matrix:\n%s\nwant:\n%s", b.String(), want)
	}
	r := Report{Pairs: pairs}
	if r.Failed() != 1 {
		t.Errorf("Failed = %d", r.Failed())
	}
	var v bytes.Buffer
	writeVerdict(&v, r)
	if !strings.Contains(v.String(), "1 of 2 pairs FAILED") || !strings.Contains(v.String(), "node2/c1 -> node1/c1: tcp: refused") {
		t.Errorf("verdict:\n%s", v.String())
	}
	var ec interface{ ExitCode() int }
	if err := error(&UnreachableError{Failed: 1, Total: 2}); !errors.As(err, &ec) || ec.ExitCode() != 2 {
		t.Error("UnreachableError does not carry exit code 2")
	}
}

func TestParseCPUStat(t *testing.T) {
	stat := "cpu  152662 7 106008 365430 2007 11 29898 500 0 0\ncpu0 75873 0 51480 185454 448 0 14785 0 0 0\n"
	got, err := parseCPUStat([]byte(stat))
	// user+nice+system+irq+softirq jiffies at 100 Hz; not idle, iowait, steal.
	if want := time.Duration(152662+7+106008+11+29898) * 10 * time.Millisecond; err != nil || got != want {
		t.Errorf("parseCPUStat = %v, %v; want %v", got, err, want)
	}
	for _, bad := range []string{"", "intr 1 2 3\n", "cpu 1 2 x 4 5 6 7\n", "cpu 1 2 3\n"} {
		if _, err := parseCPUStat([]byte(bad)); err == nil {
			t.Errorf("parseCPUStat(%q) succeeded", bad)
		}
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{5}, 5},
		{[]float64{9, 1, 5}, 5},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %g, want %g", tc.in, got, tc.want)
		}
	}
}

func TestThroughput(t *testing.T) {
	gb := int64(1e9)
	tp := Throughput{
		Streams: 1,
		// Pair ratios 0.80, 1.20, 0.90; the medians are 10 and 9 Gbit/s.
		Underlay:  []Run{{BPS: 10e9, Bytes: gb, CPU: time.Second}, {BPS: 5e9, Bytes: gb, CPU: time.Second}, {BPS: 20e9, Bytes: 2 * gb, CPU: time.Second}},
		Container: []Run{{BPS: 8e9, Bytes: gb, CPU: 2 * time.Second}, {BPS: 6e9, Bytes: gb, CPU: 2 * time.Second}, {BPS: 18e9, Bytes: 2 * gb, CPU: 4 * time.Second}},
	}
	ul, ct := tp.Medians()
	lo, hi := tp.Spread()
	cul, cct := tp.CPUPerGB()
	if ul != 10e9 || ct != 8e9 || tp.Ratio() != 0.8 {
		t.Errorf("medians %g %g ratio %g; want 10e9 8e9 0.8", ul, ct, tp.Ratio())
	}
	if math.Abs(lo-0.8) > 1e-9 || math.Abs(hi-1.2) > 1e-9 {
		t.Errorf("spread %g..%g; want 0.8..1.2", lo, hi)
	}
	if cul != 0.75 || cct != 2 {
		t.Errorf("cpu/GB %g %g; want 0.75 2", cul, cct)
	}
	if lo, hi := (Throughput{}).Spread(); lo != 0 || hi != 0 || (Throughput{}).Ratio() != 0 {
		t.Errorf("empty throughput: spread %g..%g ratio %g", lo, hi, (Throughput{}).Ratio())
	}
}

func TestWriteBench(t *testing.T) {
	o := BenchOptions{Duration: time.Second, Pings: 10, Repeat: 2}
	runs := func(bps ...float64) []Run {
		rs := make([]Run, len(bps))
		for i, b := range bps {
			rs[i] = Run{BPS: b, Bytes: int64(b / 8), CPU: time.Second}
		}
		return rs
	}
	rs := sortedResults(o.withDefaults(), []BenchResult{
		{Backend: "host-gw", Profile: "wire",
			TCP1:        Throughput{Streams: 1, Underlay: runs(4e9, 4e9), Container: runs(3.6e9, 4e9)},
			TCP4:        Throughput{Streams: 4, Underlay: runs(5e9, 5e9), Container: runs(5e9, 5e9)},
			UnderlayP50: 40 * time.Microsecond, ContainerP50: 50 * time.Microsecond, UnderlayP99: 100 * time.Microsecond, ContainerP99: 100 * time.Microsecond,
			ContainerLost: 3, Idle: 0.25},
		{Backend: "vxlan", Profile: "veth",
			TCP1: Throughput{Streams: 1, Underlay: runs(10e9, 10e9), Container: runs(8.5e9, 8.5e9)},
			TCP4: Throughput{Streams: 4, Underlay: runs(10e9, 10e9), Container: runs(8e9, 9e9)}},
	})
	if rs[0].Profile != "veth" {
		t.Fatalf("results not sorted by profile: %+v", rs)
	}
	var b bytes.Buffer
	if err := WriteBench(&b, o, rs); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	// Compare with single spaces: the column widths are tabwriter's business.
	flat := strings.Join(strings.Fields(out), " ")
	for _, want := range []string{
		"median of 2 runs of 1s",
		// host-gw 1 stream: medians 4.00 and 3.80 Gbit/s, pairs 0.90 and 1.00;
		// 1 CPU second per run of 4e9/8 bytes = 2 s/GB.
		"wire host-gw TCP 1 stream 4.00 Gbit/s 3.80 Gbit/s 0.95 0.90..1.00 2.00s 2.11s",
		"veth vxlan TCP 4 streams 10.00 Gbit/s 8.50 Gbit/s 0.85 0.80..0.90",
		"ping p50 40µs 50µs 1.25x",
		"pings lost 0 3",
		"WARNING: the machine was busy before measuring (wire/host-gw 25% of all CPUs",
	} {
		if !strings.Contains(flat, want) {
			t.Errorf("bench table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "veth/vxlan") {
		t.Errorf("warned about an idle machine:\n%s", out)
	}
	if strings.Index(out, "veth") > strings.Index(out, "wire") {
		t.Errorf("veth rows not first:\n%s", out)
	}
	if strings.Contains(out, "udp against vxlan") {
		t.Errorf("udp comparison without udp results:\n%s", out)
	}
}

// TestCompareBackends: udp is set against vxlan of the same profile, with
// the ratio of the container medians, the ratio of the RATIO columns and
// the CPU cost, and WriteBench prints it under the table.
func TestCompareBackends(t *testing.T) {
	runs := func(cpu time.Duration, bps ...float64) []Run {
		rs := make([]Run, len(bps))
		for i, b := range bps {
			rs[i] = Run{BPS: b, Bytes: 1e9, CPU: cpu}
		}
		return rs
	}
	res := []BenchResult{
		{Backend: "vxlan", Profile: "wire",
			TCP1: Throughput{Streams: 1, Underlay: runs(time.Second, 10e9), Container: runs(2*time.Second, 6e9)},
			TCP4: Throughput{Streams: 4, Underlay: runs(time.Second, 10e9), Container: runs(2*time.Second, 8e9)}},
		{Backend: "udp", Profile: "veth", // no vxlan on veth: not compared
			TCP1: Throughput{Streams: 1, Underlay: runs(time.Second, 10e9), Container: runs(time.Second, 1e9)}},
		{Backend: "udp", Profile: "wire",
			TCP1: Throughput{Streams: 1, Underlay: runs(time.Second, 8e9), Container: runs(3*time.Second, 3.6e9)},
			TCP4: Throughput{Streams: 4, Underlay: runs(time.Second, 10e9), Container: runs(4*time.Second, 4e9)}},
	}
	cs := CompareBackends(res, "udp", "vxlan")
	if len(cs) != 2 {
		t.Fatalf("%d comparisons, want 2 (wire, 1 and 4 streams): %+v", len(cs), cs)
	}
	c := cs[0]
	// 1 stream: 3.6 / 6 = 0.60; ratios 0.45 / 0.60 = 0.75; CPU 3 s/GB vs 2.
	if c.Profile != "wire" || c.Streams != 1 || math.Abs(c.Ratio-0.6) > 1e-9 || math.Abs(c.NormRatio-0.75) > 1e-9 || c.ACPU != 3 || c.BCPU != 2 {
		t.Errorf("1 stream: %+v", c)
	}
	if cs[1].Streams != 4 || math.Abs(cs[1].Ratio-0.5) > 1e-9 {
		t.Errorf("4 streams: %+v", cs[1])
	}
	var b bytes.Buffer
	if err := WriteBench(&b, BenchOptions{}, res); err != nil {
		t.Fatal(err)
	}
	flat := strings.Join(strings.Fields(b.String()), " ")
	for _, want := range []string{
		"udp against vxlan",
		"PROFILE MEASURE VXLAN UDP UDP/VXLAN NORMALISED CPU/GB VXLAN CPU/GB UDP CPU RATIO",
		"wire TCP 1 stream 6.00 Gbit/s 3.60 Gbit/s 0.60 0.75 2.00s 3.00s 1.50x",
		"wire TCP 4 streams 8.00 Gbit/s 4.00 Gbit/s 0.50",
	} {
		if !strings.Contains(flat, want) {
			t.Errorf("bench output lacks %q:\n%s", want, b.String())
		}
	}
}

// testLogger sends the lab's logs to t.Log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func TestAgentProcs(t *testing.T) {
	for _, tc := range []struct{ cpus, nodes, want int }{
		{2, 2, 1}, {2, 3, 1}, {2, 1, 2}, {8, 2, 4}, {8, 3, 2}, {1, 10, 1}, {4, 0, 4},
	} {
		if got := agentProcs(tc.cpus, tc.nodes); got != tc.want {
			t.Errorf("agentProcs(%d cpus, %d nodes) = %d, want %d", tc.cpus, tc.nodes, got, tc.want)
		}
	}
}
