package udptun_test

// Kernel tests of the TSO super-packet path, on the perf topology
// (perf_linux_test.go): container c1 -- node n1 (engine) == underlay ==
// node n2 (engine) -- container c2, with the containers' TCP doing TSO.

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/tulle-net/tulle/internal/netns"
	"github.com/tulle-net/tulle/internal/udptun"
)

// stream sends size pseudo-random bytes from ns from to port on dst (a
// listener in ns to) and reports whether the receiver's SHA-256 matches.
func stream(t *testing.T, from, to netns.NsHandle, dst string, port, size int, seed uint64) error {
	t.Helper()
	var ln net.Listener
	addr := net.JoinHostPort(dst, strconv.Itoa(port))
	if err := netns.Do(to, func() error {
		var err error
		ln, err = net.Listen("tcp4", addr)
		return err
	}); err != nil {
		return err
	}
	defer ln.Close()
	got := make(chan [32]byte, 1)
	go func() {
		var sum [32]byte
		c, err := ln.Accept()
		if err == nil {
			h := sha256.New()
			_, _ = io.Copy(h, c)
			c.Close()
			copy(sum[:], h.Sum(nil))
		}
		got <- sum
	}()
	var c net.Conn
	if err := netns.Do(from, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", addr, 5*time.Second)
		return err
	}); err != nil {
		return err
	}
	r := rand.New(rand.NewPCG(seed, seed))
	h := sha256.New()
	buf := make([]byte, 256<<10)
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	for sent := 0; sent < size; sent += len(buf) {
		for i := 0; i+8 <= len(buf); i += 8 {
			v := r.Uint64()
			buf[i], buf[i+1], buf[i+2], buf[i+3], buf[i+4], buf[i+5], buf[i+6], buf[i+7] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24), byte(v>>32), byte(v>>40), byte(v>>48), byte(v>>56)
		}
		h.Write(buf)
		if _, err := c.Write(buf); err != nil {
			c.Close()
			return fmt.Errorf("write: %w", err)
		}
	}
	c.Close()
	select {
	case sum := <-got:
		if !bytes.Equal(sum[:], h.Sum(nil)) {
			return fmt.Errorf("receiver's SHA-256 %x differs from the sender's %x", sum, h.Sum(nil))
		}
	case <-time.After(60 * time.Second):
		return fmt.Errorf("transfer of %d bytes did not finish", size)
	}
	return nil
}

// TestKernelTCPBulkTSO: 64 MiB each way at once between containers behind
// the two engines, checksummed end to end; the bulk goes as super-packets
// (counted on both engines); nothing is dropped but IPv6 noise.
func TestKernelTCPBulkTSO(t *testing.T) {
	t.Parallel()
	pn := perfTopologyNS(t, "udp", "uq7")
	const size = 64 << 20
	errc := make(chan error, 2)
	go func() { errc <- stream(t, pn.c1, pn.c2, "10.244.2.2", 5001, size, 1) }()
	go func() { errc <- stream(t, pn.c2, pn.c1, "10.244.1.2", 5002, size, 2) }()
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	for i, e := range pn.engs {
		s := e.Stats()
		out, in := udptun.SuperPackets(e)
		t.Logf("engine %d: %d super-packets out, %d in; stats %+v", i+1, out, in, s)
		if out < size/(64<<10) || in < size/(64<<10) {
			t.Errorf("engine %d: %d super-packets out, %d in; want the bulk (>= %d) as super-packets", i+1, out, in, size/(64<<10))
		}
		if s.BytesOut < size || s.BytesIn < size {
			t.Errorf("engine %d: bytes out %d in %d, want >= %d", i+1, s.BytesOut, s.BytesIn, size)
		}
		for r := range udptun.NumDropReasons {
			if d := s.Drops[r]; d != 0 && r != udptun.DropMalformed { // IPv6 router solicitations
				t.Errorf("engine %d dropped %d: %v", i+1, d, r)
			}
		}
	}
}

// TestKernelChunkLoss: node n2 drops one in 30 datagrams (nft numgen) on
// the way in; super-packets that lose a chunk are dropped and counted, TCP
// retransmits, and the stream still arrives intact.
func TestKernelChunkLoss(t *testing.T) {
	t.Parallel()
	pn := perfTopologyNS(t, "udp", "uq8")
	// nft add table ip uqloss; ... udp dport 8285 numgen random mod 30 == 0 drop
	// (a UDP GSO send crosses the veth as one skb, so this drops whole GSO
	// messages: 44 chunks, or the 2-chunk tail of a 64 KiB super-packet).
	nft := exec.Command("nft", "-f", "-")
	nft.Stdin = bytes.NewBufferString(`table ip uqloss {
	chain in {
		type filter hook input priority 0; policy accept;
		udp dport 8285 numgen random mod 30 == 0 counter drop
	}
}
`)
	var out bytes.Buffer
	nft.Stdout, nft.Stderr = &out, &out
	if err := netns.StartIn(pn.n2, nft); err != nil {
		t.Fatal(err)
	}
	if err := nft.Wait(); err != nil {
		t.Fatalf("nft: %v\n%s", err, out.String())
	}
	if err := stream(t, pn.c1, pn.c2, "10.244.2.2", 5003, 32<<20, 3); err != nil {
		t.Fatal(err)
	}
	s := pn.engs[1].Stats()
	_, in := udptun.SuperPackets(pn.engs[1])
	t.Logf("receiving engine: %d super-packets in, incomplete %d, stats %+v", in, s.Drops[udptun.DropIncomplete], s)
	if s.Drops[udptun.DropIncomplete] == 0 {
		t.Error("no super-packet counted as incomplete although chunks were dropped")
	}
	if in == 0 {
		t.Error("no super-packet arrived")
	}
}
