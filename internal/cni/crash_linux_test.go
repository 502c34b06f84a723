package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/tulle-net/tulle/internal/ipam"
	"github.com/tulle-net/tulle/internal/netns"
	"github.com/tulle-net/tulle/internal/netns/nstest"
	"github.com/tulle-net/tulle/internal/subnetfile"
)

// Crash safety (issue 3 item 9): the real plugin binary is SIGKILLed at
// random points of about half its ADDs and DELs; afterwards the DELs a
// runtime would repeat and one GC must leave exactly the attachments the
// "runtime" still holds, and nothing else.
//
// Every namespace is tck-<hex> (nstest / internal/netns), removed when the
// test ends, pass or fail; the bridge and the host veths live in the node
// namespace, never in the root one:
//
//	node tck-<hex> (plugin's host side)        containers tck-<hex>, one per cycle
//	+---------------------------------+        +-----------------+
//	| tckbr0 10.250.0.1/22            |        | eth0 10.250.x.y |
//	|   +-- tl<hex> (veth) -----------+--------+-- (peer)        |
//	| table inet tulle: port rules    |        +-----------------+
//	+---------------------------------+
//
// Each cycle, as a runtime would:
//
//	ADD (killed in ~1/2) --ok--> live --DEL (killed in ~1/2)--ok--> gone, netns removed
//	   |killed                           |killed: still "believed added"; the runtime
//	   |                                 |repeats the DEL every crashRetryEvery cycles
//	   |                                 |and after the loop (those DELs are not killed)
//	   +-- 1/2: retry ADD unkilled (must succeed) --> live
//	   +-- 1/2: abandoned (the runtime forgot it): GC's job; half of these
//	            keep their netns (the host veth stays), half lose it
//
// The /22 pool holds more than the cycles could ever leak, so ADD never
// runs out of addresses before GC.
//
// GC's one-minute grace period (gcGrace) is passed by running GC in-process
// with Options.Now set past it: the plugin's clock is injected, the binary
// always uses time.Now.

// crashCycles overrides the cycle count of TestCrashSafety (default 1000;
// 100 under -short), e.g. -crash.cycles=30 for a quick look.
var crashCycles = flag.Int("crash.cycles", 0, "TestCrashSafety: ADD/DEL cycles (0: 1000, or 100 with -short)")

const (
	crashNetwork = "tck-net"
	crashBridge  = "tckbr0"
	// crashKept attachments are added before the loop and never deleted:
	// GC must keep them and CHECK must still pass.
	crashKept = 3
	// crashRetryEvery is how many cycles pass before the "runtime" repeats
	// its failed (killed) DELs. Repeating them promptly keeps hundreds of
	// half-deleted containers from piling up in the kernel, which made
	// every later cycle slower.
	crashRetryEvery = 25
)

// crashNode is a node namespace with a subnet file, an IPAM data dir and the
// plugin binary.
type crashNode struct {
	name       string
	h          netns.NsHandle
	ns         ns.NetNS
	nl         *netlink.Handle
	bin        string
	subnetFile string
	dataDir    string
}

func newCrashNode(t testing.TB, prefix string, info subnetfile.Info, bin string) *crashNode {
	t.Helper()
	name, h := nstest.New(t, prefix)
	n, err := ns.GetNS(netns.Path(name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	dir := t.TempDir()
	c := &crashNode{
		name: name, h: h, ns: n, nl: nstest.Handle(t, h), bin: bin,
		subnetFile: filepath.Join(dir, "subnet.json"),
		dataDir:    filepath.Join(dir, "ipam"),
	}
	if err := subnetfile.Write(c.subnetFile, info); err != nil {
		t.Fatal(err)
	}
	return c
}

// conf is a 1.1.0 network config, with published ports when pms is not
// empty (as a runtime renders a conflist with the portMappings capability).
func (c *crashNode) conf(pms []PortMapping) []byte {
	m := map[string]any{
		"cniVersion": "1.1.0",
		"name":       crashNetwork,
		"type":       "tulle",
		"subnetFile": c.subnetFile,
		"dataDir":    c.dataDir,
	}
	if len(pms) > 0 {
		m["capabilities"] = map[string]bool{"portMappings": true}
		m["runtimeConfig"] = map[string]any{"portMappings": pms}
	}
	b, _ := json.Marshal(m)
	return b
}

// plugRun is one plugin execution.
type plugRun struct {
	stdout, stderr []byte
	exitCode       int
	// killed is true when our SIGKILL ended the process (it had not exited
	// by itself before the signal).
	killed bool
	took   time.Duration
}

func (r plugRun) String() string {
	return fmt.Sprintf("exit %d killed=%t stdout=%q stderr=%q", r.exitCode, r.killed, r.stdout, r.stderr)
}

// exec runs the plugin binary as a runtime does, its process in the node
// namespace. With killAfter >= 0 it is SIGKILLed that long after it started
// (if it is still running).
func (c *crashNode) exec(t testing.TB, command, id, netnsPath string, stdin []byte, killAfter time.Duration) plugRun {
	t.Helper()
	r, err := c.run(command, id, netnsPath, stdin, killAfter)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// run is exec for any goroutine: it returns the error exec fails t with.
func (c *crashNode) run(command, id, netnsPath string, stdin []byte, killAfter time.Duration) (plugRun, error) {
	cmd := exec.Command(c.bin)
	cmd.Env = []string{
		"CNI_COMMAND=" + command,
		"CNI_CONTAINERID=" + id,
		"CNI_NETNS=" + netnsPath,
		"CNI_IFNAME=eth0",
		"CNI_PATH=" + filepath.Dir(c.bin),
	}
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := netns.StartIn(c.h, cmd); err != nil {
		return plugRun{}, err
	}
	if killAfter >= 0 {
		time.Sleep(killAfter)
		// The process is not reaped before Wait, so Kill always signals
		// it; one that has already exited ignores the signal, and Wait
		// then reports its own exit status.
		_ = cmd.Process.Kill()
	}
	err := cmd.Wait()
	r := plugRun{stdout: stdout.Bytes(), stderr: stderr.Bytes(), took: time.Since(start)}
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		r.exitCode = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			r.killed = true
		}
	} else if err != nil {
		return r, fmt.Errorf("exec %s %s: %w", c.bin, command, err)
	}
	return r, nil
}

// trace is what an attachment has left on the node.
type trace struct {
	addr  bool // an IPAM record
	veth  bool // the host veth
	rules int  // tagged nft rules
}

func (tr trace) none() bool { return !tr.addr && !tr.veth && tr.rules == 0 }

// state reads everything the plugin may have left on the node: IPAM
// records (through the store), links (netlink) and tagged nft rules (the
// nft CLI, the oracle).
type nodeState struct {
	records []ipam.Record
	// files are the IPAM directory's entries other than address files.
	files []string
	// veths are the names of the veths in the node namespace.
	veths []string
	// onBridge are the names of the links whose master is the bridge.
	onBridge []string
	// rules are the tags of the plugin's nft rules.
	rules []portTag
}

func (c *crashNode) state(t testing.TB, bridge string) nodeState {
	t.Helper()
	var st nodeState
	store, err := ipam.Open(c.dataDir, crashNetwork)
	if err != nil {
		t.Fatal(err)
	}
	if st.records, err = store.List(); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(store.Dir())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if _, err := netip.ParseAddr(e.Name()); err != nil {
			st.files = append(st.files, e.Name())
		}
	}
	links, err := c.nl.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	brIndex := -1
	for _, l := range links {
		if l.Attrs().Name == bridge {
			brIndex = l.Attrs().Index
		}
	}
	for _, l := range links {
		if l.Type() == "veth" {
			st.veths = append(st.veths, l.Attrs().Name)
		}
		if brIndex > 0 && l.Attrs().MasterIndex == brIndex {
			st.onBridge = append(st.onBridge, l.Attrs().Name)
		}
	}
	st.rules = c.nftRules(t)
	return st
}

// nftRules lists the plugin's tagged rules with the nft CLI: nft -j list
// table inet tulle in the node namespace. No table means no rules.
func (c *crashNode) nftRules(t testing.TB) []portTag {
	t.Helper()
	cmd := exec.Command("nft", "-j", "list", "table", "inet", nftTableName)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := netns.StartIn(c.h, cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		if strings.Contains(stderr.String(), "No such file or directory") {
			return nil
		}
		t.Fatalf("nft list table inet %s: %v: %s", nftTableName, err, stderr.String())
	}
	var doc struct {
		Nftables []struct {
			Rule *struct {
				Chain   string `json:"chain"`
				Comment string `json:"comment"`
			} `json:"rule"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out.Bytes(), &doc); err != nil {
		t.Fatalf("decode nft -j output: %v", err)
	}
	var tags []portTag
	for _, o := range doc.Nftables {
		if o.Rule == nil {
			continue
		}
		if tag, ok := parseTag(o.Rule.Comment); ok {
			tags = append(tags, tag)
		}
	}
	return tags
}

// trace is what att has left on the node, read in-process (the final
// check uses state and the nft CLI).
func (c *crashNode) trace(t testing.TB, att ipam.Attachment) trace {
	t.Helper()
	var tr trace
	store, err := ipam.Open(c.dataDir, crashNetwork)
	if err != nil {
		t.Fatal(err)
	}
	held, err := store.Lookup(att)
	if err != nil {
		t.Fatal(err)
	}
	tr.addr = len(held) > 0
	l, err := linkByName(c.nl, HostVethName(att.ContainerID, att.IfName))
	if err != nil {
		t.Fatal(err)
	}
	tr.veth = l != nil
	host, err := openNS(c.ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer host.close()
	pc, err := openPorts(host, c.dataDir)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.close()
	rules, err := pc.list()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		if r.tag.ownedBy(crashNetwork, att) {
			tr.rules++
		}
	}
	return tr
}

// crashContainer is the "runtime's" view of one container.
type crashContainer struct {
	id     string
	nsName string // "" once removed
	ports  []PortMapping
	result []byte // ADD's result, for CHECK
}

// crashStats counts what the kills did.
type crashStats struct {
	adds int
	// addKillTries and delKillTries are the runs a kill was aimed at;
	// addKills and delKills the ones it ended (the rest had exited).
	addKillTries, delKillTries, addKills, delKills int
	// addKilledPartial: killed ADDs that had made some of the allocation,
	// the host veth and the port rules, not all; addKilledClean: killed
	// before making any; addKilledDone: all three made (the container
	// interface may still have been in progress), but no result printed.
	addKilledPartial, addKilledClean, addKilledDone int
	// delKilledPartial: killed DELs that had removed something but not
	// everything; delKilledClean: nothing removed yet; delKilledDone:
	// everything removed.
	delKilledPartial, delKilledClean, delKilledDone int
	retries, abandoned, retryDels, finalDels        int
	addTimes, delTimes                              []time.Duration
}

func TestCrashSafety(t *testing.T) {
	requireRoot(t)
	cycles := 1000
	if testing.Short() {
		cycles = 100
	}
	if *crashCycles > 0 {
		cycles = *crashCycles
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("cycles %d, seed %d", cycles, seed)
	rng := rand.New(rand.NewPCG(seed, seed>>1|1))

	info := subnetfile.Info{
		Network: netip.MustParsePrefix("10.250.0.0/16"),
		Subnet:  netip.MustParsePrefix("10.250.0.0/22"),
		Gateway: netip.MustParseAddr("10.250.0.1"),
		MTU:     1400,
		Bridge:  crashBridge,
		Node:    "tck-node",
		Backend: "vxlan",
	}
	n := newCrashNode(t, "tck", info, buildPlugin(t))

	// Container namespaces outlive single cycles (killed DELs, abandoned
	// ADDs), so they are tracked here and removed at the end, pass or fail.
	var live []*crashContainer
	var all []*crashContainer
	t.Cleanup(func() {
		for _, c := range all {
			c.removeNS(t)
		}
	})
	newContainer := func(id string, ports []PortMapping) *crashContainer {
		c := &crashContainer{id: id, ports: ports}
		for range 5 {
			name := "tck-" + randomID(rng, 8)
			h, err := netns.Create(name)
			if errors.Is(err, os.ErrExist) {
				continue // not ours: never remove it
			}
			if err != nil {
				t.Fatal(err)
			}
			h.Close()
			c.nsName = name
			all = append(all, c)
			return c
		}
		t.Fatal("no free tck-<hex> netns name in 5 tries")
		return nil
	}
	att := func(c *crashContainer) ipam.Attachment { return ipam.Attachment{ContainerID: c.id, IfName: "eth0"} }

	var st crashStats
	add := func(c *crashContainer, killAfter time.Duration) plugRun {
		st.adds++
		r := n.exec(t, "ADD", c.id, netns.Path(c.nsName), n.conf(c.ports), killAfter)
		if !r.killed && r.exitCode == 0 {
			c.result = r.stdout
			if killAfter < 0 {
				st.addTimes = append(st.addTimes, r.took)
			}
		}
		return r
	}
	del := func(c *crashContainer, killAfter time.Duration) plugRun {
		r := n.exec(t, "DEL", c.id, nsPathOrEmpty(c), n.conf(c.ports), killAfter)
		if !r.killed && r.exitCode == 0 && killAfter < 0 {
			st.delTimes = append(st.delTimes, r.took)
		}
		return r
	}
	// startup is how long the binary takes to answer VERSION: process
	// start-up and skel, before any of a verb's own work.
	var startups []time.Duration
	for range 5 {
		r := n.exec(t, "VERSION", "", "", []byte(`{"cniVersion":"1.1.0"}`), -1)
		if r.exitCode != 0 {
			t.Fatalf("VERSION: %s", r)
		}
		startups = append(startups, r.took)
	}
	startup := slices.Min(startups) // the least disturbed by other load
	// killDelay is mostly uniform over [startup, p75 of the unkilled runs
	// so far], where the verb does its work (at least the later half), and
	// otherwise over [0, p75], so that start-up and config parsing are hit
	// too.
	killDelay := func(times []time.Duration) time.Duration {
		hi := 3 * startup
		if len(times) >= 5 {
			s := slices.Clone(times)
			slices.Sort(s)
			hi = s[len(s)*3/4]
		}
		lo := min(startup, hi/2)
		if rng.IntN(4) == 0 {
			lo = 0
		}
		return lo + time.Duration(rng.Int64N(int64(hi-lo)+1))
	}

	// The kept attachments, two of them with published ports.
	var kept []*crashContainer
	for i := range crashKept {
		var ports []PortMapping
		if i > 0 {
			ports = []PortMapping{{HostPort: 30000 + i, ContainerPort: 80, Protocol: "tcp"}}
		}
		c := newContainer(fmt.Sprintf("tck-kept-%d", i), ports)
		if r := add(c, -1); r.exitCode != 0 {
			t.Fatalf("ADD %s: %s", c.id, r)
		}
		kept = append(kept, c)
	}

	start := time.Now()
	for i := range cycles {
		var ports []PortMapping
		switch i % 4 {
		case 1:
			ports = []PortMapping{{HostPort: 10000 + i, ContainerPort: 80, Protocol: "tcp"}}
		case 3:
			ports = []PortMapping{
				{HostPort: 10000 + i, ContainerPort: 80, Protocol: "tcp"},
				{HostPort: 10000 + i, ContainerPort: 53, Protocol: "udp", HostIP: "192.0.2.1"},
			}
		}
		c := newContainer(fmt.Sprintf("tck-%04d-%s", i, randomID(rng, 6)), ports)
		a := att(c)

		// ADD, killed in about half the cycles.
		killAdd := rng.IntN(2) == 0
		if killAdd {
			st.addKillTries++
		}
		r := add(c, ifElse(killAdd, killDelay(st.addTimes), -1))
		switch {
		case r.killed:
			st.addKills++
			tr := n.trace(t, a)
			switch {
			case tr.none():
				st.addKilledClean++
			case tr.addr && tr.veth && tr.rules == 3*len(ports):
				st.addKilledDone++
			default:
				st.addKilledPartial++
			}
			if rng.IntN(2) == 0 {
				// The runtime retries the ADD, which must pick up
				// whatever the killed one left.
				st.retries++
				if r := add(c, -1); r.exitCode != 0 {
					t.Fatalf("cycle %d: retried ADD %s after a kill (%+v): %s", i, c.id, tr, r)
				}
			} else {
				// The runtime forgot the container; half the time the
				// container (and its netns) went away too.
				st.abandoned++
				if rng.IntN(2) == 0 {
					c.removeNS(t)
				}
				continue
			}
		case r.exitCode != 0:
			t.Fatalf("cycle %d: ADD %s: %s", i, c.id, r)
		}
		live = append(live, c)

		// DEL, killed in about half the cycles.
		killDel := rng.IntN(2) == 0
		if killDel {
			st.delKillTries++
		}
		var before trace
		if killDel {
			before = n.trace(t, a)
		}
		r = del(c, ifElse(killDel, killDelay(st.delTimes), -1))
		switch {
		case r.killed:
			st.delKills++
			tr := n.trace(t, a)
			switch {
			case tr == before:
				st.delKilledClean++
			case tr.none():
				st.delKilledDone++
			default:
				st.delKilledPartial++
			}
			// Still "believed added": DELed again later.
		case r.exitCode != 0:
			t.Fatalf("cycle %d: DEL %s: %s", i, c.id, r)
		default:
			live = slices.DeleteFunc(live, func(x *crashContainer) bool { return x == c })
			c.removeNS(t)
		}
		if (i+1)%crashRetryEvery == 0 && i+1 < cycles {
			for _, c := range live {
				st.retryDels++
				if r := del(c, -1); r.exitCode != 0 {
					t.Fatalf("cycle %d: repeated DEL %s after a kill: %s", i, c.id, r)
				}
				c.removeNS(t)
			}
			live = live[:0]
		}
	}
	loop := time.Since(start)

	// The runtime repeats the DEL of every container it still believes
	// added.
	for _, c := range live {
		st.finalDels++
		if r := del(c, -1); r.exitCode != 0 {
			t.Fatalf("final DEL %s: %s", c.id, r)
		}
	}
	before := n.state(t, crashBridge)

	// One GC, with the kept attachments as the valid ones, past the grace
	// period.
	valid := []map[string]string{}
	for _, c := range kept {
		valid = append(valid, map[string]string{"containerID": c.id, "ifname": "eth0"})
	}
	gcConf := map[string]any{}
	mustUnmarshal(t, n.conf(nil), &gcConf)
	gcConf["cni.dev/valid-attachments"] = valid
	later := New(Options{HostNSPath: n.ns.Path(), Now: func() time.Time { return time.Now().Add(gcGrace + time.Minute) }})
	if err := later.GC(args("", "", "", mustMarshal(t, gcConf))); err != nil {
		t.Fatalf("GC: %v", err)
	}
	after := n.state(t, crashBridge)

	t.Logf("%d cycles in %v (%d ADD runs, %d unkilled ADDs p50 %v, %d unkilled DELs p50 %v, start-up %v)",
		cycles, loop.Round(time.Millisecond), st.adds, len(st.addTimes), median(st.addTimes).Round(time.Microsecond),
		len(st.delTimes), median(st.delTimes).Round(time.Microsecond), startup.Round(time.Microsecond))
	t.Logf("ADD kills %d of %d tried: %d mid-operation (made something, no result), %d before any change, %d after the last host-side change; then %d retried, %d abandoned",
		st.addKills, st.addKillTries, st.addKilledPartial, st.addKilledClean, st.addKilledDone, st.retries, st.abandoned)
	t.Logf("DEL kills %d of %d tried: %d mid-operation (removed some, not all), %d before any removal, %d after the last removal; repeated: %d during the loop, %d after it",
		st.delKills, st.delKillTries, st.delKilledPartial, st.delKilledClean, st.delKilledDone, st.retryDels, st.finalDels)
	for _, x := range []struct {
		when string
		st   nodeState
	}{{"before GC", before}, {"after GC", after}} {
		temps := 0
		for _, f := range x.st.files {
			if strings.HasPrefix(f, ".tmp-") {
				temps++
			}
		}
		t.Logf("%-9s: %d allocations, %d host veths, %d port rules, %d files besides addresses (%d of them .tmp-*)",
			x.when, len(x.st.records), len(x.st.veths), len(x.st.rules), len(x.st.files), temps)
	}
	if cycles >= 100 && (st.addKilledPartial == 0 || st.delKilledPartial == 0) {
		t.Errorf("no kill landed mid-operation (ADD %d, DEL %d): the kill delays miss the plugin's work", st.addKilledPartial, st.delKilledPartial)
	}

	// Leaks: only the kept attachments' allocations, veths and rules remain.
	var wantAtts []ipam.Attachment
	var wantVeths []string
	wantRules := 0
	for _, c := range kept {
		wantAtts = append(wantAtts, att(c))
		wantVeths = append(wantVeths, HostVethName(c.id, "eth0"))
		for _, pm := range c.ports {
			m, err := validatePortMapping(pm)
			if err != nil {
				t.Fatal(err)
			}
			for _, rs := range portRules(portTag{m: m}, netip.MustParseAddr("10.0.0.1"), netip.MustParsePrefix("10.0.0.0/24")) {
				wantRules += len(rs)
			}
		}
	}
	slices.Sort(wantVeths)
	var gotAtts []ipam.Attachment
	for _, r := range after.records {
		gotAtts = append(gotAtts, r.Attachment)
	}
	cmpAtt := func(a, b ipam.Attachment) int { return strings.Compare(a.String(), b.String()) }
	slices.SortFunc(gotAtts, cmpAtt)
	slices.SortFunc(wantAtts, cmpAtt)
	if !slices.Equal(gotAtts, wantAtts) {
		t.Errorf("leaked addresses: IPAM holds %v, want only the kept %v", after.records, wantAtts)
	}
	for _, f := range after.files {
		if f != lockFileName && f != lastReservedFileName {
			t.Errorf("leaked file in the IPAM directory: %s", f)
		}
	}
	slices.Sort(after.veths)
	if !slices.Equal(after.veths, wantVeths) {
		t.Errorf("leaked host veths: node has %v, want only the kept %v", after.veths, wantVeths)
	}
	slices.Sort(after.onBridge)
	if !slices.Equal(after.onBridge, wantVeths) {
		t.Errorf("bridge %s has ports %v, want only the kept %v", crashBridge, after.onBridge, wantVeths)
	}
	keptIDs := map[string]bool{}
	for _, c := range kept {
		keptIDs[c.id] = true
	}
	for _, r := range after.rules {
		if !keptIDs[r.att.ContainerID] {
			t.Errorf("leaked nft port rule %q", r)
		}
	}
	if len(after.rules) != wantRules {
		t.Errorf("%d port rules after GC, want the kept ones' %d", len(after.rules), wantRules)
	}

	// The kept attachments still work.
	for _, c := range kept {
		var conf map[string]any
		mustUnmarshal(t, n.conf(c.ports), &conf)
		var prev map[string]any
		mustUnmarshal(t, c.result, &prev)
		conf["prevResult"] = prev
		if r := n.exec(t, "CHECK", c.id, netns.Path(c.nsName), mustMarshal(t, conf), -1); r.exitCode != 0 {
			t.Errorf("CHECK of kept %s after GC: %s", c.id, r)
		}
	}
	for _, c := range kept {
		if r := del(c, -1); r.exitCode != 0 {
			t.Errorf("DEL of kept %s: %s", c.id, r)
		}
	}
}

// Names of the IPAM directory's bookkeeping files (internal/ipam's
// lockFile and lastReservedFile).
const (
	lockFileName         = "lock"
	lastReservedFileName = "last_reserved"
)

func (c *crashContainer) removeNS(t *testing.T) {
	if c.nsName == "" {
		return
	}
	if err := netns.Delete(c.nsName); err != nil {
		t.Errorf("remove netns %s: %v", c.nsName, err)
	}
	c.nsName = ""
}

// nsPathOrEmpty is the CNI_NETNS a runtime passes on DEL: empty once the
// container's namespace is gone.
func nsPathOrEmpty(c *crashContainer) string {
	if c.nsName == "" {
		return ""
	}
	return netns.Path(c.nsName)
}

func randomID(rng *rand.Rand, n int) string {
	const hexDigits = "0123456789abcdef"
	b := make([]byte, n)
	for i := range b {
		b[i] = hexDigits[rng.IntN(16)]
	}
	return string(b)
}

func ifElse[T any](cond bool, a, b T) T {
	if cond {
		return a
	}
	return b
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
