package runner

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tulle-net/tulle/internal/netns"
)

// NetnsEntry is one network namespace holding containers (`tulle netns
// ls`, like the seed's docker_netns.sh).
type NetnsEntry struct {
	Inode      uint64   // the namespace's identity (ls -l /proc/PID/ns/net: net:[inode])
	Path       string   // bind mount, "" for the node's own namespace
	Containers []string // containers in it: owner first, then joiners
	Status     string   // of the owner
	IP         string
}

// hostNetns is what `netns ls` calls the namespace tulle runs in.
const hostNetns = "(host)"

// Netns lists the network namespace of every container, grouped: a
// container:NAME joiner appears with the container it joined; host-network
// containers share the node's namespace.
func (r *Runner) Netns(ctx context.Context) ([]NetnsEntry, error) {
	states, err := r.List(ctx)
	if err != nil {
		return nil, err
	}
	byPath := map[string]*NetnsEntry{}
	var out []*NetnsEntry
	for _, st := range states {
		e, ok := byPath[st.Netns]
		if !ok {
			e = &NetnsEntry{Path: st.Netns}
			if ino, err := inode(st.Netns); err == nil {
				e.Inode = ino
			}
			byPath[st.Netns] = e
			out = append(out, e)
		}
		if st.NetworkOf == "" && st.Netns != "" {
			e.Containers = append([]string{st.Name}, e.Containers...)
			e.Status, e.IP = st.StatusText(), st.IP
		} else {
			e.Containers = append(e.Containers, st.Name)
			if st.Netns == "" {
				e.Status = "-"
			}
		}
	}
	res := make([]NetnsEntry, 0, len(out))
	for _, e := range out {
		res = append(res, *e)
	}
	sort.SliceStable(res, func(i, j int) bool { return res[i].Containers[0] < res[j].Containers[0] })
	return res, nil
}

// inode is the namespace inode of a netns path; "" is this process's.
func inode(path string) (uint64, error) {
	if path == "" {
		path = "/proc/self/ns/net"
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// NetnsExec runs a host program inside a container's network namespace
// (its interfaces, routes and sockets; the host's filesystem and tools),
// like `ip netns exec`, and waits for it.
func (r *Runner) NetnsExec(ctx context.Context, name string, argv []string, stdio Stdio) error {
	if len(argv) == 0 {
		return fmt.Errorf("%w: no command given: usage: tulle netns exec NAME -- CMD [ARGS...]", ErrInvalid)
	}
	st, err := r.Inspect(ctx, name)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio.In, stdio.Out, stdio.Err
	if st.Netns == "" {
		// A host-network container: its namespace is ours.
		return exitError(cmd.Run(), fmt.Sprintf("run %s in %s's netns", argv[0], name))
	}
	h, err := vnetns.GetFromPath(st.Netns)
	if err != nil {
		return fmt.Errorf("open netns of %s (%s): %w", name, st.Netns, err)
	}
	defer h.Close()
	if err := netns.StartIn(h, cmd); err != nil {
		return fmt.Errorf("run %s in %s's netns: %w", argv[0], name, err)
	}
	return exitError(cmd.Wait(), fmt.Sprintf("run %s in %s's netns", argv[0], name))
}

// Link is one interface as `tulle links` shows it.
type Link struct {
	Netns   string // hostNetns or the container names of the namespace
	Index   int
	Name    string
	Type    string
	Peer    string // veth: "<netns>:<index> <name>" of the other end, when found
	Master  string // bridge port: the bridge's name
	Address string // IPv4 CIDRs, comma-separated
}

// nsRef is one namespace to inspect.
type nsRef struct {
	label string
	h     vnetns.NsHandle
	ino   uint64
}

// Links lists the interfaces of this namespace and of every container
// namespace, resolving each veth's peer across namespaces (IFLA_LINK plus
// IFLA_LINK_NETNSID), like the seed's find_links.sh. With ifindex > 0 it
// returns only the interfaces with that index (an index is per namespace,
// so there may be several: `cat /sys/class/net/eth0/iflink` in a container
// gives its peer's index on the node).
func (r *Runner) Links(ctx context.Context, ifindex int) ([]Link, error) {
	ents, err := r.Netns(ctx)
	if err != nil {
		return nil, err
	}
	self, err := vnetns.Get()
	if err != nil {
		return nil, fmt.Errorf("open own netns: %w", err)
	}
	refs := []nsRef{{label: hostNetns, h: self}}
	refs[0].ino, _ = inode("")
	defer func() {
		for _, ref := range refs {
			ref.h.Close()
		}
	}()
	for _, e := range ents {
		if e.Path == "" || e.Inode == refs[0].ino {
			continue
		}
		h, err := vnetns.GetFromPath(e.Path)
		if err != nil {
			continue // removed meanwhile
		}
		refs = append(refs, nsRef{label: strings.Join(e.Containers, ","), h: h, ino: e.Inode})
	}
	type linkIn struct {
		ns int
		l  netlink.Link
	}
	var all []linkIn
	handles := make([]*netlink.Handle, len(refs))
	for i, ref := range refs {
		nl, err := netlink.NewHandleAt(ref.h)
		if err != nil {
			return nil, fmt.Errorf("netlink in netns %s: %w", ref.label, err)
		}
		defer nl.Close()
		handles[i] = nl
		links, err := linkList(nl)
		if err != nil {
			return nil, fmt.Errorf("list links in netns %s: %w", ref.label, err)
		}
		for _, l := range links {
			all = append(all, linkIn{i, l})
		}
	}
	// nsids[i][j] is namespace j's id as namespace i sees it (ip netns
	// list-id); the kernel assigns one when a veth spans the two.
	nsids := make([]map[int]int, len(refs))
	for i := range refs {
		nsids[i] = map[int]int{}
		for j, ref := range refs {
			if i == j {
				continue
			}
			if id, err := handles[i].GetNetNsIdByFd(int(ref.h)); err == nil && id >= 0 {
				nsids[i][id] = j
			}
		}
	}
	find := func(ns, idx int) *linkIn {
		for k := range all {
			if all[k].ns == ns && all[k].l.Attrs().Index == idx {
				return &all[k]
			}
		}
		return nil
	}
	var out []Link
	for _, li := range all {
		a := li.l.Attrs()
		if ifindex > 0 && a.Index != ifindex {
			continue
		}
		l := Link{Netns: refs[li.ns].label, Index: a.Index, Name: a.Name, Type: li.l.Type()}
		if a.MasterIndex > 0 {
			if m := find(li.ns, a.MasterIndex); m != nil {
				l.Master = m.l.Attrs().Name
			}
		}
		if li.l.Type() == "veth" && a.ParentIndex > 0 {
			peerNS := li.ns
			if a.NetNsID >= 0 {
				j, ok := nsids[li.ns][a.NetNsID]
				if !ok {
					l.Peer = fmt.Sprintf("nsid %d:%d (a namespace without containers)", a.NetNsID, a.ParentIndex)
					out = append(out, l)
					continue
				}
				peerNS = j
			}
			if p := find(peerNS, a.ParentIndex); p != nil {
				l.Peer = fmt.Sprintf("%s:%d %s", refs[peerNS].label, a.ParentIndex, p.l.Attrs().Name)
			}
		}
		if addrs, err := handles[li.ns].AddrList(li.l, netlink.FAMILY_V4); err == nil {
			var ss []string
			for _, ad := range addrs {
				ss = append(ss, ad.IPNet.String())
			}
			l.Address = strings.Join(ss, ",")
		}
		out = append(out, l)
	}
	if ifindex > 0 && len(out) == 0 {
		return nil, fmt.Errorf("no interface with index %d in this namespace or any container's (see `tulle links`)", ifindex)
	}
	slices.SortStableFunc(out, func(a, b Link) int {
		if a.Netns != b.Netns {
			if a.Netns == hostNetns {
				return -1
			}
			if b.Netns == hostNetns {
				return 1
			}
			return strings.Compare(a.Netns, b.Netns)
		}
		return a.Index - b.Index
	})
	return out, nil
}

// linkList is LinkList retried while the dump is interrupted (the kernel
// changed the list while dumping it).
func linkList(nl *netlink.Handle) ([]netlink.Link, error) {
	for range 5 {
		ls, err := nl.LinkList()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return ls, err
		}
	}
	return nl.LinkList()
}
