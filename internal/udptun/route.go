package udptun

import (
	"cmp"
	"encoding/binary"
	"net/netip"
	"slices"
)

// routeTable is the immutable result of SetPeers. The engine holds it in an
// atomic.Pointer: SetPeers builds a new table and swaps it in; a pipeline
// loads the pointer once per batch, so every packet sees a consistent table
// and lookups take no lock and allocate nothing.
type routeTable struct {
	// lens are the distinct prefix lengths of the peers' subnets, longest
	// first. In a cluster every lease has the same length, so a lookup is
	// usually a single map probe.
	lens []uint8
	// routes maps key(len, masked address) to an index into peers.
	routes map[uint64]int32
	peers  []peerEntry
	// senders are the peers' public IPs: the only sources whose datagrams
	// are accepted.
	senders map[uint32]struct{}
}

type peerEntry struct {
	subnet netip.Prefix
	ip     uint32 // public IP, host order
	port   uint16
}

func routeKey(bits uint8, addr uint32) uint64 {
	return uint64(bits)<<32 | uint64(addr&prefixMask(bits))
}

func prefixMask(bits uint8) uint32 {
	if bits == 0 {
		return 0
	}
	return ^uint32(0) << (32 - bits)
}

func addrU32(a netip.Addr) uint32 { b := a.As4(); return binary.BigEndian.Uint32(b[:]) }

// newRouteTable builds a table from peers. Peers that are not IPv4, overlap
// local, or repeat an earlier peer's subnet are returned in skipped (the
// first of two peers with the same subnet wins, in input order).
func newRouteTable(peers []Peer, local netip.Prefix, defaultPort uint16) (t *routeTable, skipped []Peer) {
	t = &routeTable{routes: make(map[uint64]int32, len(peers)), senders: make(map[uint32]struct{}, len(peers))}
	for _, p := range peers {
		s := p.Subnet.Masked()
		if !s.IsValid() || !s.Addr().Is4() || !p.PublicIP.Is4() || (local.IsValid() && s.Overlaps(local)) {
			skipped = append(skipped, p)
			continue
		}
		k := routeKey(uint8(s.Bits()), addrU32(s.Addr()))
		if _, dup := t.routes[k]; dup {
			skipped = append(skipped, p)
			continue
		}
		port := p.Port
		if port == 0 {
			port = defaultPort
		}
		t.routes[k] = int32(len(t.peers))
		t.peers = append(t.peers, peerEntry{subnet: s, ip: addrU32(p.PublicIP), port: port})
		t.senders[addrU32(p.PublicIP)] = struct{}{}
		if !slices.Contains(t.lens, uint8(s.Bits())) {
			t.lens = append(t.lens, uint8(s.Bits()))
		}
	}
	slices.SortFunc(t.lens, func(a, b uint8) int { return cmp.Compare(b, a) })
	return t, skipped
}

// lookup returns the index of the peer whose subnet holds dst (longest
// prefix wins), or -1.
func (t *routeTable) lookup(dst uint32) int32 {
	for _, l := range t.lens {
		if i, ok := t.routes[routeKey(l, dst)]; ok {
			return i
		}
	}
	return -1
}

func (t *routeTable) isSender(ip uint32) bool {
	_, ok := t.senders[ip]
	return ok
}
